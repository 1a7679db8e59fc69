"""Hugging Face GPT-2 interop: name mapping, config translation, safetensors export/import, and
(when torch + transformers are installed) logits equal to GPT2LMHeadModel's. `pytest -k hf`
selects the tests that run transformers."""

import json
import os

import numpy as np
import pytest

from nanollm import CharTokenizer, TransformerLanguageModel, load_checkpoint, save_checkpoint
from nanollm.checkpoint import read_checkpoint
from nanollm.interop import (check_gpt2_compatible, export_hf_gpt2, from_hf_gpt2, hf_gpt2_config, import_hf_gpt2,
                             model_config_from_hf, to_hf_gpt2)
from nanollm.optim import OPTIMIZERS

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach for the network

SMALL = dict(vocab_size=50, embedding_dim=32, num_layers=2, num_heads=4, max_seq_len=16)
TEXT = "the quick brown fox jumps over the lazy dog.\nTHE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!?\n"


def small_model(dtype="float32", seed=0, **overrides):
    return TransformerLanguageModel(**{**SMALL, **overrides}, dtype=dtype, seed=seed)


def random_batch(vocab_size=50, seed=1):
    return np.random.default_rng(seed).integers(0, vocab_size, size=(2, 16))  # (B, T)


def transformers_or_skip():
    pytest.importorskip("torch", reason="torch is not installed")
    return pytest.importorskip("transformers", reason="transformers is not installed")


def assert_same_arrays(a, b):
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name]), name


# ----------------------------------------------------------------------------- names


def test_round_trip_of_params_grads_and_moments_passes_the_same_arrays():
    model = small_model()
    idx = random_batch()
    model.forward(idx, np.roll(idx, -1, axis=1))
    grads = model.backward()
    adamw = OPTIMIZERS["adamw"]
    states = {name: adamw.init(p) for name, p in model.params.items()}
    for name, p in model.params.items():
        adamw.update(p, grads[name], states[name], lr=1e-3, weight_decay=0.1)
    moments = {key: {name: s[key] for name, s in states.items()} for key in ("m", "v")}
    for arrays in (model.params, grads, moments["m"], moments["v"]):
        hf = to_hf_gpt2(arrays, model.config)
        assert "lm_head.weight" not in hf and len(hf) == len(arrays)
        assert hf["transformer.h.1.attn.c_attn.weight"] is arrays["blocks.1.attn.qkv.weight"]  # no copy
        back = from_hf_gpt2(hf, model.config)
        assert_same_arrays(back, arrays)
        assert all(back[name] is arrays[name] for name in arrays)
    assert to_hf_gpt2({"wte": model.params["wte"]}, model.config) == {"transformer.wte.weight": model.params["wte"]}


def test_hf_names_and_shapes_equal_transformers_state_dict():
    transformers = transformers_or_skip()
    model = small_model(ffn_hidden_dim=48)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_gpt2_config(model.config)))
    buffers = (["attn", "bias"], ["attn", "masked_bias"])  # causal-mask buffers, where a version keeps them
    expected = {name: tuple(t.shape) for name, t in hf_model.state_dict().items()
                if name != "lm_head.weight" and name.split(".")[-2:] not in buffers}
    ours = {name: tuple(a.shape) for name, a in to_hf_gpt2(model.params, model.config).items()}
    assert ours == expected


def test_hub_names_are_taken_buffers_skipped_and_the_tied_head_checked():
    model = small_model()
    hub = {name[len("transformer."):]: value for name, value in to_hf_gpt2(model.params, model.config).items()}
    assert "h.0.attn.c_attn.weight" in hub and "wte.weight" in hub
    hub["h.0.attn.bias"] = np.tril(np.ones((1, 1, 16, 16)))  # old checkpoints' causal-mask buffers
    hub["h.1.attn.masked_bias"] = np.array(-1e4)
    hub["lm_head.weight"] = model.params["wte"].copy()
    assert_same_arrays(from_hf_gpt2(hub), model.params)
    hub["lm_head.weight"] = hub["lm_head.weight"] + 1.0
    with pytest.raises(ValueError, match="untied output layers are not supported"):
        from_hf_gpt2(hub)
    both = {"wte.weight": model.params["wte"], "transformer.wte.weight": model.params["wte"]}
    with pytest.raises(ValueError, match="same weight"):
        from_hf_gpt2(both)


