"""`nanollm bench` / `python -m nanollm.tools.bench`: how fast is a train step, and where does the time go.

Everything is measured in one run, side by side (the machine is shared and noisy):
  1. the BLAS sgemm peak (float32 np.matmul), the yardstick for GFLOP/s and MFU;
  2. every primitive on every backend at the shapes of the nanoGPT CPU config (ms per call);
  3. the train step (forward, backward, clipping, AdamW, batching: train_with_config's own
     loop) per backend and config: ms/step, tokens/s, achieved GFLOP/s, MFU, first-step time;
  4. the same model's train step in PyTorch eager, when PyTorch is installed, and the ratio;
  5. the same comparison interleaved (--rounds): nanollm's auto backend and PyTorch eager (and
     torch.compile with --compile) in fresh processes, alternating, round after round; each
     round's ratio, their median, each engine's peak resident memory, and the steal time and
     load the machine showed meanwhile. On a shared machine this is the figure to quote: one
     long run of each engine meets a different machine;
  6. with --threads: how Numba's threads and OpenBLAS's share the cores (subprocesses).
With --busy N, sections 5 and 6 run while N other processes spin on the CPU: a loaded machine
on purpose, to see which engine and which thread setup lose most when a core is taken.
Figures are medians over the timed steps. Nothing here asserts a speed; it prints what it saw.
"""

import argparse
import contextlib
import functools
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from nanollm import backends
from nanollm.backends import auto, numpy_ref
from nanollm.model_config import KEYS as MODEL_KEYS, ModelConfig, build_model
from nanollm.tools.memory_bench import peak_resident_bytes
from nanollm.train import train_with_config

# The two configs the kernels issue measures against PyTorch, plus a tiny one for --quick.
CONFIGS = {
    "nanogpt-cpu": {"vocab_size": 65, "embedding_dim": 128, "num_layers": 4, "num_heads": 4, "ffn_hidden_dim": 512,
                    "max_seq_len": 64, "batch_size": 12},
    "bigger": {"vocab_size": 65, "embedding_dim": 384, "num_layers": 6, "num_heads": 6, "ffn_hidden_dim": 1536,
               "max_seq_len": 256, "batch_size": 8},
    "tiny": {"vocab_size": 65, "embedding_dim": 32, "num_layers": 2, "num_heads": 2, "ffn_hidden_dim": 128,
             "max_seq_len": 16, "batch_size": 4},
}
# Configs too big for in-process timing: each engine runs in a fresh process (peak memory is per process).
MEMORY_CONFIGS = {"gpt2-124m": "GPT-2 124M at T=1024, B=4 and 8: nanollm as it stores, with activation checkpointing, "
                               "with checkpointing and fused attention; PyTorch eager (nanollm.tools.memory_bench)"}
PYTORCH_HINT = "PyTorch not installed (optional: pip install torch==2.13.0)"


def model_settings(cfg):
    """The model's settings in one of CONFIGS (ModelConfig's fields; batch_size is the run's)."""
    return {key: value for key, value in cfg.items() if key in MODEL_KEYS}


def bench_model(cfg):
    """nanollm's model for one of CONFIGS, with fixed weights."""
    return build_model(model_settings(cfg), seed=0)


# ----------------------------------------------------------------------------- timing helpers


