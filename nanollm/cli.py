"""The `nanollm` command (also `python -m nanollm`): argument parsing, dispatch, and errors.

(About 500 lines: every subcommand's parser and its thin dispatch, which read best side by side;
the work itself lives in launch, estimate, prepare, interop, experiments and tools.)

    nanollm                                   train the nano preset on the embedded corpus
    nanollm train --data input.txt --preset small --learning_rate=3e-3 --out runs/small
    nanollm train --resume runs/small --num_steps=4000
    nanollm sample --checkpoint runs/small --prompt "ROMEO:" --seed 1
    nanollm info --preset gpt2-124m           (or a checkpoint, or a config file)
    nanollm prepare input.txt data/input --tokenizer bpe
    nanollm synth --stories 2000 --arithmetic 500 --seed 1 --out synth.txt
    nanollm plot runs/small
    nanollm export runs/small hf/small                   (--format hf: GPT-2 or Llama by the model)
    nanollm export --format gguf runs/small small.gguf   (llama.cpp, Ollama, LM Studio)
    nanollm import hf/small imported.npz                 (or a .gguf file)
    nanollm merge runs/lora merged.npz                   (LoRA adapters folded in, for export)
    nanollm rl --algorithm grpo --task addition --out runs/rl   (post-training, held-out accuracy before/after)
    nanollm experiments --grids depth,context --quick
    nanollm bench

Each subcommand's work lives in the library (launch, generate, estimate, data, metrics,
interop, experiments, bench); this file only turns arguments into calls. Every error is one line on stderr
and a non-zero exit status (2: bad arguments, 1: the command failed); NANOLLM_DEBUG=1 shows
the traceback instead.
"""

import argparse
import difflib
import json
import os
import sys
from pathlib import Path

from nanollm import config as configuration
from nanollm import mpi_launch

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# --format of export and import: "hf" picks GPT-2 or Llama by the model; gguf is llama.cpp's file.
MODEL_FORMATS = ("hf", "hf-gpt2", "hf-llama", "gguf")
GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")


class UsageError(Exception):
    """Bad command-line arguments (exit status 2), found by the parser named ``prog``."""

    def __init__(self, message, prog="nanollm"):
        super().__init__(message)
        self.prog = prog


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after every option's help; descriptions keep their line breaks."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (with a suggestion for a misspelt option)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)", self.prog)

    def unknown_options(self, extras):
        """The one-line error for arguments no option took, with the nearest option name."""
        unknown = extras[0].split("=")[0]
        options = [o for action in self._actions for o in action.option_strings]
        close = difflib.get_close_matches(unknown, options, n=1, cutoff=0.6) if unknown.startswith("-") else []
        what = "unknown option" if unknown.startswith("-") else "unexpected argument"
        self.error(f"{what} {unknown}" + (f"; did you mean {close[0]}?" if close else ""))


def _one_line(text):
    return " ".join(str(text).split())


# ------------------------------------------------------------------------- config keys as options

CONFIG_DEST = "config:"