def test_gqa_other_architectures_unknown_names_and_wrong_shapes_are_refused():
    gqa = small_model(num_kv_heads=2)
    for call in (lambda: to_hf_gpt2(gqa.params, gqa.config), lambda: hf_gpt2_config(gqa.config),
                 lambda: check_gpt2_compatible(gqa.config)):
        with pytest.raises(ValueError, match="grouped-query attention"):
            call()
    model = small_model()
    with pytest.raises(ValueError, match="architecture='llama'"):
        to_hf_gpt2(model.params, {**model.config, "architecture": "llama"})
    for bad in ("blocks.0.attn.query.weight", "blocks.2.ln1.weight", "blocks.01.ln1.weight", "lm_head"):
        with pytest.raises(ValueError, match=f"unknown parameter name '{bad}'"):
            to_hf_gpt2({bad: model.params["ln_f.bias"]}, model.config)
    for bad in ("transformer.h.0.attn.q_proj.weight", "model.embed_tokens.weight"):
        with pytest.raises(ValueError, match=f"unknown GPT-2 weight name '{bad}'"):
            from_hf_gpt2({bad: np.zeros(3)})
    with pytest.raises(ValueError, match="unknown GPT-2 weight name 'h.2.ln_1.weight'"):
        from_hf_gpt2({"h.2.ln_1.weight": np.zeros(32)}, model.config)  # a layer the config does not have
    with pytest.raises(ValueError, match=r"has shape \(32, 32\) but the config says \(32, 96\)"):
        to_hf_gpt2({"blocks.0.attn.qkv.weight": np.zeros((32, 32))}, model.config)


# ----------------------------------------------------------------------------- config


def test_config_round_trip_and_refusals():
    config = small_model(ffn_hidden_dim=48, dtype="float64", dropout=0.1).config
    hf = hf_gpt2_config(config)
    assert hf["n_inner"] == 48 and hf["dtype"] == hf["torch_dtype"] == "float64" and hf["nanollm"] == config
    assert json.loads(json.dumps(hf)) == hf
    with pytest.raises(ValueError, match="lacks integer ffn_hidden_dim"):
        hf_gpt2_config({**config, "ffn_hidden_dim": None})
    assert model_config_from_hf(hf) == config
    hub_like = {"model_type": "gpt2", "vocab_size": 50, "n_positions": 16, "n_embd": 32, "n_layer": 2,
                "n_head": 4, "n_inner": None, "torch_dtype": "float16"}
    imported = model_config_from_hf(hub_like)
    assert imported["ffn_hidden_dim"] == 128 and imported["dtype"] == "float32" and imported["num_kv_heads"] == 4
    refusals = {"activation_function": ("relu", "activation_function='relu'"),
                "tie_word_embeddings": (False, "untied output layers"),
                "scale_attn_by_inverse_layer_idx": (True, "scale_attn_by_inverse_layer_idx"),
                "reorder_and_upcast_attn": (True, "reorder_and_upcast_attn"),
                "model_type": ("llama", "model_type='llama'")}
    for key, (value, message) in refusals.items():
        with pytest.raises(ValueError, match=message):
            model_config_from_hf({**hub_like, key: value})
    assert model_config_from_hf({**hub_like, "activation_function": "gelu_pytorch_tanh"}) == imported


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_export_import_round_trip_through_files(tmp_path, dtype):
    pytest.importorskip("safetensors", reason="safetensors is not installed")
    tok = CharTokenizer().build_vocab(text=TEXT)
    model = small_model(dtype=dtype, vocab_size=tok.vocab_size)
    checkpoint = save_checkpoint(tmp_path / "run" / "checkpoint.npz", model, step=7, tokenizer=tok)
    out_dir = tmp_path / "hf"
    written = export_hf_gpt2(checkpoint, out_dir)
    assert sorted(p.name for p in written) == ["config.json", "model.safetensors", "nanollm_tokenizer.json",
                                               "tokenizer.json"]
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temporary files left

    imported = import_hf_gpt2(out_dir, tmp_path / "imported.npz")
    metadata, arrays = read_checkpoint(imported)
    assert metadata["model_config"] == model.config and metadata["tokenizer"] == tok.to_dict()
    assert_same_arrays({k[len("params/"):]: v for k, v in arrays.items()}, model.params)
    info = load_checkpoint(imported)
    assert info["tokenizer"].encode("lazy dog") == tok.encode("lazy dog")

    # Existing files are refused and left untouched; overwrite=True replaces them, unrelated files stay.
    (out_dir / "README.md").write_text("mine")
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    with pytest.raises(FileExistsError, match=r"model\.safetensors already exists.*overwrite"):
        export_hf_gpt2(checkpoint, out_dir)
    with pytest.raises(FileExistsError, match=r"imported\.npz already exists.*overwrite"):
        import_hf_gpt2(out_dir, imported)
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before
    save_checkpoint(checkpoint, model, step=7)  # the same model, now without a tokenizer
    export_hf_gpt2(checkpoint, out_dir, overwrite=True)
    assert sorted(p.name for p in out_dir.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    import_hf_gpt2(out_dir, imported, overwrite=True)
    assert load_checkpoint(imported)["tokenizer"] is None


def test_import_names_the_missing_or_broken_file(tmp_path):
    pytest.importorskip("safetensors", reason="safetensors is not installed")
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        import_hf_gpt2(tmp_path, tmp_path / "c.npz")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        import_hf_gpt2(tmp_path, tmp_path / "c.npz")
    (tmp_path / "config.json").write_text(json.dumps(hf_gpt2_config(small_model().config)))
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors does not exist"):
        import_hf_gpt2(tmp_path, tmp_path / "c.npz")
    from safetensors.numpy import save_file

    model = small_model()
    save_file({k: v for k, v in to_hf_gpt2(model.params, model.config).items() if ".h.1." not in k},
              str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lack 12 tensors of a 2-layer GPT-2, e.g. \['transformer.h.1.ln_1.weight'"):
        import_hf_gpt2(tmp_path, tmp_path / "c.npz")
    (tmp_path / "model.safetensors").write_bytes(b"garbage!")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        import_hf_gpt2(tmp_path, tmp_path / "c.npz")
    assert not (tmp_path / "c.npz").exists()


def test_without_safetensors_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "safetensors", None)  # makes `import safetensors` fail
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    checkpoint = save_checkpoint(tmp_path / "c.npz", small_model())
    with pytest.raises(ImportError, match="^exporting needs the safetensors package: pip install safetensors \\(or nanollm's \"hf\" extra\\)$"):
        export_hf_gpt2(checkpoint, tmp_path / "hf")
    with pytest.raises(ValueError, match="^importing needs the safetensors package: pip install safetensors \\(or nanollm's \"hf\" extra\\)$"):
        import_hf_gpt2(tmp_path / "hf", tmp_path / "d.npz")
    assert not (tmp_path / "hf").exists()


# ----------------------------------------------------------------------------- transformers


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hf_from_pretrained_gives_nanollm_logits(tmp_path, dtype):
    transformers = transformers_or_skip()
    pytest.importorskip("safetensors", reason="safetensors is not installed")
    import torch

    model = small_model(dtype=dtype, ffn_hidden_dim=48).eval()
    export_hf_gpt2(save_checkpoint(tmp_path / "c.npz", model), tmp_path / "hf")
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    if hf_model.dtype != getattr(torch, dtype):
        pytest.skip(f"this transformers loads a {dtype} checkpoint as {hf_model.dtype}")
    assert hf_model.lm_head.weight.data_ptr() == hf_model.transformer.wte.weight.data_ptr()  # re-tied
    idx = random_batch()
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(idx)).logits.numpy()  # (B, T, V)
    ours, _ = model.forward(idx)
    assert theirs.dtype == ours.dtype
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4 if dtype == "float32" else 1e-10)


