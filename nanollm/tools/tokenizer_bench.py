"""How fast the byte-level BPE tokenizer trains, encodes and decodes, how much it compresses, and
how its encoding compares with tiktoken's on the same ranks.

    python -m nanollm.tools.tokenizer_bench [--text FILE] [--vocab-size 8000] [--bytes 1000000]
    python -m nanollm.tools.tokenizer_bench --against tiktoken [--tiktoken-file gpt2.tiktoken] [--text FILE]

Trains a BPETokenizer on the first --bytes bytes of the text, then encodes and decodes the whole
text and checks that decoding gives it back. The default text is Tiny Shakespeare from the shared
data folder beside the checkout when it is there, else the package's synthetic corpus (no download).

--against tiktoken: encodes the text with nanollm and with tiktoken on the same ranks: those of
--tiktoken-file (GPT-2's gpt2.tiktoken, say), else the ranks of the BPE trained here; prints both
speeds (MB/s; nanollm's first encode with an empty chunk cache, then again with it full, tiktoken's
best of three) and whether the ids are identical.
"""

import argparse
import time
from pathlib import Path

from nanollm.corpus import synthetic_text
from nanollm.textfiles import read_text_file
from nanollm.tokenizers import GPT2_REGEX, BPETokenizer

SHAKESPEARE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tinyshakespeare.txt"


def load_text(path, size):
    """(text, description): the file's text, or synthetic text of about ``size`` characters when path is None."""
    if path is not None:
        return read_text_file(path), str(path)
    if SHAKESPEARE.is_file():
        return read_text_file(SHAKESPEARE), str(SHAKESPEARE.resolve())
    print(f"{SHAKESPEARE} is not there: using the synthetic corpus instead")
    return synthetic_text(size), f"nanollm.corpus.synthetic_text({size})"


def _timed(function, repeats=1):
    """(result, best seconds of ``repeats`` calls)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return result, best


def against_tiktoken(text, tok, tiktoken_file):
    """Encode ``text`` with nanollm and tiktoken on the same ranks; print the speeds; True when the ids agree."""
    from nanollm.interop.files import require
    from nanollm.interop.tokenizer_files import load_tiktoken_ranks

    tiktoken = require("tiktoken", "--against tiktoken")
    if tiktoken_file is not None:
        ours = load_tiktoken_ranks(tiktoken_file)
        source = str(tiktoken_file)
    else:  # the trained vocabulary's ranks (rank = id), under tiktoken's rule
        special = set(tok.special_tokens.values())
        ours = BPETokenizer.from_ranks({tok.token_bytes(i): i for i in range(tok.vocab_size) if i not in special},
                                       tok.special_tokens, source="the trained vocabulary")
        source = f"the BPE trained here ({tok.vocab_size:,} tokens)"
    special = set(ours.special_tokens.values())
    ranks = {ours.token_bytes(i): i for i in range(ours.vocab_size) if i not in special}
    encoding = tiktoken.Encoding(name="nanollm-bench", pat_str=GPT2_REGEX, mergeable_ranks=ranks,
                                 special_tokens=dict(ours.special_tokens))
    size = len(text.encode("utf-8"))
    print(f"ranks: {source}: {ours.vocab_size:,} tokens, {len(ours.merges):,} merges derived")
    ids, cold = _timed(lambda: ours.encode(text))
    _, warm = _timed(lambda: ours.encode(text))
    theirs, best = _timed(lambda: encoding.encode(text, allowed_special="all"), repeats=3)
    print(f"nanollm: {len(ids):,} tokens in {cold:.3f} s = {size / cold / 1e6:.2f} MB/s (empty chunk cache), "
          f"{warm:.3f} s = {size / warm / 1e6:.2f} MB/s (cache filled)")
    print(f"tiktoken: {len(theirs):,} tokens in {best:.3f} s = {size / best / 1e6:.2f} MB/s "
          f"({tiktoken.__version__}, best of 3)")
    same = ids == theirs
    if not same:
        first = next((k for k, (a, b) in enumerate(zip(ids, theirs)) if a != b), min(len(ids), len(theirs)))
        print(f"first difference at token {first:,}: nanollm {ids[first:first + 5]}, "
              f"tiktoken {theirs[first:first + 5]}")
    print(f"ids identical: {'yes' if same else 'NO'}")
    return same


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nanollm.tools.tokenizer_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--text", help="UTF-8 text file (default: Tiny Shakespeare, else synthetic text)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary, special tokens included")
    parser.add_argument("--bytes", type=int, default=1_000_000, help="train on the first this many bytes")
    parser.add_argument("--against", choices=["tiktoken"], help="compare encoding with this library")
    parser.add_argument("--tiktoken-file", type=Path, help="with --against tiktoken: a ranks file such as "
                                                            "gpt2.tiktoken (default: the ranks trained here)")
    args = parser.parse_args(argv)

    try:
        text, source = load_text(args.text, args.bytes)
    except ValueError as exc:  # a missing, empty or non-UTF-8 file: one line, not a traceback
        parser.error(str(exc))
    data = text.encode("utf-8")
    print(f"text: {source}: {len(data):,} bytes, {len(text):,} characters")
    tok = None
    if args.against is None or args.tiktoken_file is None:
        training_text = data[:args.bytes].decode("utf-8", "ignore")  # cut at a character boundary
        start = time.perf_counter()
        tok = BPETokenizer(vocab_size=args.vocab_size).build_vocab(training_text)
        train_s = time.perf_counter() - start
        print(f"train: vocab {tok.vocab_size:,} (asked {args.vocab_size:,}; {len(tok.merges):,} merges) on "
              f"{len(training_text.encode('utf-8')):,} bytes in {train_s:.2f} s")
    if args.against == "tiktoken":
        try:
            return 0 if against_tiktoken(text, tok, args.tiktoken_file) else 1
        except ValueError as exc:  # a missing or malformed ranks file, tiktoken not installed
            parser.error(str(exc))

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
