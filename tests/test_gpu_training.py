"""The whole engine on a GPU (backend cupy) against the CPU's numpy_ref: the model's gradient
check in float64, logits, loss and every gradient, ten AdamW steps through train_with_config,
checkpoints that move between GPU and CPU, and mixed precision. These run only where CuPy sees
a GPU; elsewhere the module is skipped with the reason (the CPU side of the same code is
tested in test_device_loop.py and test_mixed_precision.py)."""

import numpy as np
import pytest

from nanollm import GPT, backends, load_checkpoint, train_with_config
from nanollm.gradcheck import check_gradients

REASON = backends.available()["cupy"]
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no GPU backend here: {REASON}")

TINY = dict(vocab_size=7, embedding_dim=8, num_layers=2, ffn_hidden_dim=12, num_heads=4, max_seq_len=5)
SMALL = dict(vocab_size=65, embedding_dim=32, num_layers=2, num_heads=4, ffn_hidden_dim=64, max_seq_len=32)


@pytest.fixture()
def on_gpu():
    """The cupy backend current for the test; the previous one restored after it."""
    import cupy

    previous = backends.current_name()
    backends.use("cupy")
    yield cupy
    backends.use(previous)


def perturbed(architecture, dtype="float64", seed=0, **overrides):
    model = GPT(**{**TINY, "architecture": architecture, "dtype": dtype, "seed": seed, "rope_base": 50.0, **overrides})
    rng = np.random.default_rng(seed)
    for p in model.params.values():
        p += rng.normal(0.0, 0.3, size=p.shape).astype(p.dtype)
    return model


def batch(seed=1, shape=(2, 5), vocab=7):
    rng = np.random.default_rng(seed)
    idx, targets = rng.integers(0, vocab, size=shape), rng.integers(0, vocab, size=shape)
    targets[0, 1] = -100  # an ignored target on the way
    return idx, targets


@pytest.mark.parametrize("architecture, num_kv_heads", [("gpt2", 4), ("gpt2", 1), ("llama", 2)])
def test_whole_model_gradient_check_on_the_gpu_in_float64(on_gpu, architecture, num_kv_heads):
    model = perturbed(architecture, num_kv_heads=num_kv_heads).to_device(on_gpu)
    idx, targets = batch()
    model.forward(idx, targets)
    grads = model.backward()
    assert all(type(g).__module__.startswith("cupy") for g in grads.values())
    errors = check_gradients(lambda: model.forward(idx, targets)[1], model.params, grads)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, f"worst: {worst} {errors[worst]:.2e}"


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-10), ("float32", 2e-4)])
@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_logits_loss_and_every_gradient_equal_the_cpu_reference(on_gpu, architecture, dtype, tolerance):
    cpu = perturbed(architecture, dtype)
    idx, targets = batch()
    backends.use("numpy")
    cpu_logits, cpu_loss = cpu.forward(idx, targets)
    cpu_grads = cpu.backward()
    backends.use("cupy")
    gpu = perturbed(architecture, dtype).to_device(on_gpu)
    logits, loss = gpu.forward(idx, targets)
    grads = gpu.backward()
    np.testing.assert_allclose(logits.get(), cpu_logits, rtol=tolerance, atol=tolerance)
    assert float(loss) == pytest.approx(float(cpu_loss), rel=tolerance)
    for name, g in cpu_grads.items():
        np.testing.assert_allclose(grads[name].get(), g, rtol=tolerance, atol=tolerance, err_msg=name)


def _ten_steps(backend, dtype="float64", **cfg):
    """Ten steps of train_with_config; dtype float16 / bfloat16 computes in half precision over
    float32 master weights."""
    model = GPT(**SMALL, dtype="float64" if dtype == "float64" else "float32", seed=0)
    cfg["dtype"] = dtype
    tokens = np.random.default_rng(0).integers(0, 65, size=5_000)
    results = train_with_config(model, tokens, {"backend": backend, "num_steps": 10, "batch_size": 4,
                                                "learning_rate": 3e-3, "val_fraction": 0.0, "log_interval": 0,
                                                "max_grad_norm": 0.1, **cfg})
    return model, results


def test_ten_adamw_steps_equal_the_cpu_reference_and_return_to_the_host():
    gpu_model, gpu = _ten_steps("cupy", grad_accum_steps=2)
    cpu_model, cpu = _ten_steps("numpy", grad_accum_steps=2)
    assert gpu["final_loss"] == pytest.approx(cpu["final_loss"], rel=1e-9)
    assert gpu["final_grad_norm"] == pytest.approx(cpu["final_grad_norm"], rel=1e-9)
    for name, p in cpu_model.params.items():
        assert isinstance(gpu_model.params[name], np.ndarray), "back on the host after training"
        np.testing.assert_allclose(gpu_model.params[name], p, rtol=1e-9, atol=1e-12, err_msg=name)


def test_a_gpu_checkpoint_loads_on_the_cpu_and_resumes_on_the_gpu(tmp_path):
    model, results = _ten_steps("cupy", dtype="float32", dropout=0.1, checkpoint_dir=str(tmp_path),
                                checkpoint_interval=5)
    cpu_model = GPT(**SMALL, seed=1)
    info = load_checkpoint(tmp_path / "checkpoint_final.npz", cpu_model)
    assert info["step"] == 10
    for name, p in model.params.items():
        np.testing.assert_array_equal(cpu_model.params[name], p, err_msg=name)
    resumed = GPT(**SMALL, seed=2)
    again = train_with_config(resumed, np.random.default_rng(0).integers(0, 65, size=5_000),
                              {"backend": "cupy", "num_steps": 10, "batch_size": 4, "learning_rate": 3e-3,
                               "val_fraction": 0.0, "log_interval": 0, "max_grad_norm": 0.1, "dropout": 0.1,
                               "checkpoint_dir": str(tmp_path),
                               "resume_from": str(tmp_path / "checkpoint_step_5.npz")})
    assert again["final_loss"] == results["final_loss"]  # the dropout stream resumed too
    for name, p in model.params.items():
        np.testing.assert_array_equal(resumed.params[name], p, err_msg=name)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_on_the_gpu_trains_like_float32(dtype):
    _, full = _ten_steps("cupy", dtype="float32")
    model, half = _ten_steps("cupy", dtype=dtype)
    assert all(p.dtype == np.float32 for p in model.params.values())
    assert half["final_loss"] == pytest.approx(full["final_loss"], abs=0.05)
