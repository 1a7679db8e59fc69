"""python -m nanollm.tools.gpu_bench: nanollm's train step on an NVIDIA GPU beside PyTorch eager's.

    python -m nanollm.tools.gpu_bench                        # nanoGPT's GPU recipe, float32 / bfloat16 / float16
    python -m nanollm.tools.gpu_bench --dtypes bfloat16 --steps 50 --json gpu.json

One run, one GPU, side by side: nanollm with backend cupy (train_with_config's own loop, which
reads the device only at its first and last step) and the same model in PyTorch eager (the
AdamW, clipping and decay groups of nanollm.tools.torch_reference; torch.autocast for the half
dtypes, with a GradScaler for float16). The model is nanoGPT's Shakespeare-char GPU recipe: 6
layers, 6 heads, 384 channels, context 256, batch 64, 65 characters, and no dropout on either
side so that the two compute the same thing. Printed: ms per step, tokens/s, and nanollm's
share of PyTorch's tokens/s.

``--backend numpy --device cpu --config tiny`` runs the same code on the CPU in seconds: a
smoke test of the benchmark itself, not a measurement.
"""

import argparse
import contextlib
import io
import json
import sys
import time

import numpy as np

from nanollm import backends
from nanollm.tools.bench import PYTORCH_HINT, bench_model, model_settings, print_table
from nanollm.train import train_with_config

CONFIGS = {
    "nanogpt-gpu": {"vocab_size": 65, "embedding_dim": 384, "num_layers": 6, "num_heads": 6, "ffn_hidden_dim": 1536,
                    "max_seq_len": 256, "batch_size": 64},
    "tiny": {"vocab_size": 65, "embedding_dim": 32, "num_layers": 2, "num_heads": 2, "ffn_hidden_dim": 128,
             "max_seq_len": 16, "batch_size": 4},
}
DTYPES = ("float32", "bfloat16", "float16")


def nanollm_timing(cfg, dtype, steps, warmup):
    """Tokens/s of train_with_config on the current backend: a warm-up run first (CuPy compiles
    its kernels at their first call), then ``steps`` timed steps."""
    tokens = np.random.default_rng(0).integers(0, cfg["vocab_size"], size=200_000)
    run = {"batch_size": cfg["batch_size"], "val_fraction": 0.0, "eval_interval": 0, "log_interval": 0,
           "dtype": dtype, "seed": 0, "learning_rate": 1e-3, "max_grad_norm": 1.0, "weight_decay": 0.1,
           "betas": (0.9, 0.99)}
    model = bench_model(cfg)
    with contextlib.redirect_stdout(io.StringIO()):
        train_with_config(model, tokens, {**run, "num_steps": warmup})
        results = train_with_config(model, tokens, {**run, "num_steps": steps})
    seconds = cfg["batch_size"] * cfg["max_seq_len"] / results["tokens_per_second"]
    return {"ms_per_step": 1e3 * seconds, "tokens_per_second": results["tokens_per_second"],
            "final_loss": results["final_loss"]}


def torch_timing(cfg, dtype, steps, warmup, device):
    """Tokens/s of the same model and update in PyTorch eager on ``device``; None without torch."""
    try:
        import torch

        from nanollm.tools.torch_reference import TorchGPT, adamw_for
    except ImportError:
        return None
    torch.manual_seed(0)
    model = TorchGPT(**model_settings(cfg)).to(device)
    optimizer = adamw_for(model)
    half = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == "float16")
    data = torch.randint(0, cfg["vocab_size"], (200_000,), device=device)
    b, t = cfg["batch_size"], cfg["max_seq_len"]

    def step():
        starts = torch.randint(len(data) - t - 1, (b, 1), device=device) + torch.arange(t, device=device)
        with torch.autocast(device.split(":")[0], dtype=half, enabled=half is not None):
            loss = model(data[starts], data[starts + 1])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()

    def synchronize():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {"ms_per_step": 1e3 * seconds, "tokens_per_second": b * t / seconds}


def describe_device(device):
    if device.startswith("cuda"):
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return f"{props['name'].decode()}, CuPy {cupy.__version__}"
    return f"CPU ({device}), NumPy {np.__version__}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nanollm.tools.gpu_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="nanogpt-gpu", choices=list(CONFIGS))
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated, from " + ", ".join(DTYPES))
    parser.add_argument("--steps", type=int, default=30, help="timed steps per side and dtype")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--backend", default="cupy", help="nanollm's backend (numpy with --device cpu: a smoke test)")
    parser.add_argument("--device", default="cuda", help="PyTorch's device")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or args.steps < 1:
        parser.error(f"--dtypes takes {', '.join(DTYPES)} (got {', '.join(unknown)})" if unknown
                     else "--steps must be at least 1")
    try:
        backends.use(args.backend)
    except ValueError as exc:
        sys.exit(f"nanollm.tools.gpu_bench: {exc}")
    cfg = CONFIGS[args.config]
    print(f"{args.config}: {describe_device(args.device)}; " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    rows, figures = [], {"config": args.config, "model": cfg, "steps": args.steps, "results": {}}
    for dtype in dtypes:
        ours = nanollm_timing(cfg, dtype, args.steps, args.warmup)
        theirs = None if args.no_torch else torch_timing(cfg, dtype, args.steps, args.warmup, args.device)
        ratio = ours["tokens_per_second"] / theirs["tokens_per_second"] if theirs else None
        figures["results"][dtype] = {"nanollm": ours, "pytorch": theirs, "ratio": ratio}
        rows.append([dtype, f"{ours['ms_per_step']:.1f}", f"{ours['tokens_per_second']:,.0f}",
                     f"{theirs['ms_per_step']:.1f}" if theirs else "-",
                     f"{theirs['tokens_per_second']:,.0f}" if theirs else ("-" if args.no_torch else PYTORCH_HINT),
                     f"{ratio:.2f}x" if ratio else "-"])
    print_table(["dtype", "nanollm ms", "nanollm tok/s", "PyTorch ms", "PyTorch tok/s", "nanollm / PyTorch"], rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
    return figures


if __name__ == "__main__":
    main()
