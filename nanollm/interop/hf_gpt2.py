"""Hugging Face GPT-2 interop: nanollm parameters <-> ``transformers.GPT2LMHeadModel`` weights.

    to_hf_gpt2(model.params, model.config)     {"transformer.h.0.attn.c_attn.weight": (C, 3C), ...}
    from_hf_gpt2(state_dict)                   {"blocks.0.attn.qkv.weight": (C, 3C), ...}
    export_hf_gpt2("run/checkpoint_final.npz", "hf/")   model.safetensors + config.json (+ tokenizer), see hf.py
    import_hf_gpt2("hf/", "run/imported.npz")           a nanollm checkpoint of the same model

Why no layout changes: nanollm's GPT-2 *is* GPT-2. Its linear weights are (in, out) with
y = x @ W + b, exactly like transformers' ``Conv1D`` (which keeps OpenAI's TensorFlow layout);
its qkv columns are [q heads | k heads | v heads] like ``c_attn``; GELU is the tanh form
("gelu_new"); layernorm eps is 1e-5; the output layer is tied to wte. So only names change and
the arrays themselves are passed through, never transposed or copied.

Name table (i = layer):
    wte                          transformer.wte.weight          (V, C)
    wpe                          transformer.wpe.weight          (T, C)
    blocks.i.ln1.weight/bias     transformer.h.i.ln_1.weight     (C,)
    blocks.i.attn.qkv.weight     transformer.h.i.attn.c_attn.weight   (C, 3C)
    blocks.i.attn.proj.weight    transformer.h.i.attn.c_proj.weight   (C, C)
    blocks.i.ln2.weight/bias     transformer.h.i.ln_2.weight     (C,)
    blocks.i.mlp.fc.weight       transformer.h.i.mlp.c_fc.weight      (C, F)
    blocks.i.mlp.proj.weight     transformer.h.i.mlp.c_proj.weight    (F, C)
    ln_f.weight/bias             transformer.ln_f.weight         (C,)
(and each ``.bias`` likewise). ``lm_head.weight`` is not written: it is wte, and transformers
re-ties it when it loads the model.

The file functions need the ``safetensors`` package (imported only when called); nothing here
needs torch or transformers.
"""

import re

import numpy as np

from nanollm.interop.files import as_numpy, check_shape
from nanollm.model import BLOCK_PARAMS
from nanollm.model_config import complete_model_config, parameter_shapes
from nanollm.ops.rope import ROPE_BASE

MODEL_CLASS = "GPT2LMHeadModel"
# nanollm block suffix -> HF block suffix (the same tensor, the same layout).
BLOCK_NAMES = {
    "ln1.weight": "ln_1.weight", "ln1.bias": "ln_1.bias",
    "attn.qkv.weight": "attn.c_attn.weight", "attn.qkv.bias": "attn.c_attn.bias",
    "attn.proj.weight": "attn.c_proj.weight", "attn.proj.bias": "attn.c_proj.bias",
    "ln2.weight": "ln_2.weight", "ln2.bias": "ln_2.bias",
    "mlp.fc.weight": "mlp.c_fc.weight", "mlp.fc.bias": "mlp.c_fc.bias",
    "mlp.proj.weight": "mlp.c_proj.weight", "mlp.proj.bias": "mlp.c_proj.bias",
}
assert set(BLOCK_NAMES) == set(BLOCK_PARAMS)
HF_BLOCK_NAMES = {hf: ours for ours, hf in BLOCK_NAMES.items()}
TOP_NAMES = {"wte": "wte.weight", "wpe": "wpe.weight", "ln_f.weight": "ln_f.weight", "ln_f.bias": "ln_f.bias"}
HF_TOP_NAMES = {hf: ours for ours, hf in TOP_NAMES.items()}
HF_PREFIX = "transformer."
HF_BUFFERS = ("attn.bias", "attn.masked_bias")  # the causal mask buffers old checkpoints saved

_OUR_BLOCK = re.compile(r"blocks\.(0|[1-9][0-9]*)\.(.+)")
_HF_BLOCK = re.compile(r"h\.(0|[1-9][0-9]*)\.(.+)")

GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")  # both are 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
# What GPT2Config assumes for a key that config.json leaves out (transformers' defaults).
HF_DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
               "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": 0.1,
               "layer_norm_epsilon": 1e-5, "scale_attn_weights": True, "tie_word_embeddings": True,
               "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
               "add_cross_attention": False}
# Floating dtypes of HF checkpoints -> the nanollm dtype they load as (nanollm computes in 32 or 64 bits).
DTYPES = {"float32": "float32", "float64": "float64", "float16": "float32", "bfloat16": "float32"}


# --------------------------------------------------------------------------------- config

