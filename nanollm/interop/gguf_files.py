"""GGUF files, llama.cpp's model format (also Ollama's and LM Studio's), in and out.

    export_gguf("run/checkpoint_final.npz", "model.gguf", dtype="f16")   one file: metadata, tokenizer, tensors
    import_gguf("model.gguf", "imported.npz")                            a checkpoint to sample or fine-tune

Written and read with the ``gguf`` package (the llama.cpp project's own Python writer and reader;
an optional extra: pip install gguf). Two architectures, with llama.cpp's tensor names:

    nanollm (in, out)            GGUF (numpy shape (out, in); ggml lists the dims reversed)
    wte                          token_embd.weight                    (V, C)
    wpe                  (gpt2)  position_embd.weight                 (T, C)
    blocks.i.ln1 / norm1         blk.i.attn_norm.weight (.bias gpt2)  (C,)
    blocks.i.attn.qkv    (gpt2)  blk.i.attn_qkv.weight / .bias        (3C, C) transposed
                         (llama) blk.i.attn_q / attn_k / attn_v       (H hd, C), (H_kv hd, C): split,
                                                                      transposed, rows permuted (below)
    blocks.i.attn.proj           blk.i.attn_output.weight (.bias)     (C, C) transposed
    blocks.i.ln2 / norm2         blk.i.ffn_norm.weight (.bias)        (C,)
    blocks.i.mlp.fc / up         blk.i.ffn_up.weight (.bias)          (F, C) transposed
    blocks.i.mlp.gate    (llama) blk.i.ffn_gate.weight                (F, C) transposed
    blocks.i.mlp.proj / down     blk.i.ffn_down.weight (.bias)        (C, F) transposed
    ln_f / norm_f                output_norm.weight (.bias)           (C,)
    lm_head.weight (C, V)        output.weight                        (V, C); a tied llama has none,
                                                                      a tied gpt2 repeats token_embd
                                                                      (as llama.cpp's converter does)

The rotary permutation: nanollm (like Hugging Face) rotates channel i of a head with channel
i + hd/2; llama.cpp's rope (the "normal" mode llama uses) rotates neighbours 2i and 2i+1, as
Meta's checkpoints do. So each head's q and k rows are reordered [0, hd/2, 1, hd/2+1, ...]:
the rotation pairs become neighbours and q.k is unchanged (the permutation is applied to both).
This is the permute() of llama.cpp's convert_hf_to_gguf.py; import undoes it.

The tokenizer travels as tokenizer.ggml.model = "gpt2" (byte-level BPE): each id's token in
GPT-2's byte-to-unicode spelling, token types (normal, or control for special tokens), and the
merges as "left right" strings. A character tokenizer becomes the same with one token per
character and only the merges that rebuild multi-byte characters from their bytes (see
character_merges), so every character of the vocabulary, ASCII or not, is its one token in
llama.cpp as here.
"""

import sys
from pathlib import Path

import numpy as np

from nanollm.interop.files import check_out_files, require
from nanollm.interop.hf import read_checkpoint_params, save_imported_model
from nanollm.interop.hf_llama import _qkv_splits
from nanollm.model_config import ModelConfig
from nanollm.textfiles import write_atomically

ARCHITECTURES = ("gpt2", "llama")
# --dtype -> (GGMLQuantizationType name, LlamaFileType name of the file as a whole)
DTYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
          "q8_0": ("Q8_0", "MOSTLY_Q8_0")}
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3  # gguf.TokenType values


# --------------------------------------------------------------------------------- rope rows

