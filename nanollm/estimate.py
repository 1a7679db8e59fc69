"""What a model config costs, from the config alone: parameters, FLOPs and training memory.

    info = describe_model(model.config, batch_size=12, seq_len=1024)    # a plain dict
    print(format_description(info))                                     # what `nanollm info` prints

Nothing here allocates the model: shapes come from ``nanollm.model_config.parameter_shapes(config)``
and FLOPs from ``nanollm.model_config.flops_per_token(config)``, so GPT-2 (124M parameters, 500 MB of
float32 weights) is described in milliseconds.

The memory estimate counts what one training step keeps alive: the parameters, their gradients,
the optimizer's state and the activations the forward caches for the backward
(``activation_terms`` derives them, term by term, from the ops' caches).
"""

import math

from nanollm.model_config import complete_model_config, flops_per_token, parameter_shapes
from nanollm.optim import uses_muon

INDEX_BYTES = 8  # token ids and positions are int64 (nanollm.data builds int64 batches)
DTYPE_BYTES = {"float32": 4, "float64": 8}

# Arrays the optimizer keeps per parameter element (nanollm.optim): Adam and AdamW keep m and v,
# Lion keeps m, SGD keeps a momentum buffer only when momentum > 0 (created at the first step),
# Muon a momentum buffer on the matrices it updates (AdamW's m and v on the other parameters).
# Sophia keeps m and h, plus one more gradient-sized buffer for its sampled-label gradient.
OPTIMIZER_STATE = {"adam": ("m", "v"), "adamw": ("m", "v"), "lion": ("m",), "sgd": ("momentum_buffer",),
                   "muon": ("momentum_buffer",), "sophia": ("m", "h")}


def _complete(model_config):
    """The model config completed as the model would complete it; a None value means the
    model's default here (as it does for the model keys of a resolved training config)."""
    return complete_model_config({key: value for key, value in model_config.items() if value is not None})


def optimizer_state_per_element(optimizer, momentum=0.0, name=None, shape=None):
    """Parameter-sized arrays the optimizer keeps: adam/adamw 2, lion 1, sgd 1 with momentum else 0,
    muon 1 on the matrices it updates and 2 (AdamW's) on the parameter ``name`` of ``shape`` otherwise
    (without a name: the Muon matrices' 1)."""
    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZER_STATE)}")
    if optimizer == "sgd" and not momentum:
        return 0
    if optimizer == "muon" and name is not None and not uses_muon(name, shape):
        return len(OPTIMIZER_STATE["adamw"])
    return len(OPTIMIZER_STATE[optimizer])


