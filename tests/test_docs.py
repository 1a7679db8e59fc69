"""README.md and TRAINING.md stay true: their Python blocks run, their commands work, and the
README's test command is what CI runs."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "TRAINING.md", "notebooks/README.md")


def code_blocks(doc, language):
    text = (ROOT / doc).read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("doc", DOCS)
def test_python_blocks_run(doc, monkeypatch, tmp_path):
    """Run in a scratch folder that sees the checkout's data/, so examples that write
    checkpoints leave the checkout clean."""
    blocks = code_blocks(doc, "python")
    assert blocks, f"{doc} has no python blocks"
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc_block__"}  # one per document: later blocks build on earlier ones
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{doc} python block {number}", "exec"), namespace)


# Commands the docs show that take minutes (whole training recipes, full benchmarks, every
# scaling grid) or need ../shared/data: the test named beside each runs them in a shorter form.
COVERED_ELSEWHERE = {
    "python examples/shakespeare_char.py": "tests/test_examples.py",
    "python examples/shakespeare_char_pytorch.py": "tests/test_examples.py",
    "nanollm bench --threads": "tests/test_bench.py",
    "python data/prepare_shakespeare.py": "tests/test_data.py",
    "nanollm experiments": "tests/test_experiments.py",
    "python experiments/run_scaling_experiments.py": "tests/test_experiments.py",
    "mpiexec": "tests/test_mpi.py",  # needs the [mpi] extra: run verbatim there when it is installed
    "python -m nanollm.tools.parallel_bench": "tests/test_mpi.py",
    "python -m nanollm.tools.gpu_bench": "tests/test_gpu_bench.py",  # a GPU's; there, its CPU smoke form
}
NANOLLM_COMMAND = re.compile(r"^(?:nanollm|python -m nanollm)(?:\s|$)")
INPUT_CHARACTERS = 60_000   # the input.txt the docs' commands train on


def shell_commands(doc):
    return [line.strip() for block in code_blocks(doc, "bash") for line in block.splitlines() if line.strip()]


def write_named_config_files(doc, folder):
    """A ```toml block whose first line is `# NAME.toml...` is a file the commands use."""
    for block in code_blocks(doc, "toml"):
        name = re.match(r"#\s*([\w.-]+\.toml)", block)
        if name:
            (folder / name.group(1)).write_text(block, encoding="utf-8")


@pytest.mark.parametrize("doc", DOCS)
def test_shell_commands_run_as_written(doc, tmp_path):
    """Every `nanollm ...` command of a document runs verbatim, in order, in one scratch folder
    (so `train` makes the run that `sample`, `plot` and `export` read), with the installed
    package, not the checkout's sources. `input.txt` is a slice of the embedded corpus; toml
    blocks named in their first line are written as files. Install commands must be CI's own;
    the few long commands must be named in COVERED_ELSEWHERE."""
    from nanollm.corpus import synthetic_text

    ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    (tmp_path / "data").symlink_to(ROOT / "data")
    (tmp_path / "input.txt").write_text(synthetic_text(INPUT_CHARACTERS, seed=0), encoding="utf-8")
    write_named_config_files(doc, tmp_path)
    for command in shell_commands(doc):
        if "pip install" in command:
            assert command in ci_script, f"{doc}: .ci/run does not run the install command {command!r}"
        elif any(command.startswith(known) for known in COVERED_ELSEWHERE):
            continue
        elif NANOLLM_COMMAND.match(command):
            args = shlex.split(command)[1 if command.startswith("nanollm") else 3:]
            done = subprocess.run([sys.executable, "-m", "nanollm", *args], cwd=tmp_path, capture_output=True, check=False,
                                  text=True, timeout=300)
            assert done.returncode == 0, f"{doc}: {command!r} failed:\n{done.stderr[-2000:]}"
        else:
            pytest.fail(f"{doc}: no test runs the command {command!r}")


def test_commands_covered_elsewhere_are_run_there():
    for command, test_file in COVERED_ELSEWHERE.items():
        words = command.split()
        # the launcher itself, a module run with -m, or the script / nanollm's subcommand
        program = words[0] if len(words) == 1 else words[2] if words[1] == "-m" else Path(words[1]).name
        assert program in (ROOT / test_file).read_text(encoding="utf-8"), f"{test_file} never runs {command!r}"


def test_readme_test_command_is_run_verbatim_by_ci():
    ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_commands = [c for b in code_blocks("README.md", "bash") for c in b.splitlines() if c.endswith("pytest")]
    assert test_commands and all(c in ci_script for c in test_commands)


def test_training_md_config_reference_is_generated_from_defaults():
    from nanollm import config
    from nanollm.tools.config_reference import main, reference_markdown

    assert main([str(ROOT / "TRAINING.md"), "--check"]) == 0, \
        "TRAINING.md's config reference differs from DEFAULTS: run python -m nanollm.tools.config_reference TRAINING.md"
    reference = reference_markdown()
    for key, comment in config.describe_keys().items():
        assert f"| `{key}`" in reference and comment and comment in reference.replace("\\|", "|"), key


def test_config_reference_rewrites_only_its_block_and_check_fails_when_stale(tmp_path, capsys):
    from nanollm.tools.config_reference import BEGIN, END, main, reference_markdown

    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n\n{BEGIN}\n| `old_key` | 1 |\n{END}\n\noutro\n", encoding="utf-8")
    assert main([str(doc), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main([str(doc)]) == 0
    assert doc.read_text(encoding="utf-8") == f"intro\n\n{reference_markdown()}\n\noutro\n"
    assert main([str(doc), "--check"]) == 0
    (tmp_path / "none.md").write_text("no markers\n", encoding="utf-8")
    assert main([str(tmp_path / "none.md")]) == 1
    assert "config reference markers" in capsys.readouterr().err


@pytest.mark.parametrize("doc", DOCS)
def test_named_config_files_in_the_docs_are_valid(doc, tmp_path):
    """The toml blocks the docs name as files: a grid loads and expands, a config resolves."""
    from nanollm.config import load_config_file, resolve
    from nanollm.experiments import expand_runs, load_grid

    write_named_config_files(doc, tmp_path)
    for path in sorted(tmp_path.glob("*.toml")):
        if "base" in load_config_file(path):
            assert expand_runs(load_grid(path), source=path), path.name
        else:
            resolve(load_config_file(path))
