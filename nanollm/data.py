"""Token ids -> training batches: datasets, the train/validation split, random windows, epochs;
and ``prepare``, which turns a text or instruction file into token files.

A window is seq_len + 1 consecutive tokens: its first seq_len are the inputs, its last
seq_len the next-token targets. Two ways to pick windows:

    random windows  every step draws fresh start offsets (nanoGPT's get_batch)
    epochs          the data cut into non-overlapping windows, shuffled once per epoch

The epoch order is a pure function of (seed, epoch), so a resumed run finds its place in the
data from the step number alone.

A ``TokenDataset`` is one stream of ids (a list, an array, or a memmapped .bin file that is
never loaded whole) with an optional loss mask: where the mask is 0 the target is replaced by
the cross-entropy's ignore_index, so instruction prompts teach the model nothing.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np

from nanollm.instruct import CHAT_SPECIAL_TOKENS, END_OF_TEXT, encode_conversation, read_instructions, render_text
from nanollm.ops.cross_entropy import IGNORE_INDEX
from nanollm.textfiles import CHUNK_BYTES, iter_text_chunks, write_json_atomically
from nanollm.tokenfile import FORMATS, MASK_FORMAT, TokenFileWriter, read_token_file, token_format
from nanollm.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer

CHECK_CHUNK = 1 << 24  # ids checked per piece, so a memmapped file is scanned, not loaded


def as_token_array(tokens, vocab_size=None, name="tokens"):
    """A 1-D integer array of ids in [0, vocab_size) (np.memmap stays memmapped), or a
    ValueError that names the problem: wrong shape, non-integers, or an id the model lacks.
    Without vocab_size the ids are not scanned (a memmapped file stays unread)."""
    if isinstance(tokens, (list, tuple)):
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in tokens):
            raise ValueError(f"{name} must be a list of integer token ids; encode text with a tokenizer first")
        tokens = np.asarray(tokens, dtype=np.int64)
    if not isinstance(tokens, np.ndarray):
        raise ValueError(f"{name} must be a 1-D array or list of token ids, got {type(tokens).__name__}")
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one long stream of ids), got shape {tokens.shape}; "
                         f"flatten it with {name}.reshape(-1)")
    if tokens.size and vocab_size is not None:
        _check_range(_id_range(tokens), vocab_size, name)
    return tokens


def _check_range(id_range, vocab_size, name):
    low, high = id_range
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds token id {bad} outside the model's vocabulary [0, {vocab_size}); "
                         f"build the model with the tokenizer's vocab_size")


def _id_range(tokens):
    """(min, max) of a non-empty 1-D array, scanned in pieces."""
    pieces = [tokens[i:i + CHECK_CHUNK] for i in range(0, tokens.size, CHECK_CHUNK)]
    return min(int(p.min()) for p in pieces), max(int(p.max()) for p in pieces)


def split_train_val(tokens, val_fraction):
    """The first (1 - val_fraction) of the stream for training, the rest for validation."""
    num_val = int(len(tokens) * val_fraction)
    return tokens[:len(tokens) - num_val], tokens[len(tokens) - num_val:]


def require_windows(tokens, seq_len, name, fix):
    """A stream must hold at least one window of seq_len + 1 tokens."""
    if len(tokens) < seq_len + 1:
        raise ValueError(f"{name} has {len(tokens)} tokens, fewer than one window of max_seq_len + 1 = "
                         f"{seq_len + 1}; {fix}")


def windows_at(tokens, starts, seq_len, loss_mask=None):
    """Inputs (B, T) and targets (B, T) as int64 from the windows starting at ``starts`` (B,);
    with a loss mask, the targets it marks 0 are IGNORE_INDEX."""
    offsets = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(seq_len + 1)  # (B, T + 1)
    windows = np.asarray(tokens[offsets], dtype=np.int64)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    if loss_mask is not None:
        targets = np.where(loss_mask[offsets[:, 1:]] != 0, targets, IGNORE_INDEX)
    return inputs, targets


def random_starts(rng, num_tokens, seq_len, count):
    """``count`` uniformly drawn window starts in a stream of num_tokens."""
    return rng.integers(0, num_tokens - seq_len, size=count)


class EpochOrder:
    """Non-overlapping windows (start i * seq_len), shuffled afresh each epoch, grouped into
    optimizer steps of ``windows_per_step``. With drop_last the incomplete last group of an
    epoch is skipped; without it, that group is a smaller step."""

    def __init__(self, num_tokens, seq_len, windows_per_step, drop_last, seed):
        self.seq_len, self.windows_per_step, self.seed = seq_len, windows_per_step, seed
        self.num_windows = (num_tokens - 1) // seq_len
        full, rest = divmod(self.num_windows, windows_per_step)
        self.steps_per_epoch = full + (1 if rest and not drop_last else 0)
        if self.steps_per_epoch == 0:
            raise ValueError(f"one epoch holds {self.num_windows} windows of {seq_len + 1} tokens, fewer than "
                             f"one step of batch_size x grad_accum_steps = {windows_per_step}; lower batch_size "
                             "or set drop_last to false")

    def starts_for_step(self, step):
        """Window starts of 0-based optimizer ``step`` (1-D, at most windows_per_step long)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
        chosen = order[index * self.windows_per_step:(index + 1) * self.windows_per_step]
        return chosen * self.seq_len


