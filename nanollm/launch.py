"""What `nanollm train` does around train_with_config: pick the data and its tokenizer, build
(or restore) the model, name the run folder, train, write results.json and print samples.

    launch_training(data=None, preset="nano")            # the embedded corpus, runs/nano
    launch_training(data="input.txt", preset="small", overrides={"learning_rate": 3e-3}, out="runs/s")
    launch_training(resume="runs/s")                     # continue where runs/s stopped

A run folder holds the checkpoints, metrics.jsonl, run.json (where the data came from, so
--resume needs nothing else), results.json and, for a text file, the token files in data/.

Under `mpiexec -n N` every rank runs this; rank 0 alone prints, prepares the token files and
writes the folder's files (the others wait, then read them: the run folder must be one that
every rank sees, or --data a prepared folder present at the same path on every machine).
"""

import json
import shlex
import sys
from pathlib import Path

import numpy as np

from nanollm import distributed
from nanollm.checkpoint import find_checkpoint, read_checkpoint_metadata
from nanollm.config import DEFAULTS, resolve
from nanollm.corpus import synthetic_text
from nanollm.prepare import load_prepared, prepare
from nanollm.generate import generate_text
from nanollm.lora import adapter_parameter_count, lora_setting
from nanollm.model import TransformerLanguageModel
from nanollm.model_config import SHAPE_KEYS, build_training_model, complete_model_config, master_dtype
from nanollm.run_state import prepare_checkpoint_dir, resuming_in_place
from nanollm.textfiles import write_json_atomically
from nanollm.tokenizers import CharTokenizer, tokenizer_from_dict
from nanollm.train import load_initial_weights, run_training

EMBEDDED_CORPUS_CHARS = 500_000  # the synthetic corpus (seed 0) a run without --data trains on
RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
DEFAULT_PRESET = "nano"
BPE_VOCAB_SIZE = 4096  # a BPE tokenizer's size when vocab_size is not set
FIXED_BY_CHECKPOINT = tuple(key for key in SHAPE_KEYS if key != "vocab_size")  # vocab_size: the tokenizer's


def fresh_run_folder(name, root="runs"):
    """runs/<name>, or runs/<name>-2, -3, ...: the first that does not exist or is empty."""
    for number in range(1, 10_000):
        folder = Path(root) / (name if number == 1 else f"{name}-{number}")
        if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
            return folder
    raise ValueError(f"{root!r} holds 9,999 runs named {name}; pass --out to choose a folder")


def embedded_corpus():
    """The built-in training text: stories, facts, arithmetic and Q/A lines (nanollm.corpus)."""
    return synthetic_text(EMBEDDED_CORPUS_CHARS, seed=0)


def check_data_path(data):
    """Path(data), or a ValueError when there is nothing there."""
    path = Path(data)
    if not path.exists():
        raise ValueError(f"--data {str(path)!r} does not exist; give a text file, a .jsonl instruction file or a "
                         "folder written by nanollm prepare")
    return path


def load_data(data, folder, tokenizer_spec, vocab_size, val_fraction, tokenizer=None):
    """(train, val or None, tokenizer, description) for --data.

    data: None (the embedded corpus, split by val_fraction during training), a folder written
    by `nanollm prepare`, or a text/JSONL file (prepared into <folder>/data with tokenizer_spec:
    "char", "bpe" or a tokenizer.json path). tokenizer: a resumed run's, used instead of a new one."""
    if data is None:
        text = embedded_corpus()
        tok = tokenizer if tokenizer is not None else CharTokenizer().build_vocab(text=text)
        ids = np.asarray(tok.encode(text), dtype=np.int32)
        return ids, None, tok, f"the embedded corpus ({len(text):,} characters)"
    path = check_data_path(data)
    if path.is_dir():
        prepared = load_prepared(path)
        return prepared["train"], prepared["val"], prepared["tokenizer"], f"{path} (prepared)"
    path, prepared_dir = path.resolve(), Path(folder) / "data"
    if tokenizer is None or not _prepared_from(prepared_dir, path):  # a resumed run reuses its token files
        spec = tokenizer if tokenizer is not None else tokenizer_spec
        prepare(path, prepared_dir, tokenizer=spec, vocab_size=vocab_size or BPE_VOCAB_SIZE,
                val_fraction=val_fraction, overwrite=True)  # data/ belongs to this run: rebuilt, never shared
    prepared = load_prepared(prepared_dir)
    return prepared["train"], prepared["val"], prepared["tokenizer"], f"{path} (prepared into {prepared_dir})"


