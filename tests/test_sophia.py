"""Sophia-G (optimizer="sophia"): ten training steps against a PyTorch reference of the
published update (float64), the Gauss-Newton-Bartlett estimate (sampled labels follow the
softmax; its mean is the Gauss-Newton diagonal), training, bit-exact resume, ranks, half
precision, LoRA and the config's one-line errors. The rules by hand: tests/test_optim.py."""

import importlib.util
import math
import threading

import numpy as np
import pytest

from nanollm import GPT, CharTokenizer, TransformerLanguageModel, backends, train_with_config
from nanollm import sophia as sophia_module
from nanollm import step as step_module
from nanollm import train as train_module
from nanollm.config import resolve
from nanollm.ops.cross_entropy import IGNORE_INDEX
from nanollm.optim import decays
from nanollm.sophia import sample_labels, sampled_loss_and_backward
from nanollm.step import TrainingStep

SAMPLE = "data/raw/sample.txt"


@pytest.fixture(scope="module")
def ids_and_tokenizer():
    with open(SAMPLE, encoding="utf-8") as f:
        text = f.read()[:20_000]
    tokenizer = CharTokenizer().build_vocab(text)
    return np.array(tokenizer.encode(text), dtype=np.int64), tokenizer


def tiny_model(vocab_size, seed=0, **settings):
    return TransformerLanguageModel(vocab_size, embedding_dim=16, num_layers=1, num_heads=2, ffn_hidden_dim=32,
                                    max_seq_len=16, seed=seed, **settings)


# ------------------------------------------------------------------ the published update, in torch

def torch_sophia_reference(torch, params, steps, cfg, hessian_factor=1.0):
    """The authors' SophiaG (sophia.py: step and update_hessian) and train_sophiag.py's loop,
    in plain float64 torch on the GPT of test_against_pytorch: each step the real labels'
    gradient of the whole batch, clipped by global norm, then the step with bs = its counted
    targets; after every k-th step the gradient of the mean cross-entropy against the given
    sampled labels, squared into h. hessian_factor: a deliberately wrong h, to show the
    comparison would see one. Returns the parameters after the steps."""
    from test_against_pytorch import CONFIG, torch_gpt_loss

    p = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    h = {k: torch.zeros_like(v) for k, v in p.items()}
    (beta1, beta2), rho, eps, k = cfg["betas"], cfg["sophia_rho"], cfg["eps"], cfg["sophia_hessian_interval"]
    for index, (idx, targets, lr, labels) in enumerate(steps):
        idx, targets = torch.tensor(idx), torch.tensor(targets)
        _, loss = torch_gpt_loss(p, idx, targets, CONFIG)
        grads = dict(zip(p, torch.autograd.grad(loss, list(p.values()))))
        norm = torch.sqrt(sum((g * g).sum() for g in grads.values()))
        clip = min(1.0, cfg["max_grad_norm"] / (float(norm) + 1e-6))
        bs = int((targets != IGNORE_INDEX).sum())
        with torch.no_grad():
            for name, param in p.items():
                weight_decay = cfg["weight_decay"] if decays(name, param) else 0.0
                param.mul_(1 - lr * weight_decay)
                m[name].mul_(beta1).add_(grads[name] * clip, alpha=1 - beta1)
                ratio = (m[name].abs() / (rho * bs * h[name] + eps)).clamp(None, 1)
                param.addcmul_(m[name].sign(), ratio, value=-lr)
        if (index + 1) % k == 0:
            _, sampled_loss = torch_gpt_loss(p, idx, torch.tensor(labels), CONFIG)
            hessian_grads = torch.autograd.grad(sampled_loss, list(p.values()))
            with torch.no_grad():
                for name, g in zip(p, hessian_grads):
                    h[name].mul_(beta2).addcmul_(g, g, value=(1 - beta2) * hessian_factor)
    return {k: v.detach().numpy() for k, v in p.items()}, m, h, rho, eps


