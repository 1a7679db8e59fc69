"""Hugging Face model folders in and out: one exporter and one importer for every architecture.

    export_hf("run/checkpoint_final.npz", "hf/")    model.safetensors + config.json + tokenizer files
    import_hf("hf/", "run/imported.npz")            a nanollm checkpoint of the same model

The architecture picks the format (``FORMATS``): a "gpt2" checkpoint becomes a GPT2LMHeadModel
folder, a "llama" one a LlamaForCausalLM folder; on import, config.json's model_type decides.
The per-architecture knowledge (names, layouts, config.json) lives in hf_gpt2.py and hf_llama.py;
this file only reads and writes files.

Tokenizer files written beside the weights: nanollm_tokenizer.json (nanollm's own, exact) and,
where the tokenizer can be expressed in it, tokenizer.json (the `tokenizers` library's format,
which transformers' AutoTokenizer reads). On import, nanollm_tokenizer.json wins; else
tokenizer.json or vocab.json + merges.txt are read when nanollm can reproduce them, and a
tokenizer it cannot reproduce is left out with a printed note (the weights still import).
"""

import sys
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from nanollm.interop import hf_gpt2, hf_llama
from nanollm.interop.files import (CONFIG_FILE, WEIGHTS_FILE, check_out_files, load_safetensors_folder,
                                   read_json_file, require, write_safetensors)
from nanollm.model_config import DEFAULT_ACTIVATIONS, ModelConfig, build_model, complete_model_config
from nanollm.textfiles import write_json_atomically

NANOLLM_TOKENIZER_FILE = "nanollm_tokenizer.json"  # nanollm's own tokenizer dict, read back exactly
HF_TOKENIZER_FILE = "tokenizer.json"               # the tokenizers library's format


class HFFormat(NamedTuple):
    """What one architecture needs to travel as a Hugging Face folder."""
    model_class: str                       # the transformers class that loads it
    display_name: str                      # for messages
    check: Callable                        # check(model_config): a ValueError if it cannot be expressed
    hf_config: Callable                    # hf_config(model_config) -> config.json dict
    model_config_from_hf: Callable         # model_config_from_hf(config.json dict) -> nanollm model config
    to_hf: Callable                        # to_hf(params, model_config) -> {HF name: array}
    from_hf: Callable                      # from_hf(state_dict, model_config) -> {nanollm name: array}


FORMATS = {
    "gpt2": HFFormat(hf_gpt2.MODEL_CLASS, "GPT-2", hf_gpt2.check_gpt2_compatible, hf_gpt2.hf_gpt2_config,
                     hf_gpt2.model_config_from_hf, hf_gpt2.to_hf_gpt2, hf_gpt2.from_hf_gpt2),
    "llama": HFFormat(hf_llama.MODEL_CLASS, "Llama", hf_llama.check_llama_compatible, hf_llama.hf_llama_config,
                      hf_llama.model_config_from_hf_llama, hf_llama.to_hf_llama, hf_llama.from_hf_llama),
}


def _format_of(architecture, expected=None):
    """FORMATS[architecture], or a one-line error (also when it is not ``expected``)."""
    if expected is not None and architecture != expected:
        other = {"gpt2": "hf-gpt2", "llama": "hf-llama"}.get(architecture, "hf")
        raise ValueError(f"the model is architecture={architecture!r}, not {expected!r}; export it with "
                         f"--format {other} (or --format hf, which picks by architecture)")
    if architecture not in FORMATS:
        raise ValueError(f"architecture {architecture!r} has no Hugging Face format here; known: "
                         f"{', '.join(FORMATS)}")
    return FORMATS[architecture]


def check_expressible(model_config, source):
    """A one-line ValueError when the model uses a speedrun option (nanollm.model_config) that the
    GPT-2 and Llama layouts of Hugging Face and llama.cpp have no field for."""
    completed = complete_model_config(model_config)
    used = [f"{key}={completed[key]}" for key in ("qk_norm", "logit_softcap") if completed[key]]
    if completed["mlp_activation"] != DEFAULT_ACTIVATIONS[completed["architecture"]]:
        used.append(f"mlp_activation={completed['mlp_activation']}")
    if used:
        raise ValueError(f"{source} uses {', '.join(used)}, which the GPT-2 and Llama formats of Hugging Face and "
                         "GGUF cannot express; export a model trained without them (nanollm sample runs this one)")