def activation_terms(model_config, batch_size, seq_len=None, dtype=None, checkpointing=False, fused_attention=False):
    """Bytes of the activations ``model.forward(idx, targets)`` keeps for the backward, by term.

    B batch, T seq_len, C width, F ffn width, V vocabulary, L layers, H heads, H_kv key/value
    heads, hd = C / H, Q = (H + 2 H_kv) hd (the qkv width), N = B T tokens, s = bytes per
    element of dtype, i = 8 (int64 ids), d = 1 when dropout > 0 (training) else 0.
    What each op caches (nanollm/ops), one line per buffer; views (q, k, v of the qkv output,
    logits2d of the logits) share their base array and count once; the weights the caches refer
    to are parameters, counted under "parameters", not here:

        token_ids         idx (B, T), targets (B, T) int64, positions arange(T) int64   i (2N + T)
        embedding         dropout mask of the embedded tokens (B, T, C)                 s d N C
        blocks, L times:
          ln1             x: the block's input (B, T, C), mean (B, T), rstd (B, T)      s N (C + 2)
          attn.qkv        input = ln1 output (B, T, C)                                  s N C
          attention       q, k, v: views of the qkv output (B, T, Q)                    s N Q
          attn.proj       input = the heads merged (B, T, C)                            s N C
          dropout 1       mask (B, T, C)                                                s d N C
          ln2             x after the attention residual (B, T, C), mean, rstd (B, T)   s N (C + 2)
          mlp.fc          input = ln2 output (B, T, C)                                  s N C
          gelu            input = fc output (B, T, F)                                   s N F
          mlp.proj        input = gelu output (B, T, F)                                 s N F
          dropout 2       mask (B, T, C)                                                s d N C
          per block                                                 s N (5C + Q + 2F + 4 + 2 d C)
        attention_probs, L times: probs (B, H, T, T); with dropout also the dropped
                          probs and their mask (B, H, T, T) each                        s B H T^2 (1 + 2d)
        final_layernorm   x (B, T, C), mean, rstd (B, T); its output = the head's input s N (2C + 2)
        logits            logits (B T, V) (the cross-entropy's logits2d is a view of
                          them) and the cross-entropy's logsumexp (B T,)                s N (V + 1)

    Llama (architecture="llama") caches, per block, RMSNorm inputs with rstd only (no mean),
    the rotated queries and keys (new arrays: s N (C + H_kv hd)) beside the qkv output, and
    SwiGLU's gate, up and gated outputs (three of (B, T, F)); no positions, but the rotary
    cos and sin rows of the T positions (shared by every layer):

        token_ids         idx, targets (B, T) int64                                     i 2N
        rope_tables       cos, sin (T, hd / 2)                                          s T hd
        per block                                        s N (6C + Q + H_kv hd + 3F + 2 + 2 d C)
        final_rmsnorm     x (B, T, C), rstd (B, T); its output = the head's input       s N (2C + 1)

    The speedrun's options: mlp_activation="relu2" keeps relu(h) and its square (2F, as GELU's
    input and output; SwiGLU keeps 3F); qk_norm the rstd of every query and key vector
    (s N (H + H_kv)) and its unit gains, and in GPT-2 (no rope to replace them) the normalised q and
    k (s N (C + H_kv hd)); logit_softcap tanh(logits / cap) (s N V).

    The logits dominate small models with big vocabularies; the attention probabilities grow
    with T^2. GPT-2 small at B=12, T=1024 in float32 keeps 15.9 GiB: 2.3 GiB of logits, 6.8 GiB
    of attention probabilities, 6.8 GiB for the rest of the blocks.
    Measured (tests/test_estimate.py): on the numpy backend the sum of every distinct buffer
    reachable from ``model._cache`` (parameters excluded) equals this formula exactly, and on
    numba and cython too (their kernels return outputs of the same shapes and dtypes, and the
    caches hold the same arrays).
    With activation checkpointing (``checkpointing=True``) the forward keeps each block's input
    alone and the backward recomputes one block at a time: "blocks" is then L - 1 kept inputs
    (s N C each) plus one block's whole cache, and "attention_probs" one layer's.
    With fused attention (``fused_attention=True``) "attention_probs" holds no T x T array: each
    row's log-sum-exp and the attention output (s (B H T + N C)), plus the dropout mask when
    there is dropout (s B H T^2).
    Not counted: the backward's transient buffers (dlogits (B T, V), and on numpy_ref one more
    (B T, V) temporary for exp(logits - lse); one block's gradients at a time). A previous
    step's cache is not alive beside this one: ``model.forward`` drops it first.
    """
    cfg = _complete(model_config)
    t = cfg["max_seq_len"] if seq_len is None else seq_len
    s = DTYPE_BYTES[dtype or cfg["dtype"]]
    b, c, f, v, layers = batch_size, cfg["embedding_dim"], cfg["ffn_hidden_dim"], cfg["vocab_size"], cfg["num_layers"]
    heads, kv_heads = cfg["num_heads"], cfg["num_kv_heads"]
    q = (heads + 2 * kv_heads) * (c // heads)
    n, d = b * t, 1 if cfg["dropout"] > 0 else 0
    kv_width, mlp = kv_heads * (c // heads), (3 if cfg["mlp_activation"] == "swiglu" else 2) * f
    kept = layers if not checkpointing else 1  # blocks whose whole cache is alive at once
    probs = s * b * heads * t * t * (1 + 2 * d)  # one layer's probabilities (and dropout's mask and output)
    if fused_attention:
        probs = s * (b * heads * t + n * c + d * b * heads * t * t)
    logits = s * n * (v + 1 + (v if cfg["logit_softcap"] is not None else 0))
    qk_norm = 0  # per block: QK-norm's rstd and unit gains, and GPT-2's normalised q and k
    if cfg["qk_norm"]:
        qk_norm = s * (n * (heads + kv_heads) + 2 * (c // heads))
        qk_norm += s * n * (c + kv_width) if cfg["architecture"] == "gpt2" else 0
    if cfg["architecture"] == "llama":
        return {
            "token_ids": INDEX_BYTES * 2 * n,
            "rope_tables": s * t * (c // heads),
            "embedding": s * d * n * c,
            "blocks": kept * (s * n * (6 * c + q + kv_width + mlp + 2 + 2 * d * c) + qk_norm) + (layers - kept) * s * n * c,
            "attention_probs": kept * probs,
            "final_rmsnorm": s * n * (2 * c + 1),
            "logits": logits,
        }
    return {
        "token_ids": INDEX_BYTES * (2 * n + t),
        "embedding": s * d * n * c,
        "blocks": kept * (s * n * (5 * c + q + mlp + 4 + 2 * d * c) + qk_norm) + (layers - kept) * s * n * c,
        "attention_probs": kept * probs,
        "final_layernorm": s * n * (2 * c + 2),
        "logits": logits,
    }


def describe_model(model_config, batch_size, seq_len=None, optimizer="adamw", momentum=0.0, dtype=None,
                   grad_accum_steps=1, activation_checkpointing=False, fused_attention=False, batch_shards=1):
    """Architecture, parameters, FLOPs and training memory of a model config, as a plain dict.

    model_config: a model-config dict (``model.config``, a checkpoint's model config, or part of
    one: missing keys and None values take the model's defaults). batch_size: windows per micro-batch; seq_len:
    tokens per window (default max_seq_len); dtype: of parameters, gradients, optimizer state
    and activations (default the config's); grad_accum_steps: micro-batches per optimizer step.

    Keys: the completed model config ("architecture", "vocab_size", ...), "head_dim",
    "parameters" {name: {"shape": [...], "count": n}} in forward order, "total_parameters" (a tied
    output layer is wte and counted once), "flops_per_token" {"forward",
    "training"} at seq_len, "tokens_per_step" (batch_size * seq_len * grad_accum_steps),
    "flops_per_step" (training FLOPs of one optimizer step, all its micro-batches), "assumptions"
    {batch_size, seq_len, dtype, optimizer, momentum, grad_accum_steps}, "memory_bytes"
    {"parameters", "gradients", "optimizer_state", "activations", "total"} of one training
    micro-batch and "activation_bytes" (the activations by term, see ``activation_terms``), both
    with activation_checkpointing as given, and "other_checkpointing" {"activation_checkpointing",
    "activations", "total"}: the same step with it the other way round.

    Gradients are one parameter-sized set, two with grad_accum_steps > 1 (the running sum and
    the micro-batch's own, nanollm.train), and one more with batch_shards > 1 (each shard's own
    until it is added, nanollm.shards); the optimizer state is
    ``optimizer_state_per_element`` parameter-sized arrays per parameter, in dtype.
    """
    cfg = _complete(model_config)
    t = cfg["max_seq_len"] if seq_len is None else seq_len
    dtype = cfg["dtype"] if dtype is None else str(dtype)
    for name, value in (("batch_size", batch_size), ("seq_len", t), ("grad_accum_steps", grad_accum_steps),
                        ("batch_shards", batch_shards)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if t > cfg["max_seq_len"]:
        raise ValueError(f"seq_len={t} exceeds the model's max_seq_len={cfg['max_seq_len']}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {tuple(DTYPE_BYTES)}")
    optimizer_state_per_element(optimizer, momentum)  # an unknown optimizer is an error before anything else

    parameters, state_elements = {}, 0
    for name, shape in parameter_shapes(cfg).items():
        parameters[name] = {"shape": list(shape), "count": math.prod(shape)}
        state_elements += math.prod(shape) * optimizer_state_per_element(optimizer, momentum, name, shape)
    total = sum(p["count"] for p in parameters.values())

    s = DTYPE_BYTES[dtype]
    activations = activation_terms(cfg, batch_size, t, dtype, checkpointing=activation_checkpointing,
                                   fused_attention=fused_attention)
    memory = {
        "parameters": total * s,
        "gradients": total * s * (1 + (grad_accum_steps > 1) + (batch_shards > 1)),
        "optimizer_state": state_elements * s,
        "activations": sum(activations.values()),
    }
    memory["total"] = sum(memory.values())
    other = sum(activation_terms(cfg, batch_size, t, dtype, checkpointing=not activation_checkpointing,
                                 fused_attention=fused_attention).values())
    other_checkpointing = {"activation_checkpointing": not activation_checkpointing, "activations": other,
                           "total": memory["total"] - memory["activations"] + other}
    training, forward = flops_per_token(cfg, t, training=True), flops_per_token(cfg, t, training=False)
    tokens_per_step = batch_size * t * grad_accum_steps
    return {
        **cfg,
        "head_dim": cfg["embedding_dim"] // cfg["num_heads"],
        "parameters": parameters,
        "total_parameters": total,
        "flops_per_token": {"forward": forward, "training": training},
        "tokens_per_step": tokens_per_step,
        "flops_per_step": training * tokens_per_step,
        "assumptions": {"batch_size": batch_size, "seq_len": t, "dtype": dtype, "optimizer": optimizer,
                        "momentum": float(momentum), "grad_accum_steps": grad_accum_steps,
                        "batch_shards": batch_shards},
        "memory_bytes": memory,
        "activation_bytes": activations,
        "activation_checkpointing": bool(activation_checkpointing),
        "fused_attention": bool(fused_attention),
        "other_checkpointing": other_checkpointing,
    }


def format_bytes(n):
    """1536 -> '1.5 KiB', binary units up to GiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


def format_flops(n):
    """8.5e8 -> '854.4 MFLOP', decimal units."""
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} FLOP"


def _parameter_rows(description):
    """(label, shape, count) rows: wte, wpe, block 0 in full, then (with several blocks) a
    per-block subtotal and the count of all blocks, ln_f, the total. A row whose shape is None
    is a summary line."""
    layers, rows, per_block = description["num_layers"], [], 0
    for name, p in description["parameters"].items():
        if name.startswith("blocks."):
            if name.startswith("blocks.0."):
                rows.append((name, str(tuple(p["shape"])), p["count"]))
                per_block += p["count"]
            continue
        if name in ("ln_f.weight", "norm_f.weight") and layers > 1:
            rows += [("  per block", None, per_block),
                     (f"  x {layers} blocks (blocks.0 .. blocks.{layers - 1})", None, layers * per_block)]
        rows.append((name, str(tuple(p["shape"])), p["count"]))
    tied = "tied to wte" if description["tie_embeddings"] else "lm_head.weight"
    rows.append((f"total (output layer {tied})", None, description["total_parameters"]))
    return rows


def format_description(description):
    """The human-readable text of ``describe_model``'s dict: a header, the parameter table (block
    0 in full, then one line for all L blocks), totals, FLOPs and the memory breakdown."""
    d, a, memory = description, description["assumptions"], description["memory_bytes"]
    kv = f" ({d['num_kv_heads']} key/value)" if d["num_kv_heads"] != d["num_heads"] else ""
    layers = f"{d['num_layers']} layer{'s' if d['num_layers'] > 1 else ''}"
    lines = [f"{d['architecture']}: {layers}, {d['num_heads']} heads{kv} of {d['head_dim']}, "
             f"width {d['embedding_dim']}, ffn {d['ffn_hidden_dim']}, context {d['max_seq_len']}, "
             f"vocab {d['vocab_size']:,}, dropout {d['dropout']:g}, {d['dtype']}", ""]
    rows = _parameter_rows(d)
    name_width = max(len(label) for label, shape, _ in rows if shape is not None)
    shape_width = max(len(shape) for _, shape, _ in rows if shape is not None)
    span = max([name_width + 2 + shape_width] + [len(label) for label, shape, _ in rows if shape is None])
    shape_width = span - name_width - 2
    count_width = max(len(f"{count:,}") for *_, count in rows)
    lines.append(f"{'parameter':<{name_width}}  {'shape':<{shape_width}}  {'count':>{count_width}}")
    for label, shape, count in rows:
        if shape is None:
            lines.append(f"{label:<{span}}  {count:>{count_width},}")
        else:
            lines.append(f"{label:<{name_width}}  {shape:<{shape_width}}  {count:>{count_width},}")

    flops = d["flops_per_token"]
    accum = f" x {a['grad_accum_steps']} micro-batches" if a["grad_accum_steps"] > 1 else ""
    lines += ["",
              f"FLOPs per token (seq_len {a['seq_len']}): forward {format_flops(flops['forward'])}, "
              f"training {format_flops(flops['training'])} (3x forward)",
              f"FLOPs per step: {format_flops(d['flops_per_step'])} "
              f"({a['batch_size']} x {a['seq_len']}{accum} = {d['tokens_per_step']:,} tokens)"]

    momentum = f", momentum {a['momentum']:g}" if a["optimizer"] == "sgd" else ""
    state = optimizer_state_per_element(a["optimizer"], a["momentum"])
    per_parameter = (f"{state} value{'s' if state != 1 else ''} per parameter" if a["optimizer"] != "muon" else
                     "1 value per Muon matrix parameter, 2 per AdamW one")
    acts = d["activation_bytes"]
    sets = ["running sum + micro-batch"] if a["grad_accum_steps"] > 1 else []
    if a["batch_shards"] > 1:
        sets.append(f"+ 1 set: {a['batch_shards']} batch shards' own; threads=1 runs one")
    grads_note = f" ({', '.join(sets)})" if sets else ""
    micro = f"{a['grad_accum_steps']} micro-batch{'es' if a['grad_accum_steps'] > 1 else ''} per step"
    lines += ["",
              f"training memory estimate: batch {a['batch_size']} x seq_len {a['seq_len']}, {a['dtype']}, "
              f"{a['optimizer']}{momentum}, {micro}",
              f"  parameters       {format_bytes(memory['parameters']):>12}",
              f"  gradients        {format_bytes(memory['gradients']):>12}{grads_note}",
              f"  optimizer state  {format_bytes(memory['optimizer_state']):>12} "
              f"({per_parameter})",
              f"  activations      {format_bytes(memory['activations']):>12} "
              f"(logits {format_bytes(acts['logits'])}, attention probs {format_bytes(acts['attention_probs'])}, "
              f"other layers {format_bytes(memory['activations'] - acts['logits'] - acts['attention_probs'])})",
              f"  total            {format_bytes(memory['total']):>12}",
              "  (the forward's caches for one micro-batch; the backward briefly adds dlogits and one "
              "block's gradients)"]
    other = d["other_checkpointing"]
    on = "on" if d["activation_checkpointing"] else "off"
    lines.append(f"  activation checkpointing {on}; {'off' if on == 'on' else 'on'} "
                 f"(activation_checkpointing={str(other['activation_checkpointing']).lower()}): activations "
                 f"{format_bytes(other['activations'])}, total {format_bytes(other['total'])}")
    return "\n".join(lines)
