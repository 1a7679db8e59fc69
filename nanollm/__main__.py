"""`python -m nanollm` / `nanollm`: train a small GPT on the embedded corpus and show it learn.

This is the first-run demo of the core engine: char tokenizer, model, AdamW on random
windows, a loss every few steps, and samples before and after. (The full `nanollm` command
with subcommands, presets and config files replaces it as the CLI lands.)
"""

import argparse
import time

import numpy as np

from nanollm.corpus import synthetic_text
from nanollm.generate import generate_text
from nanollm.model import TransformerLanguageModel
from nanollm.optim import adamw_init, adamw_update
from nanollm.tokenizers import CharTokenizer


def random_windows(data, batch_size, seq_len, rng):
    """(B, T) inputs and (B, T) next-token targets from random windows of the 1-D id array."""
    starts = rng.integers(0, len(data) - seq_len - 1, size=batch_size)
    windows = np.stack([data[s:s + seq_len + 1] for s in starts])  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nanollm", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps (default 600)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")

    text = synthetic_text(200_000, seed=args.seed)
    tokenizer = CharTokenizer().build_vocab(text)
    data = np.array(tokenizer.encode(text), dtype=np.int64)
    model = TransformerLanguageModel(vocab_size=tokenizer.vocab_size, embedding_dim=64, num_layers=2,
                                     num_heads=4, ffn_hidden_dim=256, max_seq_len=64, seed=args.seed)
    print(f"corpus: {len(text):,} characters, vocabulary {tokenizer.vocab_size}; "
          f"model: {model.num_parameters():,} parameters")
    prompt = "Q: What does the cow say? A:"
    print(f"before training: {generate_text(model, tokenizer, prompt, 40, temperature=0)!r}")

    rng = np.random.default_rng(args.seed)
    states = {name: adamw_init(p) for name, p in model.params.items()}
    batch_size, seq_len, lr = 16, 64, 3e-3
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx, targets = random_windows(data, batch_size, seq_len, rng)
        _, loss = model.forward(idx, targets)
        for name, grad in model.backward().items():
            adamw_update(model.params[name], grad, states[name], lr, beta1=0.9, beta2=0.99,
                         weight_decay=0.1 if grad.ndim == 2 else 0.0)
        if step == 1 or step % 50 == 0 or step == args.steps:
            elapsed = time.perf_counter() - start
            print(f"step {step:4d}  loss {float(loss):.4f}  {step * batch_size * seq_len / elapsed:,.0f} tokens/s")
    print(f"after training:  {generate_text(model, tokenizer, prompt, 40, temperature=0)!r}")
    print(generate_text(model, tokenizer, "Ada went to", 200, temperature=0.8, top_k=20, seed=args.seed))


if __name__ == "__main__":
    main()