def micro_batches(starts, batch_size):
    """Split one step's window starts into consecutive micro-batches of at most batch_size."""
    return [starts[i:i + batch_size] for i in range(0, len(starts), batch_size)]


class TokenDataset:
    """One stream of token ids that training cuts windows from.

    tokens     (N,) integer ids: a list, an array, or the np.memmap of a .bin file
    loss_mask  (N,) 0/1 or None: 0 where token i is not a trained target (its prediction from
               the tokens before it adds nothing to the loss)
    name       what error messages call it ("tokens", "val_tokens", a file's path)
    path       the .bin file it was read from, or None
    """

    def __init__(self, tokens, loss_mask=None, name="tokens", path=None):
        self.name, self.path = name, path
        self.tokens = as_token_array(tokens, name=name)
        self.id_range = None  # (min, max) of the ids, once check_vocab has scanned them
        if loss_mask is not None:
            loss_mask = np.asarray(loss_mask)
            if loss_mask.shape != self.tokens.shape:
                raise ValueError(f"{name}: loss_mask has shape {loss_mask.shape} but the tokens have shape "
                                 f"{self.tokens.shape}; give one mask value per token")
        self.loss_mask = loss_mask

    @classmethod
    def from_file(cls, path, mask_path=None):
        """The dataset of a .bin token file (memmapped), with its loss-mask file if given."""
        tokens = read_token_file(path)
        mask = read_token_file(mask_path, expect_mask=True) if mask_path is not None else None
        if mask is not None and len(mask) != len(tokens):
            raise ValueError(f"{mask_path} holds {len(mask):,} mask values for the {len(tokens):,} tokens of {path}; "
                             "prepare the data again")
        return cls(tokens, mask, name=str(path), path=str(path))

    def __len__(self):
        return len(self.tokens)

    def check_vocab(self, vocab_size):
        """Check that every id is in [0, vocab_size); returns self. The ids are scanned once
        (a memmapped file piece by piece) and their range remembered."""
        if self.id_range is None and len(self):
            self.id_range = _id_range(self.tokens)
        if self.id_range is not None:
            _check_range(self.id_range, vocab_size, self.name)
        return self

    def split(self, val_fraction):
        """(train, val): the first (1 - val_fraction) of the stream and the rest."""
        train, val = split_train_val(self.tokens, val_fraction)
        cut = len(train)
        mask = self.loss_mask
        return (TokenDataset(train, None if mask is None else mask[:cut], self.name, self.path),
                TokenDataset(val, None if mask is None else mask[cut:], self.name, self.path))

    def windows(self, starts, seq_len):
        """Inputs (B, T) and targets (B, T) int64 of the windows starting at ``starts`` (B,);
        masked targets are IGNORE_INDEX."""
        return windows_at(self.tokens, starts, seq_len, self.loss_mask)

    def random_batch(self, rng, batch_size, seq_len):
        """One batch of ``batch_size`` random windows: inputs (B, T), targets (B, T)."""
        require_windows(self.tokens, seq_len, self.name, "give more tokens or lower max_seq_len")
        return self.windows(random_starts(rng, len(self), seq_len, batch_size), seq_len)

    def epoch_batches(self, batch_size, seq_len, epoch=0, seed=0, drop_last=True):
        """Yield the batches of one epoch: every non-overlapping window once, shuffled by
        (seed, epoch), in batches of batch_size (the last smaller unless drop_last)."""
        require_windows(self.tokens, seq_len, self.name, "give more tokens or lower max_seq_len")
        order = EpochOrder(len(self), seq_len, batch_size, drop_last, seed)
        for index in range(order.steps_per_epoch):
            yield self.windows(order.starts_for_step(epoch * order.steps_per_epoch + index), seq_len)


