"""The same Shakespeare-char recipe in PyTorch, for a side-by-side check of examples/shakespeare_char.py.

    pip install torch==2.13.0          # optional: never a dependency of nanollm
    python examples/shakespeare_char_pytorch.py --seed 1

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
    import torch.nn.functional as F
    from torch import nn
except ImportError:
    sys.exit("PyTorch is not installed: pip install torch==2.13.0")

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"
C, L, H, T, B = 128, 4, 4, 64, 12  # nanoGPT's CPU recipe: width, layers, heads, context, batch


class Block(nn.Module):
    def __init__(self, bias, gelu):
        super().__init__()
        self.gelu = gelu
        self.ln1, self.ln2 = nn.LayerNorm(C, bias=bias), nn.LayerNorm(C, bias=bias)
        self.qkv, self.proj = nn.Linear(C, 3 * C, bias=bias), nn.Linear(C, C, bias=bias)
        self.fc, self.fc_proj = nn.Linear(C, 4 * C, bias=bias), nn.Linear(4 * C, C, bias=bias)

    def forward(self, x):  # x: (B, T, C)
        b, t, c = x.shape
        q, k, v = (z.view(b, t, H, c // H).transpose(1, 2) for z in self.qkv(self.ln1(x)).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate=self.gelu))


class GPT(nn.Module):
    def __init__(self, vocab_size, bias, gelu):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block(bias, gelu) for _ in range(L))
        self.ln_f = nn.LayerNorm(C, bias=bias)
        for name, p in self.named_parameters():  # GPT-2: N(0, 0.02), residual projections / sqrt(2 L)
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):  # idx, targets: (B, T)
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


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
    args = parser.parse_args(argv)
    if not args.data.is_file():
        sys.exit(f"no Tiny Shakespeare at {args.data}; pass --data PATH/tinyshakespeare.txt")
    torch.manual_seed(args.seed)
    text = args.data.read_text(encoding="utf-8")
    chars = sorted(set(text))
    char_to_id = {ch: i for i, ch in enumerate(chars)}
    ids = torch.tensor([char_to_id[ch] for ch in text])
    split = int(0.9 * len(ids))
    train, val = ids[:split], ids[split:]
    model = GPT(len(chars), bias=not args.nanogpt, gelu="none" if args.nanogpt else "tanh")
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    spared = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.1}, {"params": spared, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
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
    seconds = time.perf_counter() - start
    print(f"val loss {whole_split_loss(model, val):.4f} (whole split) after {args.steps} steps; {seconds:.0f} s, "
          f"{args.steps * B * T / seconds:,.0f} tokens/s")


if __name__ == "__main__":
    main()
