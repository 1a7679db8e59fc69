"""Backend registry: one small, closed set of hot-loop primitives, several implementations.

The ops in ``nanollm.ops`` never compute a softmax or a layernorm themselves; they call
``current().<primitive>(...)``. A backend is one module that defines every name in
``PRIMITIVES``; ``numpy_ref`` is the specification the others are tested against.

    get(name)        -> the backend module (loads it; a clear error if it cannot load)
    available()      -> {name: None if it loads, else the reason it does not}
    use(name)        -> make it the current backend ("auto": per primitive, the fastest that loads)
    current()        -> the current backend module
    array_module(x)  -> numpy or cupy, whichever owns the array x
    device_module()  -> numpy or cupy, whichever the current backend computes on
    to_numpy(x)      -> x as a NumPy array (a copy to the host for a CuPy array)

The backend is chosen by ``use(...)`` (``cfg["backend"]`` in training), else by the
``NANOLLM_BACKEND`` environment variable, else ``auto`` (see ``auto.py`` for its table).
"""

import importlib
import os

import numpy as np

# The closed set of primitives every backend must define (see numpy_ref for their contracts).
PRIMITIVES = (
    "matmul",
    "causal_softmax_forward",
    "causal_softmax_backward",
    "flash_attention_forward",
    "flash_attention_backward",
    "layernorm_forward",
    "layernorm_backward",
    "gelu_forward",
    "gelu_backward",
    "rmsnorm_forward",
    "rmsnorm_backward",
    "rope_forward",
    "rope_backward",
    "swiglu_forward",
    "swiglu_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "embedding_backward",
    "adamw_step",
    "adamw_step_scaled",
    "sum_of_squares",
)

# name -> (module, hint shown when it cannot load). "auto" is built from these (auto.CHOICES).
_REGISTRY = {
    "numpy": ("nanollm.backends.numpy_ref", "numpy is a core dependency: reinstall with `pip install .`"),
    "numba": ("nanollm.backends.numba_cpu", "numba is a core dependency: reinstall with `pip install .`"),
    "cython": ("nanollm.backends.cython_cpu",
               ("its kernels are compiled from kernels/*.pyx when nanollm is installed: reinstall with "
                "`pip install .` (needs a C compiler; in a source checkout `python setup.py build_ext --inplace`)")),
    "cupy": ("nanollm.backends.cupy_gpu",
             ("the GPU backend needs CuPy and an NVIDIA GPU (`.[gpu-cuda13]` installs CuPy for a CUDA 13 toolkit); "
              "to train on the CPU, choose backend auto, numba, cython or numpy")),
}
# Backends whose arrays live on the host; the others (cupy) keep parameters and activations on a device.
HOST_BACKENDS = ("numpy", "numba", "cython", "auto")
DEFAULT_BACKEND = "auto"

_loaded = {}
_current = None


def names():
    """All registered backend names (whether or not they load here), plus "auto"."""
    return tuple(_REGISTRY) + ("auto",)


def get(name):
    """Load and return the backend module called ``name``; a ValueError says why it cannot."""
    if name == "auto":
        if "auto" not in _loaded:
            from nanollm.backends import auto

            _loaded["auto"] = auto.build(get)
        return _loaded["auto"]
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown backend {name!r}: choose one of {', '.join(names())} "
            "(cfg['backend'] or the NANOLLM_BACKEND environment variable)"
        )
    if name not in _loaded:
        module_name, hint = _REGISTRY[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"backend {name!r} cannot load ({exc}); {hint}") from None
        missing = [p for p in PRIMITIVES if not callable(getattr(module, p, None))]
        if missing:
            raise ValueError(f"backend {name!r} ({module_name}) lacks primitives: {', '.join(missing)}")
        _loaded[name] = module
    return _loaded[name]


def available():
    """Map every registered backend to None if it loads here, else the reason it does not."""
    status = {}
    for name in _REGISTRY:
        try:
            get(name)
            status[name] = None
        except ValueError as exc:
            status[name] = str(exc)
    return status


def use(name):
    """Make ``name`` the current backend and return it.

    Only "auto" falls back: per primitive it takes the first backend in its preference order
    that loads, and warns once naming what it skipped and why."""
    global _current
    module = get(name)
    _current = name
    return module


def current_name():
    """Name of the current backend (resolving NANOLLM_BACKEND on first use)."""
    if _current is None:
        use(os.environ.get("NANOLLM_BACKEND", DEFAULT_BACKEND))
    return _current


def current():
    """The current backend module; ops call their primitives through it."""
    return get(current_name())


def array_module(x):
    """numpy for NumPy arrays (and Python scalars), cupy for CuPy arrays, without importing cupy."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def device_module(name=None):
    """The array module the backend ``name`` (default: the current one) computes on: numpy for
    the host backends, cupy for the GPU backend."""
    if (name or current_name()) in HOST_BACKENDS:
        return np
    import cupy

    return cupy


def random_generator(seed):
    """A seeded random source on the current backend's device, for dropout masks: a NumPy
    Generator on the host, the cupy backend's counter-based CounterGenerator on a GPU (its
    state, like a Generator's, is a plain dict that a checkpoint keeps)."""
    if device_module() is np:
        return np.random.default_rng(seed)
    return current().CounterGenerator(seed)


def to_numpy(x):
    """A NumPy array of x: a CuPy array is copied to the host, anything else goes through np.asarray."""
    return x.get() if array_module(x) is not np else np.asarray(x)
