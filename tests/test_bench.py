"""`nanollm bench` runs end to end on a tiny config and reports every figure it promises.
(It prints speeds; nothing here asserts one.)"""

import json
import subprocess
import sys

import pytest


def run_bench(*args, tmp_path=None):
    return subprocess.run([sys.executable, "-m", "nanollm", "bench", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)


@pytest.mark.slow
def test_quick_bench_prints_and_saves_every_section(tmp_path):
    done = run_bench("--quick", "--no-torch", "--backends", "numpy,numba,auto", "--json", "bench.json",
                     tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    for heading in ("BLAS sgemm peak", "primitives, ms per call", "train step, tiny", "first train step",
                    "auto's choices"):
        assert heading in done.stdout
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["sgemm_peak_gflops"] > 0 and results["import_seconds"] > 0
    assert results["command"] == "nanollm bench --quick --no-torch --backends numpy,numba,auto --json bench.json"
    assert set(results["primitives"]["gelu_forward"]) == {"numpy", "numba"}
    step = results["train_step"]["tiny"]
    assert set(step) == {"numpy", "numba", "auto"}
    for figures in step.values():
        assert figures["tokens_per_second"] > 0 and 0 < figures["mfu"] < 1.5
    assert results["first_step_seconds"]["numba"]["cold"] > 0


def test_bench_help_lists_options_with_defaults():
    done = run_bench("--help")
    assert done.returncode == 0
    assert "--backends" in done.stdout and "(default: nanogpt-cpu,bigger)" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--configs", "huge"], "unknown config 'huge'"),
    (["--backends", "tpu"], "unknown backend 'tpu'"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--busy", "-1"], "--busy must be >= 0"),
])
def test_bad_bench_arguments_are_one_line_errors(args, message):
    done = run_bench(*args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("engine", ["nanollm", "nanollm-checkpointed", "nanollm-checkpointed-fused"])
def test_memory_bench_measures_each_engine_in_its_own_process_shape(monkeypatch, engine):
    """The GPT-2 124M memory bench's measurement, on a tiny model in this process (the real one takes minutes)."""
    from nanollm.tools import memory_bench

    monkeypatch.setattr(memory_bench, "GPT2_124M", dict(vocab_size=50, embedding_dim=16, num_layers=2, num_heads=2,
                                                       ffn_hidden_dim=32, max_seq_len=16))
    import nanollm

    built, real = [], nanollm.train_with_config  # the config each engine trains with
    monkeypatch.setattr(nanollm, "train_with_config", lambda model, tokens, cfg: built.append(cfg) or real(model, tokens, cfg))
    row = memory_bench.measure(engine, batch_size=2, steps=2)
    assert {key: built[0][key] for key in memory_bench.NANOLLM_ENGINES[engine]} == memory_bench.NANOLLM_ENGINES[engine]
    assert row["engine"] == engine and row["seq_len"] == 16 and row["steps"] == 2
    assert row["tokens_per_second"] == pytest.approx(32 / row["seconds_per_step"])
    assert row["peak_resident_bytes"] >= row["resident_before_model_bytes"] > 0


def test_bench_configs_gpt2_124m_runs_the_memory_bench_in_fresh_processes(monkeypatch):
    from nanollm.tools import bench, memory_bench

    args = bench.parse_args(["--configs", "gpt2-124m", "--no-torch"])
    assert args.memory_configs == ["gpt2-124m"] and args.configs == []
    calls = []
    monkeypatch.setattr(memory_bench, "main", calls.append)
    bench.main([], args=args)
    assert calls == [["--batch-sizes", "4", "8", "--engines", "nanollm", "nanollm-checkpointed",
                      "nanollm-checkpointed-fused"]]


def test_interleaved_rounds_alternate_fresh_processes_and_report_ratios_memory_and_steal(monkeypatch, capsys):
    """The rounds' bookkeeping, with the subprocess replaced: order rotates, ratios per round, medians."""
    from nanollm.tools import bench

    calls = []

    def fake(engine, config_name, steps, env, warmup=0):
        calls.append(engine)
        speed = {"auto": 120.0, "pytorch": 100.0, "pytorch-compile": 150.0}[engine] * (1 + len(calls) / 100)
        return {"tokens_per_second": speed, "ms_per_step": 1.0, "peak_resident_bytes": 2**20 * len(engine)}

    monkeypatch.setattr(bench, "run_step_subprocess", fake)
    engines = ["auto", "pytorch", "pytorch-compile"]
    measured = bench.interleaved_rounds("tiny", engines, rounds=3, steps=2)
    assert calls == ["auto", "pytorch", "pytorch-compile", "pytorch", "pytorch-compile", "auto",
                     "pytorch-compile", "auto", "pytorch"]
    assert measured["steal"] is None or 0 <= measured["steal"] <= 1
    report = bench.report_rounds("tiny", measured, engines)
    assert len(report["ratios"]["pytorch"]) == 3 and 1.15 < report["median_ratios"]["pytorch"] < 1.25
    assert report["peak_resident_bytes"]["pytorch-compile"] == 2**20 * len("pytorch-compile")
    out = capsys.readouterr().out
    assert "interleaved, tiny: 3 rounds of fresh processes" in out and "steal time" in out and "median" in out


@pytest.mark.slow
def test_bench_interleaves_nanollm_and_pytorch_in_fresh_processes(tmp_path):
    pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0 to compare")
    done = run_bench("--quick", "--backends", "auto", "--rounds", "2", "--json", "bench.json", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "interleaved, tiny: 2 rounds of fresh processes" in done.stdout
    interleaved = json.loads((tmp_path / "bench.json").read_text())["interleaved"]["tiny"]
    assert len(interleaved["ratios"]["pytorch"]) == 2 and interleaved["peak_resident_bytes"]["auto"] > 0


def test_busy_processes_spin_while_the_block_runs_and_are_gone_after():
    from nanollm.tools.bench import busy_processes

    with busy_processes(2) as spinners:
        assert len(spinners) == 2 and all(p.poll() is None for p in spinners)
    assert all(p.poll() is not None for p in spinners)
    with busy_processes(0) as none:
        assert none == []


def test_a_step_subprocess_unsets_variables_given_none_and_passes_the_threads(monkeypatch):
    """--native-blas unsets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in the rounds' processes;
    the thread table's setups pass their threads to the step."""
    import subprocess

    from nanollm.tools import bench

    seen = {}

    def fake_run(command, env, **_):
        seen.update(command=command, env=env)
        return subprocess.CompletedProcess(command, 0, stdout='{"tokens_per_second": 1.0}', stderr="")

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    assert bench.run_step_subprocess("auto", "tiny", 2, bench.NATIVE_BLAS, threads=1) == {"tokens_per_second": 1.0}
    assert "OPENBLAS_CORETYPE" not in seen["env"] and "OPENBLAS_L2_SIZE" not in seen["env"]
    assert seen["command"][-2:] == ["--step-threads", "1"]
    bench.run_step_subprocess("auto", "tiny", 2, {})
    assert seen["env"]["OPENBLAS_CORETYPE"] == "Haswell" and "--step-threads" not in seen["command"]
    assert all(threads in (None, 1) for _, threads in bench.THREAD_SETUPS.values())


def test_step_figures_name_the_blas_kernels_and_take_the_threads(monkeypatch):
    import nanollm.tools.bench as bench

    built, real = [], bench.train_with_config
    monkeypatch.setattr(bench, "train_with_config", lambda model, tokens, cfg: built.append(cfg) or real(model, tokens, cfg))
    figures = bench.step_figures("auto", "tiny", steps=1, warmup=0, threads=2)
    assert built[0]["threads"] == 2
    assert "threads" in figures["blas"] and figures["peak_resident_bytes"] > 0
