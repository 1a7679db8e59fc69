"""Prepare Tiny Shakespeare as token files: nanoGPT's data/shakespeare_char (or a BPE version).

    python data/prepare_shakespeare.py                          # char tokenizer -> data/shakespeare_char/
    python data/prepare_shakespeare.py --tokenizer bpe --vocab-size 4096   # -> data/shakespeare_bpe/

The text is not shipped with nanollm: pass --text, or run from a checkout with ../shared/data
beside it. Writes train.bin / val.bin (the last 10% is validation), tokenizer.json, meta.json;
train on them with nanollm.prepare.load_prepared(folder).
"""

import argparse
import sys
import time
from pathlib import Path

from nanollm.prepare import prepare

DATA = Path(__file__).resolve().parent
DEFAULT_TEXT = DATA.parent / ".." / "shared" / "data" / "tinyshakespeare.txt"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="path of tinyshakespeare.txt")
    parser.add_argument("--tokenizer", choices=("char", "bpe"), default="char")
    parser.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary (special tokens included)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default data/shakespeare_TOKENIZER)")
    parser.add_argument("--overwrite", action="store_true", help="replace prepared files already in --out")
    args = parser.parse_args(argv)
    if not args.text.is_file():
        sys.exit(f"no Tiny Shakespeare at {args.text}; pass --text PATH/tinyshakespeare.txt")
    out = args.out or DATA / f"shakespeare_{args.tokenizer}"
    start = time.perf_counter()
    try:
        meta = prepare(args.text, out, tokenizer=args.tokenizer, vocab_size=args.vocab_size, val_fraction=0.1,
                       overwrite=args.overwrite)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    print(f"wrote {out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens "
          f"({meta['token_dtype']}), vocabulary {meta['vocab_size']:,} ({meta['tokenizer']}), "
          f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
