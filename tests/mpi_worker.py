"""The program tests/test_mpi.py starts under `mpiexec -n 2`: one scenario per run, rank 0
writes what it found as JSON.

    mpiexec -n 2 python tests/mpi_worker.py SCENARIO OUT_DIR

equivalence  2 ranks x batch B (x accumulation) against 1 rank x batch B x accumulation 2N over
             the same windows (epoch order), float64, loss-masked targets, both architectures,
             and LoRA adapters on a frozen Llama; and 2 ranks each running 2 batch shards
             (threads=2) against the 1 rank on one thread
resume       an interrupted 2-rank run (dropout on, random windows) resumed from its checkpoint
             ends bit for bit where the uninterrupted one does; only rank 0 wrote files
half         float16 (float32 master weights, dynamic loss scaling) on 2 ranks against 1 rank
             accumulating the same windows, with SGD (which a gradient off by a constant factor
             fails; Adam's scale invariance would hide it) and AdamW, for gpt2, llama and LoRA
             adapters on a frozen llama: same weights, and the loss falls
crash        rank 1 raises in its third backward: the job must end, not hang
drift        rank 1's weights are nudged during step 3: the parameter check must stop the job
"""

import json
import sys
from pathlib import Path

import numpy as np

from nanollm import TransformerLanguageModel, distributed, train_with_config
from nanollm.data import TokenDataset

VOCAB = 23


def masked_data(size=3000, seed=0):
    """Random ids, 40% of the targets masked out, so micro-batches count different numbers of targets."""
    rng = np.random.default_rng(seed)
    return TokenDataset(rng.integers(0, VOCAB, size=size), loss_mask=(rng.random(size) < 0.6).astype(np.int8))


def tiny_model(architecture="gpt2", dtype="float64", dropout=0.0):
    return TransformerLanguageModel(vocab_size=VOCAB, embedding_dim=16, num_layers=2, ffn_hidden_dim=32, num_heads=2,
                                    num_kv_heads=1 if architecture == "llama" else None, max_seq_len=16, seed=3,
                                    dtype=dtype, architecture=architecture, dropout=dropout)


BASE = dict(learning_rate=1e-2, log_interval=0, eval_interval=0, val_fraction=0.0, max_grad_norm=1.0,
            weight_decay=0.1, param_check_interval=2, backend="numpy")


LORA = dict(lora_rank=2, lora_targets=["q", "v", "mlp"])  # adapters alone in the buffer


def relative_error(a, b):
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-30)) for k in a)


def equivalence(comm, out):
    found = {}
    cases = (("gpt2", "gpt2", 4, 1, {}, 3000), ("llama", "llama", 2, 2, {}, 3000),
             # ten steps: adapters start from B = 0, and Adam turns the rounding of their near-zero
             # first gradients into differences that grow chaotically over a longer run
             ("llama_lora", "llama", 4, 1, LORA, 10 * 8 * 16 + 2),
             ("gpt2_shards", "gpt2", 4, 1, {"threads": 2}, 3000))
    for case, architecture, batch, accumulation, extra, tokens in cases:
        cfg = dict(BASE, batch_size=batch, epochs=1, **extra)
        together = tiny_model(architecture)
        shared = train_with_config(together, masked_data(tokens), dict(cfg, grad_accum_steps=accumulation))
        if comm.is_root:  # the same windows, one process: accumulation over every rank's micro-batches
            alone = tiny_model(architecture)
            single = train_with_config(alone, masked_data(tokens), dict(cfg, grad_accum_steps=accumulation * comm.size,
                                                                        threads=1),
                                       communicator=distributed.SingleProcess())
            found[case] = {
                "relative_error": relative_error(alone.params, together.params),
                "steps": [single["steps"], shared["steps"]],
                "tokens_seen": [single["tokens_seen"], shared["tokens_seen"]],
                "loss": [single["final_loss"], shared["final_loss"]], "ranks": shared["ranks"],
                "communication_seconds": shared["communication_seconds"]}
    return found


