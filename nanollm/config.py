"""Training configuration: one DEFAULTS table (a comment per key), presets, and resolve().

    cfg = resolve({"learning_rate": 3e-4, "max_steps": 500}, preset="small")

Order of precedence, lowest first: DEFAULTS, the preset, then each dict given to resolve()
(a config file, then command-line overrides). Unknown keys and wrong types are ValueErrors
that name the key and suggest the nearest valid one. The result is a plain dict, ready to be
copied into checkpoints and results files.
"""

import difflib
import inspect
import json
import math
import re
import sys
import tomllib
from pathlib import Path

from nanollm import backends, model_config, tracking
from nanollm.lora import TARGETS as LORA_TARGETS
from nanollm.optim import MUON_ADJUST_LR, OPTIMIZERS
from nanollm.schedule import SCHEDULES

DEFAULTS = {
    # ---- model (ModelConfig's fields, described in nanollm/model_config.py; when given, checked against the model) ----
    **{key: None for key in model_config.TRAINING_KEYS},
    # ---- data ----
    "batch_size": 12,             # windows per micro-batch
    "val_fraction": 0.1,          # the last share of the tokens held out for validation (0: none)
    "drop_last": True,            # epoch mode: drop the final incomplete batch
    # ---- length of training ----
    "num_steps": 1000,            # optimizer steps (alias max_steps); ignored when epochs is set
    "epochs": None,               # passes over the data in shuffled windows instead of num_steps
    "max_train_seconds": None,    # stop after this many seconds of training steps (evaluations not counted), checkpoint and evaluate; the schedule then runs on the budget's clock (see nanollm.schedule)
    # ---- optimizer ----
    "optimizer": "adamw",         # sgd, adam, adamw, lion, muon (Muon on the hidden 2-D weights, AdamW on the rest) or sophia (Sophia-G)
    "learning_rate": 1e-3,        # peak learning rate
    "betas": (0.9, 0.99),         # Adam/AdamW/Lion moment decay rates (beta1, beta2); muon: of its AdamW part; sophia: of m and of the Hessian estimate h
    "eps": 1e-8,                  # Adam/AdamW/Sophia denominator guard
    "momentum": 0.0,              # SGD momentum
    "nesterov": False,            # SGD: Nesterov momentum
    "muon_learning_rate": 0.02,   # muon: peak learning rate of the Muon matrices (the schedule scales it with learning_rate)
    "muon_momentum": 0.95,        # muon: momentum of the Muon matrices (an average of gradients)
    "muon_nesterov": True,        # muon: Nesterov momentum
    "muon_ns_steps": 5,           # muon: Newton-Schulz iterations that orthogonalise each update
    "muon_adjust_lr": "original", # muon: lr shape factor, original sqrt(max(1, fan_out/fan_in)), match_rms_adamw 0.2 sqrt(max(fan_in, fan_out))
    "sophia_rho": 0.04,           # sophia: clipping scale rho of m / (rho * tokens * h) (the update's size is at most lr)
    "sophia_hessian_interval": 10,  # sophia: steps between Gauss-Newton-Bartlett Hessian estimates (sampled labels)
    "weight_decay": 0.1,          # decoupled (AdamW, Lion, Muon) or L2 (SGD, Adam) weight decay
    "no_decay": None,             # name patterns (fnmatch) spared from decay (None: biases and norm gains)
    "grad_accum_steps": 1,        # micro-batches averaged into one optimizer step
    "max_grad_norm": 1.0,         # clip the global gradient norm to this (0: no clipping)
    # ---- learning-rate schedule (see nanollm.schedule) ----
    "lr_schedule": "constant",    # constant, cosine, warmup_cosine, step or polynomial
    "warmup_steps": 0,            # linear warmup steps before the schedule
    "decay_steps": None,          # where cosine/polynomial reach min_learning_rate (None: num_steps)
    "min_learning_rate": 0.0,     # floor of cosine/polynomial
    "step_size": 1000,            # step schedule: steps between decays
    "gamma": 0.1,                 # step schedule: decay factor
    "power": 1.0,                 # polynomial schedule: exponent
    # ---- evaluation and early stopping ----
    "eval_interval": 100,         # steps between validation evaluations (0: only at the end)
    "eval_steps": 20,             # validation batches per evaluation (None: the whole split, exactly)
    "patience": None,             # evaluations without improvement before stopping (None: never)
    "min_delta": 0.0,             # improvement in val loss that resets the patience
    # ---- checkpoints ----
    "checkpoint_dir": None,       # where checkpoints and metrics.jsonl go (None: nowhere)
    "overwrite": False,           # a fresh run may replace the files of an earlier run in checkpoint_dir
    "checkpoint_interval": 0,     # steps between checkpoints (0: only the final one)
    "keep_last_n": 3,             # step checkpoints kept (0: all)
    "save_best": True,            # also keep checkpoint_best.npz at the best val loss
    "resume_from": None,          # checkpoint path to continue from
    "init_from": None,            # checkpoint or run folder whose weights start a new run (fresh optimizer, step 0)
    # ---- LoRA fine-tuning (see nanollm.lora) ----
    "lora_rank": 0,               # rank of LoRA adapters on the base weights, which stay frozen (0: no LoRA, all train)
    "lora_alpha": 16.0,           # the adapters' output is scaled by lora_alpha / lora_rank
    "lora_dropout": 0.0,          # dropout on the adapters' input, in training
    "lora_targets": ["q", "v"],   # matrices that get adapters: any of q, k, v, o (attention) and mlp (all MLP matrices)
    # ---- logging and samples ----
    "log_interval": 10,           # steps between log lines
    "log_layer_stats": False,     # at each log line: per-layer gradient norms and update-to-weight ratios (a weight copy then)
    "report_to": [],              # experiment trackers fed the metrics.jsonl records: tensorboard, wandb (none: [])
    "sample_interval": 0,         # steps between printed samples (0: none)
    "sample_prompt": "\n",        # prompt of those samples (needs a tokenizer)
    "sample_length": 200,         # tokens generated per sample
    # ---- post-training: GRPO, PPO, DPO (nanollm rl; see nanollm.posttrain) ----
    "rl_group_size": 8,           # grpo: responses sampled per prompt (a group: advantages are relative within it)
    "rl_prompts_per_step": 4,     # grpo/ppo: prompts sampled each step (rollouts per step = prompts x group size)
    "rl_inner_epochs": 1,         # grpo/ppo: optimizer passes over each step's rollouts (the ratio leaves 1 after the first)
    "rl_temperature": 1.0,        # grpo/ppo: sampling temperature of the rollouts
    "rl_top_k": None,             # grpo/ppo: sample among the k most likely tokens only (None: all)
    "rl_max_new_tokens": 16,      # grpo/ppo: longest response sampled
    "rl_beta": 0.04,              # grpo/ppo: weight of the k3 KL penalty to the reference (the starting weights)
    "rl_clip_low": 0.2,           # grpo/ppo: the ratio is clipped to [1 - rl_clip_low, 1 + rl_clip_high]
    "rl_clip_high": 0.2,          # grpo/ppo: upper clip (DAPO's clip-higher: 0.28)
    "rl_normalisation": "token",  # grpo/ppo: loss mean over every response token (token, DAPO) or per response first (sequence)
    "rl_scale_rewards": True,     # grpo: divide each group's centred rewards by their std (False: R - mean alone)
    "dpo_beta": 0.1,              # dpo: strength of the implicit KL to the reference in -log sigmoid(beta margin)
    "ppo_gamma": 1.0,             # ppo: discount of later rewards in GAE
    "ppo_lam": 0.95,              # ppo: GAE's lambda (0: one-step TD advantages, 1: Monte Carlo returns minus V)
    "ppo_value_clip": 0.2,        # ppo: the value head's new estimate stays within this of its sampling-time one
    "ppo_value_coef": 0.1,        # ppo: weight of the value loss in the total loss
    "ppo_entropy_coef": 0.0,      # ppo: weight of the entropy bonus (subtracted: > 0 keeps sampling diverse)
    # ---- numerics and reproducibility ----
    "dtype": None,                # float32, float64, or float16 / bfloat16 compute with float32 master weights (None: the model's)
    "backend": None,              # numpy, numba, cython, auto (CPU) or cupy (GPU) (None: the current one, auto by default)
    "activation_checkpointing": False,  # keep only each block's input, recompute the block in the backward: the same gradients, ~1/3 more compute, far less memory
    "fused_attention": False,     # attention in one fused kernel that keeps no T x T probabilities (FlashAttention-2): less memory at long T, slower than BLAS on small CPUs
    "seed": 1337,                 # seeds batches, dropout and, for new models, the weights
    "threads": None,              # CPU: split each micro-batch's rows into this many shards run at once, BLAS on one thread in each (nanollm.shards; None: the cores, shared by mpiexec's ranks on the machine; 1: off; without dropout only)
    # ---- data parallel (mpiexec -n N; see nanollm.distributed) ----
    "param_check_interval": 100,  # steps between checks that every rank holds the same parameters (0: start and end only)
}