def median_seconds(fn, repeat, warmup=1):
    """Median wall time of fn() over ``repeat`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sgemm_peak(repeat=5):
    """Best float32 GFLOP/s of np.matmul over a square and a transformer-shaped product."""
    rng = np.random.default_rng(0)
    best = 0.0
    for m, k, n in ((1024, 1024, 1024), (2048, 384, 1536)):
        a, b = rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)
        best = max(best, 2 * m * k * n / median_seconds(functools.partial(np.matmul, a, b), repeat) / 1e9)
    return best


# ----------------------------------------------------------------------------- primitives


def primitive_cases(cfg, dtype=np.float32):
    """primitive -> (args) at the shapes a train step of ``cfg`` uses (rows N = B * T)."""
    rng = np.random.default_rng(0)
    b, t, c, f, v = cfg["batch_size"], cfg["max_seq_len"], cfg["embedding_dim"], cfg["ffn_hidden_dim"], cfg["vocab_size"]
    h = cfg["num_heads"]
    n = b * t

    def normal(*shape):
        return rng.standard_normal(shape, dtype=np.float64).astype(dtype)

    x, w, bias = normal(b, t, c), normal(c), normal(c)
    _out, mean, rstd = numpy_ref.layernorm_forward(x, w, bias, 1e-5)
    scores = normal(b, h, t, t)
    probs = numpy_ref.causal_softmax_forward(scores, 0.125)
    logits, targets = normal(n, v), rng.integers(0, v, size=n)
    lse = numpy_ref.cross_entropy_forward(logits, targets, -100)[1]
    hidden = normal(b, t, f)
    weight, grad = normal(c, f), normal(c, f)
    rms_rstd = numpy_ref.rmsnorm_forward(x, w, 1e-5)[1]
    hd = c // h  # RoPE: queries (B, H, T, hd), Llama's tables (T, hd/2) at base 10000
    angles = np.outer(np.arange(t), 10000.0 ** (-np.arange(0, hd, 2) / hd))
    cos, sin = np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)
    gate, up = normal(n, f), normal(n, f)  # SwiGLU: the two (B*T, ffn) projections
    return {
        "matmul": (normal(n, c), normal(c, f)),
        "causal_softmax_forward": (scores, 0.125),
        "causal_softmax_backward": (normal(b, h, t, t), probs, 0.125),
        "layernorm_forward": (x, w, bias, 1e-5),
        "layernorm_backward": (normal(b, t, c), x, w, mean, rstd),
        "gelu_forward": (hidden,),
        "gelu_backward": (normal(b, t, f), hidden),
        "rmsnorm_forward": (x, w, 1e-5),
        "rmsnorm_backward": (normal(b, t, c), x, w, rms_rstd),
        "rope_forward": (normal(b, h, t, hd), cos, sin),
        "rope_backward": (normal(b, h, t, hd), cos, sin),
        "swiglu_forward": (gate, up),
        "swiglu_backward": (normal(n, f), gate, up),
        "cross_entropy_forward": (logits, targets, -100),
        "cross_entropy_backward": (normal(n), logits, targets, lse, -100),
        "embedding_backward": (normal(n, c), rng.integers(0, v, size=n), v),
        "adamw_step": (weight, grad, np.zeros_like(weight), np.zeros_like(weight), 1e-3, 0.9, 0.99, 1e-8, 0.1, 1),
        "sum_of_squares": (grad,),
    }


def time_primitives(names, cfg, repeat):
    """{primitive: {backend: ms per call}}, plus the Cython blocked matmul beside BLAS."""
    cases = primitive_cases(cfg)
    table = {}
    for primitive, args in cases.items():
        table[primitive] = {}
        for name in names:
            fn = getattr(backends.get(name), primitive)
            fresh = [a.copy() if isinstance(a, np.ndarray) else a for a in args]  # adamw_step writes in place
            table[primitive][name] = 1e3 * median_seconds(functools.partial(fn, *fresh), repeat)
    if "cython" in names:
        blocked = backends.get("cython").blocked_matmul
        table["blocked_matmul (reference)"] = {"cython": 1e3 * median_seconds(lambda: blocked(*cases["matmul"]), repeat)}
    return table


# ----------------------------------------------------------------------------- train steps


def train_step_timing(backend, cfg, steps, warmup=2, threads=None):
    """Time train_with_config's own loop: {ms_per_step, tokens_per_second, first_step_seconds}.
    threads: the run's ``threads`` (None: its default, batch shards on every core)."""
    model = bench_model(cfg)
    tokens = np.random.default_rng(0).integers(0, cfg["vocab_size"], size=50_000)
    run_cfg = {"num_steps": warmup + steps, "batch_size": cfg["batch_size"], "val_fraction": 0.0, "eval_interval": 0,
               "log_interval": 1, "backend": backend, "seed": 0, "threads": threads}
    with contextlib.redirect_stdout(io.StringIO()):
        results = train_with_config(model, tokens, run_cfg)
    per_step = [cfg["batch_size"] * cfg["max_seq_len"] / r["tokens_per_second"] for r in results["history"]]
    seconds = statistics.median(per_step[warmup:] or per_step)
    return {"ms_per_step": 1e3 * seconds, "tokens_per_second": cfg["batch_size"] * cfg["max_seq_len"] / seconds,
            "first_step_seconds": per_step[0]}


