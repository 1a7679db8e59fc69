"""Data-parallel training with real MPI ranks: `mpiexec -n 2` on this machine.

Each test starts a job (tests/mpi_worker.py, the nanollm command) and reads what rank 0 wrote.
They need the [mpi] extra (mpi4py and an MPI launcher); without it they skip and say so.
"""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nanollm import mpi_launch

WORKER = Path(__file__).with_name("mpi_worker.py")
LAUNCHER = mpi_launch.find_mpiexec()
JOB_SECONDS = 240  # a hang would be caught here, not wait forever

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or LAUNCHER is None,
    reason="MPI is not installed: pip install '.[mpi]' (mpi4py and MPICH) to run the data-parallel tests")


def mpiexec(*command, ranks=2, cwd=None):
    """Run ``command`` on ``ranks`` MPI ranks; the finished process (a hang fails the test)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    env.pop("NANOLLM_MPI", None)
    return subprocess.run([LAUNCHER, "-n", str(ranks), *command], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=JOB_SECONDS, check=False)


def run_scenario(name, tmp_path):
    done = mpiexec(sys.executable, str(WORKER), name, str(tmp_path))
    result = tmp_path / f"{name}.json"
    return done, (json.loads(result.read_text()) if result.exists() else None)


def test_two_ranks_equal_one_rank_accumulating_the_same_windows(tmp_path):
    done, found = run_scenario("equivalence", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for architecture in ("gpt2", "llama", "llama_lora", "gpt2_shards"):
        case = found[architecture]
        assert case["ranks"] == 2
        assert case["steps"][0] == case["steps"][1] >= 10
        assert case["tokens_seen"][0] == case["tokens_seen"][1]
        assert case["relative_error"] < 1e-9, (architecture, case)
        assert case["loss"][0] == pytest.approx(case["loss"][1], rel=1e-9)
        assert case["communication_seconds"] > 0


def test_float16_on_two_ranks_equals_one_rank_accumulating_with_sgd_and_adamw(tmp_path):
    """The half-precision copy and the scaled loss gradient on every rank: 2 ranks in float16
    train exactly as 1 rank accumulating 2 micro-batches (each micro-batch's forward and backward
    are the same; the float32 buffer adds the two in the same order). SGD sees a gradient off by
    the loss scale that AdamW would normalise away."""
    done, found = run_scenario("half", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("gpt2", "llama", "llama_lora"):
        for optimizer in ("sgd", "adamw"):
            case = found[f"{name}_{optimizer}"]
            assert case["steps"][0] == case["steps"][1] == 40
            assert case["dtypes"] == ["float32"]  # the master weights
            assert case["relative_error"] < 1e-6, (name, optimizer, case)
            assert case["loss"][0] == pytest.approx(case["loss"][1], rel=1e-6)
            # it learns, in both setups (rank-2 adapters on a frozen model, more slowly: 3.15 -> 2.9 here)
            falls_to = 0.97 if name == "llama_lora" else 0.5
            assert case["loss"][1] < falls_to * case["first_loss"][1], (name, optimizer, case)


def test_a_resumed_two_rank_run_ends_bit_for_bit_where_the_whole_run_does(tmp_path):
    done, found = run_scenario("resume", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert found["bit_identical"]
    assert found["steps"] == [6, 6]
    assert found["tokens_seen"] == 6 * 2 * 4 * 16  # steps x ranks x batch x context
    assert found["metrics_steps"] == [1, 2, 3, 4, 5, 6]  # one writer: no record twice
    assert found["files"] == ["checkpoint_final.npz", "checkpoint_step_3.npz", "checkpoint_step_6.npz",
                              "metrics.jsonl"]


def test_a_time_budget_stops_every_rank_after_the_same_step(tmp_path):
    done, found = run_scenario("budget", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert found["steps"][0] == found["steps"][1] > 1
    assert found["stopped_because"].startswith("max_train_seconds=1 spent")


def test_a_rank_that_fails_ends_the_whole_job_with_its_error(tmp_path):
    done, found = run_scenario("crash", tmp_path)
    assert done.returncode != 0 and found is None
    assert "rank 1 of 2 failed: RuntimeError: injected failure in backward; ending all 2 ranks" in done.stderr


def test_ranks_whose_weights_drift_apart_stop_with_an_error(tmp_path):
    done, found = run_scenario("drift", tmp_path)
    assert done.returncode != 0 and found is None
    assert "ranks disagree after step 4: rank 1's wte differ from rank 0's" in done.stderr


def nanollm(*arguments, cwd):
    return mpiexec(str(Path(sys.executable).with_name("nanollm")), *arguments, cwd=cwd)


def test_the_nanollm_command_trains_and_resumes_on_two_ranks(tmp_path):
    done = nanollm("train", "--num_steps=30", "--log_interval=10", "--eval_interval=15", "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("done: step 30") == 1  # rank 0 alone speaks ...
    assert "data parallel: 2 ranks over MPI" in done.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["ranks"] == 2 and results["tokens_seen"] == 30 * 2 * 32 * 64  # ... for both ranks' windows

    done = nanollm("train", "--resume", "run", "--num_steps=40", "--log_interval=10", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("done: step 40") == 1


def test_a_bad_option_under_mpiexec_is_one_line_per_rank_and_no_hang(tmp_path):
    done = nanollm("train", "--num_stepz=3", cwd=tmp_path)
    assert done.returncode != 0
    assert "rank 0 of 2: unknown option --num_stepz; did you mean --num_steps?" in done.stderr


def test_the_experiment_runner_shares_a_grid_over_ranks(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('name = "tiny"\nbase = { embedding_dim = 16, ffn_hidden_dim = 32, num_heads = 2, max_seq_len = 32, '
                    'batch_size = 8 }\nvary = { num_layers = [1, 2, 3] }\n')
    done = nanollm("experiments", "--grid", str(grid), "--tokens", "8000", "--quick", "--out", "results", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads((tmp_path / "results" / "tiny_scaling.json").read_text())
    assert [r["experiment_name"] for r in records] == ["num_layers_1", "num_layers_2", "num_layers_3"]
    assert "[rank 0]   num_layers_1" in done.stdout and "[rank 1]   num_layers_2" in done.stdout
    assert not list((tmp_path / "results").glob("*.rank*.json"))  # merged and removed
    assert (tmp_path / "results" / "tiny_loss_curves.png").exists()


def test_the_parallel_benchmark_prints_every_setup_and_the_estimate(tmp_path):
    figures = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "-m", "nanollm.tools.parallel_bench", "--preset", "nano", "--steps", "3",
                           "--json", str(figures)], capture_output=True, text=True, timeout=JOB_SECONDS, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(figures.read_text())
    pair = found["2 ranks, 1 BLAS thread each"]
    assert "error" not in pair, found
    assert pair["ranks"] == 2 and pair["allreduce_ms"] > 0
    assert 0 < found["parallel_efficiency"] and 0 < found["estimate"]["efficiency"] < 1
    assert "parallel efficiency, 2 ranks against 1 rank on 1 thread:" in done.stdout


def test_training_md_mpiexec_commands_run_as_written(tmp_path):
    """TRAINING.md's data-parallel commands, verbatim and in order, in one scratch folder (as
    tests/test_docs.py runs the others), with this environment's mpiexec and nanollm."""
    from test_docs import INPUT_CHARACTERS, shell_commands, write_named_config_files

    from nanollm.corpus import synthetic_text

    (tmp_path / "input.txt").write_text(synthetic_text(INPUT_CHARACTERS, seed=0), encoding="utf-8")
    write_named_config_files("TRAINING.md", tmp_path)
    commands = [c for c in shell_commands("TRAINING.md") if c.startswith("mpiexec")]
    assert len(commands) >= 3
    for command in commands:
        words = shlex.split(command)
        assert words[:3] == ["mpiexec", "-n", "2"] and words[3] == "nanollm", command
        done = nanollm(*words[4:], cwd=tmp_path)
        assert done.returncode == 0, f"{command!r} failed:\n{done.stderr[-2000:]}"
    assert (tmp_path / "runs" / "dp" / "checkpoint_final.npz").exists()


def test_training_md_data_parallel_script_runs_on_two_ranks(tmp_path):
    """The script of TRAINING.md's data-parallel section, as its first line says to run it."""
    from test_docs import ROOT, code_blocks

    script = next(b for b in code_blocks("TRAINING.md", "python") if b.startswith("# train_dp.py"))
    (tmp_path / "train_dp.py").write_text(script, encoding="utf-8")
    (tmp_path / "data").symlink_to(ROOT / "data")
    done = mpiexec(sys.executable, "train_dp.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("2 rank(s): loss") == 1  # rank 0 alone prints
    assert (tmp_path / "checkpoints" / "dp" / "checkpoint_final.npz").exists()
