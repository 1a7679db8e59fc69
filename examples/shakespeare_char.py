"""nanoGPT's Shakespeare-char recipe on nanollm: char tokenizer, 90/10 split, train, report.

    python examples/shakespeare_char.py                      # the CPU recipe, 2000 steps
    python examples/shakespeare_char.py --steps 200 --checkpoint-dir checkpoints/shakespeare

The recipe is the `shakespeare-cpu` preset (4 layers, 4 heads, 128 dims, context 64, batch 12,
lr 1e-3 -> 1e-4 cosine, 100 warmup, AdamW betas 0.9/0.99, weight decay 0.1, clip 1.0, no
dropout). nanoGPT reaches a validation loss of about 1.88 with it after 2000 steps. The text is
not shipped with nanollm: pass --data, or run from a checkout with ../shared/data beside it.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from nanollm import CharTokenizer, TransformerLanguageModel, generate_text, train_with_config
from nanollm.config import PRESETS

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="path of tinyshakespeare.txt")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-steps", type=int, default=None,
                        help="validation batches per evaluation (default: the whole validation split)")
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--results", type=Path, default=None, help="write the results (no history) as JSON here")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args(argv)
    if not args.data.is_file():
        sys.exit(f"no Tiny Shakespeare at {args.data}; pass --data PATH/tinyshakespeare.txt")

    text = args.data.read_text(encoding="utf-8")
    tokenizer = CharTokenizer().build_vocab(text)
    ids = np.array(tokenizer.encode(text), dtype=np.uint16)
    split = int(0.9 * len(ids))
    recipe = PRESETS["shakespeare-cpu"]
    model = TransformerLanguageModel(
        vocab_size=tokenizer.vocab_size, embedding_dim=recipe["embedding_dim"], num_layers=recipe["num_layers"],
        num_heads=recipe["num_heads"], ffn_hidden_dim=recipe["ffn_hidden_dim"], max_seq_len=recipe["max_seq_len"],
        seed=args.seed)
    print(f"{len(text):,} characters, vocabulary {tokenizer.vocab_size}, train {split:,} / val {len(ids) - split:,} "
          f"tokens; model {model.num_parameters():,} parameters")
    results = train_with_config(model, ids[:split], {"num_steps": args.steps, "eval_steps": args.eval_steps,
                                                     "log_interval": 100, "seed": args.seed,
                                                     "checkpoint_dir": args.checkpoint_dir},
                                val_tokens=ids[split:], tokenizer=tokenizer, preset="shakespeare-cpu")
    print(f"val loss {results['final_val_loss']:.4f} (best {results['best_val_loss']:.4f}) after {results['steps']} "
          f"steps; {results['training_time_seconds']:.0f} s, {results['tokens_per_second']:,.0f} tokens/s")
    print(generate_text(model, tokenizer, "ROMEO:", 300, temperature=0.8, top_k=40, seed=args.seed))
    if args.results:
        summary = {k: v for k, v in results.items() if k != "history"}
        args.results.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
