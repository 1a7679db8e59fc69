"""The decoder, GPT-2 or Llama style: a parameter table, forward(), and backward() as forward
in reverse.

    gpt2:  tokens (B, T) -> wte[tokens] + wpe[0..T) -> dropout
             -> L x [ x + dropout(proj(attention(qkv(layernorm(x)))))
                      x + dropout(mlp_gelu(layernorm(x))) ]
             -> layernorm -> logits = x @ wte.T (or x @ lm_head, untied)
    llama: tokens (B, T) -> wte[tokens]
             -> L x [ x + dropout(proj(attention(rope(q, k), qkv(rmsnorm(x)))))
                      x + dropout(mlp_swiglu(rmsnorm(x))) ]
             -> rmsnorm -> logits = x @ wte.T (or x @ lm_head, untied); no biases anywhere

The speedrun's options (ModelConfig) change single steps: mlp_activation="relu2" the MLP to
proj(relu(fc(h))^2), qk_norm RMS-normalises q and k inside attention, logit_softcap ends with
logits = cap * tanh(logits / cap), zero_init starts the output projections at zero.

Every step calls an op from ``nanollm.ops``; ``backward`` calls the same ops' backward
functions in exactly the reverse order, so the two read as mirror images.

Activation checkpointing (``model.activation_checkpointing = True``, the training config's
``activation_checkpointing``) keeps only each block's input and the dropout stream's state
before it; the backward runs the block's forward again just before its backward (llm.c-style
explicit recompute, no tape): the same arithmetic on the same inputs, so the same gradients,
bit for bit, for about a third more compute and one block's cache alive instead of L.
"""

import copy
import math
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from nanollm import backends
from nanollm.lora import adapter_layout, adapter_names, adapter_shapes, init_adapter, is_adapter, lora_scale
from nanollm.model_config import ModelConfig
from nanollm.ops import (
    attention_backward, attention_forward,
    cross_entropy_backward, cross_entropy_forward,
    dropout_backward, dropout_forward,
    embedding_backward, embedding_forward,
    layernorm_backward, layernorm_forward,
    linear_backward, linear_forward,
    residual_backward, residual_forward,
)
from nanollm.ops.cross_entropy import IGNORE_INDEX
from nanollm.ops.lora import lora_backward, lora_forward
from nanollm.ops.mlp import Linear, mlp_backward, mlp_forward, swiglu_mlp_backward, swiglu_mlp_forward
from nanollm.ops.rmsnorm import rmsnorm_backward, rmsnorm_forward
from nanollm.ops.rope import rope_tables
from nanollm.ops.softcap import softcap_backward, softcap_forward

INIT_STD = 0.02  # GPT-2's normal(0, 0.02) initialisation

# Suffixes of the block parameters, in the order the block uses them.
BLOCK_PARAMS = (
    "ln1.weight", "ln1.bias",
    "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "ln2.weight", "ln2.bias",
    "mlp.fc.weight", "mlp.fc.bias", "mlp.proj.weight", "mlp.proj.bias",
)
LLAMA_BLOCK_PARAMS = (
    "norm1.weight",
    "attn.qkv.weight", "attn.proj.weight",
    "norm2.weight",
    "mlp.gate.weight", "mlp.up.weight", "mlp.down.weight",
)
LLAMA_RELU2_BLOCK_PARAMS = LLAMA_BLOCK_PARAMS[:4] + ("mlp.fc.weight", "mlp.proj.weight")  # two matrices, no biases
# Layers that write into the residual stream: init std scaled by 1/sqrt(2 L) (GPT-2).
RESIDUAL_PROJECTIONS = ("attn.proj.weight", "mlp.proj.weight", "mlp.down.weight")
VALUE_HEAD = "value_head."  # PPO's critic: value_head.weight (C, 1), value_head.bias (1,)
NORM_NAMES = {"gpt2": ("ln1", "ln2", "ln_f"), "llama": ("norm1", "norm2", "norm_f")}  # layernorm / RMSNorm
NORM_GAINS = tuple(f"{prefix}.weight" for names in NORM_NAMES.values() for prefix in names)


