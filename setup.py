"""Packaging for nanollm. Compiled kernels live in kernels/*.pyx and build into nanollm.backends."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


# -O3 plus the parts of fast-math that keep IEEE special values: reassociation lets the C
# compiler vectorise the float sums of the softmax and layernorm rows (measured 1.7-3x on
# (768, 512) float32); no -ffinite-math-only, so NaN and Inf still propagate, and no
# -march=native, so the build stays portable. The numba backend's FASTMATH makes the same choice.
COMPILE_ARGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros"]


def cython_extensions():
    """Every kernels/<name>.pyx becomes the extension nanollm.backends._<name>."""
    sources = sorted((HERE / "kernels").glob("*.pyx"))
    if not sources:
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    extensions = [
        Extension(f"nanollm.backends._{src.stem}", [str(src.relative_to(HERE))],
                  include_dirs=[numpy.get_include()], extra_compile_args=COMPILE_ARGS)
        for src in sources
    ]
    return cythonize(extensions, language_level=3)


setup(
    name="nanollm",
    version="0.1.0",
    description="Train GPT- and Llama-style language models with a hand-written, gradient-checked NumPy autograd",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["nanollm", "nanollm.*"]),
    package_data={"nanollm.backends": ["cuda/*.cu"]},  # the cupy backend's kernels, compiled at run time (NVRTC)
    ext_modules=cython_extensions(),
    install_requires=["numpy>=1.26", "numba>=0.59", "cython>=3.0", "matplotlib>=3.7", "tqdm>=4.60",
                      "threadpoolctl>=3.1"],  # threadpoolctl: BLAS on one thread while batch shards run (nanollm.shards)
    extras_require={
        # nbclient + ipykernel: tests/test_notebooks.py executes the notebooks in this environment
        "test": ["pytest>=7", "hypothesis>=6", "safetensors>=0.4", "gguf>=0.10", "nbclient>=0.7", "nbformat>=5.7",
                 "ipykernel>=6"],
        "hf": ["safetensors>=0.4"],  # nanollm export / import of Hugging Face folders (GPT-2, Llama)
        "gguf": ["gguf>=0.10"],
        # report_to: TensorBoard event files (tensorboardX; `tensorboard` itself to view them) and W&B
        "tensorboard": ["tensorboardX>=2.6"],
        "wandb": ["wandb>=0.17"],  # nanollm export / import of GGUF files (llama.cpp's own Python reader/writer)
        # backend="cupy" on an NVIDIA GPU: CuPy's CUDA 12 wheel (runs under CUDA 12 and 13 drivers) with
        # the CUDA libraries it loads (its [ctk] extra), and ml_dtypes for bfloat16; gpu-cuda13 for a CUDA 13 toolkit
        "gpu": ["cupy-cuda12x[ctk]>=14", "ml_dtypes>=0.5"],
        "gpu-cuda13": ["cupy-cuda13x[ctk]>=14", "ml_dtypes>=0.5"],
        # data-parallel training under mpiexec (nanollm.distributed): mpi4py and MPICH's wheel,
        # which brings its own mpiexec into the environment's bin/
        "mpi": ["mpi4py>=4.0", "mpich>=4.1"],
    },
    entry_points={"console_scripts": ["nanollm=nanollm.cli:main"]},
    license="MIT",
)