def as_dataset(tokens, vocab_size, name="tokens"):
    """A TokenDataset of ``tokens`` (ids or a dataset) whose ids all fit ``vocab_size``."""
    if not isinstance(tokens, TokenDataset):
        tokens = TokenDataset(tokens, name=name)
    return tokens.check_vocab(vocab_size)


# ---------------------------------------------------------------- prepare: file -> token files

PREPARED_FILES = ("train.bin", "train_mask.bin", "val.bin", "val_mask.bin", "tokenizer.json", "meta.json")
BPE_TRAIN_BYTES = 10_000_000  # a BPE vocabulary is learned from at most this much of the text
PREPARED_FORMAT_VERSION = 1


def _out_folder(out_dir, overwrite):
    """Create out_dir; refuse to replace prepared files already there unless overwrite."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"out_dir {str(folder)!r} is a file, not a folder; choose another out_dir")
    folder.mkdir(parents=True, exist_ok=True)
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
    """The tokenizer to encode with: an object as given, a saved one loaded from its path, or a
    new "char"/"bpe" one built from ``text_for_vocab()`` (a function: only called when needed)."""
    if not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    if tokenizer == "char":
        return CharTokenizer(sorted(set(text_for_vocab())), special_tokens=special_tokens)
    if tokenizer == "bpe":
        return BPETokenizer(vocab_size=vocab_size, min_frequency=min_frequency,
                            special_tokens=special_tokens).build_vocab(text=text_for_vocab())
    if not Path(tokenizer).is_file():
        raise ValueError(f"tokenizer={str(tokenizer)!r} is neither 'char', 'bpe' nor a saved tokenizer.json file")
    return load_tokenizer(tokenizer)


def _encode(tokenizer, text, source, allow_special):
    """tokenizer.encode with the input file named in its error (a character a given vocabulary lacks)."""
    try:
        return tokenizer.encode(text, allow_special=allow_special)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def _char_tokenizer_of_file(path):
    """Every character of the file, read piece by piece; <|endoftext|> is a special token only
    when the text uses it (it has no line end, so no piece splits it), so Tiny Shakespeare keeps
    nanoGPT's 65 characters."""
    chars, uses_end_token = set(), False
    for piece in iter_text_chunks(path):
        chars.update(piece)
        uses_end_token = uses_end_token or END_OF_TEXT in piece
    return CharTokenizer(sorted(chars), special_tokens=(END_OF_TEXT,) if uses_end_token else ())


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


def _prepare_text(path, folder, tokenizer, vocab_size, min_frequency, val_fraction, chunk_bytes):
    """Stream a text file into train.bin / val.bin: the last val_fraction of its bytes (cut
    at a character) is validation. Returns (tokenizer, train count, val count)."""
    size = path.stat().st_size
    val_start = size - int(size * val_fraction)  # a byte offset
    if tokenizer == "char":
        tok = _char_tokenizer_of_file(path)
    else:
        tok = _make_tokenizer(tokenizer, lambda: _bpe_training_text(path, val_start, val_fraction), vocab_size,
                              min_frequency, (END_OF_TEXT,))  # BPE always has <|endoftext|>, as GPT-2
    file_format = token_format(tok.vocab_size)
    with TokenFileWriter(folder / "train.bin", file_format) as train, \
            TokenFileWriter(folder / "val.bin", file_format) as val:
        offset = 0
        for piece in iter_text_chunks(path, chunk_bytes):
            raw = piece.encode("utf-8")
            cut = len(raw[:max(0, val_start - offset)].decode("utf-8", errors="ignore"))  # chars before val
            if cut:
                train.write(np.asarray(_encode(tok, piece[:cut], path, True), dtype=np.int64))
            if cut < len(piece):
                val.write(np.asarray(_encode(tok, piece[cut:], path, True), dtype=np.int64))
            offset += len(raw)
        if train.count == 0:
            raise _no_training_text(path, val_fraction)
    return tok, train.count, val.count


