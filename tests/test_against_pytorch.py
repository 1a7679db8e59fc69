"""llm.c's check, done at least as strictly: the same GPT written in PyTorch, from the same
weights, must give the same logits, loss, every parameter gradient, and ten AdamW steps; and
Muon's steps equal torch.optim.Muon's, on single matrices and on the GPT (Muon + AdamW).

PyTorch is an optional test-time comparison (`pip install torch==2.13.0`), never a dependency:
without it these tests skip with that reason.
"""

import numpy as np
import pytest

from nanollm import GPT
from nanollm.config import resolve
from nanollm.optim import (
    adamw_init,
    adamw_update,
    decays,
    muon_init,
    muon_update,
    rule_for,
    uses_muon,
)

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


# After ten float32 AdamW steps an element whose gradient is ~0 moves by m / (sqrt(v) + eps), a
# ratio of two rounding-sized numbers: matmul kernels that round differently (BLAS, numba) move it
# by a different part of one step (lr = 3e-3). Seen here: 2.06e-5 on one of 64 biases, under the
# auto backend. 1e-4 (3% of one step) still fails any error in the rule itself (a wrong bias
# correction or lr is a whole step's worth on every element).
ADAMW_FLOAT32_ATOL = 1e-4


def assert_close(ours, theirs, dtype, what, atol=None):
    rtol, default_atol = TOLERANCE[dtype]
    atol = default_atol if atol is None else atol
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
        assert_close(model.params[name], tparams[name], dtype, f"{name} after ten AdamW steps",
                     atol=ADAMW_FLOAT32_ATOL if dtype == "float32" else None)


# ------------------------------------------------------------------------- Muon
# torch.optim.Muon runs its Newton-Schulz iteration in bfloat16 (grad.bfloat16()); nanollm runs
# it in the parameter's dtype. With that one cast made a copy in the same dtype, torch's own code
# computes what nanollm computes, and float64 can be compared tightly; unpatched, the two agree
# to bfloat16's precision.

MUON_SHAPES = [(8, 24), (24, 8), (16, 16)]   # nanollm's (in, out): widening, narrowing, square


@pytest.fixture()
def torch_muon_in_float64(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self, *args, **kwargs: self.clone())


def ten_muon_steps(shape, hyper, torch_hyper):
    """(ours, torch's) weight after ten steps from the same start and gradients; torch's weight
    is the (out, in) transpose of ours, as nn.Linear stores it."""
    rng = np.random.default_rng(0)
    p = rng.normal(size=shape)                               # (in, out)
    tp = torch.tensor(p.T.copy(), requires_grad=True)        # (out, in)
    topt = torch.optim.Muon([tp], **torch_hyper)
    state = muon_init(p)
    for _ in range(10):
        g = rng.normal(size=shape)
        muon_update(p, g, state, **hyper)
        tp.grad = torch.tensor(g.T.copy())
        topt.step()
    return p, tp.detach().numpy().T


@pytest.mark.parametrize("shape", MUON_SHAPES)
@pytest.mark.parametrize("nesterov, adjust_lr", [(True, None), (False, None), (True, "match_rms_adamw")])
def test_ten_muon_steps_match_pytorch_in_float64(shape, nesterov, adjust_lr, torch_muon_in_float64):
    ours, theirs = ten_muon_steps(
        shape, {"lr": 0.02, "momentum": 0.95, "nesterov": nesterov, "weight_decay": 0.1,
                "adjust_lr": adjust_lr or "original"},
        {"lr": 0.02, "momentum": 0.95, "nesterov": nesterov, "weight_decay": 0.1, "adjust_lr_fn": adjust_lr})
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-14)   # weights ~1; measured <= 9e-16, rounding


@pytest.mark.parametrize("shape", MUON_SHAPES)
def test_muon_matches_unpatched_pytorch_to_bfloat16_precision(shape):
    start = np.random.default_rng(0).normal(size=shape)
    defaults = {"lr": 0.02, "weight_decay": 0.1}   # momentum 0.95, Nesterov, 5 steps, "original" on both sides
    ours, theirs = ten_muon_steps(shape, defaults, defaults)
    moved = np.abs(ours - start).max()
    assert moved > 0.1   # ten steps of about 0.02 each
    assert np.abs(ours - theirs).max() < 0.02 * moved   # bfloat16 keeps 8 bits; measured under 0.8%


def test_ten_muon_steps_on_the_gpt_match_pytorch(torch_muon_in_float64):
    """optimizer="muon" as training applies it (rule_for, decays): Muon on the hidden matrices,
    given to torch as (out, in) leaves, AdamW on the rest; float64."""
    model, idx, targets, tparams = make_case("float64")
    cfg = resolve({"optimizer": "muon", "learning_rate": 3e-3, "muon_learning_rate": 0.02, "betas": (0.9, 0.95),
                   "eps": 1e-8, "weight_decay": 0.1})
    rules = {name: rule_for(name, p, cfg) for name, p in model.params.items()}
    states = {name: rule.optimizer.init(model.params[name]) for name, rule in rules.items()}
    matrices = {name: torch.tensor(model.params[name].T.copy(), requires_grad=True)
                for name, p in model.params.items() if uses_muon(name, p)}   # (out, in), as nn.Linear
    muon = torch.optim.Muon(list(matrices.values()), lr=0.02, weight_decay=0.1, momentum=0.95)
    rest = [name for name in model.params if name not in matrices]
    adamw = torch.optim.AdamW([{"params": [tparams[n] for n in rest if decays(n, tparams[n])], "weight_decay": 0.1},
                               {"params": [tparams[n] for n in rest if not decays(n, tparams[n])], "weight_decay": 0.0}],
                              lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    for step in range(10):
        _, loss = model.forward(idx, targets)
        for name, g in model.backward().items():
            rule = rules[name]
            rule.optimizer.update(model.params[name], g, states[name], lr=3e-3 * rule.lr_factor,
                                  weight_decay=0.1 if decays(name, g) else 0.0, **rule.hyper)
        muon.zero_grad()
        adamw.zero_grad()
        _, tloss = torch_gpt_loss({**tparams, **{n: w.T for n, w in matrices.items()}}, torch.tensor(idx),
                                  torch.tensor(targets), CONFIG)
        tloss.backward()
        muon.step()
        adamw.step()
        assert_close(loss, tloss, "float64", f"loss at step {step}")
    for name in model.params:
        theirs = matrices[name].T if name in matrices else tparams[name]
        assert_close(model.params[name], theirs, "float64", f"{name} after ten Muon/AdamW steps")
