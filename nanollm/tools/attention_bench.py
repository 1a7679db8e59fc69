"""Fused (FlashAttention-2) against unfused causal attention: time and the memory kept for the backward.

    python -m nanollm.tools.attention_bench [--lengths 64 256 1024] [--rounds 7] [--backend numba]

For each sequence length T (B = 12, or B = 4 from T = 1024 on; H = 4 heads of hd = 32; float32,
the nanoGPT CPU config's attention at T = 64), one forward + backward of:

- fused: the backend's flash_attention_forward / flash_attention_backward primitives (numba by
  default), which keep only each row's log-sum-exp between the two passes;
- unfused: ops/attention.py's path, matmul, auto's causal softmax, matmul, and its backward
  (matmuls and auto's causal_softmax_backward), which keeps the (B, H, T, T) probabilities.

The two run alternately, in rounds (one call of each per round, after a warm-up that compiles
the kernels), and each figure is the median over the rounds, so a load change on the machine
hits both. The line also gives the bytes of the T x T arrays the unfused path keeps for its
backward (the probabilities) against the fused one's lse.
"""

import argparse
import statistics
import time

import numpy as np

from nanollm import backends

HEADS, HEAD_DIM = 4, 32


def batch_for(length):
    """The batch of the figure at sequence length T: 12 (the nanoGPT CPU config's), 4 from T = 1024."""
    return 4 if length >= 1024 else 12


def unfused_step(prims, q, k, v, dy, scale):
    """Forward + backward of matmul, causal softmax, matmul (ops/attention.py without dropout);
    returns (dq, dk, dv) and the probabilities the forward kept."""
    probs = prims.causal_softmax_forward(prims.matmul(q, k.swapaxes(-1, -2)), scale)  # (B, H_kv, G, T, T)
    prims.matmul(probs, v)  # y
    dprobs = prims.matmul(dy, v.swapaxes(-1, -2))
    dv = prims.matmul(probs.swapaxes(-1, -2), dy).sum(axis=2, keepdims=True)
    dscores = prims.causal_softmax_backward(dprobs, probs, scale)
    dq = prims.matmul(dscores, k)
    dk = prims.matmul(dscores.swapaxes(-1, -2), q).sum(axis=2, keepdims=True)
    return (dq, dk, dv), probs


def fused_step(prims, q, k, v, dy, scale):
    """Forward + backward of the fused primitives; returns (dq, dk, dv) and the lse kept."""
    y, lse = prims.flash_attention_forward(q, k, v, scale)
    return prims.flash_attention_backward(dy, q, k, v, y, lse, scale), lse


def compare(length, rounds, backend="numba", dtype=np.float32):
    """{"fused_ms", "unfused_ms", "probs_bytes", "lse_bytes", "max_error"} at sequence length T."""
    batch = batch_for(length)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((batch, HEADS, 1, length, HEAD_DIM)).astype(dtype) for _ in range(3))
    dy = rng.standard_normal(q.shape).astype(dtype)
    scale = 1.0 / np.sqrt(HEAD_DIM)
    engines = {"fused": (fused_step, backends.get(backend)), "unfused": (unfused_step, backends.get("auto"))}
    times = {name: [] for name in engines}
    kept = {}
    grads = {}
    for round_ in range(rounds + 1):  # round 0 is the warm-up (numba compiles there)
        for name, (step, prims) in engines.items():
            start = time.perf_counter()
            grads[name], kept[name] = step(prims, q, k, v, dy, scale)
            if round_:
                times[name].append(time.perf_counter() - start)
    error = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(grads["fused"], grads["unfused"]))
    return {"batch": batch, "fused_ms": 1e3 * statistics.median(times["fused"]),
            "unfused_ms": 1e3 * statistics.median(times["unfused"]), "probs_bytes": kept["unfused"].nbytes,
            "lse_bytes": kept["fused"].nbytes, "max_error": error}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nanollm.tools.attention_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024], help="sequence lengths T")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per length (median)")
    parser.add_argument("--backend", default="numba", choices=[b for b in backends.names() if b != "auto"],
                        help="whose flash_attention primitives to time (the unfused side is always auto)")
    args = parser.parse_args(argv)
    print(f"causal attention forward + backward, float32, H={HEADS} hd={HEAD_DIM}, median of {args.rounds} "
          f"alternating rounds; fused = {args.backend}, unfused = matmul + auto's causal softmax + matmul")
    print(f"{'T':>5} {'B':>3} {'fused ms':>9} {'unfused ms':>10} {'speedup':>7} {'probs kept':>11} {'lse kept':>9} "
          f"{'max rel err':>11}")
    for length in args.lengths:
        r = compare(length, args.rounds, args.backend)
        print(f"{length:>5} {r['batch']:>3} {r['fused_ms']:>9.2f} {r['unfused_ms']:>10.2f} "
              f"{r['unfused_ms'] / r['fused_ms']:>6.2f}x {_size(r['probs_bytes']):>11} {_size(r['lse_bytes']):>9} "
              f"{r['max_error']:>11.1e}")


def _size(nbytes):
    """Bytes as B, KiB or MiB."""
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} B"


if __name__ == "__main__":
    main()
