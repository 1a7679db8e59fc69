"""GGUF (llama.cpp's format) export and import, checked against the readers that matter: the
gguf package's own reader, transformers' GGUF loader, llama.cpp itself (llama-cpp-python, when
installed), and a GGUF written tensor by tensor here from a transformers model with llama.cpp's
converter's permutation. Names with "gguf" so that CI's optional stage selects them (-k gguf)."""

import numpy as np
import pytest

from nanollm import BPETokenizer, CharTokenizer, TransformerLanguageModel, load_checkpoint, save_checkpoint
from nanollm.ops.rope import rope_tables

gguf = pytest.importorskip("gguf", reason="GGUF export and import need the gguf package (pip install gguf)")

from nanollm.interop.gguf_files import (export_gguf, import_gguf, read_gguf, rope_rows_from_gguf,  # noqa: E402
                                        rope_rows_to_gguf, to_gguf)

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
        "def f(x):\n    return x ** 2  # émoji 🙂 and 漢字\n") * 4


def tiny(architecture, tied=True, vocab_size=50, seed=0, **overrides):
    settings = dict(vocab_size=vocab_size, embedding_dim=32, num_layers=2, num_heads=4, max_seq_len=16,
                    ffn_hidden_dim=48, architecture=architecture, tie_embeddings=tied, seed=seed)
    if architecture == "llama":
        settings.update(num_kv_heads=2, rope_base=500.0, norm_eps=1e-6)
    model = TransformerLanguageModel(**{**settings, **overrides})
    rng = np.random.default_rng(seed + 1)
    for name, value in model.params.items():  # gains start at one and biases at zero: make every weight count
        if value.ndim == 1:
            model.params[name] = (value + 0.1 * rng.standard_normal(value.shape)).astype(value.dtype)
    return model


def tokenizer_of(kind):
    if kind == "char":
        return CharTokenizer(special_tokens=("<|endoftext|>",)).build_vocab(text=TEXT)
    return BPETokenizer(vocab_size=300).build_vocab(text=TEXT)


