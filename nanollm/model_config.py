"""The one model schema: every model setting, its default, its check, and what follows from it.

    cfg = ModelConfig(vocab_size=65, embedding_dim=128, num_layers=4, architecture="llama")
    cfg.parameter_shapes()        # {"wte": (65, 128), "blocks.0.norm1.weight": (128,), ...}
    cfg.flops_per_token(seq_len=64)
    model = build_model(cfg, seed=0)

In the spirit of nanoGPT's GPTConfig: the fields below (with a comment each) are the model's
settings, and nowhere else lists them. ``TransformerLanguageModel(**settings)`` completes and
checks its settings here; a training config's model keys (``nanollm.config.DEFAULTS``, None
meaning "the model's") take their types and ranges from here; a checkpoint compares
``SHAPE_KEYS``. Sizes and FLOPs come from the config alone, so tools such as ``nanollm info``
describe a GPT-2-sized model without allocating its weights.
"""

import dataclasses
import inspect
import math
import re
import sys
from dataclasses import dataclass

import numpy as np

from nanollm.lora import adapter_shapes, check_lora_config
from nanollm.ops.rmsnorm import RMSNORM_EPS as NORM_EPS
from nanollm.ops.rope import ROPE_BASE
from nanollm.precision import HALF_DTYPES

ARCHITECTURES = ("gpt2", "llama")
DTYPES = ("float32", "float64")  # the parameters' dtype (half-precision training keeps float32 master weights)


