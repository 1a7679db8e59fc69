"""Scaling experiments: train a grid of models on one budget and compare them, without code.

    run_grid(GRIDS["depth"], "experiments/results")          # -> depth_scaling.json + plots
    nanollm experiments --grids depth,width --quick

A grid is a base config plus one key (or a few) that varies. Four are built in:
    capacity   the nano, small and medium shapes (width / layers / ffn 32/2/64, 64/4/128, 128/6/256)
    context    max_seq_len 16, 32, 64, 128 (batch_size 64, 32, 16, 8: 1,024 tokens a step each)
    depth      num_layers 1, 2, 4, 6
    width      embedding_dim 16, 32, 64, 128 (ffn 2x the width, as nano)
and a user grid comes from a JSON/TOML file: {"name": ..., "base": {config keys}, "vary": {key: [values]}}
or "runs": [{"name": ..., key: value}, ...], and optionally "seeds": [1, 2] (every run once per seed).

Fair by construction: every run of a grid trains on the same token budget (num_steps = budget /
(batch_size * max_seq_len), so a longer context takes fewer steps, not more tokens) from the same
training tokens, and is scored on the same held-out tokens, every window of them (eval_steps=None).
A grid whose base sets max_train_seconds compares on a time budget instead (the speedrun's
ablation): each run keeps its num_steps (the schedule's scale, see nanollm.schedule), stops when
its training seconds are spent, and its validation curve is plotted against training seconds.
Each record keeps the resolved config, and the runner checks that the built model really has the
grid value (a context grid whose runs all trained at one length is an error, not a result).

Results are a JSON list per grid, rewritten atomically after every run; a rerun skips the runs
already there with the same config and data, so an interrupted grid continues where it stopped.

Under `mpiexec -n N nanollm experiments ...` the ranks share the grid: rank r trains runs r,
r + N, ... one at a time, each alone (no gradient exchange), and writes its records to
<name>_scaling.rank<r>.json as it goes; at the end rank 0 gathers every rank's records into the
grid's file and draws the plots. A rerun folds in the rank files an interrupted job left.
"""

import itertools
import json
import math
import time
from pathlib import Path

import numpy as np

from nanollm import __version__, backends, distributed
from nanollm.config import PRESETS, load_config_file, resolve
from nanollm.corpus import synthetic_text
from nanollm.model_config import build_training_model
from nanollm.textfiles import read_text_file, write_json_atomically
from nanollm.tokenizers import CharTokenizer
from nanollm.train import train_with_config

# The recipe every built-in grid starts from: nano's shape, one learning rate for every size.
BASE = dict(embedding_dim=32, num_layers=2, ffn_hidden_dim=64, num_heads=4, max_seq_len=64, batch_size=16,
            learning_rate=2e-3, min_learning_rate=2e-4, lr_schedule="cosine", warmup_steps=20,
            eval_interval=0, eval_steps=None, log_interval=0, val_fraction=0.0)


def _shape(preset):
    return {key: PRESETS[preset][key] for key in ("embedding_dim", "num_layers", "ffn_hidden_dim")}


