"""Token ids -> training batches: the train/validation split, random windows, epoch order.

A window is seq_len + 1 consecutive tokens: its first seq_len are the inputs, its last
seq_len the next-token targets. Two ways to pick windows:

    random windows  every step draws fresh start offsets (nanoGPT's get_batch)
    epochs          the data cut into non-overlapping windows, shuffled once per epoch

The epoch order is a pure function of (seed, epoch), so a resumed run finds its place in the
data from the step number alone.
"""

import numpy as np


def as_token_array(tokens, vocab_size, name="tokens"):
    """A 1-D integer array of ids in [0, vocab_size) (np.memmap stays memmapped), or a
    ValueError that names the problem: wrong shape, non-integers, or an id the model lacks."""
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
    if tokens.size:
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{name} holds token id {bad} outside the model's vocabulary [0, {vocab_size}); "
                             f"build the model with the tokenizer's vocab_size")
    return tokens


def split_train_val(tokens, val_fraction):
    """The first (1 - val_fraction) of the stream for training, the rest for validation."""
    num_val = int(len(tokens) * val_fraction)
    return tokens[:len(tokens) - num_val], tokens[len(tokens) - num_val:]


def require_windows(tokens, seq_len, name, fix):
    """A stream must hold at least one window of seq_len + 1 tokens."""
    if len(tokens) < seq_len + 1:
        raise ValueError(f"{name} has {len(tokens)} tokens, fewer than one window of max_seq_len + 1 = "
                         f"{seq_len + 1}; {fix}")


def windows_at(tokens, starts, seq_len):
    """Inputs (B, T) and targets (B, T) as int64 from the windows starting at ``starts`` (B,)."""
    offsets = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(seq_len + 1)  # (B, T + 1)
    windows = np.asarray(tokens[offsets], dtype=np.int64)
    return windows[:, :-1], windows[:, 1:]


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
