"""Checkpoints: one .npz of plain arrays plus a JSON metadata entry. Atomic, and never pickled.

    save_checkpoint("run/checkpoint_step_500.npz", model, optimizer_state=states, step=500, loss=1.9,
                    config=cfg, tokenizer=tok)
    info = load_checkpoint("run/checkpoint_step_500.npz", model)   # info["step"], info["loss"], ...

Layout of the archive:
    params/<name>              every model parameter
    optim/<name>/<key>         every array of the optimizer state (Adam's m and v, SGD's buffer)
    __metadata__               a 0-d unicode array holding JSON: format version, step, loss, the
                               resolved config, the model's config, the tokenizer, RNG states,
                               the optimizer's scalar state (step counts)

The file is written to a temporary name in the same folder, synced, and renamed into place, so
a crash mid-write leaves the previous checkpoint as it was. Loading uses allow_pickle=False.

LoRA adapters also save alone (``save_adapters`` / ``load_adapters``): lora/<name> arrays and
metadata naming the base model's config, a file a few percent of the checkpoint's size.
"""

import json
import re
import zipfile
from pathlib import Path

import numpy as np

from nanollm import backends
from nanollm.lora import is_adapter
from nanollm.model import TransformerLanguageModel
from nanollm.model_config import SHAPE_KEYS, complete_model_config
from nanollm.textfiles import write_atomically
from nanollm.tokenizers import tokenizer_from_dict

FORMAT_VERSION = 1
KIND = "nanollm-checkpoint"
ADAPTERS_KIND = "nanollm-lora-adapters"
METADATA_KEY = "__metadata__"


def save_checkpoint(path, model, optimizer_state=None, step=0, loss=None, config=None, tokenizer=None,
                    rng_states=None, extra=None):
    """Write the model (and optionally optimizer state, config, tokenizer) to ``path`` atomically.

    optimizer_state maps parameter names to the dicts that ``nanollm.optim`` keeps; rng_states
    maps names to ``Generator.bit_generator.state`` dicts; extra is any JSON-able dict of run
    state (best validation loss, ...). Returns the path."""
    arrays = {f"params/{name}": backends.to_numpy(p) for name, p in model.params.items()}
    optimizer_scalars = {}
    for name, state in (optimizer_state or {}).items():
        optimizer_scalars[name] = {}
        for key, value in state.items():
            if hasattr(value, "shape"):
                arrays[f"optim/{name}/{key}"] = backends.to_numpy(value)
            else:
                optimizer_scalars[name][key] = value  # step counts, a buffer not yet created (None)
    metadata = {
        "kind": KIND, "format_version": FORMAT_VERSION,
        "step": int(step), "loss": None if loss is None else float(loss),
        "config": config, "model_config": model.config,
        "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
        "rng_states": rng_states or {}, "optimizer_scalars": optimizer_scalars, "extra": extra or {},
    }
    arrays[METADATA_KEY] = np.array(json.dumps(metadata))
    return write_atomically(path, lambda f: np.savez(f, **arrays))