@dataclass(frozen=True)
class ModelConfig:
    """A model's settings, completed and checked on construction (a ValueError names the bad
    one). ffn_hidden_dim None takes ``default_ffn_hidden_dim``, num_kv_heads None num_heads."""

    vocab_size: int                  # tokens in the vocabulary (the tokenizer's vocab_size)
    embedding_dim: int = 128         # channels C of the residual stream
    num_layers: int = 4              # transformer blocks
    ffn_hidden_dim: int = None       # hidden width of the MLP (None: gpt2 4 * embedding_dim, llama 8/3 * embedding_dim)
    num_heads: int = 4               # attention heads
    num_kv_heads: int = None         # key/value heads (< num_heads: grouped-query attention; None: num_heads)
    max_seq_len: int = 256           # context length T: the longest window the model reads (training's may be shorter)
    dropout: float = 0.0             # dropout probability in training (0: off)
    architecture: str = "gpt2"       # gpt2 (layernorm, learned positions, GELU) or llama (RMSNorm, RoPE, SwiGLU)
    tie_embeddings: bool = True      # output layer shares wte (true) or has its own lm_head (false)
    rope_base: float = ROPE_BASE     # llama: base of the rotary angles
    norm_eps: float = NORM_EPS       # epsilon under the square root of layernorm / RMSNorm (GPT-2, Llama 2: 1e-5)
    mlp_activation: str = None       # the MLP: gelu (gpt2's), swiglu (llama's, gated) or relu2 (ReLU^2, two matrices, the speedrun's); None: the architecture's
    qk_norm: bool = False            # RMS-normalise each head's queries and keys (no gain) before rope and the scores (QK-norm)
    logit_softcap: float = None      # logits become cap * tanh(logits / cap) (Gemma 2; the speedrun uses 15-30); None: off
    zero_init: bool = False          # the residual-stream output projections (attn.proj, mlp.proj / mlp.down) and an untied lm_head start at zero
    dtype: str = "float32"           # the parameters' dtype: float32 or float64
    lora: dict = None                # LoRA adapters {rank, alpha, dropout, targets} (see nanollm.lora), or None
    value_head: bool = False         # a linear value estimate on the final hidden state (PPO's critic), trained with the policy

    def __post_init__(self):
        if self.vocab_size is None:
            raise ValueError("a model config needs vocab_size (the tokenizer's vocabulary size)")
        for key in KEYS:
            check_value(key, getattr(self, key))
        activation = DEFAULT_ACTIVATIONS[self.architecture] if self.mlp_activation is None else self.mlp_activation
        if activation not in ACTIVATIONS[self.architecture]:
            raise ValueError(f"mlp_activation={activation!r} does not fit architecture={self.architecture!r}; choose "
                             f"one of {', '.join(ACTIVATIONS[self.architecture])}")
        normalised = dict(
            vocab_size=int(self.vocab_size), embedding_dim=int(self.embedding_dim), num_layers=int(self.num_layers),
            ffn_hidden_dim=int(default_ffn_hidden_dim(self.embedding_dim, self.architecture, activation)
                               if self.ffn_hidden_dim is None else self.ffn_hidden_dim),
            num_heads=int(self.num_heads),
            num_kv_heads=int(self.num_heads if self.num_kv_heads is None else self.num_kv_heads),
            max_seq_len=int(self.max_seq_len), dropout=float(self.dropout), tie_embeddings=bool(self.tie_embeddings),
            rope_base=float(self.rope_base), norm_eps=float(self.norm_eps), mlp_activation=activation,
            qk_norm=bool(self.qk_norm), zero_init=bool(self.zero_init),
            logit_softcap=None if self.logit_softcap is None else float(self.logit_softcap), dtype=str(self.dtype),
            lora=check_lora_config(self.lora), value_head=bool(self.value_head))
        for key, value in normalised.items():  # frozen: completed once, here
            object.__setattr__(self, key, value)
        check_head_counts(self.embedding_dim, self.num_heads, self.num_kv_heads)
        if self.architecture == "llama" and self.head_dim % 2:
            raise ValueError(f"architecture='llama' rotates channel pairs, so embedding_dim / num_heads must be even; "
                             f"got {self.embedding_dim} / {self.num_heads} = {self.head_dim}")

    @classmethod
    def from_dict(cls, settings):
        """A ModelConfig from a dict such as ``model.config`` or a checkpoint's model config;
        a missing key takes its default (older checkpoints lack newer keys)."""
        if isinstance(settings, ModelConfig):
            return settings
        unknown = [key for key in settings if key not in KEYS]
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; a model config has only {KEYS}")
        return cls(**{"vocab_size": None, **settings})  # a missing vocab_size: the one error below

    @classmethod
    def from_training_config(cls, cfg, vocab_size=None):
        """The model a resolved training config describes: its model keys that are set (None:
        the default), vocab_size the tokenizer's (the argument) where given, else the config's,
        and float32 master weights for a half-precision dtype. LoRA adapters are attached by
        training (from the lora_* keys), not built here."""
        settings = {key: cfg[key] for key in TRAINING_KEYS if cfg.get(key) is not None}
        if vocab_size is not None:
            settings["vocab_size"] = vocab_size
        if cfg.get("dtype") is not None:
            settings["dtype"] = master_dtype(cfg["dtype"])
        return cls.from_dict(settings)

    def to_dict(self):
        """A plain dict (``model.config``, JSON in checkpoints)."""
        return {key: getattr(self, key) for key in KEYS}

    @property
    def head_dim(self):
        return self.embedding_dim // self.num_heads

    def parameter_shapes(self):
        """The parameter table: name -> shape, in forward order.

        A tied output layer is wte itself and has no entry; an untied one is lm_head.weight
        (C, V). With a lora setting, each block's adapters follow its weights (see nanollm.lora)."""
        c, f, v = self.embedding_dim, self.ffn_hidden_dim, self.vocab_size
        qkv = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        if self.architecture == "llama":
            shapes = {"wte": (v, c)}  # positions enter through the rotary embeddings
            block = {"norm1.weight": (c,), "attn.qkv.weight": (c, qkv), "attn.proj.weight": (c, c),
                     "norm2.weight": (c,)}
            if self.mlp_activation == "swiglu":
                block.update({"mlp.gate.weight": (c, f), "mlp.up.weight": (c, f), "mlp.down.weight": (f, c)})
            else:  # relu2: two matrices, no biases
                block.update({"mlp.fc.weight": (c, f), "mlp.proj.weight": (f, c)})
            final = {"norm_f.weight": (c,)}
        else:
            shapes = {"wte": (v, c), "wpe": (self.max_seq_len, c)}
            block = {"ln1.weight": (c,), "ln1.bias": (c,),
                     "attn.qkv.weight": (c, qkv), "attn.qkv.bias": (qkv,),
                     "attn.proj.weight": (c, c), "attn.proj.bias": (c,),
                     "ln2.weight": (c,), "ln2.bias": (c,),
                     "mlp.fc.weight": (c, f), "mlp.fc.bias": (f,),
                     "mlp.proj.weight": (f, c), "mlp.proj.bias": (c,)}
            final = {"ln_f.weight": (c,), "ln_f.bias": (c,)}
        block.update(adapter_shapes(self.to_dict()))
        for layer in range(self.num_layers):
            shapes.update({f"blocks.{layer}.{suffix}": shape for suffix, shape in block.items()})
        shapes.update(final)
        if not self.tie_embeddings:
            shapes["lm_head.weight"] = (c, v)
        if self.value_head:
            shapes.update({"value_head.weight": (c, 1), "value_head.bias": (1,)})
        return shapes

    def flops_per_token(self, seq_len=None, training=True):
        """Matmul FLOPs per token as the model computes them (2 per multiply-add).

        Per layer: qkv, attention projection and the MLP matmuls (two for GPT-2, three for
        Llama's SwiGLU), plus q k^T and probs v over the full (masked) T x T square; then the
        output layer. A train step does the forward once and the backward's two matmuls per
        forward matmul: 3x the forward. seq_len defaults to max_seq_len."""
        t = self.max_seq_len if seq_len is None else seq_len
        c, f, heads, hd = self.embedding_dim, self.ffn_hidden_dim, self.num_heads, self.head_dim
        qkv = (heads + 2 * self.num_kv_heads) * hd
        mlp_matrices = 3 if self.mlp_activation == "swiglu" else 2
        per_layer = 2 * (c * qkv + c * c + mlp_matrices * c * f) + 2 * 2 * heads * hd * t
        forward = self.num_layers * per_layer + 2 * c * self.vocab_size
        return 3 * forward if training else forward


