"""The GPT-2-style decoder: a parameter table, forward(), and backward() as forward in reverse.

    tokens (B, T) -> wte[tokens] + wpe[0..T) -> dropout
      -> L x [ x + dropout(proj(attention(qkv(layernorm(x)))))
               x + dropout(mlp(layernorm(x))) ]
      -> layernorm -> logits = x @ wte.T (output layer tied to the token embedding)

Every step calls an op from ``nanollm.ops``; ``backward`` calls the same ops' backward
functions in exactly the reverse order, so the two read as mirror images.
"""

import inspect
import math
from contextlib import contextmanager

import numpy as np

from nanollm import backends
from nanollm.ops import (
    attention_backward, attention_forward,
    cross_entropy_backward, cross_entropy_forward,
    dropout_backward, dropout_forward,
    embedding_backward, embedding_forward,
    layernorm_backward, layernorm_forward,
    linear_backward, linear_forward,
    mlp_backward, mlp_forward,
    residual_backward, residual_forward,
)
from nanollm.ops.cross_entropy import IGNORE_INDEX

ARCHITECTURES = ("gpt2",)
DTYPES = ("float32", "float64")
INIT_STD = 0.02  # GPT-2's normal(0, 0.02) initialisation

# Suffixes of the block parameters, in the order the block uses them.
BLOCK_PARAMS = (
    "ln1.weight", "ln1.bias",
    "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "ln2.weight", "ln2.bias",
    "mlp.fc.weight", "mlp.fc.bias", "mlp.proj.weight", "mlp.proj.bias",
)
RESIDUAL_PROJECTIONS = ("attn.proj.weight", "mlp.proj.weight")  # init std scaled by 1/sqrt(2 L)


def _require_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_head_counts(embedding_dim, num_heads, num_kv_heads):
    """Heads must split the width evenly, and key/value heads must split the heads evenly.
    A None count is not checked (config files may leave it to the model's default)."""
    if embedding_dim and num_heads and embedding_dim % num_heads:
        raise ValueError(f"embedding_dim={embedding_dim} is not divisible by num_heads={num_heads}; "
                         f"choose num_heads among the divisors of {embedding_dim}")
    if num_heads and num_kv_heads and num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}; "
                         f"choose num_kv_heads among the divisors of {num_heads}")


# ----------------------------------------------------------------------------- the config alone
# Sizes and FLOPs come from the model-config dict (``model.config``), so tools such as
# ``nanollm.estimate`` can describe a GPT-2-sized model without allocating its weights.

MODEL_CONFIG_KEYS = ("vocab_size", "embedding_dim", "num_layers", "ffn_hidden_dim", "num_heads",
                     "num_kv_heads", "max_seq_len", "dropout", "architecture", "dtype")


def complete_model_config(config):
    """A model-config dict (``model.config``) completed and validated exactly as
    ``TransformerLanguageModel(**config)`` does: a missing key takes the constructor's default,
    ffn_hidden_dim None means 4 * embedding_dim and num_kv_heads None means num_heads (any other
    None is an error, as in the constructor: drop a resolved training config's None keys first).
    vocab_size is required. Returns a new plain dict with every key of MODEL_CONFIG_KEYS."""
    unknown = [key for key in config if key not in MODEL_CONFIG_KEYS]
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; a model config has only {MODEL_CONFIG_KEYS}")
    if "vocab_size" not in config:
        raise ValueError("a model config needs vocab_size (the tokenizer's vocabulary size)")
    defaults = {name: parameter.default
                for name, parameter in inspect.signature(TransformerLanguageModel.__init__).parameters.items()
                if name in MODEL_CONFIG_KEYS}
    cfg = {key: config.get(key, defaults.get(key)) for key in MODEL_CONFIG_KEYS}
    if cfg["ffn_hidden_dim"] is None and isinstance(cfg["embedding_dim"], (int, np.integer)):
        cfg["ffn_hidden_dim"] = 4 * cfg["embedding_dim"]
    if cfg["num_kv_heads"] is None:
        cfg["num_kv_heads"] = cfg["num_heads"]
    for name in ("vocab_size", "embedding_dim", "num_layers", "ffn_hidden_dim", "num_heads", "num_kv_heads",
                 "max_seq_len"):
        _require_int(name, cfg[name])
    check_head_counts(cfg["embedding_dim"], cfg["num_heads"], cfg["num_kv_heads"])
    dropout, architecture, dtype = cfg["dropout"], cfg["architecture"], cfg["dtype"]
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r} is not supported; choose one of {ARCHITECTURES}")
    if str(dtype) not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {DTYPES}")
    return dict(vocab_size=int(cfg["vocab_size"]), embedding_dim=int(cfg["embedding_dim"]),
                num_layers=int(cfg["num_layers"]), ffn_hidden_dim=int(cfg["ffn_hidden_dim"]),
                num_heads=int(cfg["num_heads"]), num_kv_heads=int(cfg["num_kv_heads"]),
                max_seq_len=int(cfg["max_seq_len"]), dropout=float(dropout),
                architecture=architecture, dtype=str(dtype))