def rope_rows_to_gguf(weight, heads):
    """weight (heads * hd, C) with each head's rows in nanollm's half-split order -> llama.cpp's
    neighbour order: row j of a head's first half goes to 2j, of its second half to 2j + 1."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def rope_rows_from_gguf(weight, heads):
    """The inverse of rope_rows_to_gguf."""
    return weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


# --------------------------------------------------------------------------------- names

def _block_table(architecture):
    """[(nanollm block suffix, GGUF block suffix, transposed?)] for the one-to-one tensors."""
    if architecture == "gpt2":
        return [("ln1.weight", "attn_norm.weight", False), ("ln1.bias", "attn_norm.bias", False),
                ("attn.qkv.weight", "attn_qkv.weight", True), ("attn.qkv.bias", "attn_qkv.bias", False),
                ("attn.proj.weight", "attn_output.weight", True), ("attn.proj.bias", "attn_output.bias", False),
                ("ln2.weight", "ffn_norm.weight", False), ("ln2.bias", "ffn_norm.bias", False),
                ("mlp.fc.weight", "ffn_up.weight", True), ("mlp.fc.bias", "ffn_up.bias", False),
                ("mlp.proj.weight", "ffn_down.weight", True), ("mlp.proj.bias", "ffn_down.bias", False)]
    return [("norm1.weight", "attn_norm.weight", False), ("attn.proj.weight", "attn_output.weight", True),
            ("norm2.weight", "ffn_norm.weight", False), ("mlp.gate.weight", "ffn_gate.weight", True),
            ("mlp.up.weight", "ffn_up.weight", True), ("mlp.down.weight", "ffn_down.weight", True)]


# [(nanollm name, GGUF name)] before and after the blocks (the output layer is handled apart).
EMBEDDINGS = {"gpt2": [("wte", "token_embd.weight"), ("wpe", "position_embd.weight")],
              "llama": [("wte", "token_embd.weight")]}
FINAL_NORM = {"gpt2": [("ln_f.weight", "output_norm.weight"), ("ln_f.bias", "output_norm.bias")],
              "llama": [("norm_f.weight", "output_norm.weight")]}


def to_gguf(params, model_config):
    """{nanollm name: array} -> {GGUF tensor name: array in GGUF's (out, in) orientation}, in
    llama.cpp's order (embeddings, blocks, output)."""
    c = ModelConfig.from_dict(model_config)
    out = {gguf: np.asarray(params[ours]) for ours, gguf in EMBEDDINGS[c.architecture]}
    for layer in range(c.num_layers):
        p = lambda suffix: np.asarray(params[f"blocks.{layer}.{suffix}"])  # noqa: E731
        for ours, gguf, transposed in _block_table(c.architecture):
            out[f"blk.{layer}.{gguf}"] = p(ours).T if transposed else p(ours)
        if c.architecture == "llama":
            (q0, q1), (k0, k1), (v0, v1) = _qkv_splits(c)
            qkv = p("attn.qkv.weight")
            out[f"blk.{layer}.attn_q.weight"] = rope_rows_to_gguf(qkv[:, q0:q1].T, c.num_heads)
            out[f"blk.{layer}.attn_k.weight"] = rope_rows_to_gguf(qkv[:, k0:k1].T, c.num_kv_heads)
            out[f"blk.{layer}.attn_v.weight"] = qkv[:, v0:v1].T
    out.update({gguf: np.asarray(params[ours]) for ours, gguf in FINAL_NORM[c.architecture]})
    if not c.tie_embeddings:
        out["output.weight"] = np.asarray(params["lm_head.weight"]).T
    elif c.architecture == "gpt2":
        out["output.weight"] = out["token_embd.weight"]
    return {name: np.ascontiguousarray(value) for name, value in out.items()}


def from_gguf(tensors, model_config):
    """{GGUF tensor name: array} -> {nanollm name: array}: the inverse of to_gguf. A missing
    tensor is a ValueError naming it; tensors nanollm has no place for are named too."""
    c = ModelConfig.from_dict(model_config)
    tensors = dict(tensors)

    def take(name):
        if name not in tensors:
            raise ValueError(f"the GGUF file lacks tensor {name!r} of a {c.num_layers}-layer {c.architecture} model")
        return tensors.pop(name)

    out = {ours: take(gguf) for ours, gguf in EMBEDDINGS[c.architecture] + FINAL_NORM[c.architecture]}
    for layer in range(c.num_layers):
        for ours, gguf, transposed in _block_table(c.architecture):
            value = take(f"blk.{layer}.{gguf}")
            out[f"blocks.{layer}.{ours}"] = value.T if transposed else value
        if c.architecture == "llama":
            q = rope_rows_from_gguf(take(f"blk.{layer}.attn_q.weight"), c.num_heads)
            k = rope_rows_from_gguf(take(f"blk.{layer}.attn_k.weight"), c.num_kv_heads)
            v = take(f"blk.{layer}.attn_v.weight")
            out[f"blocks.{layer}.attn.qkv.weight"] = np.concatenate([q.T, k.T, v.T], axis=1)
    output = tensors.pop("output.weight", None)
    if not c.tie_embeddings:
        out["lm_head.weight"] = output.T
    tensors.pop("rope_freqs.weight", None)  # llama.cpp's optional frequency factors: all ones for plain RoPE
    if tensors:
        raise ValueError(f"the GGUF file has tensors a {c.architecture} model of nanollm has no place for: "
                         f"{sorted(tensors)[:5]}")
    return {name: np.ascontiguousarray(value) for name, value in out.items()}


# --------------------------------------------------------------------------------- export

# llama.cpp refuses a gpt2 tokenizer without merges, and the gguf package will not write an empty
# list: an all-ASCII character vocabulary gets this one merge, which never applies (no merge makes "ĠĠ").
NEVER_APPLIED_MERGE = "ĠĠ ĠĠ"


def character_merges(spelled):
    """The merges that rebuild each multi-byte character of a character vocabulary from its bytes,
    in byte-level spelling ("Ã ©" makes "Ã©", é): llama.cpp starts from one symbol per byte and
    looks the merged symbols up. A merge joins a lead byte's prefix to a continuation byte, so it
    never reaches across two characters. [NEVER_APPLIED_MERGE] when every character is one byte."""
    merges = {}
    for length in range(2, 5):  # UTF-8 characters have at most 4 bytes
        for text in spelled:
            if len(text) >= length:
                merges[f"{text[:length - 1]} {text[length - 1]}"] = None
    return list(merges) or [NEVER_APPLIED_MERGE]


def _tokenizer_fields(tokenizer):
    """(tokens, token types, merges, the end-of-text id or None) of a nanollm tokenizer, in GGUF's
    byte-level BPE form (see the module docstring for a character tokenizer)."""
    from nanollm.interop.tokenizer_files import byte_level_merges, byte_level_tokens, spell_token

    specials = set(tokenizer.special_tokens.values())
    if tokenizer.kind == "char":
        spelled = [spell_token(ch.encode("utf-8")) for ch in tokenizer.chars]
        tokens = spelled + sorted(tokenizer.special_tokens, key=tokenizer.special_tokens.get)
        merges = character_merges(spelled)
    else:
        tokens, merges = byte_level_tokens(tokenizer), byte_level_merges(tokenizer)
    types = [TOKEN_CONTROL if i in specials else TOKEN_NORMAL for i in range(len(tokens))]
    return tokens, types, merges, tokenizer.special_tokens.get("<|endoftext|>")


def _add_metadata(writer, c, name, tokenizer, file_type):
    """Architecture and tokenizer keys, as llama.cpp's converter writes them."""
    writer.add_name(name)
    writer.add_context_length(c.max_seq_len)
    writer.add_embedding_length(c.embedding_dim)
    writer.add_feed_forward_length(c.ffn_hidden_dim)
    writer.add_block_count(c.num_layers)
    writer.add_head_count(c.num_heads)
    if c.architecture == "llama":
        writer.add_head_count_kv(c.num_kv_heads)
        writer.add_rope_dimension_count(c.head_dim)
        writer.add_rope_freq_base(c.rope_base)
        writer.add_layer_norm_rms_eps(c.norm_eps)
    else:
        writer.add_layer_norm_eps(c.norm_eps)
    writer.add_vocab_size(c.vocab_size)  # what llama.cpp sizes the embeddings by when there is no tokenizer
    writer.add_file_type(file_type)
    if tokenizer is None:
        writer.add_tokenizer_model("none")  # llama.cpp's "no vocabulary": ids in, logits out
        return
    tokens, types, merges, end_of_text = _tokenizer_fields(tokenizer)
    if len(tokens) != c.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokens)} tokens but the model's vocab_size is {c.vocab_size}")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # GPT-2's pre-tokenization regex, which nanollm's BPE uses
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_add_bos_token(False)  # nanollm adds nothing before a prompt
    if end_of_text is not None:
        writer.add_bos_token_id(end_of_text)
        writer.add_eos_token_id(end_of_text)


