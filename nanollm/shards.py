"""Batch shards on threads: each micro-batch's rows split across the CPU's cores, every shard's
forward and backward running at once on the same weights.

Why: BLAS threads only the big matrix products. The rest of a CPU train step (the per-head
attention products, each too small for BLAS to thread, and the serial kernels: softmax,
layernorm, GELU, cross-entropy) ran on one core while OpenBLAS's idle thread spun on the other.
Measured on 2 cores: nanoGPT's 48 per-head (64 x 32) @ (32 x 64) products took 0.12 ms and
0.24 ms of CPU time; with BLAS on one thread, two threads of 24 took 0.06 ms. So while shards
run, BLAS runs one thread in each of them and every kernel runs beside its twin
(BENCHMARKS.md, "Batch shards", has the train steps).

The shards are micro-batches: the step adds each one's gradient, times its counted targets,
into the gradient buffer in shard order, exactly as gradient accumulation adds micro-batches.
So a step equals one big batch (to float rounding, as accumulation does), and the same
threads give bit-identical runs whatever the threads' timing. Another thread count splits
the rows differently: the same run to rounding, not bit for bit (set ``threads`` explicitly
to repeat a run bit for bit on another machine).

Each shard computes on a replica of the model (nanollm.model: the same parameter dict, its own
forward caches). Shards never draw random numbers: the step runs on one thread when the model
has dropout (two shards drawing masks from one generator would take them in the threads'
order), on a GPU, and for the post-training losses, which keep state of their own.
"""

import contextvars
from concurrent.futures import ThreadPoolExecutor, wait

from nanollm.mpi_launch import cores, launched_ranks

# threads=None (auto) keeps at least this many tokens (rows x T) in a shard: below it the threads'
# hand-offs and their Python, one at a time under the GIL, cost more than the cores give. Two
# shards against one thread on 2 cores: 64 tokens a shard 0.83x, 128 0.98-1.04x, 256 1.10x,
# 384 1.13x, 1024-2048 1.37-1.55x (BENCHMARKS.md, "Batch shards")
MIN_SHARD_TOKENS = 256
_pools = {}        # workers -> the ThreadPoolExecutor that runs shards 1 .. workers (shard 0 runs in the caller)
_blas = []         # threadpoolctl's controller of the loaded BLAS libraries, made on first use


