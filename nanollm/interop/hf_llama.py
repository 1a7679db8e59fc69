"""Hugging Face Llama interop: nanollm "llama" parameters <-> ``transformers.LlamaForCausalLM`` weights.

    to_hf_llama(model.params, model.config)    {"model.layers.0.self_attn.q_proj.weight": (H hd, C), ...}
    from_hf_llama(state_dict, model_config)    {"blocks.0.attn.qkv.weight": (C, (H + 2 H_kv) hd), ...}
    hf_llama_config(model.config)              the config.json dict
    model_config_from_hf_llama(config_json)    the nanollm model config, or a one-line refusal

Name table (i = layer). HF's nn.Linear keeps its weight as (out, in) and computes x @ W.T;
nanollm keeps (in, out) and computes x @ W, so every matrix is transposed on the way:

    wte                          model.embed_tokens.weight                    (V, C)
    blocks.i.norm1.weight        model.layers.i.input_layernorm.weight        (C,)
    blocks.i.attn.qkv.weight     model.layers.i.self_attn.q_proj.weight       (H hd, C)    columns [q | k | v],
    (C, (H + 2 H_kv) hd)         model.layers.i.self_attn.k_proj.weight       (H_kv hd, C) each transposed
                                 model.layers.i.self_attn.v_proj.weight       (H_kv hd, C)
    blocks.i.attn.proj.weight    model.layers.i.self_attn.o_proj.weight       (C, H hd)
    blocks.i.norm2.weight        model.layers.i.post_attention_layernorm.weight (C,)
    blocks.i.mlp.gate.weight     model.layers.i.mlp.gate_proj.weight          (F, C)
    blocks.i.mlp.up.weight       model.layers.i.mlp.up_proj.weight            (F, C)
    blocks.i.mlp.down.weight     model.layers.i.mlp.down_proj.weight          (C, F)
    norm_f.weight                model.norm.weight                            (C,)
    lm_head.weight (C, V)        lm_head.weight                               (V, C)   untied models only

Query head h uses key/value head h // (H / H_kv) in both (nanollm's head h = kv_head * G + g,
HF's repeat_kv). RoPE needs no permutation: nanollm pairs channel i with i + hd/2 as HF's
rotate_half does (Meta's original checkpoints pair neighbours; GGUF files do too, see gguf_files).
Nothing here needs torch or transformers.
"""

import re

import numpy as np

from nanollm.interop.files import as_numpy, check_shape
from nanollm.model_config import ModelConfig, parameter_shapes
from nanollm.ops.rope import ROPE_BASE

MODEL_CLASS = "LlamaForCausalLM"
# nanollm block suffix -> HF block suffix, for the weights that are one matrix each (transposed).
BLOCK_MATRICES = {"attn.proj.weight": "self_attn.o_proj.weight", "mlp.gate.weight": "mlp.gate_proj.weight",
                  "mlp.up.weight": "mlp.up_proj.weight", "mlp.down.weight": "mlp.down_proj.weight"}
BLOCK_VECTORS = {"norm1.weight": "input_layernorm.weight", "norm2.weight": "post_attention_layernorm.weight"}
QKV_PARTS = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
HF_BUFFERS = ("self_attn.rotary_emb.inv_freq",)  # saved by old transformers versions; recomputed, not imported
_OUR_BLOCK = re.compile(r"blocks\.(0|[1-9][0-9]*)\.(.+)")
_HF_BLOCK = re.compile(r"model\.layers\.(0|[1-9][0-9]*)\.(.+)")
# What LlamaConfig assumes for a key config.json leaves out (transformers' defaults).
HF_DEFAULTS = {"hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": False,
               "mlp_bias": False, "pretraining_tp": 1, "max_position_embeddings": 2048, "attention_dropout": 0.0}
# Floating dtypes of HF checkpoints -> the nanollm dtype they load as (nanollm computes in 32 or 64 bits).
DTYPES = {"float32": "float32", "float64": "float64", "float16": "float32", "bfloat16": "float32"}


# --------------------------------------------------------------------------------- config

def check_llama_compatible(config):
    """A ValueError unless ``config`` (a nanollm model config) is a model LlamaForCausalLM can hold."""
    if not isinstance(config, dict):
        raise ValueError(f"config must be a nanollm model config dict (model.config), got {type(config).__name__}")
    if config.get("architecture") != "llama":
        raise ValueError(f"architecture={config.get('architecture')!r} cannot be exported as Llama; export it "
                         "with --format hf-gpt2 (or --format hf, which picks by architecture)")
    if config.get("lora") is not None:
        raise ValueError("the model has LoRA adapters, which Llama has no place for; merge them into the weights "
                         "first (nanollm merge RUN OUT.npz, or model.merge_lora()) and export the merged model")


