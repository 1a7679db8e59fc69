"""What data parallelism buys on this machine, and what it would on several: train-step
tokens/s on 1 and 2 MPI ranks side by side, the gradient Allreduce's share of a step, and a
paper estimate of the efficiency on more machines over Ethernet.

    python -m nanollm.tools.parallel_bench [--preset shakespeare-cpu] [--batch-size 12] [--steps 30]
                                           [--data ../shared/data/tinyshakespeare.txt] [--machines 8]
                                           [--gbits 10]

Four setups, one process group each, one after the other (never two at once):
    1 rank,  batch shards on every core        what one process does by default (nanollm.shards)
    1 rank,  one thread, BLAS on every core    threads=1: BLAS's threads alone
    1 rank,  one thread, 1 BLAS thread         the baseline of the parallel efficiency
    2 ranks, one thread each                   mpiexec -n 2 (needs the [mpi] extra)
Each rank trains --batch-size windows a step (so 2 ranks do twice the tokens of a step) with the
preset's recipe, after a few untimed steps (compilation). Efficiency = tokens/s of N ranks /
(N x tokens/s of 1 rank on 1 thread).

The estimate for M machines assumes each trains like this one (the 1-rank default step) and
sums gradients with a ring Allreduce, which sends 2 (M - 1) / M times the gradient bytes per
machine at the link's rate, plus 2 (M - 1) message latencies; this engine does not overlap the
exchange with the backward, so a step takes compute + exchange.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nanollm import distributed, mpi_launch
from nanollm.config import PRESETS, resolve
from nanollm.corpus import synthetic_text
from nanollm.model_config import build_training_model
from nanollm.textfiles import read_text_file
from nanollm.step import GradientBuffer
from nanollm.tokenizers import CharTokenizer
from nanollm.train import train_with_config

SETUPS = (  # (label, ranks, BLAS threads per rank or None for the library's default, the run's threads)
    ("1 rank, batch shards on every core", 1, None, None),
    ("1 rank, one thread, BLAS on every core", 1, None, 1),
    ("1 rank, one thread, 1 BLAS thread", 1, 1, 1),
    ("2 ranks, 1 BLAS thread each", 2, 1, 1),
)
WARMUP_STEPS = 3
LATENCY_SECONDS = 50e-6  # one message over TCP on Ethernet, a typical figure
LINK_EFFICIENCY = 0.9  # of the nominal rate that a bulk transfer reaches


# ----------------------------------------------------------------------------- one setup (a worker)


def worker(args):
    """Train on this process's ranks and (rank 0) print one JSON line of figures."""
    comm = distributed.world()
    text = read_text_file(args.data) if args.data else synthetic_text(300_000, seed=0)
    tokenizer = CharTokenizer().build_vocab(text=text)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
    cfg = resolve({"batch_size": args.batch_size, "log_interval": 0, "eval_interval": 0, "val_fraction": 0.0,
                   "param_check_interval": 0, "sample_interval": 0, "threads": args.threads}, preset=args.preset)
    model = build_training_model(cfg, tokenizer.vocab_size)
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the training's own log lines
        train_with_config(model, ids, dict(cfg, num_steps=WARMUP_STEPS), communicator=comm)
        results = train_with_config(model, ids, dict(cfg, num_steps=args.steps), communicator=comm)
    gradients = GradientBuffer(model.params)
    comm.barrier()
    start = time.perf_counter()
    for _ in range(10):  # the exchange alone, every rank ready: no waiting for a slower one
        comm.allreduce_sum(gradients.flat)
    allreduce_alone = (time.perf_counter() - start) / 10
    if comm.is_root:
        seconds = results["tokens_seen"] / results["tokens_per_second"]
        print(json.dumps({
            "ranks": comm.size, "tokens_per_second": results["tokens_per_second"],
            "step_ms": 1e3 * seconds / args.steps,
            "allreduce_ms": 1e3 * results["communication_seconds"] / args.steps,
            "allreduce_alone_ms": 1e3 * allreduce_alone if comm.size > 1 else 0.0,
            "gradient_bytes": gradients.gradient_bytes, "parameters": model.num_parameters()}))


# ----------------------------------------------------------------------------- the comparison