def _prepared_from(folder, path):
    """Whether folder holds token files that prepare wrote from this very file (same size)."""
    meta = Path(folder) / "meta.json"
    if not meta.is_file():
        return False
    try:
        meta = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return meta.get("source") == str(path) and meta.get("source_bytes") == path.stat().st_size


def model_from_checkpoint(metadata, cfg):
    """A model of a checkpoint's shape (its saved model config) with the run's dtype and
    dropout where the config sets them; its weights are loaded afterwards."""
    settings = dict(metadata["model_config"])
    if cfg["dropout"] is not None:
        settings["dropout"] = cfg["dropout"]
    if cfg["dtype"] is not None:
        settings["dtype"] = master_dtype(cfg["dtype"])
    return TransformerLanguageModel(**settings)


def _read_run_file(folder):
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not valid JSON; pass --data again to say what the run trains on") from None


def _resolve_resumed(checkpoint, metadata, overrides, sources, out):
    """The resumed run's config: its checkpoint's, then the file and command-line overrides."""
    saved = {key: value for key, value in (metadata.get("config") or {}).items() if key in DEFAULTS}
    layers = [saved, *overrides, {"resume_from": str(checkpoint), "checkpoint_dir": str(out)}]
    return resolve(*layers, sources=[f"config saved in {checkpoint}", *sources, "--resume"])


def _fine_tuning_start(cfg, overrides, sources):
    """--init_from: (the checkpoint's model with its weights, its tokenizer). The data are
    encoded with the checkpoint's tokenizer; the preset gives the recipe only, and a shape key
    given explicitly must agree with the checkpoint."""
    checkpoint = find_checkpoint(cfg["init_from"])
    metadata = read_checkpoint_metadata(checkpoint)
    model_config = complete_model_config(metadata["model_config"])  # keys older checkpoints lack: defaults
    if metadata.get("tokenizer") is None:
        raise ValueError(f"--init_from {checkpoint} holds no tokenizer, so the data cannot be encoded as it was "
                         "trained; fine-tune from a checkpoint written by nanollm train")
    given = {}  # shape keys set by a config file or the command line, the last one winning
    for override, source in zip(overrides, sources):
        for key in FIXED_BY_CHECKPOINT:
            value = override.get(key)
            if value is None:
                continue
            if key != "max_seq_len" and value != model_config[key]:  # a shorter window is allowed
                raise ValueError(f"{source} sets {key}={value} but --init_from {checkpoint} has {key}="
                                 f"{model_config[key]}; a fine-tuned model keeps its checkpoint's shape")
            given[key] = value
    for key in FIXED_BY_CHECKPOINT:
        cfg[key] = given.get(key)  # None: the checkpoint's value
    cfg["init_from"] = str(checkpoint)
    model, tokenizer = model_from_checkpoint(metadata, cfg), tokenizer_from_dict(metadata["tokenizer"])
    load_initial_weights(model, checkpoint, tokenizer)
    return model, tokenizer


