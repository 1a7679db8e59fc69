"""Batch shards on threads (nanollm.shards): a step whose micro-batch rows run as shards on
threads equals the same step on one thread (the gradient, not only Adam's normalised update:
SGD too), is bit-identical run to run, and falls back to one thread where shards cannot run."""

import types
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from nanollm import backends, shards
from nanollm.config import resolve
from nanollm.model import TransformerLanguageModel
from nanollm.ops.cross_entropy import IGNORE_INDEX
from nanollm.step import TrainingStep
from nanollm.train import train_with_config

VOCAB = 23


def small_model(architecture="gpt2", dtype="float64", dropout=0.0, lora=False):
    model = TransformerLanguageModel(VOCAB, architecture=architecture, embedding_dim=16, num_layers=2, num_heads=2,
                                     ffn_hidden_dim=32, max_seq_len=12, dropout=dropout, dtype=dtype, seed=3)
    if lora:
        model.add_lora(rank=2, targets=("q", "v"), seed=1)
    return model


def batch(rows=6, time=12, seed=0):
    ids = np.random.default_rng(seed).integers(0, VOCAB, size=(rows, time + 1))
    return ids[:, :-1], ids[:, 1:]


def one_step(model, batches, threads, **cfg):
    """The model's trainable parameters after one step on ``batches`` with ``threads``, and the loss."""
    settings = dict(threads=threads, learning_rate=0.5, weight_decay=0.0, max_grad_norm=0.0, **cfg)
    step = TrainingStep(model, resolve(settings))
    assert (step.threads, step.min_shard_tokens) == (threads, 1)  # a number asked for: shards of any size
    loss, _, windows = step(0, batches, 0.5)
    assert windows == sum(len(inputs) for inputs, _ in batches)
    return {name: model.params[name].copy() for name in model.trainable}, float(loss)


def test_shard_slices_split_rows_evenly_in_order():
    assert shards.shard_slices(12, 2) == [slice(0, 6), slice(6, 12)]
    assert shards.shard_slices(7, 3) == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert shards.shard_slices(1, 2) == [slice(0, 1)]  # fewer rows than threads: one shard a row
    assert shards.shard_slices(5, 1) == [slice(0, 5)]


def test_auto_keeps_shards_big_enough_to_pay():
    assert shards.shard_count(12, 64, 2, shards.MIN_SHARD_TOKENS) == 2  # nanoGPT's CPU config: 384 tokens a shard
    assert shards.shard_count(4, 64, 2, shards.MIN_SHARD_TOKENS) == 1   # 128 tokens a shard would lose
    assert shards.shard_count(4, 64, 2) == 2                             # asked for: split anyway
    assert shards.shard_count(1, 64, 2) == 1
    assert shards.shard_count(64, 64, 3, shards.MIN_SHARD_TOKENS) == 3


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("lora", [False, True])
def test_two_threads_equal_one_in_float64(architecture, optimizer, lora):
    """The step's update (SGD: the gradient itself, so a shard weighted wrong by any factor
    fails) and loss match one thread's to float64 rounding."""
    batches = [batch(rows=5)]  # 3 + 2 rows: unequal shards
    one, loss_one = one_step(small_model(architecture, lora=lora), batches, 1, optimizer=optimizer)
    two, loss_two = one_step(small_model(architecture, lora=lora), batches, 2, optimizer=optimizer)
    assert loss_two == pytest.approx(loss_one, rel=1e-13)
    start = small_model(architecture, lora=lora).params
    # Adam's first update is lr * g / (|g| + eps): rounding noise of 1e-13 in a near-zero g moves it by 1e-5 lr
    atol = 1e-13 if optimizer == "sgd" else 1e-5
    for name in one:
        np.testing.assert_allclose(two[name] - start[name], one[name] - start[name], rtol=1e-9, atol=atol,
                                   err_msg=name)


@pytest.fixture
def numpy_backend():
    """Half precision computes on the numpy backend (the compiled CPU ones refuse it)."""
    previous = backends.current_name()
    backends.use("numpy")
    yield
    backends.use(previous)


