"""TRAINING.md's configuration reference, generated from ``config.DEFAULTS`` so the two cannot drift.

    python -m nanollm.tools.config_reference TRAINING.md           # rewrite the reference in place
    python -m nanollm.tools.config_reference TRAINING.md --check   # exit 1 if it is out of date

The reference sits between the two marker lines below; everything else in the file is left as it
is. Each key's comment in DEFAULTS is its only description (``config.describe_keys``), and the
``# ---- group ----`` comments there become the table's sections (the model keys' comments
are ModelConfig's, in nanollm/model_config.py).
"""

import inspect
import re
import sys

from nanollm import config, model_config
from nanollm.textfiles import write_atomically

BEGIN = "<!-- config reference: generated from nanollm/config.py by `python -m nanollm.tools.config_reference TRAINING.md`; edit DEFAULTS, not this table -->"
END = "<!-- end of config reference -->"


def key_groups():
    """[(group title, [keys])] in DEFAULTS order, from its ``# ---- title ----`` comments."""
    source = inspect.getsource(config)
    body = source[source.index("DEFAULTS = {"):]
    body = body[:body.index("\n}\n")]
    groups = []
    for line in body.splitlines():
        title = re.match(r"\s*# ---- (.+?) ----", line)
        key = re.match(r'\s*"(\w+)":', line)
        if title:
            groups.append((title.group(1), []))
        elif key:
            groups[-1][1].append(key.group(1))
        elif "model_config.TRAINING_KEYS" in line:  # the model keys, spelled out in nanollm.model_config
            groups[-1][1].extend(model_config.TRAINING_KEYS)
    return groups


def _format_default(value):
    """The default as it is written after --key= on the command line."""
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)   # as --betas=0.9,0.99 takes it
    if isinstance(value, str):
        return value if value.isprintable() and value.strip() == value else repr(value)
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def _format_type(key):
    if key in config.CHOICES:
        return " \\| ".join(str(choice) for choice in config.CHOICES[key])
    kind = config.key_type(key).__name__
    return {"tuple": "float,float", "list": "list of str", "str": "text"}.get(kind, kind)


def reference_markdown():
    """The reference as markdown: one table per group, a row per key."""
    comments = config.describe_keys()
    aliases = {target: alias for alias, target in config.ALIASES.items()}
    parts = [BEGIN, ""]
    for title, keys in key_groups():
        parts += [f"**{title[0].upper()}{title[1:]}**", "", "| key | default | values | meaning |", "|---|---|---|---|"]
        for key in keys:
            name = f"`{key}` (or `{aliases[key]}`)" if key in aliases else f"`{key}`"
            meaning = comments[key].replace("|", "\\|")
            parts.append(f"| {name} | `{_format_default(config.DEFAULTS[key])}` | {_format_type(key)} | {meaning} |")
        parts.append("")
    parts.append(END)
    return "\n".join(parts)


def replace_reference(text, path):
    """text with the block between the markers replaced by the current reference."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"{path}: needs exactly one pair of config reference markers; put these two lines "
                         f"where the reference belongs:\n{BEGIN}\n{END}")
    before, rest = text.split(BEGIN)
    after = rest.split(END)[1]
    return before + reference_markdown() + after


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    paths = [arg for arg in argv if arg != "--check"]
    if len(paths) != 1 or len(argv) - len(paths) > 1:
        print("usage: python -m nanollm.tools.config_reference FILE.md [--check]", file=sys.stderr)
        return 2
    path = paths[0]
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
        updated = replace_reference(text, path)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if "--check" in argv:
        if updated != text:
            print(f"{path}: the config reference is out of date; run python -m nanollm.tools.config_reference {path}",
                  file=sys.stderr)
            return 1
        return 0
    if updated != text:
        write_atomically(path, lambda file: file.write(updated.encode("utf-8")))
        print(f"{path}: config reference updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
