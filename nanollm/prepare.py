"""``prepare``: a text file or instruction JSONL -> what training reads, offline and once; and
``load_prepared``, which opens such a folder again.

    prepare("input.txt", "prepared/run", tokenizer="bpe", vocab_size=4096)
    data = load_prepared("prepared/run")     # {"train", "val", "tokenizer", "meta"}

The folder holds train.bin and val.bin (llm.c's token files, see ``nanollm.tokenfile``), their
loss masks train_mask.bin and val_mask.bin for instruction data, tokenizer.json and meta.json.
Text is read and encoded in pieces, so its size is not bounded by memory, and every file is
written to a staging folder first: an earlier run's files are replaced only once all are written.

Before anything is written, one pass counts the data's quality (``nanollm.data_quality``:
unique lines, repeats, characters, validation lines seen in training); ``min_unique`` refuses
mostly-duplicate data then, and the figures go into meta.json under "quality". That pass also
collects the character vocabulary, so a char tokenizer costs no pass of its own.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np

from nanollm.data import TokenDataset
from nanollm.data_quality import TextQuality, add_token_figures, check_min_unique
from nanollm.instruct import CHAT_SPECIAL_TOKENS, END_OF_TEXT, encode_conversation, read_instructions, render_text
from nanollm.textfiles import CHUNK_BYTES, iter_text_chunks, write_json_atomically
from nanollm.tokenfile import FORMATS, MASK_FORMAT, TokenFileWriter, token_format
from nanollm.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer

PREPARED_FILES = ("train.bin", "train_mask.bin", "val.bin", "val_mask.bin", "tokenizer.json", "meta.json")
BPE_TRAIN_BYTES = 10_000_000  # a BPE vocabulary is learned from at most this much of the text
PREPARED_FORMAT_VERSION = 1


def _out_folder(out_dir, overwrite):
    """out_dir, checked but not created: refuse to replace prepared files already there unless overwrite."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"out_dir {str(folder)!r} is a file, not a folder; choose another out_dir")
    existing = [name for name in PREPARED_FILES if (folder / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"{str(folder)!r} already holds prepared data ({', '.join(existing)}); choose another "
                         "out_dir or pass overwrite=True (--overwrite) to replace it")
    return folder


def _publish(staging, folder):
    """Move every prepared file from staging into folder (only now are earlier ones replaced;
    one of ours the new run did not write, such as an old mask file, is removed)."""
    for name in PREPARED_FILES:
        if (staging / name).exists():
            os.replace(staging / name, folder / name)
        elif (folder / name).exists():
            (folder / name).unlink()
    staging.rmdir()


def _make_tokenizer(tokenizer, text_for_vocab, vocab_size, min_frequency, special_tokens):
    """The tokenizer to encode with: an object as given, a saved one loaded from its path (a file
    or a folder, in any form load_tokenizer reads), or a new "char"/"bpe" one built from
    ``text_for_vocab()`` (a function: only called when needed)."""
    if not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    if tokenizer == "char":
        return CharTokenizer(sorted(set(text_for_vocab())), special_tokens=special_tokens)
    if tokenizer == "bpe":
        return BPETokenizer(vocab_size=vocab_size, min_frequency=min_frequency,
                            special_tokens=special_tokens).build_vocab(text=text_for_vocab())
    _check_tokenizer_spec(tokenizer)
    return load_tokenizer(tokenizer)  # a file or a folder, in any form nanollm reads


def _check_tokenizer_spec(tokenizer):
    """A tokenizer named by a string must be char, bpe or an existing path (checked before the
    data is read, so a typo fails at once)."""
    if isinstance(tokenizer, (str, os.PathLike)) and tokenizer not in ("char", "bpe") and not Path(tokenizer).exists():
        raise ValueError(f"tokenizer={str(tokenizer)!r} is neither 'char', 'bpe' nor a saved tokenizer.json (nor "
                         "another tokenizer file or folder that load_tokenizer reads: a Hugging Face tokenizer.json, "
                         "vocab.json + merges.txt, a .tiktoken ranks file)")


def _encode(tokenizer, text, source, allow_special):
    """tokenizer.encode with the input file named in its error (a character a given vocabulary lacks)."""
    try:
        return tokenizer.encode(text, allow_special=allow_special)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def _text_pieces(path, val_start, chunk_bytes):
    """(piece, cut) for each piece of the file (pieces end at line ends): the first ``cut``
    characters of the piece come before byte ``val_start``, the training text."""
    offset = 0
    for piece in iter_text_chunks(path, chunk_bytes):
        raw = piece.encode("utf-8")
        yield piece, len(raw[:max(0, val_start - offset)].decode("utf-8", errors="ignore"))
        offset += len(raw)


def _scan_text(path, val_start, chunk_bytes):
    """The quality pass over a text file: (its TextQuality, whether it uses <|endoftext|>). The
    end token has no line end, so no piece splits it."""
    quality, uses_end_token = TextQuality("line"), False
    for piece, cut in _text_pieces(path, val_start, chunk_bytes):
        quality.add(piece, cut)
        uses_end_token = uses_end_token or END_OF_TEXT in piece
    return quality, uses_end_token


def _bpe_training_text(path, val_start, val_fraction):
    """The start of the training text (before byte val_start), at most BPE_TRAIN_BYTES of it."""
    limit = min(val_start, BPE_TRAIN_BYTES)
    taken, total = [], 0
    for piece in iter_text_chunks(path):
        taken.append(piece)
        total += len(piece.encode("utf-8"))
        if total >= limit:
            break
    text = "".join(taken).encode("utf-8")[:limit].decode("utf-8", errors="ignore")
    if not text:
        raise _no_training_text(path, val_fraction)
    return text


def _text_tokenizer(path, scan, tokenizer, vocab_size, min_frequency, val_start, val_fraction):
    """The tokenizer for a text file. "char": every character the quality pass saw, with
    <|endoftext|> a special token only when the text uses it (so Tiny Shakespeare keeps nanoGPT's
    65 characters); BPE always has <|endoftext|>, as GPT-2."""
    quality, uses_end_token = scan
    if tokenizer == "char":
        return CharTokenizer(quality.characters(), special_tokens=(END_OF_TEXT,) if uses_end_token else ())
    return _make_tokenizer(tokenizer, lambda: _bpe_training_text(path, val_start, val_fraction), vocab_size,
                           min_frequency, (END_OF_TEXT,))


def _prepare_text(path, folder, tok, val_start, val_fraction, chunk_bytes):
    """Stream a text file into train.bin / val.bin: the last val_fraction of its bytes (cut
    at a character) is validation. Returns (train count, val count)."""
    file_format = token_format(tok.vocab_size)
    with TokenFileWriter(folder / "train.bin", file_format) as train, \
            TokenFileWriter(folder / "val.bin", file_format) as val:
        for piece, cut in _text_pieces(path, val_start, chunk_bytes):
            if cut:
                train.write(np.asarray(_encode(tok, piece[:cut], path, True), dtype=np.int64))
            if cut < len(piece):
                val.write(np.asarray(_encode(tok, piece[cut:], path, True), dtype=np.int64))
        if train.count == 0:
            raise _no_training_text(path, val_fraction)
    return train.count, val.count


def _no_training_text(path, val_fraction):
    return ValueError(f"{str(path)!r} leaves no training text: validation takes its last {val_fraction:.0%}; give "
                      "more text or lower val_fraction")


def _num_val_records(count, val_fraction):
    """Validation conversations: the last val_fraction of them, at least one when there are two or more."""
    num_val = round(count * val_fraction)
    return 1 if val_fraction > 0 and num_val == 0 and count > 1 else num_val


def _scan_instructions(conversations, val_fraction):
    """The quality pass over instruction data: one record per conversation, compared by its text
    in the chat template."""
    quality = TextQuality("record")
    quality.add_records([render_text(c) for c in conversations], _num_val_records(len(conversations), val_fraction))
    return quality


def _prepare_instructions(path, folder, conversations, tokenizer, vocab_size, min_frequency, val_fraction):
    """Conversations into train/val token and mask files: the last val_fraction of them are
    validation. Returns (tokenizer, train count, val count)."""
    tok = _make_tokenizer(tokenizer, lambda: "".join(render_text(c) for c in conversations), vocab_size,
                          min_frequency, CHAT_SPECIAL_TOKENS)
    num_val = _num_val_records(len(conversations), val_fraction)
    file_format = token_format(tok.vocab_size)
    counts = []
    for split, part in (("train", conversations[:len(conversations) - num_val]),
                        ("val", conversations[len(conversations) - num_val:])):
        with TokenFileWriter(folder / f"{split}.bin", file_format) as ids_file, \
                TokenFileWriter(folder / f"{split}_mask.bin", MASK_FORMAT) as mask_file:
            for conversation in part:
                try:
                    ids, mask = encode_conversation(tok, conversation)
                except ValueError as exc:
                    raise ValueError(f"{path}: {exc}") from None
                ids_file.write(ids)
                mask_file.write(mask)
        counts.append(ids_file.count)
    return tok, counts[0], counts[1]


def prepare(input_path, out_dir, tokenizer="char", vocab_size=4096, min_frequency=2, val_fraction=0.1,
            instruction_format=None, overwrite=False, chunk_bytes=None, min_unique=None, report=None):
    """Turn a text file (or instruction JSONL) into what training reads: out_dir/train.bin,
    val.bin (+ train_mask.bin, val_mask.bin for instruction data), tokenizer.json, meta.json.

    tokenizer: "char", "bpe" (learned with vocab_size and min_frequency), a tokenizer object, or
    the path of a saved tokenizer (to encode fine-tuning data with a pretrained model's): any file
    or folder ``load_tokenizer`` reads (nanollm's tokenizer.json, a Hugging Face tokenizer.json,
    GPT-2's vocab.json + merges.txt, a tiktoken ranks file, or a folder holding one).
    instruction_format: None (plain text; a .jsonl input means "auto"), "auto", "alpaca" or
    "sharegpt". Text is read and encoded in pieces, so its size is not bounded by memory.
    min_unique: refuse (ValueError, nothing written) data whose distinct non-empty lines (records
    for instruction data) are fewer than this fraction of them. report: called with the quality
    figures once they are counted, before anything is written or refused (the CLI prints them).
    Returns meta.json's content; its "quality" holds the figures (``nanollm.data_quality``)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if min_unique is not None and not 0.0 <= min_unique <= 1.0:
        raise ValueError(f"min_unique must be a fraction in [0, 1], got {min_unique}; e.g. 0.5 refuses data whose "
                         "non-empty lines are mostly repeats")
    path = Path(input_path)
    if not path.is_file():
        raise ValueError(f"input file {str(path)!r} does not exist; give the path of a UTF-8 text or JSONL file")
    if instruction_format is None and path.suffix == ".jsonl":
        instruction_format = "auto"
    _check_tokenizer_spec(tokenizer)
    folder = _out_folder(out_dir, overwrite)
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    if instruction_format is None:
        size = path.stat().st_size
        val_start = size - int(size * val_fraction)  # a byte offset
        scan = _scan_text(path, val_start, chunk_bytes)
        figures = scan[0].figures()
    else:
        conversations, instruction_format = read_instructions(path, instruction_format)
        figures = _scan_instructions(conversations, val_fraction).figures()
    if report is not None:
        report(figures)
    check_min_unique(figures, min_unique, path)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".prepare.{os.getpid()}"  # nothing in folder changes until all is written
    staging.mkdir(exist_ok=True)
    try:
        if instruction_format is None:
            tok = _text_tokenizer(path, scan, tokenizer, vocab_size, min_frequency, val_start, val_fraction)
            num_train, num_val = _prepare_text(path, staging, tok, val_start, val_fraction, chunk_bytes)
        else:
            tok, num_train, num_val = _prepare_instructions(path, staging, conversations, tokenizer, vocab_size,
                                                            min_frequency, val_fraction)
        add_token_figures(figures, tok.vocab_size, num_train + num_val)
        tok.save(staging / "tokenizer.json")
        meta = _meta(path, tok, instruction_format, num_train, num_val, val_fraction, figures)
        write_json_atomically(staging / "meta.json", meta, indent=2)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _publish(staging, folder)
    return meta


def _meta(path, tok, instruction_format, num_train, num_val, val_fraction, quality):
    from nanollm import __version__

    return {"format": "nanollm-prepared", "format_version": PREPARED_FORMAT_VERSION, "source": str(path),
            "source_bytes": path.stat().st_size, "instruction_format": instruction_format,
            "tokenizer": tok.kind, "vocab_size": tok.vocab_size, "token_dtype": FORMATS[token_format(tok.vocab_size)].name,
            "train_tokens": num_train, "val_tokens": num_val, "val_fraction": val_fraction,
            "nanollm_version": __version__, "quality": quality}


def load_prepared(folder):
    """What ``prepare`` wrote: {"train": TokenDataset, "val": TokenDataset or None,
    "tokenizer": ..., "meta": dict}; the datasets are memmapped, not read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"prepared data folder {str(folder)!r} does not exist; write it with "
                         "nanollm.prepare.prepare(text_file, folder)")
    for name in ("meta.json", "tokenizer.json", "train.bin"):
        if not (folder / name).is_file():
            raise ValueError(f"{str(folder)!r} has no {name}: it is not a prepared data folder; write it with "
                             "nanollm.prepare.prepare(text_file, folder)")
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{folder / 'meta.json'} is not valid JSON ({exc}); prepare the data again") from None
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    if meta.get("vocab_size") != tokenizer.vocab_size:
        raise ValueError(f"{folder / 'tokenizer.json'} has {tokenizer.vocab_size} tokens but meta.json says "
                         f"{meta.get('vocab_size')}: the files come from different runs of prepare; prepare again")

    def dataset(split):
        mask = folder / f"{split}_mask.bin"
        data = TokenDataset.from_file(folder / f"{split}.bin", mask if mask.is_file() else None)
        return data.check_vocab(tokenizer.vocab_size)

    val = dataset("val") if (folder / "val.bin").is_file() else None
    return {"train": dataset("train"), "val": val if val is not None and len(val) else None,
            "tokenizer": tokenizer, "meta": meta}
