"""Where LoRA adapters go in a model, how they start, and how they fold back into the weights.

    model.add_lora(rank=8, alpha=16, dropout=0.0, targets=("q", "v"))   # base weights frozen
    ... train: only the adapters have gradients and optimizer state ...
    save_adapters("adapters.npz", model)        # nanollm.checkpoint: the adapters alone
    model.merge_lora()                          # W += alpha / rank * A @ B; the adapters go

Targets name matrices of every block: q, k, v (the query, key and value column blocks of the
fused attn.qkv weight, each with adapters of its own), o (attn.proj) and mlp (every MLP matrix:
fc and proj for GPT-2, gate, up and down for Llama). An adapter of a (C_in, C_out) matrix is
A (C_in, r) and B (r, C_out), named <matrix>[.<q|k|v>].lora_A / .lora_B, e.g.
blocks.0.attn.qkv.q.lora_A and blocks.0.mlp.fc.lora_B.
"""

import math

import numpy as np

TARGETS = ("q", "k", "v", "o", "mlp")
DEFAULT_TARGETS = ("q", "v")  # the LoRA paper's choice
MLP_MATRICES = {"swiglu": ("mlp.gate", "mlp.up", "mlp.down"), "gelu": ("mlp.fc", "mlp.proj"), "relu2": ("mlp.fc", "mlp.proj")}


def check_lora_config(lora):
    """A LoRA setting {rank, alpha, dropout, targets} checked and normalised (targets a sorted
    tuple in TARGETS order), or a ValueError naming the bad entry. None stays None."""
    if lora is None:
        return None
    if not isinstance(lora, dict) or set(lora) - {"rank", "alpha", "dropout", "targets"}:
        raise ValueError(f"lora must be a dict with keys rank, alpha, dropout, targets; got {lora!r}")
    rank, alpha = lora.get("rank"), lora.get("alpha", 16.0)
    dropout, targets = lora.get("dropout", 0.0), lora.get("targets", DEFAULT_TARGETS)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"lora_rank must be an integer >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
        raise ValueError(f"lora_alpha must be a number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora_dropout must be a number in [0, 1), got {dropout!r}")
    if isinstance(targets, str):
        targets = [targets]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"lora_targets {list(targets)} must be a non-empty list of {', '.join(TARGETS)}")
    return dict(rank=int(rank), alpha=float(alpha), dropout=float(dropout),
                targets=[t for t in TARGETS if t in targets])


def lora_setting(cfg):
    """The checked lora setting a resolved training config asks for (its lora_* keys), or None
    when lora_rank is 0."""
    if not cfg["lora_rank"]:
        return None
    return check_lora_config({"rank": cfg["lora_rank"], "alpha": cfg["lora_alpha"], "dropout": cfg["lora_dropout"],
                              "targets": cfg["lora_targets"]})


def adapter_layout(config):
    """Where one block's adapters go, for a completed model config with a lora setting:
    {matrix suffix: [(part, columns, (C_in, r), (r, C_out))]}; part is "q", "k" or "v" for a
    column block of attn.qkv.weight and None for a whole matrix. Empty without lora."""
    lora = config.get("lora")
    if lora is None:
        return {}
    c, f, r = config["embedding_dim"], config["ffn_hidden_dim"], lora["rank"]
    head_dim = c // config["num_heads"]
    q_end = config["num_heads"] * head_dim
    k_end = q_end + config["num_kv_heads"] * head_dim
    columns = {"q": slice(0, q_end), "k": slice(q_end, k_end), "v": slice(k_end, k_end + k_end - q_end)}
    layout = {}
    for part in ("q", "k", "v"):
        if part in lora["targets"]:
            width = columns[part].stop - columns[part].start
            layout.setdefault("attn.qkv", []).append((part, columns[part], (c, r), (r, width)))
    if "o" in lora["targets"]:
        layout["attn.proj"] = [(None, slice(None), (c, r), (r, c))]
    if "mlp" in lora["targets"]:
        for matrix in MLP_MATRICES[config["mlp_activation"]]:
            c_in, c_out = (f, c) if matrix in ("mlp.proj", "mlp.down") else (c, f)
            layout[matrix] = [(None, slice(None), (c_in, r), (r, c_out))]
    return layout


def adapter_names(matrix, part):
    """The suffixes (within a block) of the A and B of one adapter."""
    stem = matrix if part is None else f"{matrix}.{part}"
    return f"{stem}.lora_A", f"{stem}.lora_B"


def adapter_shapes(config):
    """{block suffix: shape} of one block's adapters, in layout order."""
    shapes = {}
    for matrix, adapters in adapter_layout(config).items():
        for part, _, a_shape, b_shape in adapters:
            a_name, b_name = adapter_names(matrix, part)
            shapes[a_name], shapes[b_name] = a_shape, b_shape
    return shapes


def adapter_parameter_count(config):
    """How many numbers the adapters of a (completed) model config with a lora setting hold."""
    per_block = sum(math.prod(shape) for shape in adapter_shapes(config).values())
    return config["num_layers"] * per_block


def is_adapter(name):
    """Whether a parameter name is a LoRA adapter's A or B."""
    return name.endswith((".lora_A", ".lora_B"))


def init_adapter(name, shape, rng):
    """A: uniform(-1/sqrt(C_in), 1/sqrt(C_in)) (PEFT's Kaiming-uniform default); B: zeros, so
    the adapted model starts out equal to the frozen one."""
    if name.endswith(".lora_B"):
        return np.zeros(shape)
    bound = 1.0 / math.sqrt(shape[0])
    return rng.uniform(-bound, bound, size=shape)


def lora_scale(lora):
    """alpha / rank: the adapters' output is scaled so that changing the rank does not change
    the size of the update at a given learning rate."""
    return lora["alpha"] / lora["rank"]
