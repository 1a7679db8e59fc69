"""`python -m nanollm` / `nanollm`: train a small GPT on the embedded corpus and show it learn.

This is the first-run demo: char tokenizer, model, train_with_config (AdamW on random windows,
a validation loss every 200 steps), and samples before and after. (The full `nanollm` command
with subcommands, presets and config files replaces it as the CLI lands; `nanollm bench` is
the first subcommand.)
"""

import argparse
import sys

import numpy as np

from nanollm.corpus import synthetic_text
from nanollm.generate import generate_text
from nanollm.model import TransformerLanguageModel
from nanollm.tokenizers import CharTokenizer
from nanollm.train import train_with_config


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from nanollm.bench import main as bench_main

        return bench_main(argv[1:])
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
    results = train_with_config(model, data, {"num_steps": args.steps, "batch_size": 16, "learning_rate": 3e-3,
                                              "log_interval": 50, "eval_interval": 200, "eval_steps": 10,
                                              "seed": args.seed}, tokenizer=tokenizer)
    print(f"validation loss {results['final_val_loss']:.3f}, {results['tokens_per_second']:,.0f} tokens/s")
    print(f"after training:  {generate_text(model, tokenizer, prompt, 40, temperature=0)!r}")
    print(generate_text(model, tokenizer, "Ada went to", 200, temperature=0.8, top_k=20, seed=args.seed))


if __name__ == "__main__":
    main()