def _no_training_text(path, val_fraction):
    return ValueError(f"{str(path)!r} leaves no training text: validation takes its last {val_fraction:.0%}; give "
                      "more text or lower val_fraction")


def _prepare_instructions(path, folder, tokenizer, vocab_size, min_frequency, val_fraction, format):
    """Instruction JSONL into train/val token and mask files: the last val_fraction of the
    conversations are validation. Returns (tokenizer, train count, val count, format)."""
    conversations, format = read_instructions(path, format)
    tok = _make_tokenizer(tokenizer, lambda: "".join(render_text(c) for c in conversations), vocab_size,
                          min_frequency, CHAT_SPECIAL_TOKENS)
    num_val = round(len(conversations) * val_fraction)
    if val_fraction > 0 and num_val == 0 and len(conversations) > 1:
        num_val = 1
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
    return tok, counts[0], counts[1], format


def prepare(input_path, out_dir, tokenizer="char", vocab_size=4096, min_frequency=2, val_fraction=0.1,
            instruction_format=None, overwrite=False, chunk_bytes=None):
    """Turn a text file (or instruction JSONL) into what training reads: out_dir/train.bin,
    val.bin (+ train_mask.bin, val_mask.bin for instruction data), tokenizer.json, meta.json.

    tokenizer: "char", "bpe" (learned with vocab_size and min_frequency), a tokenizer object, or
    the path of a saved tokenizer.json (to encode fine-tuning data with a pretrained model's).
    instruction_format: None (plain text; a .jsonl input means "auto"), "auto", "alpaca" or
    "sharegpt". Text is read and encoded in pieces, so its size is not bounded by memory.
    Returns meta.json's content."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    path = Path(input_path)
    if not path.is_file():
        raise ValueError(f"input file {str(path)!r} does not exist; give the path of a UTF-8 text or JSONL file")
    if instruction_format is None and path.suffix == ".jsonl":
        instruction_format = "auto"
    folder = _out_folder(out_dir, overwrite)
    staging = folder / f".prepare.{os.getpid()}"  # nothing in folder changes until all is written
    staging.mkdir(exist_ok=True)
    try:
        if instruction_format is None:
            tok, num_train, num_val = _prepare_text(path, staging, tokenizer, vocab_size, min_frequency,
                                                    val_fraction, chunk_bytes or CHUNK_BYTES)
        else:
            tok, num_train, num_val, instruction_format = _prepare_instructions(
                path, staging, tokenizer, vocab_size, min_frequency, val_fraction, instruction_format)
        tok.save(staging / "tokenizer.json")
        meta = _meta(path, tok, instruction_format, num_train, num_val, val_fraction)
        write_json_atomically(staging / "meta.json", meta, indent=2)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _publish(staging, folder)
    return meta


def _meta(path, tok, instruction_format, num_train, num_val, val_fraction):
    from nanollm import __version__

    return {"format": "nanollm-prepared", "format_version": PREPARED_FORMAT_VERSION, "source": str(path),
            "source_bytes": path.stat().st_size, "instruction_format": instruction_format,
            "tokenizer": tok.kind, "vocab_size": tok.vocab_size, "token_dtype": FORMATS[token_format(tok.vocab_size)].name,
            "train_tokens": num_train, "val_tokens": num_val, "val_fraction": val_fraction,
            "nanollm_version": __version__}


def load_prepared(folder):
    """What ``prepare`` wrote: {"train": TokenDataset, "val": TokenDataset or None,
    "tokenizer": ..., "meta": dict}; the datasets are memmapped, not read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"prepared data folder {str(folder)!r} does not exist; write it with "
                         "nanollm.data.prepare(text_file, folder)")
    for name in ("meta.json", "tokenizer.json", "train.bin"):
        if not (folder / name).is_file():
            raise ValueError(f"{str(folder)!r} has no {name}: it is not a prepared data folder; write it with "
                             "nanollm.data.prepare(text_file, folder)")
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