class BlockCheckpoint(NamedTuple):
    """What activation checkpointing keeps of a block in the forward: enough to run it again."""
    layer: int
    x: object             # the block's input (B, T, C)
    dropout_state: dict   # the dropout stream's state before the block (its masks are drawn again)
    rope: tuple           # cos, sin (T, hd/2), or None


def block_params(architecture, mlp_activation=None):
    """The suffixes of one block's parameters for an architecture (and MLP), in forward order."""
    if architecture != "llama":
        return BLOCK_PARAMS
    return LLAMA_RELU2_BLOCK_PARAMS if mlp_activation == "relu2" else LLAMA_BLOCK_PARAMS


class TransformerLanguageModel:
    """A decoder-only transformer language model, GPT-2 or Llama style, NumPy arrays throughout.

    ``model.params`` maps names (see ``parameter_shapes``) to arrays; ``forward`` keeps the
    caches that ``backward`` needs, and ``backward`` returns gradients with the same keys.

    architecture: "gpt2" (layernorm, learned positions, GELU MLP, biases) or "llama" (RMSNorm,
    rotary embeddings with base rope_base, SwiGLU MLP, no biases). num_kv_heads < num_heads is
    grouped-query attention in both. tie_embeddings: the output layer is wte (True) or a
    matrix of its own, lm_head.weight (False).
    """

    def __init__(self, vocab_size=None, *, seed=None, **settings):
        """settings: the fields of nanollm.model_config.ModelConfig (embedding_dim, num_layers,
        ...); a missing one takes its default there. seed fixes the initial weights (None:
        drawn from NumPy's global generator, so set_seed() governs it)."""
        self.config = ModelConfig.from_dict({"vocab_size": vocab_size, **settings}).to_dict()
        for key, value in self.config.items():
            setattr(self, key, value)
        self.head_dim = self.embedding_dim // self.num_heads
        self.norm_names = NORM_NAMES[self.architecture]  # prefixes of the block's two norms and the final one
        self._rope_tables = {}  # (dtype, array module) -> (cos, sin), (max_seq_len, hd/2) each
        self.training = True
        self.activation_checkpointing = False  # keep block inputs only, recompute in the backward (see the docstring)
        self.fused_attention = False  # attention through the fused primitive (ops/attention.py): no T x T probabilities kept
        seed = int(np.random.randint(2**31 - 1)) if seed is None else seed
        init_rng, dropout_seed = np.random.default_rng(seed), seed + 1
        self.dropout_rng = np.random.default_rng(dropout_seed)
        self.params = self._init_params(init_rng, adapter_rng=np.random.default_rng([seed, 2]))
        self._update_layout()
        self._cache = None

    def to_device(self, xp):
        """Move every parameter to the array module ``xp`` (numpy: the host; cupy: the current
        GPU), keeping dtypes; a no-op where they are already. Cached rope tables are dropped."""
        if backends.array_module(self.params["wte"]) is not xp:
            self.params = {name: xp.asarray(backends.to_numpy(p) if xp is np else p) for name, p in self.params.items()}
            self._rope_tables = {}
        return self

    def _update_layout(self):
        """The block's parameter suffixes and LoRA adapters, after the lora setting changed."""
        self.lora = self.config["lora"]
        self.block_params = block_params(self.architecture, self.mlp_activation) + tuple(adapter_shapes(self.config))
        self.adapters = adapter_layout(self.config)  # {matrix suffix: [(part, columns, A shape, B shape)]}
        # with LoRA the adapters train and the base weights stay frozen; a value head always trains
        self.trainable = [name for name in self.params
                          if is_adapter(name) or name.startswith(VALUE_HEAD) or self.lora is None]

    # ----------------------------------------------------------------------------- parameters

    def parameter_shapes(self):
        """The parameter table: name -> shape, in forward order (``ModelConfig.parameter_shapes``)."""
        return ModelConfig.from_dict(self.config).parameter_shapes()

    def _init_params(self, rng, adapter_rng):
        """normal(0, 0.02) weights and embeddings, residual projections scaled by 1/sqrt(2 L),
        zero biases, unit norm gains (GPT-2 / nanoGPT; Llama's blocks take the same). With
        zero_init the residual projections and an untied lm_head are zeros instead (each block
        starts as the identity, the first logits are uniform: the speedrun's init); every other
        weight draws the same numbers either way. LoRA adapters draw from their own generator,
        so the base weights do not depend on them."""
        params = {}
        for name, shape in self.parameter_shapes().items():
            if is_adapter(name):
                value = init_adapter(name, shape, adapter_rng)
            elif name.endswith(".bias"):
                value = np.zeros(shape)
            elif name.endswith(NORM_GAINS):
                value = np.ones(shape)  # layernorm / RMSNorm gain
            else:
                std = INIT_STD / math.sqrt(2 * self.num_layers) if name.endswith(RESIDUAL_PROJECTIONS) else INIT_STD
                value = rng.normal(0.0, std, size=shape)
                if self.zero_init and (name.endswith(RESIDUAL_PROJECTIONS) or name == "lm_head.weight"):
                    value = np.zeros(shape)  # drawn first all the same, so the other weights do not move
            params[name] = value.astype(self.dtype)
        return params

    # ----------------------------------------------------------------------------- value head

    def add_value_head(self, seed=0):
        """Attach PPO's critic: values (B, T) = final hidden state (B, T, C) @ value_head.weight
        (C, 1) + value_head.bias, computed by every forward from then on (``self.values``) and
        trained through ``backward(dvalues=...)``; it stays trainable under LoRA."""
        if self.value_head:
            raise ValueError("the model has a value head already")
        self.config = ModelConfig.from_dict({**self.config, "value_head": True}).to_dict()
        self.value_head = True
        xp = backends.array_module(self.params["wte"])
        rng = np.random.default_rng([seed, 3])
        self.params[VALUE_HEAD + "weight"] = xp.asarray(rng.normal(0.0, INIT_STD, size=(self.embedding_dim, 1)),
                                                        dtype=self.dtype)
        self.params[VALUE_HEAD + "bias"] = xp.zeros(1, dtype=self.dtype)
        self._update_layout()
        return self

    def drop_value_head(self):
        """The policy alone again (what export writes): the critic's weights are dropped."""
        self.params = {name: p for name, p in self.params.items() if not name.startswith(VALUE_HEAD)}
        self.config = ModelConfig.from_dict({**self.config, "value_head": False}).to_dict()
        self.value_head = False
        self._update_layout()
        return self

    # ----------------------------------------------------------------------------- LoRA

    def add_lora(self, rank=8, alpha=16.0, dropout=0.0, targets=("q", "v"), seed=0):
        """Attach LoRA adapters (see nanollm.lora) and freeze every other parameter: from now on
        ``backward`` returns the adapters' gradients only, and ``trainable`` lists them. B starts
        at zero, so the logits do not change until the adapters train."""
        if self.lora is not None:
            raise ValueError(f"the model has LoRA adapters already ({self.lora}); merge_lora() them first")
        self.config = ModelConfig.from_dict({**self.config, "lora": dict(rank=rank, alpha=alpha, dropout=dropout,
                                                                          targets=list(targets))}).to_dict()
        rng, existing = np.random.default_rng(seed), self.params
        xp = backends.array_module(existing["wte"])
        self.params = {name: existing[name] if name in existing
                       else xp.asarray(init_adapter(name, shape, rng), dtype=self.dtype)
                       for name, shape in self.parameter_shapes().items()}
        self._update_layout()
        return self

    def merge_lora(self):
        """Fold the adapters into their matrices, W[:, columns] += alpha / rank * A @ B, and drop
        them: the same function, no adapters, every parameter trainable again."""
        if self.lora is None:
            raise ValueError("the model has no LoRA adapters to merge")
        scale = lora_scale(self.lora)
        for layer in range(self.num_layers):
            prefix = f"blocks.{layer}."
            for matrix, adapters in self.adapters.items():
                for part, columns, _, _ in adapters:
                    a_name, b_name = adapter_names(matrix, part)
                    delta = self.params[prefix + a_name] @ self.params[prefix + b_name]  # (C_in, C_out)
                    self.params[prefix + matrix + ".weight"][:, columns] += scale * delta
        self.params = {name: p for name, p in self.params.items() if not is_adapter(name)}
        self.config = ModelConfig.from_dict({**self.config, "lora": None}).to_dict()
        self._update_layout()
        return self

    def replica(self):
        """This model for another thread (nanollm.shards): the same parameter dict, so the same
        weights and every update of them, the same settings and dropout generator; its own
        forward caches, so its forward and backward can run while this model's do."""
        twin = copy.copy(self)
        twin._cache = None
        return twin

    def num_parameters(self):
        """Total number of parameters (a tied output layer counted once, as wte)."""
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

        See ``ModelConfig.flops_per_token``, which computes it.
        """
        return ModelConfig.from_dict(self.config).flops_per_token(seq_len, training)

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

    def _check_tokens(self, name, ids, allow_ignore=False, start=0):
        """ids must be a 2-D integer array (B, T) of ids in [0, vocab_size), start + T <= max_seq_len
        (start: the positions already in a KV cache)."""
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
        if start + time > self.max_seq_len and start:
            raise ValueError(f"{name} adds {time} positions to the {start} in the KV cache but max_seq_len is "
                             f"{self.max_seq_len}; reset the cache and feed the last tokens again")
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

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) int -> logits (B, T, V), loss (mean cross-entropy, or None without targets).

        Targets equal to -100 are ignored by the loss. The caches for backward() are kept.
        kv_cache (a nanollm.kv_cache.KVCache): idx are the next T positions after the
        kv_cache.length already cached, which they attend to; their keys and values are
        appended. That is generation: no backward afterwards."""
        self._cache = None  # the previous step's caches go before this step's are built (half the peak memory)
        start = 0 if kv_cache is None else kv_cache.length
        self._check_tokens("idx", idx, start=start)
        if targets is not None:
            if tuple(targets.shape) != tuple(idx.shape):
                raise ValueError(f"targets has shape {tuple(targets.shape)} but idx has {tuple(idx.shape)}; "
                                 "they must match (targets are idx shifted by one)")
            self._check_tokens("targets", targets, allow_ignore=True)
        if kv_cache is not None and kv_cache.batch != idx.shape[0]:
            raise ValueError(f"the KV cache holds a batch of {kv_cache.batch} but idx has {idx.shape[0]} rows; "
                             "make a cache with KVCache.for_model(model, batch=idx.shape[0])")
        p, xp = self.params, backends.array_module(self.params["wte"])
        idx = xp.asarray(idx)  # host ids go to the parameters' device here, once (checked on the host above)
        targets = None if targets is None else xp.asarray(targets)
        positions = xp.arange(start, start + idx.shape[1])  # (T,)
        drop = dict(p=self.dropout, rng=self.dropout_rng, training=self.training)

        x, tok_cache = embedding_forward(idx, p["wte"])  # (B, T, C)
        pos_cache = add_cache = rope = None
        if self.architecture == "llama":
            rope = self._rope(positions)  # cos, sin (T, hd/2): positions enter inside attention
        else:
            pos, pos_cache = embedding_forward(positions, p["wpe"])  # (T, C)
            x, add_cache = residual_forward(x, pos)  # (B, T, C)
        x, drop_cache = dropout_forward(x, **drop)
        block_caches = []
        checkpointing = self.activation_checkpointing and kv_cache is None
        for layer in range(self.num_layers):
            past = None if kv_cache is None else kv_cache.layer(layer)
            # with checkpointing the cache is dropped at once: BlockCheckpoint runs the block again
            # (its input and the dropout generator's state are taken before the block draws)
            kept = BlockCheckpoint(layer, x, self.dropout_rng.bit_generator.state, rope) if checkpointing else None
            x, cache = self._block_forward(layer, x, rope, past)
            block_caches.append(cache if kept is None else kept)
            del cache
        x, norm_f_cache = self._norm_forward(x, p, self.norm_names[2])
        value_cache = None
        if self.value_head:  # PPO's critic on the same hidden state: values (B, T)
            values, value_cache = linear_forward(x, p[VALUE_HEAD + "weight"], p[VALUE_HEAD + "bias"])
            self.values = values[..., 0]
        logits, head_cache = linear_forward(x, self._output_weight())  # (B, T, V)
        softcap_cache = None
        if self.logit_softcap is not None:  # cap * tanh(logits / cap)
            logits, softcap_cache = softcap_forward(logits, self.logit_softcap)

        loss, loss_cache = None, None
        if targets is not None:
            loss, loss_cache = cross_entropy_forward(logits, targets, IGNORE_INDEX)
        if kv_cache is None:
            self._cache = (tok_cache, pos_cache, add_cache, drop_cache, block_caches,
                           norm_f_cache, head_cache, softcap_cache, loss_cache, value_cache)
        else:
            kv_cache.length += idx.shape[1]
        return logits, loss

    def _output_weight(self):
        """The output layer's weight (C, V): wte transposed when tied, else lm_head.weight."""
        return self.params["wte"].T if self.tie_embeddings else self.params["lm_head.weight"]

    def _rope(self, positions):
        """cos, sin (T, hd/2) of the rotary angles at ``positions`` (T,), in the dtype the
        parameters have now (the model's, or a mixed-precision step's compute dtype)."""
        wte = self.params["wte"]
        xp, dtype = backends.array_module(wte), wte.dtype
        key = (str(dtype), xp.__name__)
        if key not in self._rope_tables:
            self._rope_tables[key] = rope_tables(self.max_seq_len, self.head_dim, self.rope_base, dtype, xp)
        cos, sin = self._rope_tables[key]
        return cos[positions], sin[positions]

    def _norm_forward(self, x, p, prefix):
        """Layernorm (gpt2) or RMSNorm (llama) of x (B, T, C), with the gain p[<prefix>.weight]
        (and the bias p[<prefix>.bias]); prefix is one of self.norm_names."""
        if self.architecture == "llama":
            return rmsnorm_forward(x, p[f"{prefix}.weight"], self.norm_eps)
        return layernorm_forward(x, p[f"{prefix}.weight"], p[f"{prefix}.bias"], self.norm_eps)

    def _linear_forward(self, x, p, matrix):
        """x @ p[<matrix>.weight] (+ bias) (+ its LoRA adapters' scale * dropout(x) @ A @ B, each
        added to its columns): x (B, T, C_in) -> (B, T, C_out)."""
        out, cache = linear_forward(x, p[f"{matrix}.weight"], p.get(f"{matrix}.bias"))
        adapter_caches = []
        for part, columns, _, _ in self.adapters.get(matrix, ()):
            a_name, b_name = adapter_names(matrix, part)
            delta, adapter_cache = lora_forward(x, p[a_name], p[b_name], lora_scale(self.lora), self.lora["dropout"],
                                                self.dropout_rng, self.training)
            out[..., columns] += delta
            adapter_caches.append(adapter_cache)
        return out, (matrix, cache, adapter_caches)

    def _block_linear(self, p):
        """The Linear pair (nanollm.ops.mlp) the feed-forward ops call in this block: a weight
        argument is a matrix's name, whose weight, bias and adapters come from p; the weight
        gradient returned is the dict of that matrix's parameter gradients."""
        return Linear(lambda x, matrix, _bias: self._linear_forward(x, p, matrix),
                      lambda dout, cache: (*self._linear_backward(dout, cache), None))

    def _block_forward(self, layer, x, rope=None, past=None):
        """One pre-norm transformer block: x (B, T, C) -> (B, T, C)."""
        p = {suffix: self.params[f"blocks.{layer}.{suffix}"] for suffix in self.block_params}
        norm1, norm2, _ = self.norm_names
        drop = dict(p=self.dropout, rng=self.dropout_rng, training=self.training)
        caches = {}
        h, caches["norm1"] = self._norm_forward(x, p, norm1)
        qkv, caches["qkv"] = self._linear_forward(h, p, "attn.qkv")  # (B, T, (H + 2 H_kv) hd)
        a, caches["attn"] = attention_forward(qkv, self.num_heads, self.num_kv_heads, dropout=self.dropout,
                                              rng=self.dropout_rng, training=self.training,
                                              rope=rope, past=past,
                                              qk_norm_eps=self.norm_eps if self.qk_norm else None,
                                              fused=self.fused_attention)  # (B, T, C)
        a, caches["proj"] = self._linear_forward(a, p, "attn.proj")
        a, caches["drop1"] = dropout_forward(a, **drop)
        x, caches["res1"] = residual_forward(x, a)
        h, caches["norm2"] = self._norm_forward(x, p, norm2)
        linear = self._block_linear(p)  # the MLP's linear layers by matrix name, LoRA adapters included
        if self.mlp_activation == "swiglu":  # down(silu(gate(h)) * up(h))
            m, caches["mlp"] = swiglu_mlp_forward(h, "mlp.gate", "mlp.up", "mlp.down", linear=linear)  # (B, T, C)
        else:  # proj(gelu(fc(h))) or proj(relu(fc(h))^2)
            m, caches["mlp"] = mlp_forward(h, "mlp.fc", None, "mlp.proj", None, linear=linear,
                                           activation=self.mlp_activation)  # (B, T, C)
        m, caches["drop2"] = dropout_forward(m, **drop)
        x, caches["res2"] = residual_forward(x, m)
        return x, caches

    # ----------------------------------------------------------------------------- backward

    def backward(self, dlogits=None, dloss=1.0, dvalues=None):
        """Gradients of dloss * the loss (or of sum(logits * dlogits) when dlogits (B, T, V) is
        given) with respect to every trainable parameter: a dict with the keys of ``trainable``
        (all of ``params``; with LoRA adapters, those alone, and the frozen weights' gradients
        are never computed). dloss: 1, or float16's loss scale (a 0-d array on the device).
        dvalues (B, T): with a value head, the gradient of the loss with respect to its values
        (None: the head gets zero gradients)."""
        if self._cache is None:
            raise RuntimeError("backward() needs a forward() first (one without a kv_cache)")
        (tok_cache, pos_cache, add_cache, drop_cache, block_caches,
         norm_f_cache, head_cache, softcap_cache, loss_cache, value_cache) = self._cache
        if dlogits is None:
            if loss_cache is None:
                raise RuntimeError("backward() without dlogits needs forward(idx, targets) with targets")
            dlogits = cross_entropy_backward(dloss, loss_cache)
        grads = {}

        frozen = self.lora is not None
        if softcap_cache is not None:
            dlogits = softcap_backward(dlogits, softcap_cache)
        dx, dhead, _ = linear_backward(dlogits, head_cache, weight_grads=not frozen)  # dhead: (C, V)
        if self.value_head:
            xp = backends.array_module(dx)
            if dvalues is None:
                dvalues = xp.zeros(dx.shape[:-1], dtype=dx.dtype)
            dx_value, grads[VALUE_HEAD + "weight"], grads[VALUE_HEAD + "bias"] = linear_backward(
                xp.asarray(dvalues, dtype=dx.dtype)[..., None], value_cache)
            dx = dx + dx_value
        dx = self._norm_backward(dx, norm_f_cache, grads, self.norm_names[2])
        for layer in reversed(range(self.num_layers)):
            cache = block_caches[layer]
            if isinstance(cache, BlockCheckpoint):
                cache = self._recompute_block(cache)
            dx, block_grads = self._block_backward(dx, cache)
            del cache  # one block's cache alive at a time
            grads.update({f"blocks.{layer}.{suffix}": g for suffix, g in block_grads.items()})
        if frozen:  # the embeddings are frozen too: nothing below the first block is needed
            return {name: grads[name] for name in self.trainable}
        dx = dropout_backward(dx, drop_cache)
        if self.architecture == "gpt2":
            dx, dpos = residual_backward(dx, add_cache)
            grads["wpe"] = embedding_backward(dpos, pos_cache)
        grads["wte"] = embedding_backward(dx, tok_cache)
        if self.tie_embeddings:
            grads["wte"] += dhead.T
        else:
            grads["lm_head.weight"] = dhead
        return {name: grads[name] for name in self.trainable}

    def _norm_backward(self, dx, cache, grads, prefix):
        """Back through _norm_forward: dx (B, T, C) -> dx; the gain (and bias) gradients go into
        grads as <prefix>.weight (and <prefix>.bias)."""
        if self.architecture == "llama":
            dx, grads[f"{prefix}.weight"] = rmsnorm_backward(dx, cache)
        else:
            dx, grads[f"{prefix}.weight"], grads[f"{prefix}.bias"] = layernorm_backward(dx, cache)
        return dx

    def _linear_backward(self, dout, cache):
        """Back through _linear_forward: dout (B, T, C_out) -> dx (B, T, C_in), {suffix: gradient}
        of the matrix's weight, bias and adapters (a frozen weight's are not computed: None)."""
        matrix, cache, adapter_caches = cache
        grads = {}
        dx, grads[f"{matrix}.weight"], grads[f"{matrix}.bias"] = linear_backward(dout, cache,
                                                                                weight_grads=self.lora is None)
        for (part, columns, _, _), adapter_cache in zip(self.adapters.get(matrix, ()), adapter_caches):
            a_name, b_name = adapter_names(matrix, part)
            dx_adapter, grads[a_name], grads[b_name] = lora_backward(dout[..., columns], adapter_cache)
            dx += dx_adapter
        return dx, grads

    def _recompute_block(self, kept):
        """The caches of a checkpointed block: its forward run again on the kept input with the
        dropout stream rewound to the state it had then (the same masks), and put back after."""
        now = self.dropout_rng.bit_generator.state
        self.dropout_rng.bit_generator.state = kept.dropout_state
        try:
            _, caches = self._block_forward(kept.layer, kept.x, kept.rope)
        finally:
            self.dropout_rng.bit_generator.state = now
        return caches

    def _block_backward(self, dx, caches):
        """The block's forward read upside down: dx (B, T, C) -> dx (B, T, C), {suffix: grad}."""
        norm1, norm2, _ = self.norm_names
        g = {}
        dx, dm = residual_backward(dx, caches["res2"])
        dm = dropout_backward(dm, caches["drop2"])
        if self.mlp_activation != "swiglu":  # the forward's two branches, each reversed, in reverse order
            dh, dfc, _, dproj, _ = mlp_backward(dm, caches["mlp"])
            matrix_grads = (dfc, dproj)
        else:
            dh, *matrix_grads = swiglu_mlp_backward(dm, caches["mlp"])
        for grads in matrix_grads:
            g.update(grads)
        dh = self._norm_backward(dh, caches["norm2"], g, norm2)
        dx = dx + dh
        dx, da = residual_backward(dx, caches["res1"])
        da = dropout_backward(da, caches["drop1"])
        da, grads = self._linear_backward(da, caches["proj"])
        g.update(grads)
        dqkv = attention_backward(da, caches["attn"])
        dh, grads = self._linear_backward(dqkv, caches["qkv"])
        g.update(grads)
        dh = self._norm_backward(dh, caches["norm1"], g, norm1)
        dx = dx + dh
        return dx, {suffix: g[suffix] for suffix in self.block_params}


GPT = TransformerLanguageModel
