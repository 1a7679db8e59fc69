"""The Llama model against Hugging Face's LlamaForCausalLM (PyTorch): from the same weights, the
same logits, loss and every parameter gradient, with grouped-query attention, rotary
embeddings of a non-default base, and a tied or untied output layer.

transformers' Llama is the ecosystem's definition of the architecture, so agreeing with it
checks the conventions (half-split rotary pairs, which key/value head a query head reads,
RMSNorm's epsilon inside the square root) as well as the arithmetic. In float32 it runs as
shipped, to the GPT-2 test's float32 tolerance. Its RMSNorm and rotary angles compute in
float32 even for float64 weights, so the float64 run replaces those two functions with the
same formulas in the weights' dtype (``exact_float64_hf``), runs PyTorch's sdpa attention
(the eager path upcasts its softmax to float32) and holds everything to 1e-9.

Optional, as every PyTorch comparison: without torch and transformers these tests skip.
"""

import os

import numpy as np
import pytest

from nanollm import GPT

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach for the network
torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0 to compare")
transformers = pytest.importorskip("transformers", reason="transformers is not installed: pip install transformers")

CONFIG = dict(vocab_size=61, embedding_dim=32, num_layers=2, ffn_hidden_dim=72, num_heads=4, num_kv_heads=2,
              max_seq_len=12, architecture="llama", rope_base=500.0)
TOLERANCE = {"float64": (1e-9, 1e-11), "float32": (2e-4, 2e-5)}  # (rtol, atol)