def _open(path):
    """np.load of a checkpoint file (lazy: entries are read when indexed), or a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable checkpoint (.npz): {exc}") from None


# kind -> (what a file of that kind is, the function that writes it, a hint when another kind is given)
KINDS = {
    KIND: ("a nanollm checkpoint", "save_checkpoint", ""),
    ADAPTERS_KIND: ("a LoRA adapter file", "save_adapters", "; load a checkpoint with load_checkpoint"),
}


def _metadata(path, archive, kind=KIND):
    """The JSON metadata of an archive of ``kind``, or a ValueError saying what the file is not."""
    what, writer, hint = KINDS[kind]
    if METADATA_KEY not in archive.files:
        raise ValueError(f"{path} is an .npz without nanollm metadata; it was not written by {writer}")
    metadata = json.loads(str(archive[METADATA_KEY]))
    if metadata.get("kind") != kind:
        raise ValueError(f"{path} is not {what} (kind {metadata.get('kind')!r}){hint}")
    if metadata["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {metadata['format_version']}, newer than this nanollm "
                         f"reads ({FORMAT_VERSION}); upgrade nanollm")
    return metadata


def read_checkpoint_metadata(path):
    """The metadata dict of a checkpoint (config, model_config, tokenizer, step, ...), without
    reading its arrays."""
    with _open(path) as archive:
        return _metadata(path, archive)


def read_checkpoint(path, prefix="", kind=KIND):
    """(metadata dict, {name: array}) of a checkpoint file, or a ValueError saying what is wrong.

    prefix: read only the arrays whose names start with it ("params/": not the optimizer state).
    kind: ADAPTERS_KIND reads an adapter file written by save_adapters."""
    try:
        with _open(path) as archive:
            metadata = _metadata(path, archive, kind)
            arrays = {key: archive[key] for key in archive.files if key != METADATA_KEY and key.startswith(prefix)}
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path} is not a readable checkpoint (.npz): {exc}") from None
    return metadata, arrays


STEP_CHECKPOINT = re.compile(r"checkpoint_step_(\d+)\.npz$")


def step_checkpoints(folder):
    """The checkpoint_step_<N>.npz files in folder, oldest step first."""
    found = [(int(match[1]), path) for path in Path(folder).glob("checkpoint_step_*.npz")
             if (match := STEP_CHECKPOINT.search(path.name))]
    return [path for _, path in sorted(found)]


def find_checkpoint(path):
    """A checkpoint file: ``path`` itself, or in a run folder its checkpoint_final.npz, else its
    newest checkpoint_step_N.npz (what a resumed or sampled run should continue from)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; give a checkpoint_*.npz file or "
                                "the run folder that holds it")
    if (path / "checkpoint_final.npz").is_file():
        return path / "checkpoint_final.npz"
    steps = step_checkpoints(path)
    if steps:
        return steps[-1]
    if (path / "checkpoint_best.npz").is_file():
        return path / "checkpoint_best.npz"
    raise FileNotFoundError(f"{str(path)!r} holds no checkpoint_*.npz; give a checkpoint file or a run folder "
                            "written by nanollm train")


def _structure_differences(saved_model_config, model, keys, source):
    """'key=saved (source) vs model's (model)' for every key of ``keys`` on which a saved model
    config and ``model`` disagree (a key older files lack takes its default)."""
    saved = complete_model_config(saved_model_config)
    return [f"{key}={saved[key]} ({source}) vs {model.config[key]} (model)" for key in keys
            if saved[key] != model.config[key]]


def _check_parameters(path, model, saved, saved_model_config):
    """Same parameter names and shapes, or a ValueError that names the first difference."""
    if saved_model_config.get("vocab_size") != model.vocab_size:
        raise ValueError(f"{path} was trained with a vocabulary of {saved_model_config.get('vocab_size')} tokens "
                         f"but the model has vocab_size={model.vocab_size}; use the checkpoint's tokenizer "
                         "and build the model with its vocab_size")
    differences = _structure_differences(saved_model_config, model, SHAPE_KEYS, "checkpoint")
    if differences:
        raise ValueError(f"{path} does not fit the model: {', '.join(differences)}; build the model with the "
                         "checkpoint's settings, or call load_checkpoint(path) without a model to build it")
    missing = [name for name in model.params if name not in saved]
    unexpected = [name for name in saved if name not in model.params]
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}; "
                         f"build the model with the checkpoint's model config {saved_model_config}")
    for name, p in model.params.items():
        if tuple(saved[name].shape) != tuple(p.shape):
            raise ValueError(f"{path}: parameter {name} has shape {tuple(saved[name].shape)} in the checkpoint "
                             f"but {tuple(p.shape)} in the model; build the model with the checkpoint's model "
                             f"config {saved_model_config}")


