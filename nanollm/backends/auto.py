"""auto: for each primitive, the fastest implementation that loads here.

The choice is a table, not a timing taken at start-up: every row names the backends in order
of preference and the measurement that put them in that order (``nanollm bench`` on the 2-core
CI machine, float32, the nanoGPT CPU config's shapes; BENCHMARKS.md has the full table). A
backend that cannot load here is skipped for the next in its row, and auto says so once.
Re-run ``nanollm bench`` on a new machine to check the table still holds there.
"""

import types
import warnings

# primitive -> (backends in order of preference, why: the measurement behind the order)
CHOICES = {
    "matmul": (("numpy",), "BLAS sgemm; the Cython blocked matmul is a teaching reference, ~10x slower"),
    "softmax_forward": (("numba", "cython", "numpy"), "one fused pass per row vs NumPy's five"),
    "softmax_backward": (("numba", "cython", "numpy"), "one fused pass per row"),
    "causal_softmax_forward": (("numba", "cython", "numpy"), "skips the masked half; no -inf fill pass"),
    "causal_softmax_backward": (("numba", "cython", "numpy"), "skips the masked half"),
    "layernorm_forward": (("numba", "cython", "numpy"), "two passes per row, no temporaries"),
    "layernorm_backward": (("numba", "cython", "numpy"), "one kernel for dx, dweight, dbias"),
    "gelu_forward": (("numba", "cython", "numpy"), "vectorised rational tanh (float32), one pass"),
    "gelu_backward": (("numba", "cython", "numpy"), "vectorised rational tanh (float32), one pass"),
    "cross_entropy_forward": (("numba", "cython", "numpy"), "fused logsumexp and pick, one pass per row"),
    "cross_entropy_backward": (("numba", "cython", "numpy"), "softmax minus one-hot written once"),
    "embedding_backward": (("numba", "numpy"), "a plain loop beats np.add.at's unbuffered scatter"),
    "adamw_step": (("numba", "numpy"), "one pass over param, grad, m, v instead of ~10 NumPy passes"),
    "sum_of_squares": (("numba", "numpy"), "no float64 temporary copy of each gradient"),
}


def build(get):
    """A backend namespace with each primitive taken from the first backend in its CHOICES row
    that loads (``get(name)`` loads a backend or raises ValueError). Its ``picked`` attribute
    maps every primitive to the backend that provides it."""
    namespace, picked, skipped = types.SimpleNamespace(), {}, {}
    for primitive, (preference, _why) in CHOICES.items():
        for name in preference:
            try:
                module = get(name)
            except ValueError as exc:
                skipped[name] = str(exc)
                continue
            setattr(namespace, primitive, getattr(module, primitive))
            picked[primitive] = name
            break
        else:
            raise ValueError(f"backend 'auto' found no backend for {primitive}: " + "; ".join(skipped.values()))
    if skipped:
        warnings.warn("backend 'auto' skipped " + "; ".join(skipped.values()) + " and uses instead: "
                      + ", ".join(f"{p}={b}" for p, b in picked.items() if b != CHOICES[p][0][0]), stacklevel=3)
    namespace.picked = picked
    namespace.__name__ = "nanollm.backends.auto"
    return namespace


def describe(picked):
    """Lines of 'primitive  backend  why' for a picked table (what auto chose, and why)."""
    width = max(len(p) for p in picked)
    return [f"{p:<{width}}  {b:<7} {CHOICES[p][1]}" for p, b in picked.items()]