def half(comm, out):
    found = {}
    stream = np.arange(40 * 8 * 16 + 1) % VOCAB  # a learnable stream: each token follows from the last
    cases = [(f"{architecture}_{optimizer}", architecture, optimizer, lr, extra)
             for architecture, extra in (("gpt2", {}), ("llama", {}), ("llama_lora", LORA))
             for optimizer, lr in (("sgd", 0.5), ("adamw", 1e-2))]
    for case, architecture, optimizer, lr, extra in cases:
        architecture = architecture.removesuffix("_lora")
        cfg = dict(BASE, batch_size=4, epochs=1, dtype="float16", optimizer=optimizer, learning_rate=lr,
                   weight_decay=0.0, log_interval=1, **extra)
        together = tiny_model(architecture, dtype="float32")
        shared = train_with_config(together, stream, cfg)
        if comm.is_root:
            alone = tiny_model(architecture, dtype="float32")
            single = train_with_config(alone, stream, dict(cfg, grad_accum_steps=comm.size),
                                       communicator=distributed.SingleProcess())
            found[case] = {
                "relative_error": relative_error(alone.params, together.params),
                "steps": [single["steps"], shared["steps"]],
                "first_loss": [single["history"][0]["loss"], shared["history"][0]["loss"]],
                "loss": [single["final_loss"], shared["final_loss"]],
                "dtypes": sorted({str(p.dtype) for p in together.params.values()})}
    return found


def resume(comm, out):
    cfg = dict(BASE, batch_size=4, num_steps=6, checkpoint_interval=3, keep_last_n=0, log_interval=1, dtype="float32")
    first = tiny_model(dropout=0.1, dtype="float32")
    whole = train_with_config(first, masked_data(), dict(cfg, checkpoint_dir=str(out / "whole")))
    second = tiny_model(dropout=0.1, dtype="float32")
    resumed = train_with_config(second, masked_data(), dict(cfg, checkpoint_dir=str(out / "resumed"),
                                                            resume_from=str(out / "whole" / "checkpoint_step_3.npz")))
    if not comm.is_root:
        return None
    metrics = (out / "whole" / "metrics.jsonl").read_text().splitlines()
    return {"bit_identical": all(np.array_equal(first.params[k], second.params[k]) for k in first.params),
            "files": sorted(p.name for p in (out / "whole").iterdir()),
            "metrics_steps": [json.loads(line)["step"] for line in metrics],
            "steps": [whole["steps"], resumed["steps"]], "tokens_seen": whole["tokens_seen"]}


def _sabotage(model, comm, action):
    """Run ``action`` on rank 1 during its third backward."""
    backward, calls = model.backward, [0]

    def sabotaged(**kwargs):
        calls[0] += 1
        grads = backward(**kwargs)
        if comm.rank == 1 and calls[0] == 3:
            action(model)
        return grads

    model.backward = sabotaged


def crash(comm, out):
    model = tiny_model()

    def fail(model):
        raise RuntimeError("injected failure in backward")

    _sabotage(model, comm, fail)
    train_with_config(model, masked_data(), dict(BASE, batch_size=4, num_steps=10))
    return {"finished": True}  # not reached: the job ends at step 3


def drift(comm, out):
    model = tiny_model()

    def nudge(model):
        model.params["wte"][0, 0] += 1e-6

    _sabotage(model, comm, nudge)
    train_with_config(model, masked_data(), dict(BASE, batch_size=4, num_steps=10))
    return {"finished": True}  # not reached: the check after step 4 stops it


def budget(comm, out):
    """A time budget on two ranks: every rank stops after the same step (the slowest rank's step
    times count), so the weights stay identical (training checks that at the end)."""
    cfg = dict(BASE, batch_size=4, num_steps=10**6, max_train_seconds=1.0, lr_schedule="cosine", log_interval=0,
               dtype="float32")
    results = train_with_config(tiny_model(dtype="float32"), masked_data(), cfg)
    steps = comm.allgather(results["steps"])
    return {"steps": steps, "stopped_because": results["stopped_because"]} if comm.is_root else None


SCENARIOS = {"equivalence": equivalence, "half": half, "resume": resume, "crash": crash, "drift": drift,
             "budget": budget}

if __name__ == "__main__":
    scenario, out = sys.argv[1], Path(sys.argv[2])
    world = distributed.world()
    found = SCENARIOS[scenario](world, out)
    if world.is_root:
        (out / f"{scenario}.json").write_text(json.dumps(found))