def torch_step_timing(cfg, steps, warmup=2, compiled=False):
    """The same model, AdamW and clipping in PyTorch eager (compiled: torch.compile's default
    mode, whose compilation falls in the warmup steps); None when PyTorch is not installed."""
    try:
        import torch

        from nanollm.tools.torch_reference import TorchGPT, adamw_for
    except ImportError:
        return None
    torch.manual_seed(0)
    model = TorchGPT(**model_settings(cfg))
    optimizer = adamw_for(model)
    forward = torch.compile(model) if compiled else model
    data = torch.randint(0, cfg["vocab_size"], (50_000,))
    b, t = cfg["batch_size"], cfg["max_seq_len"]

    def step():
        starts = torch.randint(len(data) - t - 1, (b,)).tolist()
        idx = torch.stack([data[s:s + t] for s in starts])
        targets = torch.stack([data[s + 1:s + t + 1] for s in starts])
        loss = forward(idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    seconds = median_seconds(step, steps, max(warmup, 1))
    return {"ms_per_step": 1e3 * seconds, "tokens_per_second": b * t / seconds, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- threads


# label -> (environment, the run's threads): batch shards (nanollm.shards) against one thread whose
# BLAS or prange kernels use the cores
THREAD_SETUPS = {
    "batch shards on every core, BLAS on 1 thread in each (default)": ({}, None),
    "one thread (threads=1): serial kernels, BLAS on every core": ({}, 1),
    "one thread, BLAS on 1 thread (OPENBLAS_NUM_THREADS=1)": ({"OPENBLAS_NUM_THREADS": "1"}, 1),
    "one thread, prange kernels (omp, spinning)": ({"NANOLLM_NUMBA_PARALLEL": "1"}, 1),
    "one thread, prange kernels (omp, passive wait)": ({"NANOLLM_NUMBA_PARALLEL": "1", "OMP_WAIT_POLICY": "passive"}, 1),
    "one thread, prange kernels (workqueue)": ({"NANOLLM_NUMBA_PARALLEL": "1", "NUMBA_THREADING_LAYER": "workqueue"}, 1),
}


TORCH_ENGINES = ("pytorch", "pytorch-compile")  # --step-only's names for PyTorch eager and torch.compile


def step_figures(engine, config_name, steps, warmup, threads=None):
    """One engine's train-step figures in this process, with its peak resident memory so far
    (threads: nanollm's, see train_step_timing)."""
    cfg = CONFIGS[config_name]
    if engine in TORCH_ENGINES:
        figures = torch_step_timing(cfg, steps, warmup, compiled=engine == "pytorch-compile")
        if figures is None:
            raise RuntimeError(PYTORCH_HINT)
    else:
        figures = train_step_timing(engine, cfg, steps, warmup=warmup, threads=threads)
    figures["peak_resident_bytes"] = peak_resident_bytes()
    figures["blas"] = blas_kernels()
    return figures


@contextlib.contextmanager
def busy_processes(count):
    """``count`` Python processes spinning while the block runs (a loaded machine, on purpose)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield spinners
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def cpu_times():
    """(steal, total) jiffies of all CPUs from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def interleaved_rounds(config_name, engines, rounds, steps, env=None):
    """Each engine's train step in a fresh process, alternating, ``rounds`` times (the order
    rotates each round so no engine always runs first). Returns {"rounds": [{engine: figures}],
    "steal": share of CPU time stolen meanwhile (None off Linux), "load": 1-minute load at the end}.
    env: environment variables for every engine's process (None unsets a variable)."""
    before, results = cpu_times(), []
    for number in range(rounds):
        order = engines[number % len(engines):] + engines[:number % len(engines)]
        results.append({engine: run_step_subprocess(engine, config_name, steps, env or {}, warmup=2)
                        for engine in order})
    after = cpu_times()
    steal = None
    if before and after and after[1] > before[1]:
        steal = (after[0] - before[0]) / (after[1] - before[1])
    return {"rounds": results, "steal": steal, "load": os.getloadavg()[0]}


def _beside(busy):
    return f", {busy} busy process{'es' if busy > 1 else ''} spinning beside it" if busy else ""


def report_rounds(config_name, measured, engines, busy=0):
    """Print the rounds: tokens/s per engine, nanollm / each PyTorch engine, medians, peak memory."""
    base, others = engines[0], engines[1:]
    rows, ratios = [], {e: [] for e in others}
    for number, figures in enumerate(measured["rounds"], 1):
        row = [str(number)]
        for engine in engines:
            fig = figures[engine]
            row.append("failed" if "error" in fig else f"{fig['tokens_per_second']:,.0f}")
        for engine in others:
            a, b = figures[base], figures[engine]
            ratio = a["tokens_per_second"] / b["tokens_per_second"] if "error" not in a and "error" not in b else None
            if ratio is not None:
                ratios[engine].append(ratio)
            row.append("" if ratio is None else f"{ratio:.2f}x")
        rows.append(row)
    medians = {e: statistics.median(r) if r else None for e, r in ratios.items()}
    memory = {}
    for engine in engines:
        peaks = [f[engine]["peak_resident_bytes"] for f in measured["rounds"] if "error" not in f[engine]]
        memory[engine] = statistics.median(peaks) if peaks else None
    rows.append(["median", *[""] * len(engines), *[f"{m:.2f}x" if m else "" for m in medians.values()]])
    rows.append(["peak MiB", *[f"{m / 2**20:,.0f}" if m else "" for m in memory.values()], *[""] * len(others)])
    steal = "unknown" if measured["steal"] is None else f"{100 * measured['steal']:.1f}%"
    print(f"interleaved, {config_name}{_beside(busy)}: {len(measured['rounds'])} rounds of fresh processes, tokens/s "
          f"(steal time {steal} of all CPU time meanwhile, load {measured['load']:.2f} at the end):")
    print_table(["round", *engines, *[f"{base} / {e}" for e in others]], rows)
    kernels = {f[base]["blas"] for f in measured["rounds"] if "blas" in f[base]}
    if kernels:
        print(f"  {base}'s BLAS in the rounds: {'; '.join(sorted(kernels))}")
    for engine in engines:
        errors = {f[engine]["error"] for f in measured["rounds"] if "error" in f[engine]}
        for error in errors:
            print(f"  {engine} failed: {error.splitlines()[-1] if error else 'no output'}")
    print()
    return {"ratios": ratios, "median_ratios": medians, "peak_resident_bytes": memory}


def run_step_subprocess(backend, config_name, steps, env, warmup=0, threads=None):
    """step_figures in a fresh interpreter under ``env`` (a variable set to None is unset):
    its figures, or {"error": ...}."""
    command = [sys.executable, "-m", "nanollm.tools.bench", "--step-only", config_name, "--backends", backend,
               "--steps", str(steps), "--warmup", str(warmup)] + ([] if threads is None else ["--step-threads", str(threads)])
    environment = {name: value for name, value in {**os.environ, **env}.items() if value is not None}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr.strip()[-300:]}


def first_step_seconds(backend, config_name):
    """The first train step of a fresh process: with an empty Numba cache (every kernel compiles)
    and with the cache the first run filled (kernels load from disk)."""
    with tempfile.TemporaryDirectory() as cache:
        cold = run_step_subprocess(backend, config_name, 1, {"NUMBA_CACHE_DIR": cache})
        warm = run_step_subprocess(backend, config_name, 1, {"NUMBA_CACHE_DIR": cache})
    return {"cold": cold.get("first_step_seconds"), "warm": warm.get("first_step_seconds")}


def thread_sharing(config_name, steps):
    """The numba backend's train step under each THREAD_SETUPS environment and threads, one
    subprocess each (thread pools are fixed when a process starts); prange kernels compile into a
    private cache."""
    rows = {}
    for label, (env, threads) in THREAD_SETUPS.items():
        with tempfile.TemporaryDirectory() as cache:
            private = {"NUMBA_CACHE_DIR": cache} if env.get("NANOLLM_NUMBA_PARALLEL") else {}
            rows[label] = run_step_subprocess("numba", config_name, steps, dict(env, **private), threads=threads)
    return rows


# ----------------------------------------------------------------------------- report


NATIVE_BLAS = {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}  # --native-blas: both unset


def blas_kernels():
    """What NumPy's BLAS runs here, e.g. "openblas 0.3.31 SkylakeX kernels, 2 threads" (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    found = [f"{info['internal_api']} {info['version']} {info.get('architecture') or ''} kernels, "
             f"{info['num_threads']} threads" for info in threadpool_info() if info["user_api"] == "blas"]
    return "; ".join(found) or "unknown"


def machine_description():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}"


def import_seconds():
    """Wall time of `import nanollm` in a fresh interpreter (nothing compiles at import)."""
    code = "import time; t = time.perf_counter(); import nanollm; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    return float(done.stdout) if done.returncode == 0 else None


def _seconds(value):
    return "failed" if value is None else f"{value:.2f}"


def print_table(header, rows):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths))))


def add_arguments(parser):
    """The options of `nanollm bench` (the CLI builds its subcommand parser with this)."""
    parser.add_argument("--backends", default=None,
                        help="comma-separated backends to time (default: every one that loads, and auto)")
    parser.add_argument("--configs", default="nanogpt-cpu,bigger",
                        help=f"comma-separated model configs: {', '.join([*CONFIGS, *MEMORY_CONFIGS])}")
    parser.add_argument("--steps", type=int, default=None, help="timed train steps per backend (default 20, 5 for bigger)")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per primitive")
    parser.add_argument("--quick", action="store_true", help="tiny config, few steps: a smoke test in seconds")
    parser.add_argument("--threads", action="store_true", help="also compare thread setups (subprocesses)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds of fresh processes, auto against PyTorch (0: none)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile to the interleaved rounds")
    parser.add_argument("--busy", type=int, default=0,
                        help="run the interleaved rounds and --threads with this many processes spinning beside them")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    parser.add_argument("--native-blas", action="store_true",
                        help="run the interleaved rounds without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, so OpenBLAS "
                             "picks its kernels for this CPU (PyTorch's MKL ignores both)")
    parser.add_argument("--step-only", default=None, help=argparse.SUPPRESS)  # run_step_subprocess's mode
    parser.add_argument("--step-threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    return parser


def check_arguments(args, parser):
    """Expand --quick and the comma lists; parser.error() on unknown configs or backends."""
    if args.quick:
        args.configs, args.repeat, args.steps, args.rounds = "tiny", 3, args.steps or 3, min(args.rounds, 2)
    names = args.configs.split(",")
    args.memory_configs = [name for name in names if name in MEMORY_CONFIGS]
    args.configs = [name for name in names if name not in MEMORY_CONFIGS]
    for name in args.configs + ([args.step_only] if args.step_only else []):
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}: choose from {', '.join([*CONFIGS, *MEMORY_CONFIGS])}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.rounds < 0:
        parser.error(f"--rounds must be >= 0, got {args.rounds}")
    if args.busy < 0:
        parser.error(f"--busy must be >= 0, got {args.busy}")
    if args.backends is None:
        args.backends = [name for name, reason in backends.available().items()  # the CPU's: the GPU has gpu_bench
                         if reason is None and name in backends.HOST_BACKENDS] + ["auto"]
    else:
        args.backends = args.backends.split(",")
        for name in args.backends:
            if args.step_only and name in TORCH_ENGINES:
                continue
            try:
                backends.get(name)
            except ValueError as exc:
                parser.error(str(exc))
    return args


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="nanollm bench", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return check_arguments(add_arguments(parser).parse_args(argv), parser)


def steps_for(args, config_name):
    return args.steps or (5 if config_name == "bigger" else 20)


def main(argv=None, args=None):
    """Run the benchmark; args, when given, are already parsed (by the nanollm command)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv) if args is None else args
    if args.step_only:
        print(json.dumps(step_figures(args.backends[0], args.step_only, steps_for(args, args.step_only),
                                      args.warmup, threads=args.step_threads)))
        return
    if args.memory_configs:
        from nanollm.tools import memory_bench

        engines = [e for e in memory_bench.ENGINES if not (args.no_torch and e == "torch")]
        memory_bench.main(["--batch-sizes", "4", "8", "--engines", *engines])
        if not args.configs:
            return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # auto's fallback note is printed in the table below instead
        picked = backends.get("auto").picked
    results = {"machine": machine_description(), "command": " ".join(["nanollm bench", *argv]),
               "import_seconds": import_seconds()}
    print(f"machine: {results['machine']}")
    results["blas"] = blas_kernels()
    forced = {name: os.environ[name] for name in NATIVE_BLAS if name in os.environ}
    print(f"NumPy's BLAS: {results['blas']}"
          + (f" ({', '.join(f'{k}={v}' for k, v in forced.items())} chooses them; --native-blas unsets them in the "
             "interleaved rounds)" if forced else ""))
    print(f"import nanollm: {results['import_seconds']:.2f} s (fresh interpreter; kernels compile on first use)")
    peak = results["sgemm_peak_gflops"] = sgemm_peak()
    print(f"BLAS sgemm peak (float32 np.matmul, this run): {peak:.0f} GFLOP/s\n")

    table_cfg = CONFIGS[args.configs[0]]
    names = [b for b in args.backends if b != "auto"]  # auto's primitives are theirs, marked *
    if names:  # (--backends auto alone: no table)
        results["primitives"] = table = time_primitives(names, table_cfg, args.repeat)
        print(f"primitives, ms per call, float32, shapes of {args.configs[0]} (auto's pick marked *):")
        rows = []
        for primitive, timings in table.items():
            rows.append([primitive] + [(f"{timings[b]:.3f}" + ("*" if picked.get(primitive) == b else " "))
                                       if b in timings else "" for b in names])
        print_table(["primitive"] + names, rows)
        print()

    results["train_step"] = {}
    for config_name in args.configs:
        cfg = CONFIGS[config_name]
        steps = steps_for(args, config_name)
        flops_per_token = ModelConfig.from_dict(model_settings(cfg)).flops_per_token()  # from the config: no weights
        figures = {name: train_step_timing(name, cfg, steps) for name in args.backends}
        torch_figures = None if args.no_torch else torch_step_timing(cfg, steps)
        if torch_figures is not None:
            figures["pytorch"] = torch_figures
        results["train_step"][config_name] = figures
        shape = (f"L{cfg['num_layers']} H{cfg['num_heads']} D{cfg['embedding_dim']} T{cfg['max_seq_len']} "
                 f"B{cfg['batch_size']} V{cfg['vocab_size']}")
        print(f"train step, {config_name} ({shape}), median of {steps} steps:")
        rows = []
        for name, fig in figures.items():
            gflops = flops_per_token * fig["tokens_per_second"] / 1e9
            fig.update(gflops=gflops, mfu=gflops / peak)
            ratio = (f"{fig['tokens_per_second'] / torch_figures['tokens_per_second']:.2f}x"
                     if torch_figures else "")
            rows.append([name, f"{fig['ms_per_step']:.1f}", f"{fig['tokens_per_second']:,.0f}", f"{gflops:.0f}",
                         f"{100 * fig['mfu']:.0f}%", ratio])
        print_table(["backend", "ms/step", "tokens/s", "GFLOP/s", "MFU", "vs torch"], rows)
        if torch_figures is None and not args.no_torch:
            print(f"({PYTORCH_HINT})")
        print()

    if args.rounds and not args.no_torch:
        engines = ["auto", "pytorch"] + (["pytorch-compile"] if args.compile else [])
        results["interleaved"] = {}
        for config_name in args.configs:
            with busy_processes(args.busy):
                measured = interleaved_rounds(config_name, engines, args.rounds, steps_for(args, config_name),
                                              env=NATIVE_BLAS if args.native_blas else None)
            results["interleaved"][config_name] = {**measured, **report_rounds(config_name, measured, engines,
                                                                               args.busy)}

    jitted = [b for b in args.backends if b in ("numba", "auto")]
    if jitted:
        config_name = args.configs[0]
        results["first_step_seconds"] = startup = {b: first_step_seconds(b, config_name) for b in jitted}
        print(f"first train step of a fresh process, {config_name} (Numba compiles each kernel once, then caches it):")
        print_table(["backend", "empty cache s", "warm cache s"],
                    [[b, _seconds(f["cold"]), _seconds(f["warm"])] for b, f in startup.items()])
        print()

    if args.threads:
        config_name = args.configs[0]
        with busy_processes(args.busy):
            results["threads"] = sharing = thread_sharing(config_name, steps_for(args, config_name))
        print(f"thread sharing, numba backend, {config_name}{_beside(args.busy)}:")
        print_table(["setup", "ms/step", "tokens/s"],
                    [[label, f"{fig['ms_per_step']:.1f}", f"{fig['tokens_per_second']:,.0f}"] if "error" not in fig
                     else [label, "failed", fig["error"]] for label, fig in sharing.items()])
        print()

    print("auto's choices:")
    for line in auto.describe(picked):
        print("  " + line)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