def _encode_tensor(value, dtype):
    """(array, raw ggml type or None) for the writer: norms and biases (1-D) stay float32, as in
    llama.cpp's converter; matrices take ``dtype`` (q8_0 where each row is a multiple of 32)."""
    import gguf

    value = np.asarray(value, dtype=np.float32)
    if value.ndim == 1 or dtype == "f32":
        return value, None
    if dtype == "f16":
        return value.astype(np.float16), None
    kind = gguf.GGMLQuantizationType[DTYPES[dtype][0]]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    if value.shape[-1] % block:
        return value.astype(np.float16), None  # q8_0 blocks span 32 values of a row; f16 otherwise
    return gguf.quantize(value, kind), kind


def export_gguf(checkpoint_path, out_path, dtype="f32", overwrite=False, name=None):
    """Write a nanollm checkpoint as one GGUF file that llama.cpp runs (``llama-cli -m out_path``).

    dtype: f32 (exact), f16, bf16 or q8_0 for the matrices; norms and biases stay f32. The file
    is written atomically; an existing one is an error unless overwrite=True. LoRA adapters must
    be merged first. Returns the path."""
    gguf = require("gguf", "exporting to GGUF")
    dtype = "f32" if dtype is None else dtype
    if dtype not in DTYPES:
        raise ValueError(f"GGUF dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ValueError(f"{out_path} is a folder; give the .gguf file to write")
    check_out_files((out_path,), overwrite)
    metadata, params = read_checkpoint_params(checkpoint_path)
    c = ModelConfig.from_dict(metadata["model_config"])
    tokenizer = None
    if metadata.get("tokenizer") is not None:
        from nanollm.tokenizers import tokenizer_from_dict
        tokenizer = tokenizer_from_dict(metadata["tokenizer"])
    else:
        print(f"note: {checkpoint_path} holds no tokenizer; the GGUF file has none (llama.cpp takes token ids "
              "only)", file=sys.stderr)
    writer = gguf.GGUFWriter(None, c.architecture)
    _add_metadata(writer, c, name or Path(out_path).stem, tokenizer,
                  int(gguf.LlamaFileType[DTYPES[dtype][1]]))
    for tensor_name, value in to_gguf(params, c.to_dict()).items():
        array, raw_dtype = _encode_tensor(value, dtype)
        writer.add_tensor(tensor_name, array, raw_dtype=raw_dtype)
    del params

    def write(f):
        # The writer opens the path itself: it writes the temporary file write_atomically made
        # (truncating it), and write_atomically's fsync and rename then apply to what it wrote.
        writer.write_header_to_file(Path(f.name))
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return write_atomically(out_path, write)


# --------------------------------------------------------------------------------- import

def _field(reader, key, default=None):
    """The value of metadata ``key`` (a str, number or list), or default when absent."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def read_gguf(path):
    """(metadata {key: value}, {tensor name: float32/float64 array in GGUF's numpy orientation})
    of a GGUF file, every tensor type the gguf package can dequantize (f32, f16, bf16, q8_0, the
    k-quants, ...) widened to float32. A one-line error for a file that is not GGUF or a tensor
    type it cannot read."""
    gguf = require("gguf", "importing GGUF")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a .gguf file")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError / struct errors of its own
        raise ValueError(f"{path} is not a readable GGUF file: {exc}") from None
    metadata = {key: _field(reader, key) for key in reader.fields if not key.startswith("GGUF.")}
    tensors = {}
    for tensor in reader.tensors:
        try:
            value = gguf.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise ValueError(f"{path}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, which the gguf "
                             "package cannot dequantize; re-export it as f32, f16, bf16 or q8_0") from None
        shape = tuple(int(n) for n in reversed(tensor.shape))
        tensors[tensor.name] = np.asarray(value, dtype=np.float64 if value.dtype == np.float64 else np.float32
                                          ).reshape(shape)
    return metadata, tensors


def _float32_value(value):
    """A float GGUF stored as float32 (an epsilon, a rotary base), as the shortest decimal that
    rounds to it: 1e-05, not 9.999999747378752e-06, so that it equals the value written."""
    return float(str(np.float32(value)))


def model_config_from_gguf(metadata, tensors, source="the GGUF file"):
    """The nanollm model config of a GGUF file's metadata and tensors, or a one-line refusal."""
    architecture = metadata.get("general.architecture")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"{source} has general.architecture={architecture!r}; nanollm imports "
                         f"{' and '.join(ARCHITECTURES)} models")
    a = architecture

    def key(name, default=None):
        value = metadata.get(f"{a}.{name}", default)
        if value is None:
            raise ValueError(f"{source} lacks the metadata key {a}.{name}")
        return value

    if "token_embd.weight" not in tensors:
        raise ValueError(f"{source} has no token_embd.weight tensor")
    vocab_size, embedding_dim = tensors["token_embd.weight"].shape
    heads = int(key("attention.head_count"))
    if a == "llama":
        tied = "output.weight" not in tensors
        if metadata.get(f"{a}.rope.scaling.type", "none") not in ("none", None):
            raise ValueError(f"{source} has {a}.rope.scaling.type={metadata[f'{a}.rope.scaling.type']!r}; "
                             "nanollm's rotary embeddings are plain RoPE")
        head_dim = int(embedding_dim) // heads
        if int(key("rope.dimension_count", head_dim)) != head_dim:
            raise ValueError(f"{source} rotates {key('rope.dimension_count')} of {head_dim} channels per head; "
                             "nanollm's RoPE rotates them all")
        extra = dict(num_kv_heads=int(key("attention.head_count_kv", heads)),
                     rope_base=_float32_value(key("rope.freq_base", 10000.0)),
                     norm_eps=_float32_value(key("attention.layer_norm_rms_epsilon")))
    else:
        output = tensors.get("output.weight")
        tied = output is None or np.array_equal(output, tensors["token_embd.weight"])
        extra = dict(norm_eps=_float32_value(key("attention.layer_norm_epsilon")))
    dtype = "float64" if tensors["token_embd.weight"].dtype == np.float64 else "float32"
    config = ModelConfig(vocab_size=int(vocab_size), embedding_dim=int(embedding_dim),
                         num_layers=int(key("block_count")), ffn_hidden_dim=int(key("feed_forward_length")),
                         num_heads=heads, max_seq_len=int(key("context_length")), architecture=a,
                         tie_embeddings=bool(tied), dtype=dtype, **extra)
    return config.to_dict()


def tokenizer_from_gguf(metadata, source="the GGUF file"):
    """The nanollm tokenizer of a GGUF file's tokenizer.ggml.* keys, or None (with a printed note)
    when it has none or one nanollm cannot reproduce (SentencePiece's "llama", ...)."""
    model = metadata.get("tokenizer.ggml.model")
    if model in (None, "none"):
        return None
    from nanollm.interop.tokenizer_files import bpe_from_byte_level, unspell_token
    from nanollm.tokenizers import CharTokenizer

    if model != "gpt2":
        print(f"note: {source} has a {model!r} tokenizer, which nanollm cannot reproduce (it reads GPT-2-style "
              "byte-level BPE); the weights are imported without it: pass --tokenizer to train or sample",
              file=sys.stderr)
        return None
    pre = metadata.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in ("gpt-2", "default"):
        print(f"note: {source} pre-tokenizes with {pre!r}, not GPT-2's pattern; nanollm encodes with GPT-2's, "
              "which may split some text differently", file=sys.stderr)
    tokens, merges = list(metadata["tokenizer.ggml.tokens"]), list(metadata.get("tokenizer.ggml.merges") or [])
    types = list(metadata.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens))
    specials = [i for i, kind in enumerate(types) if kind == TOKEN_CONTROL]
    try:
        chars = [unspell_token(token, i, source).decode("utf-8") for i, token in enumerate(tokens)
                 if i not in specials]
    except ValueError:  # a token that is no UTF-8 character's bytes (UnicodeDecodeError too): not a char vocabulary
        chars = None
    if (chars is not None and all(len(ch) == 1 for ch in chars) and chars == sorted(set(chars))
            and specials == list(range(len(chars), len(tokens)))
            and merges == character_merges(tokens[:len(chars)])):  # a character vocabulary, as exported
        return CharTokenizer(chars, special_tokens=[tokens[i] for i in specials])
    return bpe_from_byte_level(tokens, merges, specials)


def import_gguf(gguf_path, checkpoint_path, overwrite=False):
    """Turn a llama- or gpt2-architecture GGUF file into a nanollm checkpoint with its tokenizer,
    ready for ``nanollm sample`` or ``nanollm train --init-from`` (LoRA included). Tensors of
    any type the gguf package reads are dequantized to float32. Returns the checkpoint path."""
    checkpoint_path = Path(checkpoint_path)
    check_out_files((checkpoint_path,), overwrite)
    metadata, tensors = read_gguf(gguf_path)
    model_config = model_config_from_gguf(metadata, tensors, source=str(gguf_path))
    tokenizer = tokenizer_from_gguf(metadata, source=str(gguf_path))
    if tokenizer is not None and tokenizer.vocab_size != model_config["vocab_size"]:
        raise ValueError(f"{gguf_path}: the tokenizer has {tokenizer.vocab_size} tokens but token_embd has "
                         f"{model_config['vocab_size']} rows")
    params = from_gguf(tensors, model_config)
    del tensors
    return save_imported_model(model_config, params, checkpoint_path, tokenizer)