def _shown(value):
    """A default as it would be typed on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, str) else str(value)


def add_config_options(parser):
    """Every DEFAULTS key as --key=VALUE (dashes or underscores), listed with its default."""
    group = parser.add_argument_group(
        "config keys", "any key of nanollm.config.DEFAULTS as --key=value; precedence: defaults < --preset < "
                       "--config file < --key=value")
    descriptions = configuration.describe_keys()
    aliases = {canonical: alias for alias, canonical in configuration.ALIASES.items()}
    for key, default in configuration.DEFAULTS.items():
        names = [f"--{key}"] + ([f"--{aliases[key]}"] if key in aliases else [])
        group.add_argument(*names, dest=CONFIG_DEST + key, metavar="VALUE", default=argparse.SUPPRESS,
                           help=f"{descriptions[key]} (default: {_shown(default)})".replace("%", "%%"))


def config_layers(args):
    """([config file dict, command-line dict], their names) from parsed arguments."""
    layers, sources = [], []
    if getattr(args, "config", None):
        layers.append(configuration.load_config_file(args.config))
        sources.append(f"config file {args.config}")
    given = {dest[len(CONFIG_DEST):]: text for dest, text in vars(args).items() if dest.startswith(CONFIG_DEST)}
    if given:
        layers.append({key: configuration.parse_value(key, text) for key, text in given.items()})
        sources.append("command line")
    return layers, sources


def _normalise_dashes(argv, own_options=()):
    """--learning-rate=3e-4 -> --learning_rate=3e-4 for config keys; other options, and a
    subcommand's own dashed options (prepare's --vocab-size), keep their dashes."""
    keys = set(configuration.DEFAULTS) | set(configuration.ALIASES)
    normalised = []
    for arg in argv:
        if arg.startswith("--") and "-" in arg[2:].split("=")[0]:
            name, sep, value = arg[2:].partition("=")
            if f"--{name}" not in own_options and name.replace("-", "_") in keys:
                arg = f"--{name.replace('-', '_')}{sep}{value}"
        normalised.append(arg)
    return normalised


def _own_options(parser, command):
    """The option strings the subcommand's parser defines itself."""
    subcommands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    chosen = subcommands.choices.get(command)
    return set(chosen._option_string_actions) if chosen is not None else set()


# ------------------------------------------------------------------------- subcommands


def cmd_train(args):
    from nanollm.launch import launch_training

    layers, sources = config_layers(args)
    results = launch_training(data=args.data, preset=args.preset, overrides=layers, sources=sources, out=args.out,
                              resume=args.resume, tokenizer=args.tokenizer, num_samples=args.num_samples,
                              command=" ".join(["nanollm", "train", *args.argv]))
    return EXIT_FAILED if results["diverged"] else 0


def _prompts(args):
    if args.prompt is not None and args.prompt_file is not None:
        raise UsageError("give --prompt or --prompt-file, not both", "nanollm sample")
    if args.prompt_file is not None:
        from nanollm.textfiles import read_text_file

        return read_text_file(args.prompt_file)
    return args.prompt


def cmd_sample(args):
    from nanollm.checkpoint import find_checkpoint, load_checkpoint
    from nanollm.generate import generate_text
    from nanollm.tokenizers import load_tokenizer

    prompt = _prompts(args)
    checkpoint = find_checkpoint(args.checkpoint)
    info = load_checkpoint(checkpoint)
    model, tokenizer = info["model"], info["tokenizer"]
    if args.tokenizer is not None:
        tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer is None:
        raise ValueError(f"{checkpoint} holds no tokenizer; pass --tokenizer with the tokenizer.json its data was "
                         "encoded with")
    if tokenizer.vocab_size != model.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but {checkpoint} has vocab_size="
                         f"{model.vocab_size}; pass the tokenizer the model was trained with")

    def samples(text):
        for number in range(args.num_samples):
            seed = None if args.seed is None else args.seed + number
            yield generate_text(model, tokenizer, text, args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, seed=seed)

    if not args.interactive:
        for number, text in enumerate(samples(prompt if prompt is not None else "\n")):
            if number:
                print("-" * 40)
            print(text, flush=True)
        return 0
    print(f"{checkpoint}: step {info['step']}; a prompt per line, an empty line or Ctrl-D to stop", file=sys.stderr)
    while True:
        print("prompt> ", end="", file=sys.stderr, flush=True)  # stderr: stdout carries only the samples
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            break
        for text in samples(line.replace("\\n", "\n")):
            print(text, flush=True)
            print("-" * 40, flush=True)
    return 0