ALIASES = {"max_steps": "num_steps"}
TRACKERS = tuple(tracking.TRACKERS)  # report_to's names

# Types of the keys that may be None (when the default does not tell); int is accepted wherever
# float is.
OPTIONAL_TYPES = {
    **model_config.TYPES,
    "eval_steps": int, "epochs": int, "decay_steps": int, "max_train_seconds": float, "patience": int, "rl_top_k": int,
    "checkpoint_dir": str, "resume_from": str, "init_from": str, "dtype": str, "backend": str, "no_decay": list,
    "threads": int,
}
CHOICES = {"architecture": model_config.ARCHITECTURES, "optimizer": tuple(OPTIMIZERS), "lr_schedule": SCHEDULES,
           "dtype": model_config.DTYPES + model_config.HALF_DTYPES, "backend": backends.names(),
           "muon_adjust_lr": MUON_ADJUST_LR, "rl_normalisation": ("token", "sequence")}
POSITIVE = ("threads", "learning_rate", "batch_size", "num_steps", "grad_accum_steps", "eval_steps", "step_size", "sample_length",
            "epochs", "max_train_seconds", "patience", "eps", "lora_alpha", "muon_learning_rate", "muon_ns_steps", "sophia_rho",
            "sophia_hessian_interval", "rl_group_size", "rl_prompts_per_step", "rl_inner_epochs", "rl_top_k",
            "rl_max_new_tokens", "dpo_beta")