@pytest.mark.parametrize("dtype,rtol", [("float32", 2e-4), ("float16", 3e-2), ("bfloat16", 5e-2)])
def test_two_threads_match_one_in_lower_precision(dtype, rtol, numpy_backend):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
    batches = [batch(rows=6)]
    master = "float32"
    cfg = dict(optimizer="sgd", dtype=dtype if dtype != "float32" else None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # float16's overflows stay quiet in the shards' threads too
        one, loss_one = one_step(small_model(dtype=master), batches, 1, **cfg)
        two, loss_two = one_step(small_model(dtype=master), batches, 2, **cfg)
    assert loss_two == pytest.approx(loss_one, rel=rtol)
    start = small_model(dtype=master).params
    for name in one:
        change_one, change_two = one[name] - start[name], two[name] - start[name]
        assert np.abs(change_two - change_one).max() <= rtol * np.abs(change_one).max() + 1e-6, name


def test_shards_weigh_masked_targets_like_one_batch():
    """A shard whose targets are all masked (an instruction prompt) counts for nothing; with
    two micro-batches too (accumulation and shards together)."""
    inputs, targets = batch(rows=8)
    targets = targets.copy()
    targets[:3] = IGNORE_INDEX  # the first shard of the first micro-batch has no counted target
    targets[5, :7] = IGNORE_INDEX
    batches = [(inputs[:6], targets[:6]), (inputs[6:], targets[6:])]
    one, loss_one = one_step(small_model(), batches, 1, optimizer="sgd")
    two, loss_two = one_step(small_model(), batches, 2, optimizer="sgd")
    assert loss_two == pytest.approx(loss_one, rel=1e-13)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_runs_with_shards_are_bit_identical(tmp_path):
    ids = np.random.default_rng(1).integers(0, VOCAB, size=3000)
    cfg = dict(num_steps=6, batch_size=6, threads=2, log_interval=1, eval_interval=3, eval_steps=2,
               learning_rate=3e-3, grad_accum_steps=2)
    runs = []
    for _ in range(2):
        model = small_model(dtype="float32")
        results = train_with_config(model, ids, cfg)
        runs.append(([r["loss"] for r in results["history"]], {n: p.copy() for n, p in model.params.items()}))
    assert runs[0][0] == runs[1][0]
    for name, p in runs[0][1].items():
        assert np.array_equal(p, runs[1][1][name]), name


def test_blas_threads_are_restored_after_a_sharded_step():
    before = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
    one_step(small_model(), [batch()], 2)
    assert [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"] == before


def test_one_thread_where_shards_cannot_run():
    cfg = resolve({"threads": 2})
    assert TrainingStep(small_model(dropout=0.1), cfg).threads == 1  # dropout masks: one generator, one thread
    lora_dropout = small_model()
    lora_dropout.add_lora(rank=2, dropout=0.1)
    assert TrainingStep(lora_dropout, cfg).threads == 1
    gpu = types.SimpleNamespace(__name__="cupy")
    assert shards.step_threads(2, small_model(), gpu) == (1, 1)
    assert shards.step_threads(2, small_model(), np) == (2, 1)
    assert shards.step_threads(None, small_model(), np) == (shards.auto_threads(), shards.MIN_SHARD_TOKENS)


def test_auto_threads_share_the_cores_between_local_ranks(monkeypatch):
    monkeypatch.setattr(shards, "cores", lambda: 4)
    monkeypatch.setattr(shards, "launched_ranks", lambda: (0, 2, 2))
    assert shards.auto_threads() == 2
    monkeypatch.setattr(shards, "launched_ranks", lambda: (0, 8, 8))
    assert shards.auto_threads() == 1


def test_a_shards_error_reaches_the_caller_and_its_context_travels():
    """An exception in a worker's shard is raised by the step; numpy's errstate set around the
    step holds in the workers too."""
    seen = []

    def loss_and_backward(inputs, targets, dloss, model):
        seen.append(np.geterr()["over"])
        if inputs[0, 0] == -1:
            raise ValueError("bad shard")
        return 0.0, {}, None

    inputs = np.zeros((4, 3), dtype=np.int64)
    with np.errstate(over="ignore"):
        results = list(shards.sharded(small_model(), [(inputs, inputs)], loss_and_backward, 1.0, 2))
    assert len(results) == 2 and seen == ["ignore", "ignore"]
    inputs[2:] = -1  # the second shard, run on the pool
    with pytest.raises(ValueError, match="bad shard"):
        list(shards.sharded(small_model(), [(inputs, inputs)], loss_and_backward, 1.0, 2))


def test_threads_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="threads must be > 0"):
        resolve({"threads": 0})
    with pytest.raises(ValueError, match="threads must be an integer"):
        resolve({"threads": "two"})


def test_a_steps_replicas_and_their_caches_are_freed_at_once(monkeypatch):
    """A replica's caches close over the replica (a reference cycle): unless the step breaks it,
    each step's activations wait for the garbage collector (5 MiB a step more at nanoGPT's size)."""
    import gc
    import weakref

    model, made = small_model(), []
    replica = model.replica

    def tracked():
        twin = replica()
        made.append(weakref.ref(twin))
        return twin

    monkeypatch.setattr(model, "replica", tracked)
    gc.disable()
    try:
        one_step(model, [batch(rows=6)], 2)
        assert len(made) == 2 and all(ref() is None for ref in made)
    finally:
        gc.enable()


def test_balanced_groups_split_by_size_the_same_way_every_time():
    sizes = {"a": 10, "b": 7, "c": 5, "d": 3, "e": 1}
    assert shards.balanced_groups(sizes, 2) == [["a", "d"], ["b", "c", "e"]]
    assert shards.balanced_groups({"only": 4}, 2) == [["only"]]
    assert shards.balanced_groups(sizes, 1) == [["a", "b", "c", "d", "e"]]


def test_run_groups_runs_every_group_and_raises_a_workers_error():
    done = []
    shards.run_groups(done.extend, [["a"], ["b", "c"]])
    assert sorted(done) == ["a", "b", "c"]
    shards.run_groups(done.extend, [["d"]])  # one group: in this thread, no pool of 0 workers
    shards.run_groups(done.extend, [])
    assert done[-1] == "d"

    def fail_on_b(group):
        if "b" in group:
            raise ValueError("group b failed")

    with pytest.raises(ValueError, match="group b failed"):
        shards.run_groups(fail_on_b, [["a"], ["b"]])


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "sgd"])
def test_updates_on_the_shards_threads_equal_one_threads_bit_for_bit(optimizer):
    """Each parameter's update is its own: split over threads, the same bits (Muon's products on
    one BLAS thread in either case here)."""
    model = small_model(dtype="float32")
    step = TrainingStep(model, resolve({"threads": 2, "optimizer": optimizer}))
    grads = {name: np.random.default_rng(len(name)).standard_normal(p.shape).astype(p.dtype)
             for name, p in model.params.items()}
    twin = small_model(dtype="float32")
    twin_step = TrainingStep(twin, resolve({"threads": 2, "optimizer": optimizer}))
    scale = np.asarray(0.5, dtype=np.float32)
    with shards.single_threaded_blas():
        step.update(grads, 1e-2, scale, threads=2)
        twin_step.update(grads, 1e-2, scale, threads=1)
    for name, p in model.params.items():
        assert np.array_equal(p, twin.params[name]), name