GRIDS = {
    "capacity": {"name": "capacity", "base": BASE,
                 "runs": [{"name": preset, **_shape(preset)} for preset in ("nano", "small", "medium")]},
    # batch_size * max_seq_len stays 1,024 tokens: the same steps of the same size, only the context differs
    "context": {"name": "context", "base": BASE,
                "runs": [{"name": f"context_{t}", "max_seq_len": t, "batch_size": 1024 // t} for t in (16, 32, 64, 128)]},
    "depth": {"name": "depth", "base": BASE, "vary": {"num_layers": [1, 2, 4, 6]}},
    "width": {"name": "width", "base": BASE,
              "runs": [{"name": f"width_{c}", "embedding_dim": c, "ffn_hidden_dim": 2 * c} for c in (16, 32, 64, 128)]},
}
TOKEN_BUDGET = 2_000_000  # training tokens per run
QUICK_TOKEN_BUDGET = 300_000  # --quick: every built-in grid in under three minutes on 2 cores
CORPUS_CHARS, QUICK_CORPUS_CHARS = 1_000_000, 200_000
VAL_FRACTION = 0.1


# ------------------------------------------------------------------------------------- grids


def load_grid(path):
    """A user grid from a JSON or TOML file, checked: name, base (config keys) and vary
    ({key: [values]}, every combination) or runs ([{"name": ..., key: value}, ...]), and
    optionally seeds ([seed, ...]: every run trains once with each)."""
    grid = load_config_file(path)
    unknown = sorted(set(grid) - {"name", "base", "vary", "runs", "seeds"})
    if unknown:
        raise ValueError(f"grid file {str(path)!r}: unknown entries {unknown}; a grid has name, base, vary or runs, "
                         f"and seeds")
    if "seeds" in grid:
        seeds = grid["seeds"]
        if not (isinstance(seeds, list) and seeds and all(type(s) is int for s in seeds)
                and len(set(seeds)) == len(seeds)):
            raise ValueError(f"grid file {str(path)!r}: seeds must be a non-empty list of distinct integers, "
                             f"e.g. seeds = [1, 2]; got {seeds!r}")
        runs = grid["runs"] if isinstance(grid.get("runs"), list) else []
        if any(isinstance(run, dict) and "seed" in run for run in runs + [grid.get("base", {}), grid.get("vary", {})]):
            raise ValueError(f"grid file {str(path)!r}: a seed set in base, vary or a run clashes with "
                             f"seeds = {seeds}; keep one of them")
    if not isinstance(grid.get("name"), str) or not grid["name"].replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"grid file {str(path)!r}: name must be a word (letters, digits, - and _), "
                         f"got {grid.get('name')!r}")
    if ("vary" in grid) == ("runs" in grid):
        raise ValueError(f"grid file {str(path)!r}: give either vary = {{key = [values]}} or runs = [...], not "
                         f"{'both' if 'vary' in grid else 'neither'}")
    if "vary" in grid and not all(isinstance(v, list) and v for v in grid["vary"].values()):
        raise ValueError(f"grid file {str(path)!r}: every vary entry must be a non-empty list of values")
    grid.setdefault("base", {})
    expand_runs(grid, source=f"grid file {str(path)!r}")  # every run's config resolves, or the error names it
    return grid


def expand_runs(grid, token_budget=TOKEN_BUDGET, source=None):
    """[(run name, varied {key: value}, resolved config)] of a grid, each run given the token
    budget as num_steps = budget / (batch_size * max_seq_len); with the grid's seeds, each run
    once per seed (one after the other, so N MPI ranks with N seeds train a run's seeds together)."""
    source = source or f"grid {grid['name']!r}"
    if "vary" in grid:
        keys = list(grid["vary"])
        runs = []
        for values in itertools.product(*grid["vary"].values()):
            varied = dict(zip(keys, values))
            runs.append({"name": "_".join(f"{key}_{value}" for key, value in varied.items()), **varied})
    else:
        runs = grid["runs"]
    if "seeds" in grid:
        runs = [{**run, "seed": seed} for run in runs for seed in grid["seeds"]]
    expanded = []
    for run in runs:
        varied = {key: value for key, value in run.items() if key != "name"}
        cfg = resolve(grid.get("base", {}), varied, sources=[f"{source} base", f"{source} run {run['name']!r}"])
        if cfg["max_seq_len"] is None:
            cfg["max_seq_len"] = 64
        if cfg["max_train_seconds"] is None:  # a token budget; a time budget keeps the run's num_steps
            cfg["num_steps"] = max(1, token_budget // (cfg["batch_size"] * cfg["max_seq_len"]))
            cfg["log_interval"] = max(1, cfg["num_steps"] // 10)  # ten loss lines and curve points per run
        cfg["epochs"] = None
        expanded.append((str(run["name"]), varied, cfg))
    return expanded


# ------------------------------------------------------------------------------------- data


def load_tokens(data=None, quick=False):
    """(train ids, val ids, tokenizer, description): a character tokenizer over the text (the
    embedded corpus by default); the last VAL_FRACTION is the held-out set every run is scored on."""
    if data is None:
        text = synthetic_text(QUICK_CORPUS_CHARS if quick else CORPUS_CHARS, seed=0)
        description = f"the embedded corpus ({len(text):,} characters)"
    else:
        text = read_text_file(data)
        description = f"{data} ({len(text):,} characters)"
    tokenizer = CharTokenizer().build_vocab(text=text)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
    cut = int(len(ids) * (1 - VAL_FRACTION))
    return ids[:cut], ids[cut:], tokenizer, description


# ------------------------------------------------------------------------------------- running


def results_path(out_dir, grid_name):
    return Path(out_dir) / f"{grid_name}_scaling.json"


def rank_results_path(out_dir, grid_name, rank):
    """Where rank ``rank`` of a grid shared over MPI ranks keeps its records until they are merged."""
    return Path(out_dir) / f"{grid_name}_scaling.rank{rank}.json"


def rank_results_files(out_dir, grid_name):
    """The rank files of the grid now in out_dir (left by an unfinished MPI job, or this one's)."""
    return sorted(Path(out_dir).glob(f"{grid_name}_scaling.rank*.json"))


def read_grid_results(out_dir, grid_name):
    """The grid's records: its results file, plus those of rank files an interrupted MPI job left."""
    records = read_results(results_path(out_dir, grid_name))
    for path in rank_results_files(out_dir, grid_name):
        records = _merge(records, read_results(path))
    return records


def _record_key(record):
    """A run of a grid: its name and seed (one name may run with several seeds)."""
    return record["experiment_name"], record.get("seed")


def _merge(records, newer):
    """records with those of ``newer`` replacing any of the same name and seed."""
    keys = {_record_key(r) for r in newer}
    return [r for r in records if _record_key(r) not in keys] + list(newer)


def read_results(path):
    """The records already in a results file ([] when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a results file ({exc}); move it away to start the grid afresh") from None
    if not isinstance(records, list):
        raise ValueError(f"{path} does not hold a list of records; move it away to start the grid afresh")
    return records


def _comparable(cfg):
    """A config as JSON would give it back (tuples become lists), for 'is this run done?'."""
    return json.loads(json.dumps(cfg))


def _build_model(cfg, vocab_size, varied):
    model = build_training_model(cfg, vocab_size)
    for key, value in varied.items():  # the grid value must be the model's, not dropped on the way
        if key in model.config and model.config[key] != value:
            raise RuntimeError(f"run asked for {key}={value} but the model was built with {model.config[key]}")
    return model


def run_grid(grid, out_dir, data=None, token_budget=TOKEN_BUDGET, quick=False, seed=None, echo=print, tokens=None,
             communicator=None):
    """Train every run of ``grid`` not yet in out_dir/<name>_scaling.json; returns all records.

    tokens: (train ids, val ids, tokenizer, description) to reuse across grids (else load_tokens).
    communicator: MPI ranks that share the runs (default distributed.world()); every rank
    returns all records."""
    comm = communicator if communicator is not None else distributed.world()
    train_ids, val_ids, tokenizer, description = tokens or load_tokens(data, quick)
    path = results_path(out_dir, grid["name"])
    records = read_grid_results(out_dir, grid["name"])
    runs = expand_runs(grid, token_budget)
    if seed is not None:
        for _, _, cfg in runs:
            cfg["seed"] = seed
    done = {(r["experiment_name"], r.get("data"), json.dumps(r["config"], sort_keys=True)) for r in records}
    todo = [(name, varied, cfg) for name, varied, cfg in runs
            if (name, description, json.dumps(_comparable(cfg), sort_keys=True)) not in done]
    if comm.is_root:
        seconds = {cfg["max_train_seconds"] for _, _, cfg in runs} - {None}
        budget = (f"{', '.join(f'{s:g}' for s in sorted(seconds))} s of training" if seconds
                  else f"{token_budget:,} training tokens")
        echo(f"grid {grid['name']}: {len(runs)} runs, {budget} each, on {description}; "
             f"{len(runs) - len(todo)} already in {path}" + (f"; shared by {comm.size} ranks" if comm.size > 1 else ""))
    if comm.size > 1:  # rank r: runs r, r + N, ...; its lines say which rank speaks
        todo = todo[comm.rank::comm.size]
        echo = _prefixed(echo, f"[rank {comm.rank}] ")
    mine = []
    started = time.perf_counter()
    for number, (name, varied, cfg) in enumerate(todo, 1):
        left = ""
        if number > 1:
            per_run = (time.perf_counter() - started) / (number - 1)
            left = f", about {_duration(per_run * (len(todo) - number + 1))} left"
        echo(f"[{grid['name']} {number}/{len(todo)}] {name}: {', '.join(f'{k}={v}' for k, v in varied.items())}, "
             f"{cfg['num_steps']} steps{left}")
        model = _build_model(cfg, tokenizer.vocab_size, varied)
        results = train_with_config(model, train_ids, cfg, val_tokens=val_ids, communicator=distributed.SingleProcess())
        record = {
            "experiment_name": name, "grid": grid["name"], "varied": varied, "data": description,
            "num_parameters": model.num_parameters(),
            "training_time_seconds": results["training_time_seconds"],
            "tokens_per_second": results["tokens_per_second"],
            "tokens_seen": results["tokens_seen"],
            "results": {"final_train_loss": results["final_loss"], "final_val_loss": results["final_val_loss"],
                        "final_val_perplexity": results["final_val_perplexity"],
                        "best_val_loss": results["best_val_loss"]},
            "history": [{key: r[key] for key in ("step", "loss", "val_loss", "train_seconds") if key in r}
                        for r in results["history"]],
            "config": _comparable(results["config"]), "backend": backends.current_name(),
            "seed": cfg["seed"], "nanollm_version": __version__,
        }
        mine.append(record)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if comm.size == 1:
            records = _merge(records, [record])
            write_json_atomically(path, records, indent=2)
        else:
            write_json_atomically(rank_results_path(out_dir, grid["name"], comm.rank), mine, indent=2)
        echo(f"  {name}: {record['num_parameters']:,} parameters, val loss {results['final_val_loss']:.4f}, "
             f"{results['tokens_per_second']:,.0f} tokens/s, {results['training_time_seconds']:.1f} s")
    if comm.size > 1:
        for finished in comm.allgather(mine):  # every rank waits here for the slowest
            records = _merge(records, finished)
    records = _in_grid_order(records, [name for name, _, _ in runs])
    if comm.is_root:  # the ranks' records, and any an interrupted MPI job left, go into the grid's file
        leftovers = rank_results_files(out_dir, grid["name"])
        if comm.size > 1 or leftovers:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            write_json_atomically(path, records, indent=2)
            for leftover in leftovers:
                leftover.unlink()
    comm.barrier()
    return records


def _in_grid_order(records, order):
    return sorted(records, key=lambda r: (order.index(r["experiment_name"]) if r["experiment_name"] in order else 0,
                                          r.get("seed") or 0))


def _prefixed(echo, prefix):
    def echo_with_prefix(line):
        echo(prefix + line)
    return echo_with_prefix


def _duration(seconds):
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# ------------------------------------------------------------------------------------- analysis


def fit_power_law(num_parameters, losses):
    """(constant a, exponent b) of loss = a * N^b, least squares on log-log axes."""
    x, y = np.log(np.asarray(num_parameters, dtype=float)), np.log(np.asarray(losses, dtype=float))
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("a power law needs at least two runs of different sizes")
    exponent, log_constant = np.polyfit(x, y, 1)
    return float(math.exp(log_constant)), float(exponent)


def plot_grid(records, out_dir, grid_name):
    """PNG plots beside the JSON: val loss vs parameters (log-log, fitted power law), val loss vs
    the varied value (context length for the context grid), and every run's loss curve.
    Returns {"plots": [paths], "power_law": (a, b) or None}."""
    from matplotlib.figure import Figure  # not pyplot: a notebook's inline backend stays as it is

    out_dir = Path(out_dir)
    scored = [r for r in records if r["results"]["final_val_loss"] is not None]
    paths, power_law = [], None
    sizes = [r["num_parameters"] for r in scored]
    losses = [r["results"]["final_val_loss"] for r in scored]
    figure = Figure(figsize=(6, 4.5))
    axes = figure.subplots()
    axes.loglog(sizes, losses, "o")
    for r in scored:
        axes.annotate(r["experiment_name"], (r["num_parameters"], r["results"]["final_val_loss"]), fontsize=8)
    if len(set(sizes)) >= 2 and max(sizes) >= 2 * min(sizes):  # a fit over a narrower span says nothing
        power_law = fit_power_law(sizes, losses)
        grid_x = np.geomspace(min(sizes), max(sizes), 50)
        a, b = power_law
        axes.loglog(grid_x, a * grid_x ** b, "--", label=f"fit: {a:.3g} N^{b:.3f}")
        axes.legend()
    axes.set_xlabel("parameters N")
    axes.set_ylabel("validation loss (nats/token)")
    axes.set_title(f"{grid_name}: loss vs parameters")
    axes.grid(alpha=0.3, which="both")
    paths.append(_save(figure, out_dir / f"{grid_name}_loss_vs_parameters.png"))

    varied_keys = sorted({key for r in scored for key in r.get("varied", {})})
    key = "max_seq_len" if "max_seq_len" in varied_keys else varied_keys[0] if len(varied_keys) == 1 else None
    if key is not None and all(isinstance(r["varied"].get(key), (int, float)) for r in scored):
        figure = Figure(figsize=(6, 4.5))
        axes = figure.subplots()
        points = sorted((r["varied"][key], r["results"]["final_val_loss"]) for r in scored)
        axes.plot(*zip(*points), "o-")
        axes.set_xscale("log", base=2)
        axes.set_xlabel("context length (tokens)" if key == "max_seq_len" else key)
        axes.set_ylabel("validation loss (nats/token)")
        axes.set_title(f"{grid_name}: loss vs {key}")
        axes.grid(alpha=0.3)
        paths.append(_save(figure, out_dir / f"{grid_name}_loss_vs_{key}.png"))

    def tokens_and_loss(r):
        tokens_per_step = r["config"]["batch_size"] * r["config"]["max_seq_len"]
        return [(h["step"] * tokens_per_step, h["loss"]) for h in r["history"] if h["loss"] is not None]

    paths.append(_curves(records, tokens_and_loss, False, ("training tokens", "training loss (nats/token)"),
                         f"{grid_name}: loss curves", out_dir / f"{grid_name}_loss_curves.png"))
    timed = [r for r in records if any("val_loss" in h and "train_seconds" in h for h in r["history"])]
    if timed:  # a time-budget grid: validation loss against the seconds spent training
        paths.append(_curves(timed, lambda r: [(h["train_seconds"], h["val_loss"]) for h in r["history"]
                                               if "val_loss" in h],
                             True, ("training seconds", "validation loss (nats/token)"),
                             f"{grid_name}: validation loss vs training time",
                             out_dir / f"{grid_name}_val_loss_vs_time.png"))
    return {"plots": paths, "power_law": power_law}


def _curves(records, points_of, with_seed, axis_labels, title, path):
    """One line per record through points_of(record) [(x, y)], labelled by its name (and seed):
    one colour per name, and with_seed one line style per seed (solid, dashed, dotted, ...)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r["experiment_name"] for r in records))
    seeds = list(dict.fromkeys(r.get("seed") for r in records))
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    styles = ("-", "--", ":", "-.")
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for r in records:
        points = points_of(r)
        if points:
            name = f"{r['experiment_name']} (seed {r['seed']})" if with_seed else r["experiment_name"]
            axes.plot(*zip(*points), label=name, linewidth=1, color=palette(names.index(r["experiment_name"])),
                      linestyle=styles[seeds.index(r.get("seed")) % len(styles)] if with_seed else "-")
    axes.set_xlabel(axis_labels[0])
    axes.set_ylabel(axis_labels[1])
    axes.set_title(title)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def _save(figure, path):
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(temporary, dpi=100)
    temporary.replace(path)
    return path


def summary_table(records):
    """The grid as printed lines: name, parameters, val loss, tokens/s, seconds."""
    lines = [f"{'run':<22} {'parameters':>11} {'val loss':>9} {'tokens/s':>10} {'seconds':>8}"]
    for r in records:
        loss = r["results"]["final_val_loss"]
        lines.append(f"{r['experiment_name']:<22} {r['num_parameters']:>11,} "
                     f"{loss if loss is None else format(loss, '.4f'):>9} "
                     f"{r['tokens_per_second'] or 0:>10,.0f} {r['training_time_seconds']:>8.1f}")
    return "\n".join(lines)


def run_experiments(grids=("capacity", "context", "depth", "width"), grid_file=None, out_dir="experiments/results",
                    data=None, quick=False, token_budget=None, seed=None, echo=print, communicator=None, seconds=None):
    """Run the named built-in grids (and/or a grid file), write results and plots; returns
    {grid name: records}. Under MPI the ranks share each grid's runs; rank 0 plots and prints
    the tables. seconds: every run's max_train_seconds (a time budget; see the module docstring)."""
    comm = communicator if communicator is not None else distributed.world()
    chosen = []
    for name in grids:
        if name not in GRIDS:
            raise ValueError(f"unknown grid {name!r}: choose among {', '.join(GRIDS)} or give a grid file")
        chosen.append(GRIDS[name])
    if grid_file is not None:
        chosen.append(load_grid(grid_file))
    if not chosen:
        raise ValueError("no grid to run: name built-in grids or give a grid file")
    if seconds is not None:
        chosen = [{**grid, "base": {**grid.get("base", {}), "max_train_seconds": float(seconds)}} for grid in chosen]
    budget = token_budget or (QUICK_TOKEN_BUDGET if quick else TOKEN_BUDGET)
    with distributed.failing_together(comm):  # a rank's failed run ends the job, not a wait at the gather
        return _run_grids(chosen, out_dir, budget, load_tokens(data, quick), quick, seed, echo, comm)


def _run_grids(chosen, out_dir, budget, tokens, quick, seed, echo, comm):
    everything = {}
    for grid in chosen:
        records = run_grid(grid, out_dir, token_budget=budget, quick=quick, seed=seed, echo=echo, tokens=tokens,
                           communicator=comm)
        everything[grid["name"]] = records
        if not comm.is_root:
            continue
        figures = plot_grid(records, out_dir, grid["name"])
        echo(summary_table(records))
        if figures["power_law"] is not None:
            a, b = figures["power_law"]
            echo(f"power law: val loss = {a:.4g} * N^{b:.4f}")
        echo(f"results: {results_path(out_dir, grid['name'])}; plots: {', '.join(map(str, figures['plots']))}")
    return everything