def write_and_close(writer):
    """The gguf package's writer: header, metadata, tensors, in that order."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def relative_error(theirs, ours):
    return float(np.abs(np.asarray(theirs, np.float64) - ours).max() / np.abs(ours).max())


# ----------------------------------------------------------------------------- names and rope


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_gguf_tensor_names_are_llama_cpps(architecture):
    model = tiny(architecture, tied=False)
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH[architecture.upper()]]}
    for name in to_gguf(model.params, model.config):
        base = name.rsplit(".", 1)[0]
        base = base if not base.startswith("blk.") else "blk.{bid}." + base.split(".", 2)[2]
        assert base in allowed, name


def test_gguf_rope_permutation_turns_half_split_pairs_into_neighbour_pairs():
    """Rotating channel i with i + hd/2 (nanollm, Hugging Face) on q and k gives the same scores
    as rotating neighbours 2i, 2i+1 (llama.cpp, Meta) on the permuted q and k."""
    heads, head_dim, time = 2, 8, 5
    rng = np.random.default_rng(0)
    q_weight = rng.standard_normal((heads * head_dim, 6))  # (H hd, C), rows as nanollm orders them
    x = rng.standard_normal((time, 6))
    cos, sin = rope_tables(time, head_dim, dtype="float64")  # (T, hd/2)

    def half_split(v):  # (T, hd): nanollm's rotation
        a, b = v[:, :head_dim // 2], v[:, head_dim // 2:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=1)

    def neighbours(v):  # (T, hd): llama.cpp's "normal" rope
        a, b = v[:, 0::2], v[:, 1::2]
        out = np.empty_like(v)
        out[:, 0::2], out[:, 1::2] = a * cos - b * sin, a * sin + b * cos
        return out

    ours = (x @ q_weight.T).reshape(time, heads, head_dim)
    theirs = (x @ rope_rows_to_gguf(q_weight, heads).T).reshape(time, heads, head_dim)
    for h in range(heads):
        ours_rotated, theirs_rotated = half_split(ours[:, h]), neighbours(theirs[:, h])
        np.testing.assert_allclose(theirs_rotated @ theirs_rotated.T, ours_rotated @ ours_rotated.T, atol=1e-12)
    np.testing.assert_array_equal(rope_rows_from_gguf(rope_rows_to_gguf(q_weight, heads), heads), q_weight)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("tokenizer", ["char", "bpe", None])
def test_gguf_round_trip_gives_identical_tensors_metadata_and_tokenizer(tmp_path, architecture, tied, tokenizer):
    tok = tokenizer_of(tokenizer) if tokenizer else None
    model = tiny(architecture, tied, vocab_size=tok.vocab_size if tok else 50)
    first = export_gguf(save_checkpoint(tmp_path / "c.npz", model, tokenizer=tok), tmp_path / "first.gguf")
    info = load_checkpoint(import_gguf(first, tmp_path / "imported.npz"))
    assert info["model"].config == model.config
    for name, value in model.params.items():
        assert np.array_equal(info["model"].params[name], value), name
    if tok is None:
        assert info["tokenizer"] is None
    else:
        assert info["tokenizer"].to_dict() == tok.to_dict() and info["tokenizer"].encode(TEXT) == tok.encode(TEXT)
    second = export_gguf(tmp_path / "imported.npz", tmp_path / "second.gguf", name="first")
    (meta1, tensors1), (meta2, tensors2) = read_gguf(first), read_gguf(second)
    assert meta1 == meta2
    assert list(tensors1) == list(tensors2)
    for name in tensors1:
        assert np.array_equal(tensors1[name], tensors2[name]), name


@pytest.mark.parametrize("dtype, tolerance", [("f16", 2e-3), ("bf16", 2e-2), ("q8_0", 2e-2)])
def test_gguf_reduced_precision_exports_import_close_to_the_original(tmp_path, dtype, tolerance):
    model = tiny("llama", tied=False, embedding_dim=64, ffn_hidden_dim=96)  # q8_0 blocks: rows of 32
    path = export_gguf(save_checkpoint(tmp_path / "c.npz", model), tmp_path / "m.gguf", dtype=dtype)
    reader = gguf.GGUFReader(path)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == dtype.upper() and kinds["blk.0.attn_norm.weight"] == "F32"
    imported = load_checkpoint(import_gguf(path, tmp_path / "back.npz"))["model"]
    idx = np.random.default_rng(1).integers(0, 50, size=(2, 16))
    error = relative_error(imported.forward(idx)[0], model.forward(idx)[0])
    print(f"{dtype}: relative logits error {error:.2e}")
    assert 0 < error < tolerance


def test_gguf_errors_are_one_line(tmp_path):
    model = tiny("llama")
    checkpoint = save_checkpoint(tmp_path / "c.npz", model)
    export_gguf(checkpoint, tmp_path / "m.gguf")
    with pytest.raises(FileExistsError, match="already exists.*--overwrite"):
        export_gguf(checkpoint, tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="GGUF dtype 'q4' is not supported; choose one of f32, f16, bf16, q8_0"):
        export_gguf(checkpoint, tmp_path / "other.gguf", dtype="q4")
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(ValueError, match="text.gguf is not a readable GGUF file"):
        import_gguf(tmp_path / "text.gguf", tmp_path / "x.npz")
    writer = gguf.GGUFWriter(tmp_path / "falcon.gguf", "falcon")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    write_and_close(writer)
    with pytest.raises(ValueError, match="general.architecture='falcon'; nanollm imports gpt2 and llama models"):
        import_gguf(tmp_path / "falcon.gguf", tmp_path / "x.npz")
    lora = TransformerLanguageModel(**{k: v for k, v in model.config.items() if k != "lora"},
                                    lora={"rank": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["q", "v"]}, seed=0)
    with pytest.raises(ValueError, match="LoRA adapters; merge them"):
        export_gguf(save_checkpoint(tmp_path / "lora.npz", lora), tmp_path / "lora.gguf")


# ----------------------------------------------------------------------------- transformers


def transformers_or_skip():
    pytest.importorskip("torch", reason="torch is not installed")
    return pytest.importorskip("transformers", reason="transformers is not installed")


@pytest.mark.parametrize("architecture, tied", [("llama", True), ("llama", False), ("gpt2", True)])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_gguf_export_loads_in_transformers_with_nanollms_logits(tmp_path, architecture, tied, dtype):
    transformers = transformers_or_skip()
    import torch

    # transformers reads a GGUF GPT-2's vocabulary size from its tokenizer, and maps context_length
    # to n_ctx and feed_forward_length to a key GPT2Config ignores (so wpe must have GPT2Config's
    # default 1024 rows and the MLP its default 4 C); llama.cpp reads both (test below)
    tok = tokenizer_of("bpe")
    gpt2_defaults = {"max_seq_len": 1024, "ffn_hidden_dim": 128} if architecture == "gpt2" else {}
    model = tiny(architecture, tied, vocab_size=tok.vocab_size, **gpt2_defaults)
    export_gguf(save_checkpoint(tmp_path / "c.npz", model, tokenizer=tok), tmp_path / "m.gguf", dtype=dtype)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf",
                                                                 torch_dtype=torch.float32).eval()
    idx = np.random.default_rng(1).integers(0, tok.vocab_size, size=(2, 16))
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(idx)).logits.numpy()
    error = relative_error(theirs, model.forward(idx)[0])
    print(f"{architecture} tied={tied} {dtype}: transformers' logits differ by {error:.2e} (relative)")
    assert error < (1e-4 if dtype == "f32" else 2e-3)


def write_gguf_like_llama_cpps_converter(hf_model, path):
    """A transformers LlamaForCausalLM as convert_hf_to_gguf.py writes it: its tensor names, and
    its permute() of q and k rows (written here from that script, not from nanollm)."""
    config = hf_model.config

    def permute(weights, n_head):
        return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
                .swapaxes(1, 2).reshape(weights.shape))

    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
             "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    for name, tensor in hf_model.state_dict().items():
        data = tensor.numpy()
        if ".q_proj." in name:
            data = permute(data, config.num_attention_heads)
        elif ".k_proj." in name:
            data = permute(data, config.num_key_value_heads)
        base = name.removesuffix(".weight")
        if base.startswith("model.layers."):
            layer, rest = base[len("model.layers."):].split(".", 1)
            gguf_name = f"blk.{layer}.{names[rest]}"
        else:
            gguf_name = names[base]
        writer.add_tensor(gguf_name + ".weight", np.ascontiguousarray(data))
    write_and_close(writer)


def write_gguf_like_llama_cpps_gpt2_converter(hf_model, path):
    """A transformers GPT2LMHeadModel as convert_hf_to_gguf.py writes it: Conv1D weights
    transposed to (out, in), the causal-mask buffers dropped, output.weight a copy of wte."""
    config = hf_model.config
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd if config.n_inner is None else config.n_inner)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    for name, tensor in hf_model.state_dict().items():
        data = tensor.numpy()
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue
        if name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            data = data.T
        base, kind = name.removeprefix("transformer.").rsplit(".", 1)
        if base.startswith("h."):
            layer, rest = base[2:].split(".", 1)
            gguf_name = f"blk.{layer}.{names[rest]}"
        else:
            gguf_name = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm"}[base]
        writer.add_tensor(f"{gguf_name}.{kind}", np.ascontiguousarray(data))
        if gguf_name == "token_embd":
            writer.add_tensor("output.weight", np.ascontiguousarray(data))
    write_and_close(writer)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_gguf_written_from_a_transformers_model_imports_with_its_logits(tmp_path, architecture):
    transformers = transformers_or_skip()
    import torch

    torch.manual_seed(0)
    if architecture == "gpt2":
        hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0)).eval()
    else:
        hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=16, rope_theta=500.0, rms_norm_eps=1e-5,
            tie_word_embeddings=False)).eval()
    with torch.no_grad():  # norms start at one and biases at zero: make every weight count
        for p in hf_model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    write = write_gguf_like_llama_cpps_gpt2_converter if architecture == "gpt2" else write_gguf_like_llama_cpps_converter
    write(hf_model, tmp_path / "hf.gguf")
    model = load_checkpoint(import_gguf(tmp_path / "hf.gguf", tmp_path / "c.npz"))["model"]
    if architecture == "gpt2":
        assert model.config["tie_embeddings"] is True and model.config["ffn_hidden_dim"] == 128
    else:
        assert model.config["num_kv_heads"] == 2 and model.config["tie_embeddings"] is False
    idx = np.random.default_rng(1).integers(0, 50, size=(2, 16))
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(idx)).logits.numpy()
    assert relative_error(theirs, model.forward(idx)[0]) < 1e-5


# ----------------------------------------------------------------------------- llama.cpp


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
@pytest.mark.parametrize("tokenizer", ["bpe", "char"])
def test_gguf_export_runs_in_llama_cpp_with_nanollms_logits_and_tokens(tmp_path, architecture, tokenizer):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install "
                                                        "llama-cpp-python builds llama.cpp, ~7 minutes)")
    tok = tokenizer_of(tokenizer)
    model = tiny(architecture, tied=architecture == "llama", vocab_size=tok.vocab_size, max_seq_len=64)
    path = export_gguf(save_checkpoint(tmp_path / "c.npz", model, tokenizer=tok), tmp_path / "m.gguf")
    # an f32 KV cache (type 0): llama.cpp's default f16 cache alone costs ~1e-4
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=64, n_threads=1, verbose=False,
                          type_k=0, type_v=0)
    text = TEXT[:200]
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    assert ids == tok.encode(text)
    assert llm.detokenize(ids).decode("utf-8") == text
    ids = ids[:64]
    llm.eval(ids)
    theirs = np.array(llm.scores[:len(ids)])  # (T, V)
    error = relative_error(theirs, model.forward(np.array([ids]))[0][0])
    print(f"{architecture} ({tokenizer}): llama.cpp's logits differ by {error:.2e} (relative)")
    # llama.cpp's GPT-2 GELU reads an f16 table: ~1e-4 there; llama agrees to float32 rounding
    assert error < (1e-5 if architecture == "llama" else 1e-3)


def test_gguf_interop_bench_prints_a_line_per_format(capsys):
    pytest.importorskip("safetensors", reason="the Hugging Face export needs safetensors")
    from nanollm.tools import interop_bench

    assert interop_bench.main(["--shapes", "medium"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("medium Llama: 993,024 parameters")
    assert [line.split()[:2] for line in lines[1:]] == [["hf", "f32"], ["gguf", "f32"], ["gguf", "f16"],
                                                        ["gguf", "bf16"], ["gguf", "q8_0"]]


def test_gguf_cli_lora_run_merged_exported_imported_and_fine_tuned(tmp_path):
    """The whole path on the command line: a LoRA run cannot leave unmerged (one line, says merge),
    merges, leaves as GGUF, comes back in, and fine-tunes again with LoRA (train --init_from=...)."""
    import subprocess
    import sys

    from nanollm.corpus import synthetic_text

    def nanollm(*args, check=True):
        done = subprocess.run([sys.executable, "-m", "nanollm", *map(str, args)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert not check or done.returncode == 0, done.stderr
        return done

    (tmp_path / "input.txt").write_text(synthetic_text(20_000, seed=0), encoding="utf-8")
    tiny_run = ["--data", "input.txt", "--embedding_dim=32", "--num_layers=1", "--num_heads=4", "--max_seq_len=32",
                "--batch_size=4", "--num_steps=6", "--eval_interval=6", "--log_interval=6", "--eval_steps=1",
                "--architecture=llama"]
    nanollm("train", *tiny_run, "--out", "base")
    nanollm("train", *tiny_run, "--init_from=base", "--lora_rank=2", "--out", "lora")
    refused = nanollm("export", "lora", "lora.gguf", check=False)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "merge them" in refused.stderr and "nanollm merge" in refused.stderr
    nanollm("merge", "lora", "merged.npz")
    nanollm("export", "merged.npz", "merged.gguf")  # a .gguf path: --format gguf
    nanollm("import", "merged.gguf", "imported.npz")
    merged, imported = load_checkpoint(tmp_path / "merged.npz"), load_checkpoint(tmp_path / "imported.npz")
    assert imported["tokenizer"].to_dict() == merged["tokenizer"].to_dict()
    for name, value in merged["model"].params.items():
        assert np.array_equal(imported["model"].params[name], value), name
    nanollm("train", *tiny_run, "--init_from=imported.npz", "--lora_rank=2", "--out", "again")
    assert (tmp_path / "again" / "checkpoint_final.npz").exists()