def hf_llama_config(model_config):
    """The ``config.json`` dict with which ``LlamaForCausalLM.from_pretrained`` rebuilds this model.

    Every setting nanollm fixes (SiLU, no biases, head_dim = C / H, the RMSNorm epsilon, the
    rotary base) is written out rather than left to transformers' defaults, whose rms_norm_eps
    (1e-6) differs from nanollm's; the nanollm config rides along under "nanollm"."""
    check_llama_compatible(model_config)
    c = ModelConfig.from_dict(model_config)
    return {
        "architectures": [MODEL_CLASS], "model_type": "llama",
        "vocab_size": c.vocab_size, "hidden_size": c.embedding_dim, "intermediate_size": c.ffn_hidden_dim,
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "hidden_act": "silu",
        "max_position_embeddings": c.max_seq_len, "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_base,  # transformers 4.x
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_base},  # transformers 5.x
        "rope_scaling": None, "attention_bias": False, "mlp_bias": False, "attention_dropout": c.dropout,
        "pretraining_tp": 1, "tie_word_embeddings": c.tie_embeddings, "initializer_range": 0.02,
        # LlamaConfig's defaults (1 and 2) name tokens of Meta's vocabulary, which a nanollm one lacks.
        "bos_token_id": None, "eos_token_id": None,
        "torch_dtype": c.dtype, "dtype": c.dtype,  # transformers 4.x reads torch_dtype, 5.x reads dtype
        "nanollm": c.to_dict(),
    }


def _rope_base(h):
    """The rotary base of a config.json dict: rope_parameters (transformers 5) or rope_theta, with
    no scaling (YaRN, linear, Llama 3's frequency bands: nanollm's RoPE has none)."""
    parameters = h.get("rope_parameters") or {}
    scaling = h.get("rope_scaling") or {}
    kind = parameters.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise ValueError(f"rope scaling {kind!r} is not supported: nanollm's rotary embeddings are plain RoPE "
                         "(rope_type 'default')")
    return float(parameters.get("rope_theta", h.get("rope_theta", ROPE_BASE)))


