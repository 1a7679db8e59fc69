"""The same Shakespeare-char recipe in PyTorch, for a side-by-side check of examples/shakespeare_char.py.

    pip install torch==2.13.0          # optional: never a dependency of nanollm
    python examples/shakespeare_char_pytorch.py --seed 1
    python examples/shakespeare_char_pytorch.py --nanogpt --eval-every 100 --target 1.88   # time to a val loss

The model is nanollm's GPT-2 (biases, tanh GELU, tied output layer, GPT-2 initialisation) in
plain torch.nn; `--nanogpt` switches to nanoGPT's own choices (no biases, exact GELU). Data,
schedule, AdamW, weight-decay groups, clipping and the evaluation protocols are nanollm's.
"""

import argparse
import math
import sys
import time
from pathlib import Path

try:
    import torch
    from torch import nn

    from nanollm.tools.torch_reference import TorchGPT, adamw_for
except ImportError:
    sys.exit("PyTorch is not installed: pip install torch==2.13.0")

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"
C, L, H, T, B = 128, 4, 4, 64, 12  # nanoGPT's CPU recipe: width, layers, heads, context, batch


def lr_at(step, steps, peak=1e-3, floor=1e-4, warmup=100):
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    progress = (step - warmup) / (steps - warmup)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def windows(data, starts):
    return (torch.stack([data[s:s + T] for s in starts]), torch.stack([data[s + 1:s + T + 1] for s in starts]))


@torch.no_grad()
def whole_split_loss(model, data):
    """Every non-overlapping window once: nanollm's evaluate_loss(..., num_batches=None)."""
    starts, total = list(range(0, len(data) - T, T)), 0.0
    for i in range(0, len(starts), B):
        total += float(model(*windows(data, starts[i:i + B]))) * len(starts[i:i + B])
    return total / len(starts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--nanogpt", action="store_true", help="no biases and exact GELU, as nanoGPT")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="whole-split validation every N steps, against training seconds (evaluation not counted)")
    parser.add_argument("--target", type=float, default=None, help="report the training seconds to this val loss")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        sys.exit(f"no Tiny Shakespeare at {args.data}; pass --data PATH/tinyshakespeare.txt")
    torch.manual_seed(args.seed)
    text = args.data.read_text(encoding="utf-8")
    chars = sorted(set(text))
    char_to_id = {ch: i for i, ch in enumerate(chars)}
    ids = torch.tensor([char_to_id[ch] for ch in text])
    split = int(0.9 * len(ids))
    train, val_ids = ids[:split], ids[split:]
    model = TorchGPT(len(chars), embedding_dim=C, num_layers=L, num_heads=H, max_seq_len=T,
                     bias=not args.nanogpt, gelu="none" if args.nanogpt else "tanh")
    optimizer = adamw_for(model)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    evaluating, reached = 0.0, None  # seconds spent evaluating (not training); training seconds at the target
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps)
        loss = model(*windows(train, torch.randint(len(train) - T, (B,), generator=generator).tolist()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % 500 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps} | loss {loss.item():.4f} | {time.perf_counter() - start:.1f} s",
                  flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0:
            tick = time.perf_counter()
            trained = tick - start - evaluating
            val = whole_split_loss(model, val_ids)
            evaluating += time.perf_counter() - tick
            print(f"eval step {step + 1} | train seconds {trained:.1f} | val {val:.4f}", flush=True)
            if reached is None and args.target is not None and val <= args.target:
                reached = trained
                print(f"reached val {args.target} after {trained:.1f} training seconds (step {step + 1})", flush=True)
    seconds = time.perf_counter() - start - evaluating
    print(f"val loss {whole_split_loss(model, val_ids):.4f} (whole split) after {args.steps} steps; {seconds:.0f} s, "
          f"{args.steps * B * T / seconds:,.0f} tokens/s")


if __name__ == "__main__":
    main()