@pytest.fixture
def exact_float64_hf(monkeypatch):
    """HF's LlamaRMSNorm and rotary embedding, with their float32 casts taken out (the same
    code otherwise), so a float64 model stays float64 throughout."""
    llama = transformers.models.llama.modeling_llama

    def rms_norm(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    @torch.no_grad()
    def rotary(self, x, position_ids):
        theta = self.config.rope_parameters["rope_theta"]
        dim = self.inv_freq.shape[0] * 2
        inv_freq = theta ** -(torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        freqs = position_ids[..., None].to(torch.float64) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    monkeypatch.setattr(llama.LlamaRMSNorm, "forward", rms_norm)
    monkeypatch.setattr(llama.LlamaRotaryEmbedding, "forward", rotary)


def hf_llama_from(model):
    """A LlamaForCausalLM holding ``model``'s weights (ours are (in, out), torch's Linear (out, in))."""
    c, heads, kv_heads = model.embedding_dim, model.num_heads, model.num_kv_heads
    hf_config = transformers.LlamaConfig(
        vocab_size=model.vocab_size, hidden_size=c, intermediate_size=model.ffn_hidden_dim,
        num_hidden_layers=model.num_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=model.max_seq_len, rms_norm_eps=1e-5, tie_word_embeddings=model.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": model.rope_base}, attention_bias=False,
        mlp_bias=False, hidden_act="silu")
    hf_config._attn_implementation = "sdpa"  # PyTorch's attention: in the weights' dtype (eager upcasts the softmax)
    hf = transformers.LlamaForCausalLM(hf_config).to(getattr(torch, model.dtype))
    q_end, k_end = heads * model.head_dim, (heads + kv_heads) * model.head_dim
    p = {name: torch.tensor(value) for name, value in model.params.items()}
    weights = {"model.embed_tokens.weight": p["wte"], "model.norm.weight": p["norm_f.weight"]}
    weights["lm_head.weight"] = p["wte"] if model.tie_embeddings else p["lm_head.weight"].T
    for layer in range(model.num_layers):
        ours, theirs = f"blocks.{layer}.", f"model.layers.{layer}."
        qkv = p[ours + "attn.qkv.weight"]
        weights.update({
            theirs + "input_layernorm.weight": p[ours + "norm1.weight"],
            theirs + "self_attn.q_proj.weight": qkv[:, :q_end].T,
            theirs + "self_attn.k_proj.weight": qkv[:, q_end:k_end].T,
            theirs + "self_attn.v_proj.weight": qkv[:, k_end:].T,
            theirs + "self_attn.o_proj.weight": p[ours + "attn.proj.weight"].T,
            theirs + "post_attention_layernorm.weight": p[ours + "norm2.weight"],
            theirs + "mlp.gate_proj.weight": p[ours + "mlp.gate.weight"].T,
            theirs + "mlp.up_proj.weight": p[ours + "mlp.up.weight"].T,
            theirs + "mlp.down_proj.weight": p[ours + "mlp.down.weight"].T,
        })
    state = hf.state_dict()
    assert set(state) == set(weights), set(state) ^ set(weights)
    hf.load_state_dict({name: value.contiguous() for name, value in weights.items()})
    return hf


def their_gradient(hf, name, tie_embeddings):
    """The gradient of HF's parameter that corresponds to nanollm's ``name``, in nanollm's layout."""
    if name == "wte":
        return hf.model.embed_tokens.weight.grad
    if name == "lm_head.weight":
        return hf.lm_head.weight.grad.T
    if name == "norm_f.weight":
        return hf.model.norm.weight.grad
    _, layer, *rest = name.split(".")
    block = hf.model.layers[int(layer)]
    suffix = ".".join(rest)
    if suffix == "attn.qkv.weight":
        attn = block.self_attn
        return torch.cat([attn.q_proj.weight.grad.T, attn.k_proj.weight.grad.T, attn.v_proj.weight.grad.T], dim=1)
    module = {"norm1.weight": block.input_layernorm, "norm2.weight": block.post_attention_layernorm,
              "attn.proj.weight": block.self_attn.o_proj, "mlp.gate.weight": block.mlp.gate_proj,
              "mlp.up.weight": block.mlp.up_proj, "mlp.down.weight": block.mlp.down_proj}[suffix]
    grad = module.weight.grad
    return grad if grad.ndim == 1 else grad.T


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_llama_logits_loss_and_every_gradient_match_hf_llama(dtype, tie_embeddings, request):
    if dtype == "float64":
        request.getfixturevalue("exact_float64_hf")
    model = GPT(**CONFIG, tie_embeddings=tie_embeddings, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    for p in model.params.values():  # away from the init: gains != 1, larger weights
        p += rng.normal(0.0, 0.1, size=p.shape).astype(dtype)
    idx = rng.integers(0, CONFIG["vocab_size"], size=(3, 12))
    targets = rng.integers(0, CONFIG["vocab_size"], size=(3, 12))
    targets[0, :4] = -100  # masked targets, as in instruction tuning
    logits, loss = model.forward(idx, targets)
    grads = model.backward()

    hf = hf_llama_from(model)
    their_logits = hf(torch.tensor(idx)).logits
    their_loss = torch.nn.functional.cross_entropy(their_logits.reshape(-1, CONFIG["vocab_size"]),
                                                   torch.tensor(targets).reshape(-1), ignore_index=-100)
    their_loss.backward()
    rtol, atol = TOLERANCE[dtype]
    np.testing.assert_allclose(logits, their_logits.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(float(loss), their_loss.item(), rtol=rtol, atol=atol)
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, their_gradient(hf, name, tie_embeddings).numpy(), rtol=rtol, atol=atol,
                                   err_msg=name)


def test_kv_cache_generation_matches_hf_greedy_generate():
    """Greedy decoding, 20 tokens: nanollm's KV-cache loop gives HF generate()'s tokens."""
    from nanollm.generate import generate_ids

    model = GPT(**{**CONFIG, "max_seq_len": 32}, dtype="float64", seed=1)
    for p in model.params.values():
        p *= 3
    hf = hf_llama_from(model)
    prompt = [5, 9, 2, 33]
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, use_cache=True,
                         pad_token_id=0, eos_token_id=None)[0].tolist()
    assert generate_ids(model, prompt, 20, temperature=0) == theirs
