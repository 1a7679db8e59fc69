"""Hugging Face Llama interop: names and layouts, config.json both ways, export/import through
files, and (with torch and transformers installed) LlamaForCausalLM on our exports and our
imports of its own saves, logits and greedy tokens compared."""

import numpy as np
import pytest

from nanollm import TransformerLanguageModel, load_checkpoint, save_checkpoint
from nanollm.generate import generate_ids
from nanollm.interop import (export_hf, from_hf_llama, hf_llama_config, import_hf, model_config_from_hf_llama,
                             to_hf_llama)
from nanollm.interop.hf import export_hf_gpt2

# GQA (4 query heads share 2 key/value heads), a rotary base and an epsilon that are not the defaults.
LLAMA = dict(vocab_size=50, embedding_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=16,
             ffn_hidden_dim=48, architecture="llama", rope_base=500.0, norm_eps=1e-6)


def llama_model(dtype="float32", seed=0, **overrides):
    model = TransformerLanguageModel(**{**LLAMA, **overrides}, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name, value in model.params.items():  # gains start at one: make every weight count
        if value.ndim == 1:
            model.params[name] = (value + 0.1 * rng.standard_normal(value.shape)).astype(dtype)
    return model


def random_batch(vocab_size=50, seed=1):
    return np.random.default_rng(seed).integers(0, vocab_size, size=(2, 16))  # (B, T)


def transformers_or_skip():
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("safetensors", reason="safetensors is not installed")
    return pytest.importorskip("transformers", reason="transformers is not installed")


@pytest.mark.parametrize("tied", [True, False])
def test_llama_names_round_trip_exactly(tied):
    model = llama_model(tie_embeddings=tied)
    hf = to_hf_llama(model.params, model.config)
    assert ("lm_head.weight" in hf) is not tied
    layer = "model.layers.1.self_attn."
    assert hf[layer + "q_proj.weight"].shape == (32, 32) and hf[layer + "k_proj.weight"].shape == (16, 32)
    assert hf["model.layers.0.mlp.down_proj.weight"].shape == (32, 48)  # (out, in)
    back = from_hf_llama(hf, model.config)
    assert sorted(back) == sorted(model.params)
    for name, value in model.params.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value), name


def test_llama_config_round_trip_and_refusals():
    model = llama_model(tie_embeddings=False)
    hf_config = hf_llama_config(model.config)
    assert hf_config["rms_norm_eps"] == 1e-6 and hf_config["rope_parameters"]["rope_theta"] == 500.0
    assert hf_config["num_key_value_heads"] == 2 and hf_config["tie_word_embeddings"] is False
    assert model_config_from_hf_llama(hf_config) == model.config
    with pytest.raises(ValueError, match="rope scaling 'yarn' is not supported"):
        model_config_from_hf_llama({**hf_config, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}})
    with pytest.raises(ValueError, match="attention_bias=True is not supported"):
        model_config_from_hf_llama({**hf_config, "attention_bias": True})
    with pytest.raises(ValueError, match="hidden_act='gelu' is not supported"):
        model_config_from_hf_llama({**hf_config, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="head_dim=16 != hidden_size / num_attention_heads = 8"):
        model_config_from_hf_llama({**hf_config, "head_dim": 16})
    with pytest.raises(ValueError, match="LoRA adapters.*merge them"):
        hf_llama_config({**model.config, "lora": {"rank": 2}})
    with pytest.raises(ValueError, match="cannot be exported as Llama"):
        hf_llama_config({**model.config, "architecture": "gpt2"})


def test_export_picks_the_architecture_and_refuses_the_wrong_format(tmp_path):
    pytest.importorskip("safetensors", reason="safetensors is not installed")
    checkpoint = save_checkpoint(tmp_path / "c.npz", llama_model())
    with pytest.raises(ValueError, match="architecture='llama', not 'gpt2'; export it with --format hf-llama"):
        export_hf_gpt2(checkpoint, tmp_path / "hf")
    written = export_hf(checkpoint, tmp_path / "hf")
    assert [p.name for p in written] == ["model.safetensors", "config.json"]
    with pytest.raises(FileExistsError, match="already exists"):
        export_hf(checkpoint, tmp_path / "hf")
    info = load_checkpoint(import_hf(tmp_path / "hf", tmp_path / "back.npz"))
    model = llama_model()
    assert info["model"].config == model.config
    for name, value in model.params.items():
        assert np.array_equal(info["model"].params[name], value), name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("tied", [True, False])
def test_hf_llama_from_pretrained_gives_nanollm_logits(tmp_path, dtype, tied):
    transformers = transformers_or_skip()
    import torch

    model = llama_model(dtype=dtype, tie_embeddings=tied).eval()
    export_hf(save_checkpoint(tmp_path / "c.npz", model), tmp_path / "hf", architecture="llama")
    hf_model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=getattr(torch, dtype)).eval()
    assert hf_model.config.tie_word_embeddings is tied
    if dtype == "float64":
        float64_rotary_angles_and_norms(hf_model, torch)
    idx = random_batch()
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(idx)).logits.numpy()  # (B, T, V)
    ours, _ = model.forward(idx)
    assert theirs.dtype == ours.dtype
    relative = np.abs(theirs - ours).max() / np.abs(ours).max()
    assert relative < (1e-4 if dtype == "float32" else 1e-10), relative