def launch_training(data=None, preset=None, overrides=(), sources=None, out=None, resume=None,
                    tokenizer="char", command=None, num_samples=2, echo=print, communicator=None):
    """Train as `nanollm train` does and return train_with_config's results.

    overrides: config dicts (a config file's, then the command line's), named by sources.
    communicator: the data-parallel ranks (default: distributed.world())."""
    comm = communicator if communicator is not None else distributed.world()
    if not comm.is_root:
        echo, num_samples = _silent, 0
    overrides = list(overrides)
    sources = list(sources) if sources is not None else [f"config {i + 1}" for i in range(len(overrides))]
    saved_tokenizer, run_record = None, {}
    if resume is not None:
        if preset is not None:
            raise ValueError("--preset applies to new runs; a resumed run keeps its checkpoint's model and config "
                             "(change training keys with --key=value)")
        checkpoint = find_checkpoint(resume)
        metadata = read_checkpoint_metadata(checkpoint)
        out = Path(out) if out is not None else checkpoint.parent
        run_record = _read_run_file(checkpoint.parent)
        cfg = _resolve_resumed(checkpoint, metadata, overrides, sources, out)
        if data is None:
            data = run_record.get("data")
        tokenizer = run_record.get("tokenizer", tokenizer)
        if metadata.get("tokenizer") is not None:
            saved_tokenizer = tokenizer_from_dict(metadata["tokenizer"])
        model = model_from_checkpoint(metadata, cfg)
    else:
        preset = preset or DEFAULT_PRESET
        cfg = resolve(*overrides, preset=preset, sources=sources)
        if out is None:
            out = Path(cfg["checkpoint_dir"]) if cfg["checkpoint_dir"] is not None else fresh_run_folder(preset)
        out = comm.broadcast(out)  # rank 0's choice of a fresh folder is everyone's
        cfg["checkpoint_dir"] = str(out)
        model = None
        if cfg["init_from"] is not None:
            model, saved_tokenizer = _fine_tuning_start(cfg, overrides, sources)
    if data is not None:
        check_data_path(data)  # before the run folder is created
    out = Path(out)

    def prepare_folder():
        prepare_checkpoint_dir(cfg)  # before data/ or run.json touch the folder
        if cfg["overwrite"] and not resuming_in_place(cfg):
            (out / RESULTS_FILE).unlink(missing_ok=True)  # the old checkpoints went with prepare_checkpoint_dir
        return load_data(data, out, tokenizer, cfg["vocab_size"], cfg["val_fraction"], tokenizer=saved_tokenizer)

    loaded = distributed.root_only(comm, prepare_folder)  # rank 0 writes the token files ...
    if not comm.is_root:  # ... which the others then read (those of a text file already prepared)
        loaded = load_data(data if data is None or Path(data).is_dir() else out / "data", out, tokenizer,
                           cfg["vocab_size"], cfg["val_fraction"], tokenizer=saved_tokenizer)
    train, val, tok, description = loaded
    if model is None:
        model = build_training_model(cfg, tok.vocab_size)
    if comm.is_root:
        write_json_atomically(out / RUN_FILE, {
            "data": None if data is None else str(Path(data).resolve()), "tokenizer": tokenizer,
            "preset": preset or run_record.get("preset"), "command": command}, indent=2)

    echo(f"data: {description}, vocabulary {tok.vocab_size}")
    echo(f"model: {model.architecture}, {model.num_layers} layers, {model.num_heads} heads, width "
         f"{model.embedding_dim}, context {model.max_seq_len}, {model.num_parameters():,} parameters"
         + (f" (preset {preset})" if preset else ""))
    lora = lora_setting(cfg)
    if lora is not None and model.lora is None:
        count = adapter_parameter_count({**model.config, "lora": lora})
        echo(f"lora: rank {lora['rank']} on {', '.join(lora['targets'])}: {count:,} trainable parameters "
             f"({count / model.num_parameters():.1%} of the model's), every other weight frozen")
    echo(f"run folder: {out}" + (f" (resuming {cfg['resume_from']})" if resume is not None else "")
         + (f" (weights from {cfg['init_from']})" if resume is None and cfg["init_from"] else ""))
    prompt = cfg["sample_prompt"]
    if resume is None and num_samples:
        echo(f"sample before training: {_sample(model, tok, prompt, 60, cfg['seed'])!r}")
    results = run_training(model, train, cfg, val_tokens=val, tokenizer=tok, communicator=comm)
    if not comm.is_root:
        return results
    summary = {key: value for key, value in results.items() if key != "history"}
    write_json_atomically(out / RESULTS_FILE, summary, indent=2)

    if results["stopped_because"]:
        echo(results["stopped_because"])
    val_loss = results["final_val_loss"]
    speed = results["tokens_per_second"]
    echo(f"done: step {results['steps']}, train loss {results['final_loss']:.4f}"
         + (f", val loss {val_loss:.4f}" if val_loss is not None else "")
         + (f", {speed:,.0f} tokens/s" if speed else " (nothing left to train: raise --num_steps to go on)"))
    for number in range(num_samples):
        echo(f"--- sample {number + 1} ---")
        echo(_sample(model, tok, prompt, cfg["sample_length"], cfg["seed"] + number))
    final = results["checkpoints"]["final"]
    if final:
        prompt_option = "" if prompt == "\n" else f" --prompt {shlex.quote(prompt)}"
        echo(f"--- next ---\nnanollm sample --checkpoint {out}{prompt_option}\n"
             f"nanollm plot {out}\nnanollm train --resume {out} --num_steps={results['steps'] * 2}")
    return results


def _silent(*args, **kwargs):
    """The echo of ranks other than 0: one rank speaks for the job."""


def _sample(model, tokenizer, prompt, length, seed):
    try:
        return generate_text(model, tokenizer, prompt, length, temperature=0.8, top_k=40, seed=seed)
    except ValueError as exc:  # a prompt the tokenizer cannot encode: say so, the run itself is fine
        print(f"(no sample: {exc})", file=sys.stderr)
        return ""