def test_ten_sophia_steps_match_a_pytorch_reference_of_the_published_update(monkeypatch):
    """nanollm's TrainingStep (two micro-batches with masked targets, clipping, the Hessian
    every 3 steps) against the reference written from the authors' code, float64, 1e-10.

    eps is nanollm's default 1e-8, not the reference's 1e-15: the key bias's gradient is 0
    in exact arithmetic (softmax ignores a shift shared by every key) and rounding-sized here,
    and m / 1e-15 turns that noise into steps of ~1e-8, different on both sides."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0 to compare")
    from test_against_pytorch import CONFIG

    model = GPT(**CONFIG, dtype="float64", seed=0)
    start = {name: p.copy() for name, p in model.params.items()}
    cfg = resolve({"optimizer": "sophia", "sophia_hessian_interval": 3, "sophia_rho": 20.0, "betas": (0.965, 0.99),
                   "eps": 1e-8, "weight_decay": 0.1, "max_grad_norm": 1.0, "seed": 5})
    drawn = []  # the labels nanollm samples, micro-batch by micro-batch, handed to the reference

    def recording(*args):
        drawn.append(sample_labels(*args))
        return drawn[-1]

    monkeypatch.setattr(sophia_module, "sample_labels", recording)
    training = TrainingStep(model, cfg)
    rng, steps = np.random.default_rng(1), []
    for index in range(10):
        idx = rng.integers(0, CONFIG["vocab_size"], size=(6, 16))
        targets = rng.integers(0, CONFIG["vocab_size"], size=(6, 16))
        targets[1, :5] = targets[4, 10:] = IGNORE_INDEX
        lr = 3e-3 * (1 - index / 20)
        before = len(drawn)
        training(index, [(idx[:3], targets[:3]), (idx[3:], targets[3:])], lr)
        labels = np.concatenate(drawn[before:]) if len(drawn) > before else None
        assert (labels is not None) == ((index + 1) % 3 == 0)
        steps.append((idx, targets, lr, labels))
    assert all(np.array_equal(labels == IGNORE_INDEX, targets == IGNORE_INDEX)
               for _, targets, _, labels in steps if labels is not None)

    theirs, m, h, rho, eps = torch_sophia_reference(torch, start, steps, cfg)
    for name, p in model.params.items():
        np.testing.assert_allclose(p, theirs[name], rtol=0, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(training.states[name]["h"], h[name].numpy(), rtol=1e-9, atol=1e-20, err_msg=name)
    # both sides of the clip are exercised: coordinates at the full step lr and Newton-like ones
    bs = int((steps[-1][1] != IGNORE_INDEX).sum())
    clipped = float(sum((m[k].abs() >= rho * bs * h[k] + eps).sum() for k in m) / sum(v.numel() for v in m.values()))
    print(f"clipped fraction {clipped:.3f}")
    assert 0.1 < clipped < 0.9
    # a wrong constant in h (here 2) moves the parameters far beyond the tolerance
    wrong, *_ = torch_sophia_reference(torch, start, steps, cfg, hessian_factor=2.0)
    assert max(np.abs(model.params[name] - wrong[name]).max() for name in wrong) > 1e-5


# ------------------------------------------------------------------ the Gauss-Newton-Bartlett estimate

@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_sampled_labels_follow_the_softmax_and_never_draw_impossible_ones(dtype):
    logits = np.array([[0.0, 1.0, 2.0, -1.0, 0.5, -200.0],
                       [3.0, 3.0, 3.0, 3.0, 3.0, 3.0],
                       [-5.0, 4.0, 0.0, 1.0, -30.0, 2.0]], dtype=dtype)      # (3, V=6)
    draws = 20_000
    uniforms = np.random.default_rng(0).random((draws, 3))
    labels = sample_labels(np.broadcast_to(logits, (draws, 3, 6)), np.zeros((draws, 3), dtype=np.int64), uniforms)
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    frequencies = np.stack([np.bincount(labels[:, row], minlength=6) / draws for row in range(3)])
    # binomial standard deviation <= sqrt(0.25 / 20000) = 0.0035: 0.015 is four of them
    np.testing.assert_allclose(frequencies, p, atol=0.015)
    assert frequencies[0, 5] == 0 and labels.min() >= 0 and labels.max() <= 5


def test_masked_targets_stay_masked_and_are_not_sampled():
    logits = np.random.default_rng(0).normal(size=(2, 4, 7))
    targets = np.array([[1, IGNORE_INDEX, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 0, 6]])
    labels = sample_labels(logits, targets, np.full((2, 4), 0.5))
    assert np.array_equal(labels == IGNORE_INDEX, targets == IGNORE_INDEX)


def test_the_estimate_averages_to_the_gauss_newton_diagonal():
    """Bartlett: E[N * g_hat^2] = diag(J^T (diag(p) - p p^T) J) / N summed over the N counted
    targets, g_hat the mean loss's gradient against labels drawn from p. The exact side sums
    p(y) * (gradient of target n's loss for label y)^2 over every n and y (one backward each);
    the sampled side is sampled_loss_and_backward, as training calls it, over many draws. A
    wrong count (a masked target sampled, N - 1, N^2) or a wrong sampling law misses."""
    model = GPT(vocab_size=5, embedding_dim=8, num_layers=1, num_heads=2, ffn_hidden_dim=16, max_seq_len=4,
                dtype="float64", seed=3)
    inputs = np.array([[0, 1, 2, 3], [4, 3, 2, 1]])
    targets = np.array([[1, 2, 3, 4], [IGNORE_INDEX, 0, 1, 2]])
    counted = [(b, t) for b in range(2) for t in range(4) if targets[b, t] != IGNORE_INDEX]
    n = len(counted)
    exact = {name: np.zeros_like(p) for name, p in model.params.items()}
    for b, t in counted:
        for y in range(5):
            logits, _ = model.forward(inputs)
            z = logits[b, t]
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            dlogits = np.zeros_like(logits)
            dlogits[b, t] = p - np.eye(5)[y]  # the gradient of -log p_y at target (b, t)
            for name, g in model.backward(dlogits=dlogits).items():
                exact[name] += p[y] * g * g / n
    draws = 3000
    estimate = {name: np.zeros_like(p) for name, p in model.params.items()}
    loss_and_backward = sampled_loss_and_backward(model, np.random.default_rng(0))
    for _ in range(draws):
        _, grads, _ = loss_and_backward(inputs, targets, 1.0)
        for name, g in grads.items():
            estimate[name] += n * g * g / draws
    total_exact = sum(v.sum() for v in exact.values())
    total_estimate = sum(v.sum() for v in estimate.values())
    l1 = sum(np.abs(estimate[k] - exact[k]).sum() for k in exact) / total_exact
    # measured: 0.995 and 0.017 (3000 draws); a wrong count is off by 1/7 = 14% or more
    assert abs(total_estimate / total_exact - 1) < 0.04 and l1 < 0.05, (total_estimate / total_exact, l1)


# ------------------------------------------------------------------ training

def quiet(**cfg):
    return {"optimizer": "sophia", "log_interval": 0, "eval_steps": 2, "batch_size": 4, **cfg}


def test_a_small_model_learns_with_sophia(ids_and_tokenizer):
    ids, tokenizer = ids_and_tokenizer
    model = TransformerLanguageModel(tokenizer.vocab_size, embedding_dim=32, num_layers=2, num_heads=4,
                                     ffn_hidden_dim=64, max_seq_len=32, seed=0)
    results = train_with_config(model, ids, quiet(num_steps=60, batch_size=8, learning_rate=3e-3, eval_steps=4,
                                                  sophia_hessian_interval=5))
    history = results["history"]
    assert results["final_loss"] < 0.8 * history[0]["loss"] and math.isfinite(results["final_val_loss"])  # 0.73 here


def test_the_hessian_pass_leaves_the_steps_loss_accuracy_and_gradient_alone(ids_and_tokenizer):
    """Step 0 updates the same way whatever the interval (h is 0 until an estimate): with an
    estimate right after it (interval 1) and without (interval 100) the step reports the same
    real-label loss, accuracy, gradient norm and gradient buffer, and only the first has an h."""
    ids, tokenizer = ids_and_tokenizer
    batches = [(ids[i:i + 16][None], ids[i + 1:i + 17][None]) for i in (0, 40, 80)]
    seen = []
    for interval in (1, 100):
        model = tiny_model(tokenizer.vocab_size)
        training = TrainingStep(model, resolve(quiet(sophia_hessian_interval=interval)))
        loss, norm, windows = training(0, batches, 1e-3)
        seen.append((loss, norm, windows, training.accuracy, training.buffer.flat.copy(), training.states))
    (loss, norm, windows, accuracy, flat, estimated), (*expected, _) = seen
    assert (loss, norm, windows, accuracy) == tuple(expected[:4]) and np.array_equal(flat, expected[4])
    assert all(state["h"].any() for state in estimated.values())
    assert not any(state["h"].any() for state in seen[1][5].values())


def test_the_hessian_is_estimated_every_interval_steps_only(ids_and_tokenizer, monkeypatch):
    ids, tokenizer = ids_and_tokenizer
    estimated_after = []
    original = TrainingStep.estimate_hessian
    monkeypatch.setattr(TrainingStep, "estimate_hessian",
                        lambda self, index, batches: estimated_after.append(index + 1) or original(self, index, batches))
    train_with_config(tiny_model(tokenizer.vocab_size), ids, quiet(num_steps=10, sophia_hessian_interval=3))
    assert estimated_after == [3, 6, 9]


def test_checkpoints_hold_sophias_m_and_h(ids_and_tokenizer, tmp_path):
    """What a resume needs (tests/test_train.py resumes sophia runs bit for bit): every trainable
    parameter's m and h, h estimated (non-zero), and the step count."""
    from nanollm import load_checkpoint

    ids, tokenizer = ids_and_tokenizer
    model = tiny_model(tokenizer.vocab_size, seed=1)
    train_with_config(model, ids[:700], quiet(num_steps=12, sophia_hessian_interval=3, checkpoint_dir=str(tmp_path)))
    states = {name: {"m": None, "h": None, "step": 0} for name in model.trainable}
    load_checkpoint(tmp_path / "checkpoint_final.npz", optimizer_state=states)
    assert all(state["h"].any() and state["m"].any() and state["step"] == 12 for state in states.values())


# ------------------------------------------------------------------ ranks, precision, LoRA, config

class ThreadRanks:
    """Ranks as threads of this process, for TrainingStep's one collective: allreduce_sum adds
    every rank's buffer in rank order (as MPI would, bit for bit the same on every rank)."""

    def __init__(self, size):
        self.size, self.barrier, self.buffers = size, threading.Barrier(size, timeout=60), [None] * size

    def rank(self, rank):
        group = self

        class Rank:
            size, is_root = group.size, rank == 0

            def allreduce_sum(self, buffer):
                group.buffers[rank] = buffer.copy()
                group.barrier.wait()
                total = sum(group.buffers[1:], group.buffers[0].copy())
                group.barrier.wait()
                buffer[...] = total

        Rank.rank = rank
        return Rank()


def test_ranks_sample_their_own_labels_and_hold_the_same_hessian(ids_and_tokenizer, monkeypatch):
    """Two ranks on different windows: each draws its own labels (its rank is in the label
    stream's seed), and the Hessian gradient goes through the step's Allreduce, so h, and with
    it every later step, is the same bit for bit on both."""
    ids, tokenizer = ids_and_tokenizer
    cfg = resolve(quiet(sophia_hessian_interval=2))
    ranks, drawn = ThreadRanks(2), {0: [], 1: []}
    original = sophia_module.label_stream
    monkeypatch.setattr(sophia_module, "label_stream", lambda seed, rank, index: (
        drawn[rank].append(original(seed, rank, index).random()) or original(seed, rank, index)))
    monkeypatch.setattr(step_module, "label_stream", sophia_module.label_stream)
    models = [tiny_model(tokenizer.vocab_size, seed=4) for _ in range(2)]
    steps = [TrainingStep(models[r], cfg, ranks.rank(r)) for r in range(2)]
    errors = []

    def run(rank):
        try:
            for index in range(5):
                starts = 100 * index + 50 * rank + np.arange(2) * 20
                batches = [(np.stack([ids[s:s + 16] for s in starts]), np.stack([ids[s + 1:s + 17] for s in starts]))]
                steps[rank](index, batches, 3e-3)
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)
            ranks.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(drawn[0]) == len(drawn[1]) == 2 and drawn[0] != drawn[1]
    for name in models[0].trainable:
        assert np.array_equal(models[0].params[name], models[1].params[name]), name
        assert np.array_equal(steps[0].states[name]["h"], steps[1].states[name]["h"]) and steps[0].states[name]["h"].any()