def cmd_info(args):
    from nanollm.estimate import describe_model, format_description

    layers, sources = config_layers(args)
    source = Path(args.source) if args.source else None
    if source is not None and source.suffix in (".json", ".toml") and source.is_file():
        layers.insert(0, configuration.load_config_file(source))
        sources.insert(0, f"config file {source}")
        source = None
    if source is not None:
        from nanollm.checkpoint import find_checkpoint, read_checkpoint_metadata

        if args.preset:
            raise UsageError("give a checkpoint or --preset, not both", "nanollm info")
        checkpoint = find_checkpoint(source)
        metadata = read_checkpoint_metadata(checkpoint)
        saved = {k: v for k, v in (metadata.get("config") or {}).items() if k in configuration.DEFAULTS}
        cfg = configuration.resolve(saved, *layers, sources=[f"config saved in {checkpoint}", *sources])
        model_config, title = metadata["model_config"], f"{checkpoint} (step {metadata['step']})"
    else:
        preset = args.preset or "nano"
        cfg = configuration.resolve(*layers, preset=preset, sources=sources)
        from nanollm.model_config import TRAINING_KEYS

        model_config = {key: cfg[key] for key in TRAINING_KEYS}
        if model_config["vocab_size"] is None:
            model_config["vocab_size"] = INFO_VOCAB_SIZE
        title = f"preset {preset}" + (f" + {', '.join(sources)}" if sources else "")
    description = describe_model(model_config, batch_size=cfg["batch_size"], seq_len=cfg["max_seq_len"],
                                 optimizer=cfg["optimizer"], momentum=cfg["momentum"], dtype=cfg["dtype"],
                                 grad_accum_steps=cfg["grad_accum_steps"],
                                 activation_checkpointing=cfg["activation_checkpointing"],
                                 fused_attention=cfg["fused_attention"], batch_shards=_batch_shards(cfg, model_config))
    if args.json:
        print(json.dumps(description, indent=2))
    else:
        print(title)
        if source is None and cfg["vocab_size"] is None:
            print(f"(vocab_size not set: assuming {INFO_VOCAB_SIZE}; give --vocab_size=N)")
        print(format_description(description))
    return 0


def _batch_shards(cfg, model_config):
    """The shards a training step of this config splits its micro-batches into here (nanollm.shards):
    its threads on this machine's cores, 1 with dropout (also LoRA's) or on the GPU."""
    from nanollm import shards

    lora = model_config.get("lora") or ({"dropout": cfg["lora_dropout"]} if cfg["lora_rank"] else None)
    draws = shards.draws_random_numbers({**model_config, "lora": lora})
    threads, min_tokens = shards.planned(cfg["threads"], draws, on_gpu=cfg["backend"] == "cupy")
    return shards.shard_count(cfg["batch_size"], cfg["max_seq_len"], threads, min_tokens)


INFO_VOCAB_SIZE = 256  # what `info` assumes for a config without vocab_size (a byte-level vocabulary)


def cmd_prepare(args):
    from nanollm.data_quality import format_quality, token_row
    from nanollm.prepare import prepare

    if args.min_unique is not None and not 0.0 <= args.min_unique <= 1.0:
        raise UsageError(f"--min-unique must be a fraction in [0, 1], got {args.min_unique} (e.g. 0.5)",
                         "nanollm prepare")
    meta = prepare(args.input, args.out_dir, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                   min_frequency=args.min_frequency, val_fraction=args.val_fraction,
                   instruction_format=None if args.format == "text" else args.format, overwrite=args.overwrite,
                   min_unique=args.min_unique, report=lambda figures: print(format_quality(figures, args.input),
                                                                            flush=True))
    label, text = token_row(meta["quality"])
    print(f"  {label:<14} {text}")
    print(f"{args.out_dir}: {meta['train_tokens']:,} training and {meta['val_tokens']:,} validation tokens, "
          f"{meta['tokenizer']} tokenizer with {meta['vocab_size']:,} tokens")
    print(f"train on it with: nanollm train --data {args.out_dir}")
    return 0


def cmd_synth(args):
    from nanollm.corpus import KINDS, write_synthetic

    summary = write_synthetic(args.out, {kind: getattr(args, kind, None) for kind in KINDS}, seed=args.seed,
                              format=getattr(args, "format", None), overwrite=args.overwrite)
    print(f"wrote {summary['path']}: {summary['bytes']:,} bytes ({summary['bytes'] / 1024:,.1f} KiB), "
          f"{summary['format']}, seed {summary['seed']}")
    print(f"{summary['records']:,} records, {summary['unique']:,} unique ({summary['unique'] / summary['records']:.1%})")
    for kind, figures in summary["kinds"].items():
        print(f"  {kind:<13} {figures['records']:>8,} records, {figures['unique']:>8,} unique "
              f"({figures['unique'] / figures['records']:.1%})")
    print(f"train on it with: nanollm train --data {args.out}   (or tokenize it first: nanollm prepare {args.out} "
          f"prepared/{Path(args.out).stem})")
    return 0


