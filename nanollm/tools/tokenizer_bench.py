"""How fast the byte-level BPE tokenizer trains, encodes and decodes, and how much it compresses.

    python -m nanollm.tools.tokenizer_bench [--text FILE] [--vocab-size 8000] [--bytes 1000000]

Trains a BPETokenizer on the first --bytes bytes of the text, then encodes and decodes the whole
text and checks that decoding gives it back. The default text is Tiny Shakespeare from the shared
data folder beside the checkout when it is there, else the package's synthetic corpus (no download).
"""

import argparse
import time
from pathlib import Path

from nanollm.corpus import synthetic_text
from nanollm.textfiles import read_text_file
from nanollm.tokenizers import BPETokenizer

SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"


def load_text(path, size):
    """(text, description): the file's text, or synthetic text of about ``size`` characters when path is None."""
    if path is not None:
        return read_text_file(path), str(path)
    if SHAKESPEARE.is_file():
        return read_text_file(SHAKESPEARE), str(SHAKESPEARE.resolve())
    print(f"{SHAKESPEARE} is not there: using the synthetic corpus instead")
    return synthetic_text(size), f"nanollm.corpus.synthetic_text({size})"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nanollm.tools.tokenizer_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--text", help="UTF-8 text file (default: Tiny Shakespeare, else synthetic text)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary, special tokens included")
    parser.add_argument("--bytes", type=int, default=1_000_000, help="train on the first this many bytes")
    args = parser.parse_args(argv)

    try:
        text, source = load_text(args.text, args.bytes)
    except ValueError as exc:  # a missing, empty or non-UTF-8 file: one line, not a traceback
        parser.error(str(exc))
    data = text.encode("utf-8")
    training_text = data[:args.bytes].decode("utf-8", "ignore")  # cut at a character boundary
    print(f"text: {source}: {len(data):,} bytes, {len(text):,} characters")

    start = time.perf_counter()
    tok = BPETokenizer(vocab_size=args.vocab_size).build_vocab(training_text)
    train_s = time.perf_counter() - start
    print(f"train: vocab {tok.vocab_size:,} (asked {args.vocab_size:,}; {len(tok.merges):,} merges) on "
          f"{len(training_text.encode('utf-8')):,} bytes in {train_s:.2f} s")

    start = time.perf_counter()
    ids = tok.encode(text)
    encode_s = time.perf_counter() - start
    print(f"encode: {len(ids):,} tokens in {encode_s:.2f} s = {len(data) / encode_s / 1e6:.2f} MB/s; "
          f"{len(ids) / len(data):.3f} tokens per byte ({len(data) / len(ids):.2f} bytes per token)")

    start = time.perf_counter()
    decoded = tok.decode(ids)
    decode_s = time.perf_counter() - start
    print(f"decode: {decode_s:.3f} s = {len(data) / decode_s / 1e6:.1f} MB/s")
    ok = decoded == text
    print(f"round trip decode(encode(text)) == text: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