def check_gpt2_compatible(config):
    """A ValueError unless ``config`` (a nanollm model config) is a model GPT2LMHeadModel can hold.

    GPT-2 has one key/value head per query head and nanollm's "gpt2" layout only; a grouped-query
    model or another architecture has weights GPT-2 has no place for."""
    if not isinstance(config, dict):
        raise ValueError(f"config must be a nanollm model config dict (model.config), got {type(config).__name__}")
    architecture = config.get("architecture", "gpt2")
    if architecture != "gpt2":
        raise ValueError(f"architecture={architecture!r} cannot be exported as GPT-2; only architecture='gpt2' "
                         "models map onto GPT2LMHeadModel")
    if config.get("lora") is not None:
        raise ValueError("the model has LoRA adapters, which GPT-2 has no place for; merge them into the weights "
                         "first (nanollm merge RUN OUT.npz, or model.merge_lora()) and export the merged model")
    if config.get("tie_embeddings", True) is not True:
        raise ValueError("tie_embeddings=False (an output layer of its own) is not exported: nanollm's GPT-2 "
                         "export writes the tied layout; train with tie_embeddings=true to export")
    heads, kv_heads = config.get("num_heads"), config.get("num_kv_heads")
    if kv_heads is not None and kv_heads != heads:
        raise ValueError(f"num_kv_heads={kv_heads} != num_heads={heads} (grouped-query attention) cannot be "
                         "expressed in GPT-2; train with num_kv_heads=num_heads to export")
    if not isinstance(config.get("num_layers"), int):
        raise ValueError(f"config has no integer num_layers (got {config.get('num_layers')!r}); pass model.config")


def hf_gpt2_config(model_config):
    """The ``config.json`` dict with which ``GPT2LMHeadModel.from_pretrained`` rebuilds this model.

    Every setting nanollm fixes (tanh GELU, eps 1e-5, tied output, 1/sqrt(hd) scaling) is written
    out rather than left to transformers' defaults; the nanollm config rides along under "nanollm"."""
    check_gpt2_compatible(model_config)
    missing = [key for key in ("vocab_size", "max_seq_len", "embedding_dim", "num_heads", "ffn_hidden_dim")
               if not isinstance(model_config.get(key), int)]
    if missing:
        raise ValueError(f"the model config lacks integer {', '.join(missing)}; pass model.config (or a "
                         "checkpoint's model_config)")
    c = model_config
    dtype = str(c.get("dtype", "float32"))
    dropout = float(c.get("dropout", 0.0))
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": c["vocab_size"], "n_positions": c["max_seq_len"], "n_embd": c["embedding_dim"],
        "n_layer": c["num_layers"], "n_head": c["num_heads"], "n_inner": c["ffn_hidden_dim"],
        "activation_function": "gelu_new", "layer_norm_epsilon": float(c.get("norm_eps", 1e-5)),
        "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout,
        "initializer_range": 0.02, "tie_word_embeddings": True, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        # GPT2Config's defaults (50256) name GPT-2's own <|endoftext|>, which a nanollm vocabulary lacks.
        "bos_token_id": None, "eos_token_id": None,
        "torch_dtype": dtype, "dtype": dtype,  # transformers 4.x reads torch_dtype, 5.x reads dtype
        "nanollm": dict(model_config),
    }