def small_hf_model(transformers, seed=0):
    import torch

    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=None, eos_token_id=None)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2 starts with zero biases and unit gains: make every weight count
        for p in hf_model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf_model


@pytest.mark.parametrize("shard_size", [None, "20KB"])
def test_hf_saved_model_imports_with_the_same_logits(tmp_path, shard_size):
    transformers = transformers_or_skip()
    pytest.importorskip("safetensors", reason="safetensors is not installed")
    import torch

    hf_model = small_hf_model(transformers)
    if shard_size is None:
        hf_model.save_pretrained(tmp_path / "hf")
    else:  # several model-0000k-of-0000n.safetensors files listed in model.safetensors.index.json
        hf_model.save_pretrained(tmp_path / "hf", max_shard_size=shard_size)
        assert not (tmp_path / "hf" / "model.safetensors").exists()
    info = load_checkpoint(import_hf_gpt2(tmp_path / "hf", tmp_path / "c.npz"))
    model = info["model"].eval()
    assert info["tokenizer"] is None and model.config["ffn_hidden_dim"] == 128 and model.dtype == "float32"
    assert_same_arrays(from_hf_gpt2(hf_model.state_dict()), model.params)  # torch tensors are taken too
    idx = random_batch()
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(idx)).logits.numpy()
    np.testing.assert_allclose(model.forward(idx)[0], theirs, rtol=0, atol=1e-4)


def test_hf_bfloat16_model_imports_as_float32(tmp_path):
    transformers = transformers_or_skip()
    pytest.importorskip("safetensors", reason="safetensors is not installed")
    import torch

    hf_model = small_hf_model(transformers).to(torch.bfloat16)
    hf_model.save_pretrained(tmp_path / "hf")
    model = load_checkpoint(import_hf_gpt2(tmp_path / "hf", tmp_path / "c.npz"))["model"]
    assert model.dtype == "float32"
    for name, value in from_hf_gpt2(hf_model.state_dict()).items():  # bfloat16 tensors arrive as float32
        assert value.dtype == np.float32 and np.array_equal(model.params[name], value), name