def cmd_plot(args):
    from nanollm.metrics import METRICS_FILE, plot_metrics

    if args.out is not None and len(args.run_dirs) > 1:
        raise UsageError("--out names one file, so it takes one run folder; leave it out to write each folder's "
                         "curves.png", "nanollm plot")
    for run_dir in map(Path, args.run_dirs):
        metrics = run_dir / METRICS_FILE if run_dir.is_dir() else run_dir
        if not metrics.is_file():
            raise ValueError(f"{run_dir} holds no {METRICS_FILE}; give a run folder written by nanollm train "
                             "(or train_with_config with a checkpoint_dir)")
        out = Path(args.out) if args.out else metrics.parent / "curves.png"
        plot_metrics(metrics, out, title=str(run_dir))
        print(out)
    return 0


def _model_format(given, path):
    """--format as given, else gguf for a .gguf path and hf for anything else."""
    return given or ("gguf" if str(path).lower().endswith(".gguf") else "hf")


def cmd_export(args):
    from nanollm.checkpoint import find_checkpoint
    from nanollm.interop import export_gguf, export_hf

    checkpoint = find_checkpoint(args.checkpoint)
    if _model_format(args.format, args.out) == "gguf":
        written = [export_gguf(checkpoint, args.out, dtype=args.dtype, overwrite=args.overwrite)]
        hint = f"run it with llama.cpp: llama-cli -m {args.out} -p 'ROMEO:' -n 100"
    else:
        if args.dtype is not None:
            raise UsageError("--dtype applies to --format gguf only (a Hugging Face export keeps the checkpoint's "
                             "dtype)", "nanollm export")
        written = export_hf(checkpoint, args.out, overwrite=args.overwrite,
                            architecture={"hf-gpt2": "gpt2", "hf-llama": "llama"}.get(args.format))
        config = json.loads((Path(args.out) / "config.json").read_text(encoding="utf-8"))
        hint = f"load it with: transformers.{config['architectures'][0]}.from_pretrained({str(args.out)!r})"
    for path in written:
        print(path)
    print(hint)
    return 0


def cmd_import(args):
    from nanollm.interop import import_gguf, import_hf

    if _model_format(args.format, args.source) == "gguf":
        print(import_gguf(args.source, args.checkpoint, overwrite=args.overwrite))
    else:
        print(import_hf(args.source, args.checkpoint, overwrite=args.overwrite,
                        architecture={"hf-gpt2": "gpt2", "hf-llama": "llama"}.get(args.format)))
    return 0


def cmd_rl(args):
    from nanollm.posttrain.rl import run_rl

    layers, sources = config_layers(args)
    if args.sft_steps < 1:
        raise UsageError(f"--sft-steps must be >= 1, got {args.sft_steps}", "nanollm rl")
    out = Path(args.out)
    record = run_rl(args.algorithm, args.task, out, init_from=args.init_from, overrides=layers,
                    sft_steps=args.sft_steps, heldout=args.heldout)
    print(f"reward_before {record['reward_before']:.3f}  reward_after {record['reward_after']:.3f}  "
          f"({out / 'rl_results.json'})")
    return EXIT_FAILED if record["diverged"] else 0


def cmd_merge(args):
    from nanollm.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
    from nanollm.interop.files import check_out_files

    check_out_files((args.out,), args.overwrite)
    checkpoint = find_checkpoint(args.checkpoint)
    info = load_checkpoint(checkpoint)
    if info["model"].lora is None:
        raise ValueError(f"{checkpoint} has no LoRA adapters to merge; export or use it as it is")
    print(save_checkpoint(args.out, info["model"].merge_lora(), tokenizer=info["tokenizer"]))
    return 0