@pytest.mark.parametrize("dtype", [
    "float16",
    pytest.param("bfloat16", marks=pytest.mark.skipif(importlib.util.find_spec("ml_dtypes") is None,
                                                     reason="bfloat16 needs ml_dtypes (pip install ml_dtypes)")),
])
def test_half_precision_compute_estimates_a_finite_hessian_and_learns(ids_and_tokenizer, dtype):
    """The sampled-label pass computes in the half copy like the real one (float16: its
    gradient scaled by the loss scale, divided out before squaring)."""
    ids, tokenizer = ids_and_tokenizer
    model = tiny_model(tokenizer.vocab_size)
    results = train_with_config(model, ids, quiet(num_steps=12, backend="numpy", dtype=dtype, learning_rate=3e-3,
                                                  sophia_hessian_interval=4, eval_interval=0, val_fraction=0.0))
    assert all(p.dtype == np.float32 for p in model.params.values())
    assert results["final_loss"] < results["history"][0]["loss"]


@pytest.fixture()
def numpy_backend():
    """The NumPy reference backend, the one that computes in half precision on the CPU."""
    previous = backends.current_name()
    yield backends.use("numpy")
    backends.use(previous)


def test_float16s_hessian_equals_float32s_to_half_precision(ids_and_tokenizer, numpy_backend):
    """h is the squared mean gradient, not the loss scale's square times it (2^32 too large)."""
    ids, tokenizer = ids_and_tokenizer
    batches = [(ids[i:i + 16][None], ids[i + 1:i + 17][None]) for i in (0, 40, 80, 120)]
    h = {}
    for dtype in ("float32", "float16"):
        model = tiny_model(tokenizer.vocab_size)
        training = TrainingStep(model, resolve(quiet(backend="numpy", dtype=dtype, sophia_hessian_interval=1)))
        training(0, batches, 1e-3)
        h[dtype] = np.concatenate([s["h"].ravel() for s in training.states.values()])
    assert np.abs(h["float16"] - h["float32"]).max() < 0.02 * np.abs(h["float32"]).max()