def run_setup(args, ranks, threads, shard_threads=None):
    """One setup's figures, from a fresh process group, or {"error": ...}. threads: BLAS's per
    rank (None: the library's default); shard_threads: the run's ``threads`` (None: auto)."""
    command = [sys.executable, "-m", "nanollm.tools.parallel_bench", "--worker", "--preset", args.preset,
               "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    if shard_threads is not None:
        command += ["--threads", str(shard_threads)]
    if args.data:
        command += ["--data", str(args.data)]
    env = {k: v for k, v in os.environ.items() if k != mpi_launch.SWITCH and k not in mpi_launch.THREAD_VARIABLES}
    if threads is not None:
        env.update({name: str(threads) for name in mpi_launch.THREAD_VARIABLES})
    if ranks > 1:
        mpiexec = mpi_launch.find_mpiexec()
        if mpiexec is None or importlib.util.find_spec("mpi4py") is None:
            return {"error": f"no MPI here: {distributed.INSTALL_HINT}"}
        command = [mpiexec, "-n", str(ranks), *command]
    with tempfile.TemporaryDirectory() as folder:  # checkpoints nowhere, but any stray file stays out of the cwd
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=folder, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip() or done.stdout.strip())[-400:]}
    return json.loads(lines[-1])


def ring_allreduce_seconds(gradient_bytes, machines, gbits):
    """A ring Allreduce of ``gradient_bytes`` over ``machines`` linked at ``gbits`` Gb/s."""
    if machines < 2:
        return 0.0
    rate = gbits * 1e9 / 8 * LINK_EFFICIENCY  # bytes/s
    return 2 * (machines - 1) / machines * gradient_bytes / rate + 2 * (machines - 1) * LATENCY_SECONDS


def estimate(step_seconds, gradient_bytes, machines, gbits):
    """{"exchange_ms", "efficiency"} of ``machines`` machines each taking ``step_seconds`` to compute a step."""
    exchange = ring_allreduce_seconds(gradient_bytes, machines, gbits)
    return {"exchange_ms": 1e3 * exchange, "efficiency": step_seconds / (step_seconds + exchange)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nanollm.tools.parallel_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="shakespeare-cpu", choices=sorted(PRESETS), help="model and recipe")
    parser.add_argument("--batch-size", type=int, help="windows per rank per step (default: the preset's)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setup (default 30)")
    parser.add_argument("--data", help="a text file to train on (default: the embedded corpus)")
    parser.add_argument("--machines", type=int, default=8, help="machines of the paper estimate (default 8)")
    parser.add_argument("--gbits", type=float, default=10.0, help="their link in Gb/s (default 10)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)  # a worker's run's threads
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = resolve({}, preset=args.preset)["batch_size"]
    if args.batch_size < 1 or args.steps < 1 or args.machines < 1 or args.gbits <= 0:
        parser.error("--batch-size, --steps and --machines must be >= 1 and --gbits > 0")
    if args.data and not Path(args.data).is_file():
        parser.error(f"--data {args.data!r} is not a file")
    if args.data:
        args.data = str(Path(args.data).resolve())  # the setups run in a scratch folder
    if args.worker:
        return worker(args)

    print(f"data parallel on this machine ({os.cpu_count()} cores): preset {args.preset}, {args.batch_size} "
          f"windows per rank per step, {args.steps} timed steps per setup")
    rows, figures = [], {}
    for label, ranks, threads, shard_threads in SETUPS:
        found = figures[label] = run_setup(args, ranks, threads, shard_threads)
        if "error" in found:
            rows.append([label, "failed: " + found["error"].splitlines()[-1][:80]])
            continue
        rows.append([label, f"{found['tokens_per_second']:,.0f}", f"{found['step_ms']:.1f}",
                     f"{found['allreduce_ms']:.2f}", f"{100 * found['allreduce_ms'] / found['step_ms']:.1f}%",
                     f"{found['allreduce_alone_ms']:.2f}"])
    header = ["setup", "tokens/s", "step ms", "allreduce ms", "share", "alone ms"]
    widths = [max(len(str(row[i])) for row in [header, *rows] if i < len(row)) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths))))

    alone, blas_alone, baseline, pair = (figures[label] for label, *_ in SETUPS)
    if "error" not in baseline and "error" not in pair:
        efficiency = pair["tokens_per_second"] / (2 * baseline["tokens_per_second"])
        figures["parallel_efficiency"] = efficiency
        print(f"parallel efficiency, 2 ranks against 1 rank on 1 thread: {efficiency:.0%}")
        for label, one in ((SETUPS[0][0], alone), (SETUPS[1][0], blas_alone)):
            if "error" not in one:
                print(f"2 ranks against {label}: {pair['tokens_per_second'] / one['tokens_per_second']:.2f}x the tokens/s")
    if "error" not in alone:
        gradient_bytes, step = alone["gradient_bytes"], alone["step_ms"] / 1e3
        paper = figures["estimate"] = estimate(step, gradient_bytes, args.machines, args.gbits)
        print(f"paper estimate, {args.machines} machines like this one over {args.gbits:g} Gb/s Ethernet: gradients "
              f"{gradient_bytes / 1e6:.1f} MB ({alone['parameters']:,} parameters, float32), ring Allreduce "
              f"{paper['exchange_ms']:.1f} ms against a {alone['step_ms']:.0f} ms step: efficiency "
              f"{paper['efficiency']:.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
