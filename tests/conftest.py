"""Shared fixtures: every backend-sensitive test runs on each backend that loads here."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from nanollm import CharTokenizer, backends

# The backend fixture only selects the current backend, so sharing it across the examples of
# one @given test is exactly what we want: the function-scoped-fixture health check is moot.
_shared = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("nanollm", max_examples=25, derandomize=True, **_shared)
settings.register_profile("thorough", max_examples=300, **_shared)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "nanollm"))

# The host backends; the GPU backend (cupy) takes device arrays and has its own tests (test_cupy_backend.py).
BACKEND_NAMES = [name for name in backends.HOST_BACKENDS if name != "auto"]


@pytest.fixture(params=BACKEND_NAMES)
def backend(request):
    """Make each registered backend current in turn; skip (with the reason) those that cannot load."""
    reason = backends.available()[request.param]
    if reason is not None:
        pytest.skip(reason)
    previous = backends.current_name()
    module = backends.use(request.param)
    yield module
    backends.use(previous)


@pytest.fixture(scope="module")
def ids_and_vocab():
    """The first 20,000 characters of the sample corpus as ids, and its character vocabulary's size."""
    with open("data/raw/sample.txt", encoding="utf-8") as f:
        text = f.read()[:20_000]
    tokenizer = CharTokenizer().build_vocab(text)
    return np.array(tokenizer.encode(text), dtype=np.int64), tokenizer.vocab_size


@pytest.fixture
def crash_at_step(monkeypatch):
    """crash_at_step(n): make 1-based training step n raise before it updates anything, as a
    killed process would (resume tests); the test's monkeypatch.undo() ends it."""
    from nanollm.step import TrainingStep

    original = TrainingStep.__call__

    def crash(crash_step):
        def step(self, index, batches, lr):
            if index + 1 == crash_step:
                raise KeyboardInterrupt(f"killed at step {crash_step}")
            return original(self, index, batches, lr)

        monkeypatch.setattr(TrainingStep, "__call__", step)

    return crash