def parameter_shapes(config):
    """The parameter table of a model config: name -> shape, in forward order.

    config: a model-config dict (``model.config``; completed by ``complete_model_config``).
    The output layer is tied to wte, so it has no entry of its own."""
    cfg = complete_model_config(config)
    c, f, v = cfg["embedding_dim"], cfg["ffn_hidden_dim"], cfg["vocab_size"]
    qkv = (cfg["num_heads"] + 2 * cfg["num_kv_heads"]) * (c // cfg["num_heads"])
    shapes = {"wte": (v, c), "wpe": (cfg["max_seq_len"], c)}
    block = {"ln1.weight": (c,), "ln1.bias": (c,),
             "attn.qkv.weight": (c, qkv), "attn.qkv.bias": (qkv,),
             "attn.proj.weight": (c, c), "attn.proj.bias": (c,),
             "ln2.weight": (c,), "ln2.bias": (c,),
             "mlp.fc.weight": (c, f), "mlp.fc.bias": (f,),
             "mlp.proj.weight": (f, c), "mlp.proj.bias": (c,)}
    for layer in range(cfg["num_layers"]):
        shapes.update({f"blocks.{layer}.{suffix}": block[suffix] for suffix in BLOCK_PARAMS})
    shapes.update({"ln_f.weight": (c,), "ln_f.bias": (c,)})
    return shapes


def flops_per_token(config, seq_len=None, training=True):
    """Matmul FLOPs per token of a model config as this code computes them (2 per multiply-add).

    Per layer: qkv, attention projection and the two MLP matmuls, plus q k^T and probs v
    over the full (masked) T x T square; then the output layer. A train step does the
    forward once and the backward's two matmuls per forward matmul: 3x the forward.
    seq_len defaults to max_seq_len.
    """
    cfg = complete_model_config(config)
    t = cfg["max_seq_len"] if seq_len is None else seq_len
    c, f, heads = cfg["embedding_dim"], cfg["ffn_hidden_dim"], cfg["num_heads"]
    hd = c // heads
    qkv = (heads + 2 * cfg["num_kv_heads"]) * hd
    per_layer = 2 * (c * qkv + c * c + 2 * c * f) + 2 * 2 * heads * hd * t
    forward = cfg["num_layers"] * per_layer + 2 * c * cfg["vocab_size"]
    return 3 * forward if training else forward


class TransformerLanguageModel:
    """A decoder-only transformer language model (GPT-2 architecture), NumPy arrays throughout.

    ``model.params`` maps names (see ``parameter_shapes``) to arrays; ``forward`` keeps the
    caches that ``backward`` needs, and ``backward`` returns gradients with the same keys.
    """

    def __init__(self, vocab_size, embedding_dim=128, num_layers=4, ffn_hidden_dim=None,
                 num_heads=4, num_kv_heads=None, max_seq_len=256, dropout=0.0,
                 architecture="gpt2", dtype="float32", seed=None):
        self.config = complete_model_config(dict(
            vocab_size=vocab_size, embedding_dim=embedding_dim, num_layers=num_layers,
            ffn_hidden_dim=ffn_hidden_dim, num_heads=num_heads, num_kv_heads=num_kv_heads,
            max_seq_len=max_seq_len, dropout=dropout, architecture=architecture, dtype=dtype))
        for key, value in self.config.items():
            setattr(self, key, value)
        self.head_dim = self.embedding_dim // self.num_heads
        self.training = True
        # seed=None draws the seed from NumPy's global generator, so set_seed() governs it.
        seed = int(np.random.randint(2**31 - 1)) if seed is None else seed
        init_rng, dropout_seed = np.random.default_rng(seed), seed + 1
        self.dropout_rng = np.random.default_rng(dropout_seed)
        self.params = self._init_params(init_rng)
        self._cache = None

    # ----------------------------------------------------------------------------- parameters

    def parameter_shapes(self):
        """The parameter table: name -> shape, in forward order (``parameter_shapes(config)``)."""
        return parameter_shapes(self.config)

    def _init_params(self, rng):
        """normal(0, 0.02) weights and embeddings, residual projections scaled by 1/sqrt(2 L),
        zero biases, unit layernorm gains (GPT-2 / nanoGPT)."""
        params = {}
        for name, shape in self.parameter_shapes().items():
            if name.endswith(".bias"):
                value = np.zeros(shape)
            elif name.endswith(".weight") and name.split(".")[-2].startswith("ln"):
                value = np.ones(shape)  # layernorm gain
            else:
                std = INIT_STD / math.sqrt(2 * self.num_layers) if name.endswith(RESIDUAL_PROJECTIONS) else INIT_STD
                value = rng.normal(0.0, std, size=shape)
            params[name] = value.astype(self.dtype)
        return params

    def num_parameters(self):
        """Total number of parameters (the tied output layer counted once, as wte)."""
        return sum(int(p.size) for p in self.params.values())

    def parameter_table(self):
        """A printable table of every parameter tensor, its shape and size."""
        width = max(len(name) for name in self.params)
        lines = [f"{'name':<{width}}  {'shape':<14} {'count':>10}"]
        for name, p in self.params.items():
            lines.append(f"{name:<{width}}  {str(tuple(p.shape)):<14} {p.size:>10,}")
        lines.append(f"{'total':<{width}}  {'':<14} {self.num_parameters():>10,}")
        return "\n".join(lines)

    def flops_per_token(self, seq_len=None, training=True):
        """Matmul FLOPs per token as this code computes them (2 per multiply-add).

        Per layer: qkv, attention projection and the two MLP matmuls, plus q k^T and probs v
        over the full (masked) T x T square; then the output layer. A train step does the
        forward once and the backward's two matmuls per forward matmul: 3x the forward.
        seq_len defaults to max_seq_len. (``flops_per_token(config, ...)`` computes it.)
        """
        return flops_per_token(self.config, seq_len, training)

    def train(self):
        """Training mode: dropout is active."""
        self.training = True
        return self

    def eval(self):
        """Evaluation mode: dropout is the identity."""
        self.training = False
        return self

    @contextmanager
    def evaluating(self):
        """Evaluation mode inside a ``with`` block; the previous mode is restored after it."""
        was_training = self.training
        self.training = False
        try:
            yield self
        finally:
            self.training = was_training

    # ----------------------------------------------------------------------------- checks

    def _check_tokens(self, name, ids, allow_ignore=False):
        """ids must be a 2-D integer array (B, T) of ids in [0, vocab_size), T <= max_seq_len."""
        xp = backends.array_module(ids)
        if not hasattr(ids, "dtype") or not hasattr(ids, "ndim"):
            raise ValueError(f"{name} must be an integer array of shape (batch, time), got {type(ids).__name__}")
        if ids.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}; "
                             f"convert with {name}.astype(np.int64)")
        if ids.ndim != 2:
            raise ValueError(f"{name} must be 2-D (batch, time), got shape {tuple(ids.shape)}; "
                             f"add a batch axis with {name}[None, :]")
        batch, time = ids.shape
        if batch == 0 or time == 0:
            raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}); give at least one token")
        if time > self.max_seq_len:
            raise ValueError(f"{name} has {time} positions but max_seq_len is {self.max_seq_len}; "
                             f"crop to the last {self.max_seq_len} tokens or build the model "
                             f"with max_seq_len >= {time}")
        counted = ids[ids != IGNORE_INDEX] if allow_ignore else ids
        if counted.size:
            low, high = int(xp.min(counted)), int(xp.max(counted))
            bad = low if low < 0 else high
            if low < 0 or high >= self.vocab_size:
                extra = f" (or {IGNORE_INDEX} to ignore a target)" if allow_ignore else ""
                raise ValueError(f"{name} holds token id {bad} outside the vocabulary [0, {self.vocab_size})"
                                 f"{extra}; check that the tokenizer matches vocab_size={self.vocab_size}")

    # ----------------------------------------------------------------------------- forward

    def forward(self, idx, targets=None):
        """idx (B, T) int -> logits (B, T, V), loss (mean cross-entropy, or None without targets).

        Targets equal to -100 are ignored by the loss. The caches for backward() are kept."""
        self._cache = None  # the previous step's caches go before this step's are built (half the peak memory)
        self._check_tokens("idx", idx)
        if targets is not None:
            if tuple(targets.shape) != tuple(idx.shape):
                raise ValueError(f"targets has shape {tuple(targets.shape)} but idx has {tuple(idx.shape)}; "
                                 "they must match (targets are idx shifted by one)")
            self._check_tokens("targets", targets, allow_ignore=True)
        p, xp = self.params, backends.array_module(self.params["wte"])
        drop = dict(p=self.dropout, rng=self.dropout_rng, training=self.training)

        tok, tok_cache = embedding_forward(idx, p["wte"])  # (B, T, C)
        pos, pos_cache = embedding_forward(xp.arange(idx.shape[1]), p["wpe"])  # (T, C)
        x, add_cache = residual_forward(tok, pos)  # (B, T, C)
        x, drop_cache = dropout_forward(x, **drop)
        block_caches = []
        for layer in range(self.num_layers):
            x, cache = self._block_forward(layer, x)
            block_caches.append(cache)
        x, lnf_cache = layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])
        logits, head_cache = linear_forward(x, p["wte"].T)  # (B, T, V), tied to wte

        loss, loss_cache = None, None
        if targets is not None:
            loss, loss_cache = cross_entropy_forward(logits, targets, IGNORE_INDEX)
        self._cache = (tok_cache, pos_cache, add_cache, drop_cache, block_caches,
                       lnf_cache, head_cache, loss_cache)
        return logits, loss

    def _block_forward(self, layer, x):
        """One pre-norm transformer block: x (B, T, C) -> (B, T, C)."""
        p = {suffix: self.params[f"blocks.{layer}.{suffix}"] for suffix in BLOCK_PARAMS}
        drop = dict(p=self.dropout, rng=self.dropout_rng, training=self.training)
        h, ln1_cache = layernorm_forward(x, p["ln1.weight"], p["ln1.bias"])
        qkv, qkv_cache = linear_forward(h, p["attn.qkv.weight"], p["attn.qkv.bias"])  # (B, T, (H + 2 H_kv) hd)
        a, attn_cache = attention_forward(qkv, self.num_heads, self.num_kv_heads, dropout=self.dropout,
                                          rng=self.dropout_rng, training=self.training)  # (B, T, C)
        a, proj_cache = linear_forward(a, p["attn.proj.weight"], p["attn.proj.bias"])
        a, drop1_cache = dropout_forward(a, **drop)
        x, res1_cache = residual_forward(x, a)
        h, ln2_cache = layernorm_forward(x, p["ln2.weight"], p["ln2.bias"])
        m, mlp_cache = mlp_forward(h, p["mlp.fc.weight"], p["mlp.fc.bias"],
                                   p["mlp.proj.weight"], p["mlp.proj.bias"])
        m, drop2_cache = dropout_forward(m, **drop)
        x, res2_cache = residual_forward(x, m)
        return x, (ln1_cache, qkv_cache, attn_cache, proj_cache, drop1_cache, res1_cache,
                   ln2_cache, mlp_cache, drop2_cache, res2_cache)

    # ----------------------------------------------------------------------------- backward

    def backward(self, dlogits=None):
        """Gradients of the loss (or of sum(logits * dlogits) when dlogits (B, T, V) is given)
        with respect to every parameter: a dict with the same keys as ``params``."""
        if self._cache is None:
            raise RuntimeError("backward() needs a forward() first")
        (tok_cache, pos_cache, add_cache, drop_cache, block_caches,
         lnf_cache, head_cache, loss_cache) = self._cache
        if dlogits is None:
            if loss_cache is None:
                raise RuntimeError("backward() without dlogits needs forward(idx, targets) with targets")
            dlogits = cross_entropy_backward(1.0, loss_cache)
        grads = {}

        dx, dwte_head_t, _ = linear_backward(dlogits, head_cache)  # dwte_head_t: (C, V)
        dx, grads["ln_f.weight"], grads["ln_f.bias"] = layernorm_backward(dx, lnf_cache)
        for layer in reversed(range(self.num_layers)):
            dx, block_grads = self._block_backward(dx, block_caches[layer])
            grads.update({f"blocks.{layer}.{suffix}": g for suffix, g in block_grads.items()})
        dx = dropout_backward(dx, drop_cache)
        dtok, dpos = residual_backward(dx, add_cache)
        grads["wpe"] = embedding_backward(dpos, pos_cache)
        grads["wte"] = embedding_backward(dtok, tok_cache) + dwte_head_t.T
        return {name: grads[name] for name in self.params}

    def _block_backward(self, dx, cache):
        """The block's forward read upside down: dx (B, T, C) -> dx (B, T, C), {suffix: grad}."""
        (ln1_cache, qkv_cache, attn_cache, proj_cache, drop1_cache, res1_cache,
         ln2_cache, mlp_cache, drop2_cache, res2_cache) = cache
        g = {}
        dx, dm = residual_backward(dx, res2_cache)
        dm = dropout_backward(dm, drop2_cache)
        dh, g["mlp.fc.weight"], g["mlp.fc.bias"], g["mlp.proj.weight"], g["mlp.proj.bias"] = \
            mlp_backward(dm, mlp_cache)
        dh, g["ln2.weight"], g["ln2.bias"] = layernorm_backward(dh, ln2_cache)
        dx = dx + dh
        dx, da = residual_backward(dx, res1_cache)
        da = dropout_backward(da, drop1_cache)
        da, g["attn.proj.weight"], g["attn.proj.bias"] = linear_backward(da, proj_cache)
        dqkv = attention_backward(da, attn_cache)
        dh, g["attn.qkv.weight"], g["attn.qkv.bias"] = linear_backward(dqkv, qkv_cache)
        dh, g["ln1.weight"], g["ln1.bias"] = layernorm_backward(dh, ln1_cache)
        dx = dx + dh
        return dx, g


GPT = TransformerLanguageModel