UNIT_INTERVAL = ("lora_dropout", "val_fraction", "muon_momentum", "rl_clip_low")  # in [0, 1)
NON_NEGATIVE = ("weight_decay", "max_grad_norm", "warmup_steps", "decay_steps", "min_learning_rate", "momentum",
                "eval_interval", "checkpoint_interval", "lora_rank", "keep_last_n", "log_interval", "sample_interval",
                "min_delta", "seed", "gamma", "power", "param_check_interval", "rl_temperature", "rl_beta",
                "rl_clip_high", "ppo_gamma", "ppo_lam", "ppo_value_clip", "ppo_value_coef", "ppo_entropy_coef")

PRESETS = {
    # nano-llm's scaling guide: embedding / layers / ffn, each with a recipe for the embedded corpus
    # (nano's measured: val loss 0.29 after its 5,000 steps, about a minute on 2 cores; small and
    # medium scale the learning rate down with the width and are starting points, not tuned).
    "nano": dict(embedding_dim=32, num_layers=2, ffn_hidden_dim=64, num_heads=4, max_seq_len=64,
                 batch_size=32, num_steps=5000, learning_rate=3e-3, min_learning_rate=3e-4, lr_schedule="cosine",
                 warmup_steps=100, eval_interval=500, log_interval=250),
    "small": dict(embedding_dim=64, num_layers=4, ffn_hidden_dim=128, num_heads=4, max_seq_len=128,
                  batch_size=32, num_steps=5000, learning_rate=2e-3, min_learning_rate=2e-4, lr_schedule="cosine",
                  warmup_steps=200, eval_interval=500, log_interval=250),
    "medium": dict(embedding_dim=128, num_layers=6, ffn_hidden_dim=256, num_heads=4, max_seq_len=256,
                   batch_size=32, num_steps=5000, learning_rate=1e-3, min_learning_rate=1e-4, lr_schedule="cosine",
                   warmup_steps=200, eval_interval=500, log_interval=250),
    # nanoGPT's two Shakespeare-char recipes
    "shakespeare-cpu": dict(embedding_dim=128, num_layers=4, num_heads=4, ffn_hidden_dim=512, max_seq_len=64,
                            batch_size=12, num_steps=2000, learning_rate=1e-3, min_learning_rate=1e-4,
                            lr_schedule="cosine", warmup_steps=100, betas=(0.9, 0.99), weight_decay=0.1,
                            max_grad_norm=1.0, dropout=0.0, eval_interval=250, eval_steps=20),
    "shakespeare-gpu": dict(embedding_dim=384, num_layers=6, num_heads=6, ffn_hidden_dim=1536, max_seq_len=256,
                            batch_size=64, num_steps=5000, learning_rate=1e-3, min_learning_rate=1e-4,
                            lr_schedule="cosine", warmup_steps=100, betas=(0.9, 0.99), weight_decay=0.1,
                            max_grad_norm=1.0, dropout=0.2, eval_interval=250, eval_steps=200),
    # The CPU speedrun (TRAINING.md, "Speedrun"): the lowest Tiny Shakespeare val loss in 10 minutes of training
    # on 2 cores. nanoGPT's CPU shape as a Llama with QK-norm and soft-capped logits; Muon on the hidden matrices
    # (AdamW at 3e-3 on the rest); 4x the tokens a step, in twice the context (128 x 24); the schedule (5% warmup,
    # cosine to 0) runs on the budget's clock.
    "shakespeare-speedrun": dict(architecture="llama", embedding_dim=128, num_layers=4, num_heads=4,
                                 ffn_hidden_dim=344, max_seq_len=128, qk_norm=True, logit_softcap=30.0,
                                 optimizer="muon", learning_rate=3e-3, min_learning_rate=0.0, lr_schedule="cosine",
                                 num_steps=20000, warmup_steps=1000, batch_size=24, betas=(0.9, 0.99),
                                 weight_decay=0.1, max_grad_norm=1.0, dropout=0.0, max_train_seconds=600.0,
                                 eval_interval=500, eval_steps=None),
    # GPT-2 small, for sizes and memory estimates
    "gpt2-124m": dict(vocab_size=50257, embedding_dim=768, num_layers=12, num_heads=12, ffn_hidden_dim=3072,
                      max_seq_len=1024, dropout=0.0),
}


