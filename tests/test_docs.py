"""README.md and TRAINING.md stay true: their Python blocks run, their commands work, and the
README's test command is what CI runs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "TRAINING.md", "notebooks/README.md")


def code_blocks(doc, language):
    text = (ROOT / doc).read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


# Commands the docs show that a test elsewhere runs (in a smaller form).
COVERED_ELSEWHERE = {
    "python examples/shakespeare_char.py": "tests/test_examples.py",
    "python examples/shakespeare_char_pytorch.py": "tests/test_examples.py",
    "nanollm bench": "tests/test_bench.py",
    "python data/prepare_shakespeare.py": "tests/test_data.py",
    **{f"nanollm {command}": "tests/test_cli.py"
       for command in ("train", "sample", "info", "prepare", "plot", "export", "import")},
    "nanollm experiments": "tests/test_experiments.py",
    "python experiments/run_scaling_experiments.py": "tests/test_experiments.py",
}


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


@pytest.mark.parametrize("doc", DOCS)
def test_shell_commands_run_or_are_what_ci_runs(doc, tmp_path):
    """`python -m nanollm ...` commands are run here (in a scratch folder, so the installed
    package with its compiled kernels is imported, not the checkout's sources); install
    commands must be CI's own."""
    ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for block in code_blocks(doc, "bash"):
        for command in filter(None, (line.strip() for line in block.splitlines())):
            if "pip install" in command:
                assert command in ci_script, f"{doc}: .ci/run does not run the install command {command!r}"
            elif command.startswith("python -m nanollm"):
                args = command.split()[3:]
                subprocess.run([sys.executable, "-m", "nanollm", *args], cwd=tmp_path, check=True,
                               capture_output=True, timeout=300)
            elif not any(command.startswith(known) for known in COVERED_ELSEWHERE):
                pytest.fail(f"{doc}: no test covers the command {command!r}")


def test_readme_test_command_is_run_verbatim_by_ci():
    ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_commands = [c for b in code_blocks("README.md", "bash") for c in b.splitlines() if c.endswith("pytest")]
    assert test_commands and all(c in ci_script for c in test_commands)