def cmd_experiments(args):
    from nanollm.experiments import run_experiments

    grids = args.grids.split(",") if args.grids else ([] if args.grid else ["capacity", "context", "depth", "width"])
    if args.tokens is not None and args.tokens < 1:
        raise UsageError(f"--tokens must be >= 1, got {args.tokens}", "nanollm experiments")
    if args.seconds is not None and not args.seconds > 0:
        raise UsageError(f"--seconds must be > 0, got {args.seconds}", "nanollm experiments")
    run_experiments(grids=grids, grid_file=args.grid, out_dir=args.out, data=args.data, quick=args.quick,
                    token_budget=args.tokens, seed=args.seed, seconds=args.seconds)
    return 0


def cmd_bench(args):
    from nanollm.tools.bench import check_arguments
    from nanollm.tools.bench import main as bench_main

    bench_main(args.argv, args=check_arguments(args, args.parser))
    return 0


# ------------------------------------------------------------------------- the parser


def build_parser():
    from nanollm.tools.bench import add_arguments as add_bench_arguments
    from nanollm.config import PRESETS

    examples = __doc__.split("\n\n")[1]
    parser = _Parser(prog="nanollm", description="Train GPT-style language models with a hand-written NumPy "
                                                 "autograd.\n\n" + examples,
                     epilog="nanollm with no subcommand runs `nanollm train`; see `nanollm SUBCOMMAND --help`")
    from nanollm import __version__

    parser.add_argument("--version", action="version", version=f"nanollm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)

    train = commands.add_parser("train", usage="nanollm train [options] [--key=value ...]", help="train a model (no arguments: the nano preset on the embedded corpus)",
                                description="Train a model. With no arguments: the nano preset on the embedded "
                                            "corpus, in runs/nano (about two minutes on 2 cores).")
    train.add_argument("--data", default=None, help="a text file, a .jsonl instruction file, or a folder written by "
                                                    "nanollm prepare (default: the embedded corpus)")
    train.add_argument("--preset", default=None, choices=list(PRESETS),
                       help="model and recipe to start from (default: nano for a new run)")
    train.add_argument("--config", default=None, help="a JSON or TOML file of config keys")
    train.add_argument("--out", default=None, help="run folder (default: runs/<preset>, or runs/<preset>-N if "
                                                   "taken; a resumed run: its checkpoint's folder)")
    train.add_argument("--resume", default=None, help="continue from this checkpoint or run folder")
    train.add_argument("--tokenizer", default="char",
                       help="for a text --data file: char, bpe (vocab_size tokens, default 4096) or a saved tokenizer: "
                            "nanollm's or Hugging Face's tokenizer.json, vocab.json (merges.txt beside it), a "
                            ".tiktoken file, or a folder holding one")
    train.add_argument("--num-samples", type=int, default=2, help="samples printed after training")
    add_config_options(train)
    train.set_defaults(parser=train, handler=cmd_train)

    sample = commands.add_parser("sample", aliases=["generate"], help="generate text from a checkpoint",
                                 description="Generate text from a checkpoint (or a run folder: its final checkpoint).")
    sample.add_argument("--checkpoint", required=True, help="a checkpoint_*.npz file or a run folder")
    sample.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    sample.add_argument("--prompt-file", default=None, help="read the prompt from this UTF-8 file")
    sample.add_argument("--num-samples", type=int, default=3, help="samples per prompt")
    sample.add_argument("--max-new-tokens", type=int, default=200, help="tokens generated per sample")
    sample.add_argument("--temperature", type=float, default=0.8, help="0 is greedy; higher is more random")
    sample.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    sample.add_argument("--top-p", type=float, default=None, help="sample within this much probability (nucleus)")
    sample.add_argument("--seed", type=int, default=None, help="sample i uses seed + i: the same seed, the same text")
    sample.add_argument("--interactive", action="store_true", help="read prompts from stdin, one per line")
    sample.add_argument("--tokenizer", default=None,
                        help="a saved tokenizer (tokenizer.json, vocab.json + merges.txt, .tiktoken, or a folder "
                             "holding one), for a checkpoint without one")
    sample.set_defaults(parser=sample, handler=cmd_sample)

    info = commands.add_parser("info", usage="nanollm info [SOURCE] [options] [--key=value ...]", help="sizes, FLOPs and training memory of a config or checkpoint",
                               description="Architecture, parameters per tensor and in total, FLOPs per token, "
                                           "and the memory a training step needs.")
    info.add_argument("source", nargs="?", default=None, help="a checkpoint, a run folder, or a .json/.toml config "
                                                              "(default: --preset)")
    info.add_argument("--preset", default=None, choices=list(PRESETS), help="a preset (default: nano)")
    info.add_argument("--config", default=None, help="a JSON or TOML file of config keys")
    info.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_config_options(info)
    info.set_defaults(parser=info, handler=cmd_info)

    prep = commands.add_parser("prepare", help="text or instruction JSONL -> token files for training",
                               description="Tokenize a text file (or Alpaca/ShareGPT JSONL) into train.bin, val.bin, "
                                           "tokenizer.json and meta.json. First prints the data's quality (unique "
                                           "lines, repeats, characters, validation lines also in training), which "
                                           "meta.json keeps under \"quality\".")
    prep.add_argument("input", help="a UTF-8 text file or a .jsonl instruction file")
    prep.add_argument("out_dir", help="folder to write")
    prep.add_argument("--tokenizer", default="char",
                      help="char, bpe, or a saved tokenizer to encode with (tokenizer.json, vocab.json + merges.txt, "
                           ".tiktoken, or a folder holding one)")
    prep.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    prep.add_argument("--min-frequency", type=int, default=2, help="BPE: stop merging pairs rarer than this")
    prep.add_argument("--val-fraction", type=float, default=0.1, help="share of the text held out for validation")
    prep.add_argument("--format", default="text", choices=["text", "auto", "alpaca", "sharegpt"],
                      help="text, or instruction data (a .jsonl input means auto)")
    prep.add_argument("--overwrite", action="store_true", help="replace prepared files already in out_dir")
    prep.add_argument("--min-unique", type=float, default=None, metavar="FRACTION",
                      help="refuse, before writing anything, data whose distinct non-empty lines (records for "
                           "JSONL) are fewer than this fraction of them, e.g. 0.5")
    prep.set_defaults(parser=prep, handler=cmd_prepare)

    synth = commands.add_parser(
        "synth", help="write a synthetic corpus: stories, facts, arithmetic, instructions ...",
        description="Write records of the embedded synthetic corpus (nanollm.corpus): text lines, or instruction "
                    "pairs as Alpaca or ShareGPT JSON Lines. The same arguments always write the same file. With no "
                    "counts: stories 2000, facts 200, sequences 300, arithmetic 1000, questions 200, instructions "
                    "1000 (text), or instructions 1000 (alpaca, sharegpt); with some counts, the kinds not given "
                    "are 0. Prints how many records are unique.")
    for kind, example in (("stories", "Ada went to the park with Ben. ..."), ("facts", "The sky is blue."),
                          ("sequences", "Monday, Tuesday, Wednesday."), ("arithmetic", "12 + 7 = 19"),
                          ("questions", "Q: What colour is the grass? A: ..."),
                          ("instructions", "Reverse the word. cat -> tac, in the chat template")):
        synth.add_argument(f"--{kind}", type=int, default=argparse.SUPPRESS, metavar="N",
                           help=f"{kind} records to write, e.g. {example!r} (default: as above when no count is "
                                "given, else 0)")
    synth.add_argument("--seed", type=int, default=0, help="the same seed and counts give the same file")
    synth.add_argument("--format", default=argparse.SUPPRESS, choices=["text", "alpaca", "sharegpt"],
                       help="text lines, or instruction pairs as JSON Lines (default: alpaca for a .jsonl --out, "
                            "else text)")
    synth.add_argument("--out", required=True, default=argparse.SUPPRESS,
                       help="the file to write: .txt for text, .jsonl for alpaca and sharegpt (required; default: none)")
    synth.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    synth.set_defaults(parser=synth, handler=cmd_synth)

    plot = commands.add_parser("plot", help="PNG curves of a run's metrics.jsonl",
                               description="Plot loss, validation loss, learning rate and gradient norm per step.")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (or metrics.jsonl files)")
    plot.add_argument("--out", default=None, help="PNG to write (default: curves.png in each run folder)")
    plot.set_defaults(parser=plot, handler=cmd_plot)

    export = commands.add_parser(
        "export", help="a checkpoint -> a Hugging Face folder or a GGUF file",
        description="hf: model.safetensors, config.json and tokenizer files that transformers' "
                    "GPT2LMHeadModel / LlamaForCausalLM.from_pretrained loads (by the model's architecture). "
                    "gguf: one file for llama.cpp, Ollama and LM Studio.")
    export.add_argument("--format", default=None, choices=MODEL_FORMATS,
                        help="the format to write (default: gguf for a .gguf path, else hf)")
    export.add_argument("--dtype", default=None, choices=GGUF_DTYPES,
                        help="gguf: the matrices' type (default f32; norms stay f32)")
    export.add_argument("checkpoint", help="a checkpoint file or run folder")
    export.add_argument("out", help="the folder (hf) or .gguf file to write")
    export.add_argument("--overwrite", action="store_true", help="replace model files already there")
    export.set_defaults(parser=export, handler=cmd_export)

    imp = commands.add_parser("import", help="a Hugging Face folder or a GGUF file -> a checkpoint",
                              description="Read a GPT-2 or Llama model (config.json + model.safetensors, or a "
                                          ".gguf file) with its tokenizer and write a nanollm checkpoint, "
                                          "ready for sample or train --init_from=CHECKPOINT.")
    imp.add_argument("--format", default=None, choices=MODEL_FORMATS,
                     help="the format to read (default: gguf for a .gguf path, else hf)")
    imp.add_argument("source", help="a folder with config.json and model.safetensors, or a .gguf file")
    imp.add_argument("checkpoint", help="the .npz checkpoint to write")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    imp.set_defaults(parser=imp, handler=cmd_import)

    rl = commands.add_parser(
        "rl", usage="nanollm rl --algorithm grpo|ppo|dpo --task TASK [--init-from RUN] --out DIR [--key=value ...]",
        help="post-train on a verifiable task (GRPO, PPO or DPO) and measure held-out accuracy before and after",
        description="Post-train a chat model on one of the embedded verifiable tasks and write rl_results.json "
                    "(held-out exact match before and after, steps, time, config). Without --init-from, a "
                    "supervised warm-up of the small preset on the task's examples comes first: rewards can "
                    "only sharpen what a model already does sometimes.")
    rl.add_argument("--algorithm", required=True, choices=("grpo", "ppo", "dpo"),
                    help="grpo (sampled groups), ppo (a value head) or dpo (preference pairs)")
    rl.add_argument("--task", required=True, choices=("addition", "reverse", "count_letters", "capitalise"),
                    help="the verifiable task (nanollm.posttrain.tasks)")
    rl.add_argument("--init-from", default=None, help="the chat model to start from (checkpoint or run folder)")
    rl.add_argument("--out", required=True, help="the run folder")
    rl.add_argument("--sft-steps", type=int, default=1500, help="steps of the supervised warm-up without --init-from")
    rl.add_argument("--heldout", type=int, default=200, help="held-out prompts scored before and after")
    add_config_options(rl)
    rl.set_defaults(parser=rl, handler=cmd_rl)

    merge = commands.add_parser("merge", help="fold a LoRA run's adapters into its weights",
                                description="W += alpha / rank * A @ B for every adapter, written as a plain "
                                            "checkpoint (step 0, no optimizer state) that export takes.")
    merge.add_argument("checkpoint", help="a LoRA run's checkpoint file or run folder")
    merge.add_argument("out", help="the .npz checkpoint to write")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    merge.set_defaults(parser=merge, handler=cmd_merge)

    experiments = commands.add_parser(
        "experiments", help="scaling experiments: grids of model sizes, depths, widths, contexts",
        description="Train each run of the chosen grids on the same token budget and held-out data; write "
                    "<grid>_scaling.json and plots. Finished runs are skipped, so an interrupted grid continues.")
    experiments.add_argument("--grids", default=None,
                             help="comma-separated built-in grids: capacity, context, depth, width (default: all "
                                  "four, or none when --grid is given)")
    experiments.add_argument("--grid", default=None, help="a JSON/TOML grid file: name, base {config}, vary "
                                                          "{key: [values]} or runs [...]")
    experiments.add_argument("--out", default="experiments/results", help="folder for the JSON results and plots")
    experiments.add_argument("--data", default=None, help="a UTF-8 text file, character-tokenized (default: the "
                                                          "embedded corpus)")
    experiments.add_argument("--quick", action="store_true", help="a small corpus and 300,000 tokens per run: all "
                                                                 "four grids in under three minutes on 2 cores")
    experiments.add_argument("--tokens", type=int, default=None, help="training tokens per run (default 2,000,000; "
                                                                      "300,000 with --quick)")
    experiments.add_argument("--seed", type=int, default=None, help="seed of every run (default: the config's)")
    experiments.add_argument("--seconds", type=float, default=None,
                             help="a time budget instead of a token budget: training seconds per run "
                                  "(max_train_seconds; default: the grid's own, if it sets one)")
    experiments.set_defaults(parser=experiments, handler=cmd_experiments)

    bench = commands.add_parser("bench", help="time the train step and kernels on this machine",
                                description="Time primitives and train steps per backend, against PyTorch if present.")
    add_bench_arguments(bench)
    bench.set_defaults(parser=bench, handler=cmd_bench)
    return parser


def _check_numbers(args):
    for name in ("num_samples", "max_new_tokens"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "num_samples" and args.command == "train" else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}", f"nanollm {args.command}")


def main(argv=None):
    """Run the command; returns the exit status (0 on success). Under `mpiexec -n N`, a failing
    rank ends every rank (MPI Abort) after printing its error, so none waits for it forever."""
    status = _run(argv)
    if status and mpi_launch.wants_mpi():
        _end_every_rank(status)
    return status


def _end_every_rank(status):
    from nanollm import distributed

    try:
        comm = distributed.world()
    except ImportError:  # mpi4py missing: every rank printed that and stops by itself
        return
    comm.abort("", status)  # the error line is printed already


def _rank_prefix():
    """'rank 1 of 2: ' in an MPI job (whose ranks' errors share one terminal), else ''."""
    rank, size, _ = mpi_launch.launched_ranks()
    return f"rank {rank} of {size}: " if size > 1 else ""


def _run(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["train", *argv]  # `nanollm` alone, or `nanollm --num_steps=100`, trains
    command = argv[0]
    try:
        parser = build_parser()
        args, extras = parser.parse_known_args(_normalise_dashes(argv, _own_options(parser, command)))
        if extras:
            args.parser.unknown_options(extras)
        command, args.argv = args.command, argv[1:]
        _check_numbers(args)
        return args.handler(args) or 0
    except UsageError as exc:
        print(f"{exc.prog}: error: {_rank_prefix()}{_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        hint = "; continue from the newest checkpoint with nanollm train --resume RUN_FOLDER" if command == "train" else ""
        print(f"nanollm {command}: {_rank_prefix()}interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError, ImportError) as exc:
        if os.environ.get("NANOLLM_DEBUG"):
            raise
        print(f"nanollm {command}: error: {_rank_prefix()}{_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a bug: still one line, with the way to the traceback
        if os.environ.get("NANOLLM_DEBUG"):
            raise
        print(f"nanollm {command}: internal error: {_rank_prefix()}{type(exc).__name__}: {_one_line(exc)} "
              "(run again with NANOLLM_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return EXIT_FAILED