def read_checkpoint_params(checkpoint_path):
    """(metadata, {name: array}) of a checkpoint's parameters (not its optimizer moments), with
    a one-line error for LoRA adapters that were not merged and for what the formats cannot express."""
    from nanollm.checkpoint import read_checkpoint

    metadata, arrays = read_checkpoint(checkpoint_path, prefix="params/")
    model_config = metadata["model_config"]
    if model_config.get("lora") is not None or metadata.get("base_model_config") is not None:
        raise ValueError(f"{checkpoint_path} holds LoRA adapters; merge them into the weights first "
                         "(nanollm merge RUN OUT.npz) and export the merged checkpoint")
    check_expressible(model_config, checkpoint_path)
    params = {key[len("params/"):]: value for key, value in arrays.items()}
    if model_config.get("value_head"):  # PPO's critic: not part of the policy that leaves
        print(f"note: {checkpoint_path} has a value head (PPO's critic); the policy is exported without it",
              file=sys.stderr)
        params = {name: value for name, value in params.items() if not name.startswith("value_head.")}
        metadata["model_config"] = {**model_config, "value_head": False}
    return metadata, params


def write_tokenizer_files(tokenizer_dict, out_dir, overwrite):
    """Write nanollm_tokenizer.json and, where it can be expressed, tokenizer.json into out_dir;
    remove stale ones of an earlier export (overwrite) when this model has none. Returns the paths."""
    from nanollm.tokenizers import tokenizer_from_dict

    out_dir = Path(out_dir)
    ours, theirs = out_dir / NANOLLM_TOKENIZER_FILE, out_dir / HF_TOKENIZER_FILE
    if tokenizer_dict is None:
        for path in (ours, theirs):
            if overwrite and path.exists():
                path.unlink()  # the old export's tokenizer would describe another model
        return []
    written = [Path(write_json_atomically(ours, tokenizer_dict))]
    try:
        from nanollm.interop.tokenizer_files import save_hf_tokenizer_json
        save_hf_tokenizer_json(tokenizer_from_dict(tokenizer_dict), theirs)
        written.append(theirs)
    except (ImportError, ValueError) as exc:
        print(f"note: no {HF_TOKENIZER_FILE} written ({exc}); {NANOLLM_TOKENIZER_FILE} holds the tokenizer",
              file=sys.stderr)
        if overwrite and theirs.exists():
            theirs.unlink()
    return written


def export_hf(checkpoint_path, out_dir, overwrite=False, architecture=None):
    """Write a nanollm checkpoint as a folder that transformers' ``from_pretrained(out_dir)`` loads
    (GPT2LMHeadModel or LlamaForCausalLM, by the checkpoint's architecture; ``architecture``, when
    given, must match). Writes model.safetensors, config.json and the tokenizer files, each
    atomically. Existing files are an error unless overwrite=True. Returns the written paths."""
    require("safetensors.numpy", "exporting")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; give a folder to export into")
    metadata, params = read_checkpoint_params(checkpoint_path)
    model_config = metadata["model_config"]
    form = _format_of(model_config.get("architecture", "gpt2"), architecture)
    form.check(model_config)
    weights, config_path = out_dir / WEIGHTS_FILE, out_dir / CONFIG_FILE
    check_out_files((weights, config_path, out_dir / NANOLLM_TOKENIZER_FILE, out_dir / HF_TOKENIZER_FILE), overwrite)
    tensors = form.to_hf(params, model_config)
    hf_config = form.hf_config(model_config)
    del params
    write_safetensors(weights, tensors)
    del tensors
    written = [weights, Path(write_json_atomically(config_path, hf_config, indent=2))]
    return written + write_tokenizer_files(metadata.get("tokenizer"), out_dir, overwrite)


