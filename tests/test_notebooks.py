"""The notebooks run, top to bottom, in a kernel of this environment, and stay clean in git.

Each notebook asserts its own gradient checks, so executing it is a test of the math it teaches.
Run in a scratch folder (with a `data` link to the checkout's data/) so nothing lands in the
checkout. nbclient and ipykernel come with the `test` extra; without them these tests skip."""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = ("01_embedding", "02_linear", "03_layernorm", "04_attention", "05_mlp_gelu",
             "06_cross_entropy", "07_gpt_model", "08_optimizers_and_schedules", "09_training_run",
             "10_kernels_and_backends", "11_scaling_experiments", "12_llama_blocks", "13_policy_gradients")
# the ones that derive a backward and check it
LAYER_NOTEBOOKS = NOTEBOOKS[:7] + ("12_llama_blocks", "13_policy_gradients")
EXECUTION_SECONDS = 300           # per notebook, far above the ~5-30 s they take


def read_notebook(name):
    return json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text(encoding="utf-8"))


def cell_sources(notebook, cell_type):
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == cell_type]


def test_every_planned_notebook_exists_and_nothing_else():
    found = sorted(path.stem for path in NOTEBOOK_DIR.glob("*.ipynb"))
    assert found == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
    """Outputs stay out of git: they bloat diffs and go stale. Regenerate with nbclient to see them."""
    for cell in read_notebook(name)["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, \
                f"{name}.ipynb has stored outputs: run `jupyter nbconvert --clear-output --inplace notebooks/{name}.ipynb`"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_calls_nanollm_instead_of_copying_it(name):
    """A notebook explains nanollm's own functions: defining a layer's forward or backward
    (or an optimizer's update) in the notebook would teach a copy that can drift."""
    code = "\n".join(cell_sources(read_notebook(name), "code"))
    assert re.search(r"^\s*(from nanollm|import nanollm)", code, flags=re.M), f"{name} does not import nanollm"
    copies = re.findall(r"^\s*def (\w+_(?:forward|backward|update))\b", code, flags=re.M)
    assert not copies, f"{name} defines its own {copies}: call nanollm's instead"


@pytest.mark.parametrize("name", LAYER_NOTEBOOKS)
def test_layer_notebook_derives_and_checks_its_backward(name):
    notebook = read_notebook(name)
    markdown, code = "\n".join(cell_sources(notebook, "markdown")), "\n".join(cell_sources(notebook, "code"))
    assert "$$" in markdown, f"{name} states no LaTeX math"
    assert "nanollm.gradcheck" in code, f"{name} runs no gradient check with nanollm.gradcheck"
    assert re.search(r"assert .*1e-6", code), f"{name} does not assert its gradient check passes (< 1e-6)"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="pip install '.[test]' brings nbformat")
    nbclient = pytest.importorskip("nbclient", reason="pip install '.[test]' brings nbclient")
    pytest.importorskip("ipykernel", reason="pip install '.[test]' brings ipykernel")
    notebook = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    (tmp_path / "data").symlink_to(ROOT / "data")
    # kernel_name python3 is ipykernel's own spec; jupyter_client starts it with sys.executable,
    # so the kernel imports the nanollm installed in this environment.
    client = nbclient.NotebookClient(notebook, timeout=EXECUTION_SECONDS, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"], \
        f"{name} left files in its working folder: write them into a tempfile.TemporaryDirectory()"


def test_kernel_is_this_environment(tmp_path):
    """The notebook tests must run against the nanollm under test, not another installation."""
    pytest.importorskip("nbclient", reason="pip install '.[test]' brings nbclient")
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
    NotebookClient(notebook, timeout=60, kernel_name="python3").execute()
    assert notebook.cells[0].outputs[0]["text"].strip() == sys.prefix