KEYS = tuple(field.name for field in dataclasses.fields(ModelConfig))
# What a checkpoint fixes: the settings that decide the parameter shapes (not dropout, dtype or lora).
SHAPE_KEYS = ("vocab_size", "embedding_dim", "num_layers", "ffn_hidden_dim", "num_heads", "num_kv_heads",
              "max_seq_len", "architecture", "tie_embeddings", "rope_base", "norm_eps", "mlp_activation", "qk_norm",
              "logit_softcap", "value_head")
# The model keys a training config may set (None there: the model's value). dtype is a training
# key of its own (it may ask for half-precision compute), lora comes from the lora_* keys and the
# value head from PPO (nanollm.posttrain.ppo), which adds it.
TRAINING_KEYS = tuple(key for key in KEYS if key not in ("dtype", "lora", "value_head"))
TYPES = {field.name: field.type for field in dataclasses.fields(ModelConfig) if field.name in TRAINING_KEYS}
CHOICES = {"architecture": ARCHITECTURES, "dtype": DTYPES, "mlp_activation": ("gelu", "swiglu", "relu2")}
ACTIVATIONS = {"gpt2": ("gelu", "relu2"), "llama": ("swiglu", "relu2")}  # the MLPs each architecture can have
DEFAULT_ACTIVATIONS = {"gpt2": "gelu", "llama": "swiglu"}


def describe_fields():
    """{field: its comment above}, read from this file's source: the one place each model
    setting is described (the training config's --help and reference reuse it)."""
    source = inspect.getsource(sys.modules[__name__])
    return dict(re.findall(r"^    (\w+): \w+(?: = [^#]+?)?\s+#\s*(.+?)\s*$", source, flags=re.M))


