"""python -m nanollm.tools.memory_bench: a GPT-2 124M train step on a laptop: tokens/s and peak memory.

    python -m nanollm.tools.memory_bench                       # B=4, T=1024: nanollm as it stores,
                                                               # checkpointed, checkpointed + fused
                                                               # attention; PyTorch eager
    python -m nanollm.tools.memory_bench --batch-sizes 4 8 --engines nanollm-checkpointed torch

Each engine runs in a fresh process (peak resident memory is a per-process figure): it builds
GPT-2 small (124M parameters, vocabulary 50,257, context 1024, float32), takes ``--steps``
AdamW steps on random tokens, and reports the last step's time and the process's peak resident
set (VmHWM), beside the resident set before the model was built (Python and the imports).
PyTorch eager is the same model (nanollm.tools.torch_reference: its default SDPA attention,
AdamW, clipping). Prints what it measured; asserts nothing.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

GPT2_124M = dict(vocab_size=50257, embedding_dim=768, num_layers=12, num_heads=12, ffn_hidden_dim=3072,
                 max_seq_len=1024)
# engine -> the nanollm config keys it sets (torch: PyTorch eager)
NANOLLM_ENGINES = {"nanollm": {},
                   "nanollm-checkpointed": {"activation_checkpointing": True},
                   "nanollm-checkpointed-fused": {"activation_checkpointing": True, "fused_attention": True}}
ENGINES = (*NANOLLM_ENGINES, "torch")


def peak_resident_bytes():
    """This process's peak resident set: /proc's VmHWM on Linux. Not ru_maxrss, which Linux
    carries across fork and exec, so a child started by a big parent reported the parent's size."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024  # kB
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def run_nanollm(batch_size, steps, options, seed=0):
    """Seconds of the last of ``steps`` train steps (train_with_config's loop, AdamW) with the
    config keys in options (activation_checkpointing, fused_attention)."""
    from nanollm import train_with_config
    from nanollm.model_config import build_model

    model = build_model(GPT2_124M, seed=seed)
    tokens = np.random.default_rng(seed).integers(0, GPT2_124M["vocab_size"], 200_000)
    results = train_with_config(model, tokens, {"num_steps": steps, "batch_size": batch_size, "val_fraction": 0.0,
                                                "eval_interval": 0, "log_interval": 1, "seed": seed,
                                                **options})
    last = results["history"][-1]
    return batch_size * GPT2_124M["max_seq_len"] / last["tokens_per_second"]


def run_torch(batch_size, steps, seed=0):
    import torch

    from nanollm.tools.torch_reference import TorchGPT, adamw_for

    torch.manual_seed(seed)
    c = GPT2_124M
    model = TorchGPT(c["vocab_size"], embedding_dim=c["embedding_dim"], num_layers=c["num_layers"],
                     num_heads=c["num_heads"], ffn_hidden_dim=c["ffn_hidden_dim"], max_seq_len=c["max_seq_len"])
    optimizer = adamw_for(model)
    generator = torch.Generator().manual_seed(seed)
    seconds = None
    for _ in range(steps):
        idx = torch.randint(c["vocab_size"], (batch_size, c["max_seq_len"]), generator=generator)
        targets = torch.randint(c["vocab_size"], (batch_size, c["max_seq_len"]), generator=generator)
        tick = time.perf_counter()
        loss = model(idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        seconds = time.perf_counter() - tick
    return seconds


def measure(engine, batch_size, steps):
    """One engine in this process: {engine, batch_size, seconds_per_step, tokens_per_second, ...}."""
    before = peak_resident_bytes()
    if engine == "torch":
        seconds = run_torch(batch_size, steps)
    else:
        seconds = run_nanollm(batch_size, steps, NANOLLM_ENGINES[engine])
    tokens = batch_size * GPT2_124M["max_seq_len"]
    return {"engine": engine, "batch_size": batch_size, "seq_len": GPT2_124M["max_seq_len"], "steps": steps,
            "seconds_per_step": seconds, "tokens_per_second": tokens / seconds,
            "peak_resident_bytes": peak_resident_bytes(), "resident_before_model_bytes": before}


def measure_in_subprocess(engine, batch_size, steps):
    command = [sys.executable, "-m", "nanollm.tools.memory_bench", "--child", engine, str(batch_size), str(steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {"engine": engine, "batch_size": batch_size, "error": lines[-1] if lines else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def gib(n):
    return f"{n / 2**30:.2f} GiB"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--steps", type=int, default=2, help="train steps per engine; the last one is timed")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "BATCH", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        engine, batch_size, steps = args.child
        print(json.dumps(measure(engine, int(batch_size), int(steps))))
        return 0
    print(f"GPT-2 124M train step, T={GPT2_124M['max_seq_len']}, float32, AdamW; each engine in a fresh process")
    rows = []
    for batch_size in args.batch_sizes:
        for engine in args.engines:
            row = measure_in_subprocess(engine, batch_size, args.steps)
            rows.append(row)
            if "error" in row:
                print(f"B={batch_size:<2} {engine:<26} failed: {row['error']}")
                continue
            print(f"B={batch_size:<2} {engine:<26} {row['seconds_per_step']:7.1f} s/step "
                  f"{row['tokens_per_second']:8.0f} tokens/s  peak resident {gib(row['peak_resident_bytes'])} "
                  f"(before the model {gib(row['resident_before_model_bytes'])})", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