def model_config_from_hf(hf_config):
    """The nanollm model config of a GPT-2 ``config.json`` dict (or a GPT2Config), or a ValueError
    naming the setting nanollm cannot reproduce.

    Keys left out take GPT2Config's defaults, as transformers would; n_inner None means 4 * n_embd;
    dropout is resid_pdrop (nanollm has one rate); float16/bfloat16 models load as float32."""
    if hasattr(hf_config, "to_dict"):
        hf_config = hf_config.to_dict()
    if not isinstance(hf_config, dict):
        raise ValueError(f"hf_config must be a config.json dict or a GPT2Config, got {type(hf_config).__name__}")
    h = {**HF_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None or k == "n_inner"}}
    model_type = hf_config.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"model_type={model_type!r} is not GPT-2; only GPT-2 checkpoints can be imported")
    if h["activation_function"] not in GELU_TANH:
        raise ValueError(f"activation_function={h['activation_function']!r} is not supported: nanollm uses the tanh "
                         f"GELU ({' or '.join(GELU_TANH)})")
    if not h["tie_word_embeddings"]:
        raise ValueError("tie_word_embeddings=False: untied output layers are not supported; nanollm's output "
                         "layer is wte")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if h[flag]:
            raise ValueError(f"{flag}=True is not supported by nanollm's attention; only plain GPT-2 imports")
    if not h["scale_attn_weights"]:
        raise ValueError("scale_attn_weights=False is not supported: nanollm always scales scores by 1/sqrt(head_dim)")
    dtype = str(hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32").removeprefix("torch.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; nanollm loads {', '.join(DTYPES)} weights")
    n_inner = h["n_inner"]
    return complete_model_config(dict(
        vocab_size=int(h["vocab_size"]), embedding_dim=int(h["n_embd"]), num_layers=int(h["n_layer"]),
        ffn_hidden_dim=int(4 * h["n_embd"] if n_inner is None else n_inner),
        num_heads=int(h["n_head"]), num_kv_heads=int(h["n_head"]), max_seq_len=int(h["n_positions"]),
        dropout=float(h["resid_pdrop"]), architecture="gpt2", tie_embeddings=True, rope_base=ROPE_BASE,
        norm_eps=float(h["layer_norm_epsilon"]), dtype=DTYPES[dtype], lora=None, value_head=False))


# --------------------------------------------------------------------------------- names

def _hf_name(name, num_layers):
    """nanollm name -> HF name (with the transformer. prefix), or None for an unknown name."""
    if name in TOP_NAMES:
        return HF_PREFIX + TOP_NAMES[name]
    match = _OUR_BLOCK.fullmatch(name)
    if match and int(match[1]) < num_layers and match[2] in BLOCK_NAMES:
        return f"{HF_PREFIX}h.{match[1]}.{BLOCK_NAMES[match[2]]}"
    return None


def to_hf_gpt2(arrays, config):
    """{nanollm name: array} -> {GPT2LMHeadModel state-dict name: the same array}.

    Works for anything keyed like ``model.params``: parameters, gradients, Adam moments, a subset
    of them. The arrays are the very same objects (no transpose, no copy: Conv1D is (in, out) like
    nanollm's weights). Array shapes are checked against ``config`` (a nanollm model config);
    ``lm_head.weight`` is left out because it is tied to wte."""
    check_gpt2_compatible(config)
    shapes = parameter_shapes(config) if all(k in config for k in ("embedding_dim", "ffn_hidden_dim",
                                                                   "vocab_size", "max_seq_len")) else None
    out = {}
    for name, value in arrays.items():
        hf = _hf_name(name, config["num_layers"])
        if hf is None:
            raise ValueError(f"unknown parameter name {name!r} for a {config['num_layers']}-layer GPT-2; keys must "
                             "be those of model.params (wte, wpe, blocks.<i>.<...>, ln_f.weight, ln_f.bias)")
        check_shape(name, value, shapes, f"{name!r}")
        out[hf] = value
    return out


def from_hf_gpt2(state_dict, config=None):
    """{GPT2LMHeadModel / GPT2Model state-dict name: array} -> {nanollm name: the same array}.

    Takes both "transformer.h.0.attn.c_attn.weight" and the hub's un-prefixed "h.0.attn.c_attn.weight";
    skips the causal-mask buffers (h.<i>.attn.bias, attn.masked_bias); accepts lm_head.weight only
    when it equals wte (nanollm's output layer is wte). Torch tensors become NumPy arrays; NumPy
    arrays pass through untouched. ``config`` (a nanollm model config), when given, also checks the
    layer count and shapes. An unknown name is a ValueError naming it."""
    if config is not None:
        check_gpt2_compatible(config)
    shapes = parameter_shapes(config) if config is not None else None
    out, lm_head, origin = {}, None, {}
    for hf, value in state_dict.items():
        bare = hf[len(HF_PREFIX):] if hf.startswith(HF_PREFIX) else hf
        match = _HF_BLOCK.fullmatch(bare)
        if hf == "lm_head.weight":
            lm_head = as_numpy(value)
            continue
        if match and match[2] in HF_BUFFERS:
            continue
        if bare in HF_TOP_NAMES:
            name = HF_TOP_NAMES[bare]
        elif match and match[2] in HF_BLOCK_NAMES and (config is None or int(match[1]) < config["num_layers"]):
            name = f"blocks.{match[1]}.{HF_BLOCK_NAMES[match[2]]}"
        else:
            raise ValueError(f"unknown GPT-2 weight name {hf!r}; only GPT2LMHeadModel/GPT2Model weights import "
                             "(transformer.wte/wpe/h.<i>/ln_f..., lm_head tied to wte)")
        if name in out:
            raise ValueError(f"{hf!r} and {origin[name]!r} are the same weight; give a state dict with each once")
        check_shape(name, value, shapes, f"{hf!r}")
        out[name], origin[name] = as_numpy(value), hf
    if lm_head is not None:
        if "wte" not in out:
            out["wte"] = lm_head  # tied: the output layer is the token embedding
        elif not (lm_head.shape == out["wte"].shape and np.array_equal(np.asarray(lm_head), np.asarray(out["wte"]))):
            raise ValueError("lm_head.weight differs from wte: untied output layers are not supported; nanollm's "
                             "output layer is the token embedding wte")
    return out
