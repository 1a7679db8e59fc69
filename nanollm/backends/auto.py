"""auto: for each primitive, the fastest implementation that loads here.

The choice is a table, not a timing taken at start-up: every row names the backends in order
of preference and the measurement that put them in that order (``nanollm bench`` on the 2-core
CI machine, float32, the nanoGPT CPU config's shapes; BENCHMARKS.md has the full table). A
backend that cannot load here is skipped for the next in its row, and auto says so once.
Re-run ``nanollm bench`` on a new machine to check the table still holds there.
"""

import types
import warnings

# primitive -> (backends in order of preference, why: the measurement behind the order).
# ms per call at the nanoGPT CPU config's shapes, float32, `nanollm bench` on the 2-core CI
# machine (numba / cython / numpy).
CHOICES = {
    "matmul": (("numpy",), "BLAS sgemm at ~190 GFLOP/s; the Cython blocked matmul reaches ~25 (8x slower)"),
    "causal_softmax_forward": (("numba", "cython", "numpy"), "0.24 / 0.47 / 0.66: masked half skipped, vectorised exp"),
    "causal_softmax_backward": (("cython", "numba", "numpy"), "0.10 / 0.057 / 0.20: masked half skipped"),
    # fused attention, B=12 H=4 T=64 hd=32 (then T=256; T=1024 at B=4), OpenBLAS on 1 thread (the 2
    # cores were busy with other runs; `python -m nanollm.tools.attention_bench` compares with unfused)
    "flash_attention_forward": (("numba", "cython", "numpy"),
                                "0.83 / 0.77 / 2.3 (T=256: 8.1 / 9.8 / 14; T=1024: 36 / 49 / 43): online softmax, "
                                "masked key blocks skipped"),
    "flash_attention_backward": (("numba", "cython", "numpy"),
                                 "1.9 / 2.1 / 2.8 (T=256: 20 / 29 / 19; T=1024: 97 / 149 / 64): P rebuilt from lse; "
                                 "numpy_ref's BLAS blocks win from T=256 on"),
    "layernorm_forward": (("numba", "cython", "numpy"), "0.054 / 0.080 / 0.17: two passes per row, no temporaries"),
    "layernorm_backward": (("numba", "cython", "numpy"), "0.076 / 0.093 / 0.29: dx, dweight, dbias in one kernel"),
    "gelu_forward": (("numba", "cython", "numpy"), "0.16 / 0.63 / 0.45: vectorised rational tanh, one pass"),
    "gelu_backward": (("numba", "cython", "numpy"), "0.18 / 0.77 / 0.86: vectorised rational tanh, one pass"),
    "rmsnorm_forward": (("numba", "cython", "numpy"), "0.018 / 0.044 / 0.091: one sum of squares per row, then out"),
    "rmsnorm_backward": (("numba", "cython", "numpy"), "0.039 / 0.073 / 0.19: dx and dweight in one kernel"),
    "rope_forward": (("numba", "cython", "numpy"), "0.016 / 0.028 / 0.21: one pass over the pairs, no concatenate"),
    "rope_backward": (("numba", "cython", "numpy"), "0.016 / 0.028 / 0.21: the same kernel, the opposite angle"),
    "swiglu_forward": (("numba", "numpy", "cython"), "0.18 / 0.84 / 0.35: sigmoid from a vectorised exp(-|g|)"),
    "swiglu_backward": (("numba", "numpy", "cython"), "0.39 / 1.04 / 0.69: vectorised exp(-|g|), dgate and dup"),
    "cross_entropy_forward": (("numba", "numpy", "cython"), "0.080 / 0.24 / 0.11: vectorised exp, fused pick"),
    "cross_entropy_backward": (("numba", "numpy", "cython"), "0.045 / 0.20 / 0.061: softmax minus one-hot, one pass"),
    "embedding_backward": (("numba", "numpy"), "0.012 / - / 0.86: a plain loop vs np.add.at's unbuffered scatter"),
    "adamw_step": (("numba", "numpy"), "0.064 / - / 0.12: one pass over param, grad, m, v"),
    "adamw_step_scaled": (("numba", "numpy"), "adamw_step's kernel behind a host check of the two scalars"),
    "sum_of_squares": (("numba", "numpy"), "0.005 / - / 0.040: no float64 copy of each gradient"),
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
