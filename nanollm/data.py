"""Token ids -> training batches: datasets, the train/validation split, random windows, epochs.
(``nanollm.prepare`` turns a text or instruction file into the token files read here.)

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

import numpy as np

from nanollm.ops.cross_entropy import IGNORE_INDEX
from nanollm.tokenfile import read_token_file

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