def test_with_lora_only_the_adapters_keep_sophia_state(ids_and_tokenizer):
    ids, tokenizer = ids_and_tokenizer
    model = tiny_model(tokenizer.vocab_size)
    frozen = {name: p.copy() for name, p in model.params.items()}
    train_with_config(model, ids, quiet(num_steps=4, lora_rank=2, sophia_hessian_interval=2))
    training = TrainingStep(model, resolve(quiet(lora_rank=2)))
    assert set(training.states) == set(model.trainable) and all("h" in s for s in training.states.values())
    assert all(np.array_equal(model.params[name], p) for name, p in frozen.items())  # the base stays


@pytest.mark.parametrize("change, message", [
    ({"sophia_rho": 0}, "sophia_rho must be > 0, got 0"),
    ({"sophia_rho": -0.04}, "sophia_rho must be > 0, got -0.04"),
    ({"sophia_hessian_interval": 0}, "sophia_hessian_interval must be > 0, got 0"),
    ({"sophia_hessian_interval": 2.5}, "sophia_hessian_interval must be an integer, got 2.5"),
    ({"optimizer": "sofia"}, "optimizer='sofia' is not one of .*sophia"),
])
def test_bad_sophia_settings_are_one_line_errors(ids_and_tokenizer, change, message):
    ids, tokenizer = ids_and_tokenizer
    with pytest.raises(ValueError, match=message) as error:
        train_with_config(tiny_model(tokenizer.vocab_size), ids, quiet(num_steps=1, **change))
    assert "\n" not in str(error.value)