def model_config_from_hf_llama(hf_config):
    """The nanollm model config of a Llama ``config.json`` dict (or a LlamaConfig), or a ValueError
    naming the setting nanollm cannot reproduce. float16/bfloat16 models load as float32."""
    if hasattr(hf_config, "to_dict"):
        hf_config = hf_config.to_dict()
    if not isinstance(hf_config, dict):
        raise ValueError(f"hf_config must be a config.json dict or a LlamaConfig, got {type(hf_config).__name__}")
    if hf_config.get("model_type") != "llama":
        raise ValueError(f"model_type={hf_config.get('model_type')!r} is not Llama")
    h = {**HF_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None}}
    missing = [key for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if key not in h]
    if missing:
        raise ValueError(f"config.json lacks {', '.join(missing)}; a Llama config needs them")
    if h["hidden_act"] != "silu":
        raise ValueError(f"hidden_act={h['hidden_act']!r} is not supported: nanollm's SwiGLU uses silu")
    for flag in ("attention_bias", "mlp_bias"):
        if h[flag]:
            raise ValueError(f"{flag}=True is not supported: nanollm's Llama has no biases")
    if h["pretraining_tp"] != 1:
        raise ValueError(f"pretraining_tp={h['pretraining_tp']} is not supported; re-save the model with "
                         "pretraining_tp=1")
    heads = int(h["num_attention_heads"])
    if h.get("head_dim") not in (None, h["hidden_size"] // heads):
        raise ValueError(f"head_dim={h['head_dim']} != hidden_size / num_attention_heads = "
                         f"{h['hidden_size'] // heads}: nanollm's heads split the width evenly")
    dtype = str(hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32").removeprefix("torch.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; nanollm loads {', '.join(DTYPES)} weights")
    config = ModelConfig(
        vocab_size=int(h["vocab_size"]), embedding_dim=int(h["hidden_size"]), num_layers=int(h["num_hidden_layers"]),
        ffn_hidden_dim=int(h["intermediate_size"]), num_heads=heads,
        num_kv_heads=int(h.get("num_key_value_heads") or heads), max_seq_len=int(h["max_position_embeddings"]),
        dropout=float(h["attention_dropout"]), architecture="llama", tie_embeddings=bool(h["tie_word_embeddings"]),
        rope_base=_rope_base(h), norm_eps=float(h["rms_norm_eps"]), dtype=DTYPES[dtype], lora=None)
    return config.to_dict()


# --------------------------------------------------------------------------------- names

def _qkv_splits(config):
    """Column ranges of q, k and v in attn.qkv.weight: (0, H hd), (H hd, (H + H_kv) hd), (.., end)."""
    c = ModelConfig.from_dict(config)
    q_end, k_end = c.num_heads * c.head_dim, (c.num_heads + c.num_kv_heads) * c.head_dim
    return ((0, q_end), (q_end, k_end), (k_end, k_end + c.num_kv_heads * c.head_dim))


def to_hf_llama(arrays, config):
    """{nanollm name: array} -> {LlamaForCausalLM state-dict name: array (transposed copies)}.

    Works for anything keyed like ``model.params`` (parameters, gradients, a subset); each
    attn.qkv.weight becomes q_proj, k_proj and v_proj. Shapes are checked against ``config``."""
    check_llama_compatible(config)
    shapes = parameter_shapes(config)
    out = {}
    for name, value in arrays.items():
        if name not in shapes:
            raise ValueError(f"unknown parameter name {name!r} for this {config['num_layers']}-layer Llama; keys "
                             "must be those of model.params (wte, blocks.<i>.<...>, norm_f.weight, lm_head.weight)")
        check_shape(name, value, shapes, repr(name))
        value = np.asarray(value)
        if name == "wte":
            out["model.embed_tokens.weight"] = value
        elif name == "norm_f.weight":
            out["model.norm.weight"] = value
        elif name == "lm_head.weight":
            out["lm_head.weight"] = value.T
        else:
            layer, suffix = _OUR_BLOCK.fullmatch(name).groups()
            prefix = f"model.layers.{layer}."
            if suffix in BLOCK_VECTORS:
                out[prefix + BLOCK_VECTORS[suffix]] = value
            elif suffix in BLOCK_MATRICES:
                out[prefix + BLOCK_MATRICES[suffix]] = value.T
            else:  # attn.qkv.weight
                for part, (begin, end) in zip(QKV_PARTS, _qkv_splits(config)):
                    out[prefix + part] = value[:, begin:end].T
    return {name: np.ascontiguousarray(value) for name, value in out.items()}


def from_hf_llama(state_dict, config):
    """{LlamaForCausalLM state-dict name: array} -> {nanollm name: array}, for the model ``config``
    (a nanollm model config, e.g. model_config_from_hf_llama's) whose shapes are checked.

    Torch tensors become NumPy arrays; rotary inv_freq buffers are skipped; a tied model's
    lm_head.weight is taken only when it equals embed_tokens. An unknown name is a ValueError
    naming it; missing ones are left out (import_hf names them)."""
    check_llama_compatible(config)
    shapes = parameter_shapes(config)
    tied = config.get("tie_embeddings", True)
    hf_to_ours = {"model.embed_tokens.weight": "wte", "model.norm.weight": "norm_f.weight"}
    if not tied:
        hf_to_ours["lm_head.weight"] = "lm_head.weight"
    for layer in range(config["num_layers"]):
        for ours, hf in {**BLOCK_VECTORS, **BLOCK_MATRICES}.items():
            hf_to_ours[f"model.layers.{layer}.{hf}"] = f"blocks.{layer}.{ours}"
    out, qkv_parts, lm_head = {}, {}, None
    for hf, value in state_dict.items():
        match = _HF_BLOCK.fullmatch(hf)
        if match and match[2] in HF_BUFFERS:
            continue
        value = np.asarray(as_numpy(value))
        if hf == "lm_head.weight" and tied:
            lm_head = value
        elif hf in hf_to_ours:
            name = hf_to_ours[hf]
            out[name] = value.T if name.endswith(tuple(BLOCK_MATRICES)) or name == "lm_head.weight" else value
            check_shape(name, out[name], shapes, repr(hf))
        elif match and match[2] in QKV_PARTS and int(match[1]) < config["num_layers"]:
            qkv_parts.setdefault(int(match[1]), {})[match[2]] = value
        else:
            raise ValueError(f"unknown Llama weight name {hf!r} for a {config['num_layers']}-layer "
                             "LlamaForCausalLM (model.embed_tokens, model.layers.<i>..., model.norm, lm_head)")
    for layer, parts in qkv_parts.items():
        missing = [part for part in QKV_PARTS if part not in parts]
        if missing:
            raise ValueError(f"layer {layer} lacks {', '.join(missing)}; save the whole model")
        name = f"blocks.{layer}.attn.qkv.weight"
        out[name] = np.concatenate([parts[part].T for part in QKV_PARTS], axis=1)
        check_shape(name, out[name], shapes, f"layer {layer}'s q_proj, k_proj and v_proj")
    if lm_head is not None and not np.array_equal(lm_head, out.get("wte")):
        raise ValueError("lm_head.weight differs from embed_tokens but config.json says tie_word_embeddings=true; "
                         "set it to false for a model with its own output layer")
    return out