def load_checkpoint(path, model=None, optimizer_state=None, tokenizer=None):
    """Load parameters into ``model`` (built from the checkpoint's model config when None).

    optimizer_state, when given, is filled in place (as built by the optimizer's init()).
    A tokenizer, when given, must equal the one saved. Returns a dict: step, loss, config,
    model_config, model, tokenizer (rebuilt from the file, or None), rng_states, extra."""
    # the optimizer moments (twice the parameters) are read only when they will be used
    metadata, arrays = read_checkpoint(path, prefix="" if optimizer_state is not None else "params/")
    if model is None:
        model = TransformerLanguageModel(**metadata["model_config"])
    params = {key[len("params/"):]: value for key, value in arrays.items() if key.startswith("params/")}
    _check_parameters(path, model, params, metadata["model_config"])
    saved_tokenizer = metadata.get("tokenizer")
    if tokenizer is not None and saved_tokenizer is not None and tokenizer.to_dict() != saved_tokenizer:
        raise ValueError(f"{path} was saved with a different tokenizer vocabulary than the one given; "
                         "load the checkpoint's tokenizer (load_checkpoint(...)['tokenizer']) instead")
    xp = backends.array_module(model.params["wte"])
    for name, p in model.params.items():
        model.params[name] = xp.asarray(params[name], dtype=p.dtype)

    if optimizer_state is not None:
        scalars = metadata["optimizer_scalars"]
        if set(scalars) != set(optimizer_state):
            raise ValueError(f"{path} holds no optimizer state for these parameters; resume only from checkpoints "
                             "written by train_with_config")
        for name, state in optimizer_state.items():
            saved_keys = set(scalars[name]) | {key.split("/")[-1] for key in arrays
                                               if key.startswith(f"optim/{name}/")}
            if saved_keys != set(state):
                raise ValueError(f"{path} holds optimizer state {sorted(saved_keys)} for {name}, but this optimizer "
                                 f"keeps {sorted(state)}; resume with the optimizer the run was trained with "
                                 f"({(metadata.get('config') or {}).get('optimizer')!r})")
            state.update(scalars[name])
            for key in state:
                if f"optim/{name}/{key}" in arrays:
                    state[key] = xp.asarray(arrays[f"optim/{name}/{key}"], dtype=model.params[name].dtype)

    return {
        "step": metadata["step"], "loss": metadata["loss"], "config": metadata["config"],
        "model_config": metadata["model_config"], "model": model,
        "tokenizer": tokenizer_from_dict(saved_tokenizer) if saved_tokenizer else None,
        "rng_states": metadata["rng_states"], "extra": metadata["extra"],
        "format_version": metadata["format_version"],
    }


# --------------------------------------------------------------------------------- LoRA adapters


def save_adapters(path, model, tokenizer=None, extra=None):
    """Write ``model``'s LoRA adapters alone to ``path`` (atomically), with its lora setting and
    base model config, so load_adapters can check they fit a base model. Returns the path."""
    if model.lora is None:
        raise ValueError("the model has no LoRA adapters to save; attach them with model.add_lora(...) "
                         "(or train with lora_rank > 0)")
    arrays = {f"lora/{name}": backends.to_numpy(p) for name, p in model.params.items() if is_adapter(name)}
    metadata = {"kind": ADAPTERS_KIND, "format_version": FORMAT_VERSION, "lora": model.lora,
                "base_model_config": {**model.config, "lora": None},
                "tokenizer": tokenizer.to_dict() if tokenizer is not None else None, "extra": extra or {}}
    arrays[METADATA_KEY] = np.array(json.dumps(metadata))
    return write_atomically(path, lambda f: np.savez(f, **arrays))


def load_adapters(path, model):
    """Load LoRA adapters saved by save_adapters into ``model``, a base model of the same shape
    (its weights are whatever it was given: the pretrained checkpoint). A model without adapters
    gets them attached first; one with adapters must have the same lora setting. Returns the
    metadata dict (lora, base_model_config, tokenizer, extra)."""
    metadata, arrays = read_checkpoint(path, prefix="lora/", kind=ADAPTERS_KIND)
    differences = _structure_differences(metadata["base_model_config"], model, SHAPE_KEYS,
                                         "adapters")
    if differences:
        raise ValueError(f"{path} was trained on a different base model: {', '.join(differences)}; load it into "
                         "a model built from the base checkpoint it was fine-tuned from")
    if model.lora is None:
        model.add_lora(**metadata["lora"])
    elif model.lora != metadata["lora"]:
        raise ValueError(f"{path} holds adapters {metadata['lora']} but the model has {model.lora}; load them into "
                         "a model without adapters")
    xp = backends.array_module(model.params["wte"])
    for name in model.trainable:
        model.params[name] = xp.asarray(arrays[f"lora/{name}"], dtype=model.params[name].dtype)
    return metadata