def _suggest(key, candidates):
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_name(kind):
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            tuple: "a pair of numbers", list: "a list of strings"}[kind]


def _check_type(key, value, source):
    """Return value converted to the key's type, or raise a ValueError naming key and source."""
    default = DEFAULTS[key]
    kind = OPTIONAL_TYPES.get(key, type(default))
    if value is None and key in OPTIONAL_TYPES:
        return None
    if key in OPTIONAL_TYPES and kind is not str and isinstance(value, str) and value.lower() in ("none", "null"):
        return None  # TOML has no null: eval_steps = "none" in a config file, as --eval_steps=none
    if key == "report_to":  # one tracker by name, or a list; "none" (--report_to=none): no tracker
        value = [value] if isinstance(value, str) else value
        value = [name for name in value if name != "none"] if isinstance(value, (list, tuple)) else value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        tuple: isinstance(value, (list, tuple)) and len(value) == 2
               and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
        list: isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
    }[kind]
    if not ok:
        raise ValueError(f"{source}: {key} must be {_type_name(kind)}, got {value!r}")
    if kind is float:
        return float(value)
    if kind is tuple:
        return tuple(float(v) for v in value)
    if kind is list:
        return list(value)
    return value


def _check_value(key, value, source):
    if value is None:
        return
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"{source}: {key}={value!r} is not one of {', '.join(CHOICES[key])}"
                         f"{_suggest(str(value), CHOICES[key])}")
    if key in model_config.TRAINING_KEYS:  # the model's own ranges
        try:
            model_config.check_value(key, value)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
    if key in POSITIVE and not value > 0:
        raise ValueError(f"{source}: {key} must be > 0, got {value!r}")
    if key in NON_NEGATIVE and not value >= 0:
        raise ValueError(f"{source}: {key} must be >= 0, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{source}: {key} must be finite, got {value!r}")
    if key in UNIT_INTERVAL and not 0.0 <= value < 1.0:
        raise ValueError(f"{source}: {key} must be in [0, 1), got {value!r}")
    if key == "lora_targets" and (not value or any(t not in LORA_TARGETS for t in value)):
        raise ValueError(f"{source}: lora_targets must be a non-empty list of {', '.join(LORA_TARGETS)}, got "
                         f"{list(value)}")
    if key == "report_to" and any(t not in TRACKERS for t in value):
        raise ValueError(f"{source}: report_to takes {', '.join(TRACKERS)} (a list, or one name), got {list(value)}")
    if key == "betas" and not all(0.0 <= b < 1.0 for b in value):
        raise ValueError(f"{source}: betas must both be in [0, 1), got {list(value)}")