def read_hf_tokenizer(in_dir, vocab_size):
    """The tokenizer of a Hugging Face folder, or None (with a printed note when one is there but
    cannot be read): nanollm_tokenizer.json first, then tokenizer.json / vocab.json + merges.txt."""
    from nanollm.tokenizers import tokenizer_from_dict

    in_dir = Path(in_dir)
    if (in_dir / NANOLLM_TOKENIZER_FILE).exists():
        path = in_dir / NANOLLM_TOKENIZER_FILE
        tokenizer = tokenizer_from_dict(read_json_file(path, "a tokenizer"), source=str(path))
    elif (in_dir / HF_TOKENIZER_FILE).exists() or (in_dir / "vocab.json").exists():
        try:
            from nanollm.interop.tokenizer_files import read_tokenizer
            tokenizer = read_tokenizer(in_dir)
        except (ImportError, ValueError) as exc:
            print(f"note: the tokenizer in {in_dir} was not imported ({exc}); pass --tokenizer to train or "
                  "sample with the checkpoint", file=sys.stderr)
            return None
        path = in_dir
    else:
        return None
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(f"the tokenizer in {path} has {tokenizer.vocab_size} tokens but the model's vocab_size "
                         f"is {vocab_size}; it belongs to another model (remove it to import the weights alone)")
    return tokenizer


def import_hf(in_dir, checkpoint_path, overwrite=False, architecture=None):
    """Turn a Hugging Face folder (config.json + model.safetensors, or shards) into a nanollm
    checkpoint. config.json's model_type picks the format (``architecture``, when given, must
    match). float64 weights stay float64, float32 stay float32, float16/bfloat16 widen to float32
    (nanollm computes in 32 or 64 bits). The tokenizer comes along where it can (read_hf_tokenizer).
    An existing checkpoint is an error unless overwrite=True. Returns the checkpoint path."""
    require("safetensors.numpy", "importing")
    in_dir, checkpoint_path = Path(in_dir), Path(checkpoint_path)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"{in_dir} is not a folder; give the folder holding config.json and model.safetensors")
    check_out_files((checkpoint_path,), overwrite)
    hf_config = read_json_file(in_dir / CONFIG_FILE, "config.json")
    model_type = hf_config.get("model_type", "gpt2")
    if model_type not in FORMATS or (architecture is not None and model_type != architecture):
        wanted = f"a {architecture} model" if architecture else f"one of {', '.join(FORMATS)}"
        raise ValueError(f"{in_dir / CONFIG_FILE} has model_type={model_type!r}; nanollm imports {wanted} here")
    form = FORMATS[model_type]
    model_config = form.model_config_from_hf(hf_config)
    tokenizer = read_hf_tokenizer(in_dir, model_config["vocab_size"])
    params = form.from_hf(load_safetensors_folder(in_dir), model_config)  # shapes checked against config.json
    shapes = ModelConfig.from_dict(model_config).parameter_shapes()
    missing = [name for name in shapes if name not in params]
    if missing:
        examples = form.to_hf({name: np.zeros(shapes[name], np.float32) for name in missing[:3]}, model_config)
        raise ValueError(f"the weights in {in_dir} lack {len(missing)} tensors of a {model_config['num_layers']}-"
                         f"layer {form.display_name}, e.g. {list(examples)[:3]}; save the whole model")
    model_config["dtype"] = "float64" if np.dtype(params["wte"].dtype) == np.float64 else "float32"
    return save_imported_model(model_config, params, checkpoint_path, tokenizer)


def save_imported_model(model_config, params, checkpoint_path, tokenizer=None):
    """Write {name: array} of the model ``model_config`` as a step-0 checkpoint (the one place an
    import becomes a nanollm checkpoint; the arrays are consumed one by one to hold one copy)."""
    from nanollm.checkpoint import save_checkpoint

    model = build_model(model_config, seed=0)
    for name in list(model.params):
        model.params[name] = np.ascontiguousarray(params.pop(name), dtype=model_config["dtype"])
    return Path(save_checkpoint(checkpoint_path, model, step=0, config=None, tokenizer=tokenizer))


def export_hf_gpt2(checkpoint_path, out_dir, overwrite=False):
    """``export_hf`` for a GPT-2 checkpoint (any other architecture is a one-line error)."""
    return export_hf(checkpoint_path, out_dir, overwrite, architecture="gpt2")


def import_hf_gpt2(in_dir, checkpoint_path, overwrite=False):
    """``import_hf`` of a GPT-2 folder (any other model_type is a one-line error)."""
    return import_hf(in_dir, checkpoint_path, overwrite, architecture="gpt2")
