"""llm.c's check, done at least as strictly: the same GPT written in PyTorch, from the same
weights, must give the same logits, loss, every parameter gradient, and ten AdamW steps.

PyTorch is an optional test-time comparison (`pip install torch==2.13.0`), never a dependency:
without it these tests skip with that reason.
"""

import numpy as np
import pytest

from nanollm import GPT
from nanollm.optim import adamw_init, adamw_update

torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0 to compare")
F = torch.nn.functional

CONFIG = dict(vocab_size=65, embedding_dim=32, num_layers=2, ffn_hidden_dim=80, num_heads=4,
              num_kv_heads=2, max_seq_len=16)
# (rtol, atol) per dtype for logits/loss/gradients/parameters after ten steps.
TOLERANCE = {"float64": (1e-9, 1e-11), "float32": (2e-4, 2e-5)}


def torch_gpt_loss(p, idx, targets, cfg):
    """The reference: GPT-2 in plain PyTorch, using the same parameter names and layouts."""
    b, t = idx.shape
    c, h, h_kv = cfg["embedding_dim"], cfg["num_heads"], cfg["num_kv_heads"]
    hd = c // h
    x = p["wte"][idx] + p["wpe"][:t]
    for layer in range(cfg["num_layers"]):
        w = {k.split(".", 2)[2]: v for k, v in p.items() if k.startswith(f"blocks.{layer}.")}
        a = F.layer_norm(x, (c,), w["ln1.weight"], w["ln1.bias"], eps=1e-5)
        qkv = a @ w["attn.qkv.weight"] + w["attn.qkv.bias"]
        q, k, v = qkv.split([h * hd, h_kv * hd, h_kv * hd], dim=-1)
        q = q.view(b, t, h, hd).transpose(1, 2)
        k = k.view(b, t, h_kv, hd).transpose(1, 2).repeat_interleave(h // h_kv, dim=1)
        v = v.view(b, t, h_kv, hd).transpose(1, 2).repeat_interleave(h // h_kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + y @ w["attn.proj.weight"] + w["attn.proj.bias"]
        m = F.layer_norm(x, (c,), w["ln2.weight"], w["ln2.bias"], eps=1e-5)
        m = F.gelu(m @ w["mlp.fc.weight"] + w["mlp.fc.bias"], approximate="tanh")
        x = x + m @ w["mlp.proj.weight"] + w["mlp.proj.bias"]
    x = F.layer_norm(x, (c,), p["ln_f.weight"], p["ln_f.bias"], eps=1e-5)
    logits = x @ p["wte"].T
    loss = F.cross_entropy(logits.reshape(-1, cfg["vocab_size"]), targets.reshape(-1), ignore_index=-100)
    return logits, loss


def make_case(dtype):
    model = GPT(**CONFIG, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 65, size=(3, 16))
    targets = rng.integers(0, 65, size=(3, 16))
    targets[1, :5] = -100
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    return model, idx, targets, tparams


def assert_close(ours, theirs, dtype, what):
    rtol, atol = TOLERANCE[dtype]
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=rtol, atol=atol, err_msg=what)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_logits_loss_and_every_gradient_match_pytorch(dtype):
    model, idx, targets, tparams = make_case(dtype)
    logits, loss = model.forward(idx, targets)
    grads = model.backward()
    tlogits, tloss = torch_gpt_loss(tparams, torch.tensor(idx), torch.tensor(targets), CONFIG)
    tloss.backward()
    assert_close(logits, tlogits, dtype, "logits")
    assert_close(loss, tloss, dtype, "loss")
    for name in model.params:
        assert_close(grads[name], tparams[name].grad, dtype, f"gradient of {name}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ten_adamw_steps_match_pytorch(dtype):
    model, idx, targets, tparams = make_case(dtype)
    hyper = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    decay = [p for k, p in tparams.items() if tparams[k].ndim == 2]
    no_decay = [p for k, p in tparams.items() if tparams[k].ndim != 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}], **hyper)
    states = {k: adamw_init(p) for k, p in model.params.items()}
    for step in range(10):
        _, loss = model.forward(idx, targets)
        for name, g in model.backward().items():
            adamw_update(model.params[name], g, states[name], lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8,
                         weight_decay=0.1 if g.ndim == 2 else 0.0)
        optimizer.zero_grad()
        _, tloss = torch_gpt_loss(tparams, torch.tensor(idx), torch.tensor(targets), CONFIG)
        tloss.backward()
        optimizer.step()
        assert_close(loss, tloss, dtype, f"loss at step {step}")
    for name in model.params:
        assert_close(model.params[name], tparams[name], dtype, f"{name} after ten AdamW steps")