def resolve(*overrides, preset=None, sources=None):
    """DEFAULTS, then PRESETS[preset], then each dict in overrides: a validated plain dict.

    sources optionally names each override in error messages (a file path, "--key=value")."""
    cfg = dict(DEFAULTS)
    layers = []
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}"
                             f"{_suggest(preset, PRESETS)}")
        layers.append((f"preset {preset!r}", PRESETS[preset]))
    names = sources or [f"config {i + 1}" if len(overrides) > 1 else "config" for i in range(len(overrides))]
    layers.extend(zip(names, overrides))
    for source, layer in layers:
        if not isinstance(layer, dict):
            raise ValueError(f"{source}: a configuration must be a dict of key: value, got {type(layer).__name__}")
        for key, value in layer.items():
            canonical = ALIASES.get(key, key)
            if canonical not in DEFAULTS:
                raise ValueError(f"{source}: unknown config key {key!r}{_suggest(key, list(DEFAULTS) + list(ALIASES))}")
            value = _check_type(canonical, value, source)
            _check_value(canonical, value, source)
            cfg[canonical] = value
    model_config.check_head_counts(cfg["embedding_dim"], cfg["num_heads"], cfg["num_kv_heads"])
    if cfg["nesterov"] and cfg["momentum"] <= 0:
        raise ValueError("nesterov=True needs momentum > 0")
    return cfg


def describe_keys():
    """{key: its comment in DEFAULTS}, read from this file's source: the comments are the one
    place each key is documented (--help, TRAINING.md's reference)."""
    source = inspect.getsource(sys.modules[__name__])
    found = dict(re.findall(r'^\s+"(\w+)": .+?#\s*(.+?)\s*$', source, flags=re.M))
    model_fields = model_config.describe_fields()  # the model keys: ModelConfig's comments
    found.update({key: model_fields[key] for key in model_config.TRAINING_KEYS})
    return {key: found.get(key, "") for key in DEFAULTS}


def key_type(key):
    """The Python type a key's values take (int, float, bool, str, tuple or list)."""
    key = ALIASES.get(key, key)
    return OPTIONAL_TYPES.get(key, type(DEFAULTS[key]))


def parse_value(key, text, source=None):
    """A command-line string turned into the key's type: "3e-4" -> 3e-4, "true" -> True,
    "none" -> None, "0.9,0.99" -> (0.9, 0.99). resolve() then checks the value itself."""
    source = source or f"--{key}={text}"
    canonical = ALIASES.get(key, key)
    if canonical not in DEFAULTS:
        raise ValueError(f"unknown config key {key!r}{_suggest(key, list(DEFAULTS) + list(ALIASES))}")
    kind, word = key_type(canonical), text.strip()
    if word.lower() in ("none", "null") and (canonical in OPTIONAL_TYPES or DEFAULTS[canonical] is None):
        return None
    try:
        if kind is bool:
            choices = {"true": True, "1": True, "yes": True, "on": True,
                       "false": False, "0": False, "no": False, "off": False}
            if word.lower() not in choices:
                raise ValueError
            return choices[word.lower()]
        if kind is int:
            return int(word)
        if kind is float:
            return float(word)
        if kind in (tuple, list):
            items = json.loads(word) if word.startswith("[") else [w.strip() for w in word.split(",") if w.strip()]
            return tuple(float(v) for v in items) if kind is tuple else [str(v) for v in items]
        return word
    except (ValueError, TypeError, json.JSONDecodeError):
        example = {bool: "true", int: "100", float: "3e-4", tuple: "0.9,0.99", list: "*.bias,wpe"}.get(kind, "text")
        raise ValueError(f"{source}: {key} must be {_type_name(kind)} (for example --{key}={example}), "
                         f"got {text!r}") from None


def load_config_file(path):
    """The dict of a JSON (.json) or TOML (.toml) config file, or a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist; give the path of a .json or .toml file")
    if path.suffix not in (".json", ".toml"):
        raise ValueError(f"config file {str(path)!r} must end in .json or .toml (got {path.suffix or 'no suffix'!r})")
    try:
        text = path.read_text(encoding="utf-8")
        layer = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except UnicodeDecodeError:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"config file {str(path)!r}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {str(path)!r}: not valid TOML ({exc})") from None
    if not isinstance(layer, dict):
        raise ValueError(f"config file {str(path)!r} must hold a table of key: value pairs, "
                         f"got {type(layer).__name__}")
    return layer
