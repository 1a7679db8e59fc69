"""The cupy backend without a GPU: its CUDA source (nanollm/backends/cuda/kernels.cu) compiles
with nvcc for the GPUs nanollm targets and defines exactly the kernels cuda.KERNEL_NAMES lists;
cupy_gpu.py asks only for those; and asking for backend cupy where it cannot run is a one-line
error that names the fix. Compiling needs nvcc, not a GPU: those tests skip where it is missing."""

import ast
import re
import shutil
import subprocess
import sys
import types

import pytest

from nanollm import backends
from nanollm.backends import cuda

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH (no CUDA toolkit here)")
TARGETS = ("sm_80", "sm_90")  # A100, H100
LAUNCHERS = ("_launch", "_launch_rows", "_launch_flat", "_weight_grads")  # cupy_gpu's calls that name a kernel


@pytest.fixture(scope="module", params=TARGETS)
def cubin(request, tmp_path_factory):
    """kernels.cu compiled by nvcc (front end and ptxas) for one GPU architecture, every warning
    an error: the bytes of the cubin."""
    out = tmp_path_factory.mktemp(request.param) / "kernels.cubin"
    command = [NVCC, f"-arch={request.param}", "-std=c++17", "-cubin", "--Werror", "all-warnings", "-o", str(out),
               str(cuda.SOURCE)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"
    return out.read_bytes()


def entry_points(cubin):
    """The extern "C" kernels in a cubin: each has a code section .text.<name> (C++-mangled
    names, _Z..., would be device functions the compiler did not inline)."""
    names = re.findall(rb"\.text\.([A-Za-z_][A-Za-z0-9_]*)\x00", cubin)
    return {name.decode() for name in names if not name.startswith(b"_Z")}


@needs_nvcc
def test_kernels_compile_for_each_target_and_define_exactly_the_listed_kernels(cubin):
    defined = entry_points(cubin)
    assert defined == set(cuda.KERNEL_NAMES), (f"missing: {sorted(set(cuda.KERNEL_NAMES) - defined)}; "
                                               f"not listed: {sorted(defined - set(cuda.KERNEL_NAMES))}")


def test_every_listed_kernel_has_an_entry_point_in_the_source():
    """Without nvcc, the text: each kernel's STAMP macro defines <kernel>_##<suffix>(...)."""
    source = cuda.SOURCE.read_text(encoding="utf-8")
    for kernel in cuda.PER_TYPE:
        assert f"void {kernel}_##S(" in source, kernel
    for kernel in cuda.PER_PARAM_AND_GRAD:
        assert f"void {kernel}_##PS##_##GS(" in source, kernel
    stamped = re.search(r"#define FOR_EACH_TYPE\(STAMP_KERNEL\)(.*?)\n(?!\s)", source, re.DOTALL).group(1)
    assert re.findall(r"STAMP_KERNEL\(\w+, (\w+)\)", stamped) == list(cuda.SUFFIXES.values())


def test_cupy_gpu_asks_for_every_kernel_and_only_those():
    """cupy_gpu.py names each kernel as the first argument of a launch; read them from its
    syntax tree (importing it needs CuPy and a GPU)."""
    tree = ast.parse((cuda.SOURCE.parent.parent / "cupy_gpu.py").read_text(encoding="utf-8"))
    asked = {node.args[0].value for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in LAUNCHERS
             and node.args and isinstance(node.args[0], ast.Constant)}
    assert asked == set(cuda.PER_TYPE) | set(cuda.PER_PARAM_AND_GRAD)


def test_kernel_names_carry_one_suffix_per_dtype():
    assert cuda.kernel_name("causal_softmax_forward", "bfloat16") == "causal_softmax_forward_bf16"
    assert cuda.kernel_name("adamw_step_scaled", "float32", "float16") == "adamw_step_scaled_f32_f16"
    assert len(cuda.KERNEL_NAMES) == len(set(cuda.KERNEL_NAMES)) == 4 * len(cuda.PER_TYPE) + 2 * 4 * 2


def _cupy_without_a_gpu():
    """A stand-in for an installed CuPy on a machine whose driver shows no GPU."""
    return types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: False))


@pytest.mark.parametrize("cupy_module, says", [(None, ("CuPy is not installed", 'pip install ".[gpu]"')),
                                               (_cupy_without_a_gpu(), ("CuPy is installed but sees no CUDA GPU",))],
                         ids=["no-cupy", "no-gpu"])
def test_backend_cupy_where_it_cannot_run_is_a_one_line_error_naming_the_fix(monkeypatch, cupy_module, says):
    """Whether or not CuPy and a GPU are here (sys.modules["cupy"] = None makes `import cupy`
    fail): the module's reason, then the registry's hint, on one line."""
    monkeypatch.setitem(sys.modules, "cupy", cupy_module)
    monkeypatch.delitem(sys.modules, "nanollm.backends.cupy_gpu", raising=False)
    monkeypatch.delitem(backends._loaded, "cupy", raising=False)
    with pytest.raises(ValueError) as error:
        backends.get("cupy")
    message = str(error.value)
    assert "\n" not in message and message.startswith("backend 'cupy' cannot load (")
    assert all(phrase in message for phrase in says) and message.endswith(backends._REGISTRY["cupy"][1])