def check_value(key, value):
    """A ValueError naming ``key`` when ``value`` is not allowed for it (None passes: it means
    'the default' in both a ModelConfig and a training config)."""
    if value is None:
        return
    if key in ("vocab_size", "embedding_dim", "num_layers", "ffn_hidden_dim", "num_heads", "num_kv_heads",
               "max_seq_len"):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    elif key == "dropout":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {value!r}")
    elif key == "rope_base":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1.0 < value < math.inf:
            raise ValueError(f"rope_base must be a number > 1 (Llama uses 10000), got {value!r}")
    elif key == "norm_eps":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ValueError(f"norm_eps must be a number in (0, 1) (GPT-2 and Llama 2 use 1e-5), got {value!r}")
    elif key == "logit_softcap":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < math.inf:
            raise ValueError(f"logit_softcap must be a number > 0 (the speedrun uses 15-30) or none, got {value!r}")
    elif key in ("tie_embeddings", "value_head", "qk_norm", "zero_init"):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{key} must be true or false, got {value!r}")
    elif key in CHOICES and str(value) not in CHOICES[key]:
        raise ValueError(f"{key}={value!r} is not supported; choose one of {', '.join(CHOICES[key])}")


def check_head_counts(embedding_dim, num_heads, num_kv_heads):
    """Heads must split the width evenly, and key/value heads must split the heads evenly.
    A None count is not checked (a training config may leave it to the model's default)."""
    if embedding_dim and num_heads and embedding_dim % num_heads:
        raise ValueError(f"embedding_dim={embedding_dim} is not divisible by num_heads={num_heads}; "
                         f"choose num_heads among the divisors of {embedding_dim}")
    if num_heads and num_kv_heads and num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}; "
                         f"choose num_kv_heads among the divisors of {num_heads}")


def default_ffn_hidden_dim(embedding_dim, architecture, mlp_activation=None):
    """GPT-2 (and any two-matrix MLP): 4 C. Llama's SwiGLU: 8C/3 rounded up to a multiple of 8, so
    that its three matrices hold GPT-2's 8 C^2 parameters (Llama rounds to 256 at its sizes)."""
    if (mlp_activation or DEFAULT_ACTIVATIONS[architecture]) == "swiglu":
        return 8 * math.ceil(embedding_dim / 3)  # = 8C/3 rounded up to a multiple of 8
    return 4 * embedding_dim


def master_dtype(dtype):
    """The parameters' dtype for a training dtype: half precision keeps float32 master weights."""
    return "float32" if dtype in HALF_DTYPES else dtype


def complete_model_config(settings):
    """``settings`` (a dict, such as a checkpoint's model config) completed and checked: a plain
    dict with every key of KEYS."""
    return ModelConfig.from_dict(settings).to_dict()


def parameter_shapes(config):
    """The parameter table (name -> shape) of a model config (a dict or a ModelConfig)."""
    return ModelConfig.from_dict(config).parameter_shapes()


def flops_per_token(config, seq_len=None, training=True):
    """Matmul FLOPs per token of a model config (see ModelConfig.flops_per_token)."""
    return ModelConfig.from_dict(config).flops_per_token(seq_len, training)


def build_model(config, seed=None):
    """A new TransformerLanguageModel of ``config`` (a ModelConfig or a dict of its fields);
    seed fixes the initial weights (None: drawn from NumPy's global generator, see set_seed)."""
    from nanollm.model import TransformerLanguageModel  # the model imports this schema

    return TransformerLanguageModel(**ModelConfig.from_dict(config).to_dict(), seed=seed)


def build_training_model(cfg, vocab_size=None):
    """A new model of what a resolved training config describes (ModelConfig.from_training_config),
    its weights drawn from the config's seed: what `nanollm train`, experiments and the benchmarks build."""
    return build_model(ModelConfig.from_training_config(cfg, vocab_size), seed=cfg["seed"])