def _poison_backward(call):
    """A backward hook that puts a NaN into the gradient of the model's ``call``-th backward."""
    def hook(original_backward):
        calls = []

        def backward(dlogits=None, dloss=1.0):
            grads = original_backward(dlogits, dloss)
            calls.append(1)
            if len(calls) == call:
                grads["blocks.0.mlp.fc.bias"][0] = np.nan
            return grads
        return backward
    return hook


def test_on_the_gpus_path_sophia_trains_to_the_same_bits_and_a_diverged_run_estimates_nothing(ids_and_vocab,
                                                                                           monkeypatch):
    """Nothing in Sophia's update or estimate reads the device: a CPU run that takes the GPU's
    path (the guard read only at log steps) ends on the same bits. Two micro-batches a step and
    an estimate after steps 2, 4, ...: backward 7 is step 3's, and a NaN there is only found
    at step 5 on the GPU's path, after step 4 and its estimate ran: the guard skips that
    estimate too, so h is the one of step 2 on both paths. A NaN in an estimate's own gradient
    (backward 5) skips that estimate and nothing else: the run goes on."""
    from test_device_loop import CFG, GpuPath, _train

    original_init, original_read = train_module.Trainer.__init__, train_module.Trainer.read_guard
    path, trainers = GpuPath(), []

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.training_step.reads_every_step = not path.on
        trainers.append(self)

    def read_guard(self, step):
        path.reads.append(step + 1)
        return original_read(self, step)

    monkeypatch.setattr(train_module.Trainer, "__init__", init)
    monkeypatch.setattr(train_module.Trainer, "read_guard", read_guard)
    ids, vocab = ids_and_vocab
    cfg = {**CFG, "optimizer": "sophia", "sophia_hessian_interval": 2}
    runs = {}
    for on in (True, False):
        for poison in (None, 7, 5):
            path.on, path.reads = on, []
            model, results = _train(ids, vocab, cfg, poison and _poison_backward(poison))
            runs[on, poison] = (model, results, trainers[-1].training_step.states)
            if on and poison is None:
                assert path.reads == [1, 5, 10, 12]
    assert runs[True, 7][1]["diverged"] and runs[True, 7][1]["steps"] == 2
    assert not runs[True, 5][1]["diverged"] and runs[True, 5][1]["steps"] == 12
    for poison in (None, 7, 5):
        (ours, results, states), (theirs, expected, their_states) = runs[True, poison], runs[False, poison]
        assert [r["loss"] for r in results["history"]] == [r["loss"] for r in expected["history"]]
        for name, p in theirs.params.items():
            np.testing.assert_array_equal(ours.params[name], p, err_msg=name)
            np.testing.assert_array_equal(states[name]["h"], their_states[name]["h"], err_msg=name)
        assert all(state["h"].any() and np.isfinite(state["h"]).all() for state in states.values())