def auto_threads():
    """The threads a step uses by default: this process's cores, shared between the ranks that
    mpiexec started on this machine (so 2 ranks on 2 cores take one thread each)."""
    return max(1, cores() // launched_ranks()[2])


def draws_random_numbers(model_config):
    """Whether a training forward of a model of ``model_config`` (``model.config``: its dropout,
    and its lora settings or None) draws from the dropout generator: dropout on the activations
    or on LoRA's adapter inputs."""
    lora = model_config.get("lora") or {}
    return (model_config.get("dropout") or 0.0) > 0 or lora.get("dropout", 0.0) > 0


def step_threads(requested, model, xp):
    """(threads, min_tokens): the threads a training step of ``model`` on arrays of ``xp``
    shards its micro-batches over, and the fewest tokens a shard may have (see planned)."""
    return planned(requested, draws_random_numbers(model.config), on_gpu=xp.__name__ != "numpy")


def planned(requested, draws_random, on_gpu=False):
    """(threads, min_tokens) of a run: requested is its ``threads`` (None: auto_threads(), and
    shards of at least MIN_SHARD_TOKENS; a number: that many, whatever the size). One thread
    where shards cannot run: on a GPU, or for a model that draws dropout masks."""
    if on_gpu or draws_random:
        return 1, 1
    if requested is None:
        return auto_threads(), MIN_SHARD_TOKENS
    return requested, 1


def shard_count(rows, time, threads, min_tokens=1):
    """How many shards a micro-batch of ``rows`` x ``time`` tokens splits into: ``threads``, fewer
    when rows run out or a shard would have fewer than ``min_tokens`` tokens, and at least 1."""
    return max(1, min(threads, rows, rows * time // min_tokens))


def splits(batches, threads, min_tokens=1):
    """Whether any micro-batch of ``batches`` [(inputs, targets), ...] runs as more than one shard."""
    return threads > 1 and any(shard_count(*inputs.shape, threads, min_tokens) > 1 for inputs, _ in batches)


def shard_slices(rows, count):
    """Row slices of ``rows`` rows into min(count, rows) shards whose sizes differ by at most one,
    the larger first (as numpy.array_split): 12 rows in 2 -> [0:6], [6:12]."""
    count = max(1, min(count, rows))
    size, extra = divmod(rows, count)
    bounds = [0]
    for index in range(count):
        bounds.append(bounds[-1] + size + (index < extra))
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


def single_threaded_blas():
    """A context manager in which every loaded BLAS library runs one thread (threadpoolctl),
    restoring each one's count after."""
    if not _blas:
        from threadpoolctl import ThreadpoolController

        _blas.append(ThreadpoolController().select(user_api="blas"))
    return _blas[0].limit(limits=1)


def balanced_groups(sizes, count):
    """Names of ``sizes`` {name: size} in ``count`` groups of about equal total size (each name,
    largest first, to the lightest group so far; ties to the first): the same groups every time."""
    groups, totals = [[] for _ in range(count)], [0] * count
    for name in sorted(sizes, key=lambda n: -sizes[n]):
        lightest = totals.index(min(totals))
        groups[lightest].append(name)
        totals[lightest] += sizes[name]
    return [group for group in groups if group]


def run_groups(function, groups):
    """function(group) for every group at once: the first in the calling thread, the rest on the
    pool; returns when all are done (raising the first error)."""
    if len(groups) < 2:  # one group (or none): nothing to share
        return function(groups[0]) if groups else None
    futures = [_pool(len(groups) - 1).submit(contextvars.copy_context().run, function, group) for group in groups[1:]]
    try:
        function(groups[0])
    finally:
        wait(futures)
    for future in futures:
        future.result()


def _pool(workers):
    if workers not in _pools:
        _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nanollm-shard")
    return _pools[workers]


def _shard(loss_and_backward, inputs, targets, dloss, replica):
    """One shard's (loss, grads, correct) on its replica, whose caches go at once after: they hold
    the replica itself (the feed-forward's Linear closes over it), a cycle only the garbage
    collector would free, steps later (measured: 5 MiB more resident memory a step)."""
    try:
        return loss_and_backward(inputs, targets, dloss, model=replica)
    finally:
        replica._cache = None


def sharded(model, batches, loss_and_backward, dloss, threads, min_tokens=1):
    """Yield (inputs, targets, (loss, grads, correct)) of every shard of every micro-batch in
    ``batches`` [(inputs, targets), ...], in order: micro-batch by micro-batch, each one's rows
    split in shard_slices(rows, shard_count(...)), all its shards running at once. Shard 0 runs
    in the calling thread, the rest on a pool; BLAS runs one thread meanwhile (a micro-batch of
    one shard runs as usual, BLAS threads and all).
    loss_and_backward(inputs, targets, dloss, model=replica) -> (loss, grads, correct)."""
    for inputs, targets in batches:
        count = shard_count(*inputs.shape, threads, min_tokens)
        if count == 1:
            yield inputs, targets, loss_and_backward(inputs, targets, dloss, model=model)
            continue
        parts = [(inputs[rows], targets[rows]) for rows in shard_slices(len(inputs), count)]
        with single_threaded_blas():
            # each worker runs in a copy of this thread's context (numpy's errstate lives there)
            futures = [_pool(threads - 1).submit(contextvars.copy_context().run, _shard, loss_and_backward, *part, dloss,
                                                 model.replica()) for part in parts[1:]]
            try:
                yield (*parts[0], _shard(loss_and_backward, *parts[0], dloss, model.replica()))
                for part, future in zip(parts[1:], futures):
                    yield (*part, future.result())
            finally:  # after an error (or an early stop) no shard is left running on the weights
                wait(futures)
