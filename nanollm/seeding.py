"""One call to make a run repeatable: seeds Python's and NumPy's global generators.

Models built without an explicit ``seed`` draw theirs from NumPy's global generator, so
``set_seed(s)`` before building a model fixes its initial weights and its dropout masks."""

import random

import numpy as np


def set_seed(seed):
    """Seed Python's ``random`` and NumPy's global generator with the integer ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