def float64_rotary_angles_and_norms(hf_model, torch):
    """transformers' Llama computes its rotary angles and its RMSNorm in float32 whatever the
    model's dtype (relative logits error ~7e-8 here): give it float64 ones, the same formulas, so
    that a float64 comparison means float64."""
    for module in hf_model.modules():
        if type(module).__name__ == "LlamaRMSNorm":
            def norm(x, module=module):
                return module.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon))
            module.forward = norm
    rotary = hf_model.model.rotary_emb
    head_dim = hf_model.config.head_dim
    inverse_frequency = hf_model.config.rope_parameters["rope_theta"] ** (
        -torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)

    def forward(x, position_ids):
        angles = position_ids[..., None].double() * inverse_frequency  # (B, T, hd/2)
        both = torch.cat((angles, angles), dim=-1)
        return both.cos().to(x.dtype), both.sin().to(x.dtype)

    rotary.forward = forward


def small_hf_llama(transformers, seed=0, **overrides):
    import torch

    torch.manual_seed(seed)
    settings = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=16, rope_theta=500.0,
                    tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**settings, **overrides})).eval()
    with torch.no_grad():  # norms start at one: make every weight count
        for p in hf_model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf_model


@pytest.mark.parametrize("save_as", ["float32", "bfloat16-sharded"])
def test_hf_saved_llama_imports_with_the_same_logits_and_greedy_tokens(tmp_path, save_as):
    transformers = transformers_or_skip()
    import torch

    hf_model = small_hf_llama(transformers)  # transformers' default rms_norm_eps, 1e-6
    if save_as == "bfloat16-sharded":
        hf_model = hf_model.to(torch.bfloat16)
        hf_model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
        assert not (tmp_path / "hf" / "model.safetensors").exists()
        # bfloat16 values are exact in float32: compare in float32, loaded afresh (.float() would
        # keep the rotary inv_freq buffer rounded to bfloat16)
        hf_model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    else:
        hf_model.save_pretrained(tmp_path / "hf")
    model = load_checkpoint(import_hf(tmp_path / "hf", tmp_path / "c.npz"))["model"].eval()
    assert model.dtype == "float32" and model.config["norm_eps"] == 1e-6 and model.config["num_kv_heads"] == 2
    idx = random_batch()
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(idx)).logits.numpy()
    ours = model.forward(idx)[0]
    assert np.abs(theirs - ours).max() / np.abs(theirs).max() < 1e-5
    prompt = [3, 1, 4, 1, 5]
    with torch.no_grad():
        their_tokens = hf_model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                                         min_new_tokens=10)[0].tolist()
    assert generate_ids(model, prompt, 10, temperature=0) == their_tokens


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_hf_llama_export_tokenizer_loads_in_autotokenizer_with_our_ids(tmp_path, kind):
    transformers = transformers_or_skip()
    pytest.importorskip("tokenizers", reason="tokenizers is not installed")
    from nanollm import BPETokenizer, CharTokenizer

    text = ("First Citizen:\nBefore we proceed any further, hear me speak.\n"
            "def f(x):\n    return x ** 2  # émoji 🙂 and 漢字<|endoftext|>\n") * 4
    tok = (BPETokenizer(vocab_size=300) if kind == "bpe" else CharTokenizer(special_tokens=("<|endoftext|>",))
           ).build_vocab(text=text)
    model = llama_model(vocab_size=tok.vocab_size)
    written = export_hf(save_checkpoint(tmp_path / "c.npz", model, tokenizer=tok), tmp_path / "hf")
    assert {p.name for p in written} == {"model.safetensors", "config.json", "nanollm_tokenizer.json",
                                         "tokenizer.json"}
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert theirs.encode(text) == tok.encode(text)
    assert theirs.decode(tok.encode(text)) == text
    back = load_checkpoint(import_hf(tmp_path / "hf", tmp_path / "back.npz"))["tokenizer"]
    assert back.to_dict() == tok.to_dict()
