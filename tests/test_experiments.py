"""Scaling experiments: the quick grids end to end, records and plots, fairness (every run uses
its grid value; the same budget and validation data), resuming an interrupted grid, user grids."""

import json
import subprocess
import sys

import numpy as np
import pytest

from nanollm import cli
from nanollm.experiments import GRIDS, expand_runs, fit_power_law, load_tokens, run_grid

RECORD_KEYS = {"experiment_name", "num_parameters", "training_time_seconds", "tokens_per_second", "results", "config",
               "backend", "seed", "nanollm_version"}
RESULT_KEYS = {"final_train_loss", "final_val_loss", "final_val_perplexity", "best_val_loss"}


@pytest.fixture(scope="module")
def small_tokens():
    return load_tokens(quick=True)


@pytest.mark.slow
def test_quick_experiments_write_every_grid_with_plots(tmp_path):
    """`nanollm experiments --quick` (what the issue asks to finish in under three minutes)."""
    done = subprocess.run([sys.executable, "-m", "nanollm", "experiments", "--quick", "--out", "results"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for grid in ("capacity", "context", "depth", "width"):
        records = json.loads((tmp_path / "results" / f"{grid}_scaling.json").read_text())
        assert len(records) == (3 if grid == "capacity" else 4)
        for record in records:
            assert RECORD_KEYS <= set(record) and RESULT_KEYS <= set(record["results"])
            assert record["config"]["eval_steps"] is None  # scored on every validation window
            assert record["results"]["final_val_loss"] < 4.0  # learned something (ln 68 = 4.2 at the start)
        for plot in ("loss_vs_parameters", "loss_curves"):
            assert (tmp_path / "results" / f"{grid}_{plot}.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "results" / "context_loss_vs_max_seq_len.png").is_file()
    sizes = [r["num_parameters"] for r in json.loads((tmp_path / "results" / "capacity_scaling.json").read_text())]
    assert sizes == sorted(sizes) and sizes[-1] > 10 * sizes[0]
    assert "power law: val loss = " in done.stdout and "[depth 4/4]" in done.stdout


def test_the_context_grid_trains_each_run_at_its_own_length(tmp_path, small_tokens):
    """A published runner gave identical losses for every context length: it ignored the value."""
    records = run_grid(GRIDS["context"], tmp_path, token_budget=8192, tokens=small_tokens, echo=lambda line: None)
    lengths = [r["config"]["max_seq_len"] for r in records]
    assert lengths == [16, 32, 64, 128]
    assert [r["config"]["batch_size"] * r["config"]["max_seq_len"] for r in records] == [1024] * 4
    assert len({r["config"]["num_steps"] for r in records}) == 1  # the same budget, in the same steps
    c = records[0]["config"]["embedding_dim"]
    assert np.diff([r["num_parameters"] for r in records]).tolist() == [c * (b - a) for a, b in zip(lengths, lengths[1:])]
    losses = [r["results"]["final_val_loss"] for r in records]
    assert len(set(losses)) == 4, losses


def test_every_run_of_a_grid_gets_the_same_token_budget():
    for grid in GRIDS.values():
        for _, varied, cfg in expand_runs(grid, token_budget=100_000):
            assert cfg["num_steps"] == 100_000 // (cfg["batch_size"] * cfg["max_seq_len"])
            assert all(cfg[key] == value for key, value in varied.items())


def test_an_interrupted_grid_continues_where_it_stopped(tmp_path, small_tokens):
    grid = {"name": "lr", "base": GRIDS["depth"]["base"], "vary": {"learning_rate": [1e-3, 3e-3, 1e-2]}}

    def stop_after_first_run(line):
        if line.startswith("  learning_rate_0.001:"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, tmp_path, token_budget=4096, tokens=small_tokens, echo=stop_after_first_run)
    first = json.loads((tmp_path / "lr_scaling.json").read_text())
    assert [r["experiment_name"] for r in first] == ["learning_rate_0.001"]

    lines = []
    records = run_grid(grid, tmp_path, token_budget=4096, tokens=small_tokens, echo=lines.append)
    assert [r["experiment_name"] for r in records] == ["learning_rate_0.001", "learning_rate_0.003",
                                                       "learning_rate_0.01"]
    assert records[0] == first[0]  # kept, not trained again
    assert "1 already in" in lines[0] and not any(line.startswith("[lr 3/") for line in lines)
    again = []
    run_grid(grid, tmp_path, token_budget=4096, tokens=small_tokens, echo=again.append)
    assert "3 already in" in again[0] and len(again) == 1


def test_runs_an_interrupted_mpi_job_left_in_rank_files_count_as_done(tmp_path, small_tokens):
    grid = {"name": "lr", "base": GRIDS["depth"]["base"], "vary": {"learning_rate": [1e-3, 3e-3]}}
    finished = run_grid({**grid, "vary": {"learning_rate": [1e-3]}}, tmp_path, token_budget=4096, tokens=small_tokens,
                        echo=lambda line: None)
    (tmp_path / "lr_scaling.json").rename(tmp_path / "lr_scaling.rank1.json")  # as rank 1 left it

    lines = []
    records = run_grid(grid, tmp_path, token_budget=4096, tokens=small_tokens, echo=lines.append)
    assert "1 already in" in lines[0]
    assert records[0] == finished[0] and [r["experiment_name"] for r in records] == ["learning_rate_0.001",
                                                                                    "learning_rate_0.003"]
    assert json.loads((tmp_path / "lr_scaling.json").read_text()) == records
    assert not (tmp_path / "lr_scaling.rank1.json").exists()


def test_a_user_grid_file_runs_from_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "heads.toml").write_text('name = "heads"\n[base]\nembedding_dim = 32\nnum_layers = 1\n'
                                         'batch_size = 8\nmax_seq_len = 32\n[vary]\nnum_heads = [1, 4]\n',
                                         encoding="utf-8")
    assert cli.main(["experiments", "--grid", "heads.toml", "--tokens", "4096", "--quick", "--out", "out"]) == 0
    records = json.loads((tmp_path / "out" / "heads_scaling.json").read_text())
    assert [r["config"]["num_heads"] for r in records] == [1, 4]
    assert [r["experiment_name"] for r in records] == ["num_heads_1", "num_heads_4"]
    assert "heads_loss_vs_num_heads.png" in capsys.readouterr().out


@pytest.mark.parametrize("text, phrase", [
    ('name = "x"\n[vary]\nlearnin_rate = [1, 2]\n', "did you mean 'learning_rate'"),
    ('name = "x"\n', "either vary"),
    ('name = "x y"\n[vary]\nnum_layers = [1]\n', "name must be a word"),
    ('name = "x"\nruns = []\nsteps = 3\n', "unknown entries ['steps']"),
    ('name = "x"\n[vary]\nnum_layers = []\n', "non-empty list"),
    ('name = "x"\nseeds = [1, 1]\n[vary]\nnum_layers = [1]\n', "seeds must be a non-empty list of distinct integers"),
    ('name = "x"\nseeds = [1, 2]\n[base]\nseed = 3\n[vary]\nnum_layers = [1]\n', "clashes with seeds = [1, 2]"),
])
def test_bad_grid_files_are_one_line_errors(tmp_path, monkeypatch, capsys, text, phrase):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.toml").write_text(text, encoding="utf-8")
    assert cli.main(["experiments", "--grid", "grid.toml"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "grid.toml" in err and phrase in err, err


def test_unknown_grid_name_is_an_error(capsys):
    assert cli.main(["experiments", "--grids", "depth,size"]) == 1
    assert "unknown grid 'size'" in capsys.readouterr().err


def test_power_law_fit_recovers_its_constants():
    sizes = np.array([1e3, 1e4, 1e5, 1e6])
    a, b = fit_power_law(sizes, 7.5 * sizes ** -0.076)
    assert a == pytest.approx(7.5) and b == pytest.approx(-0.076)
    with pytest.raises(ValueError, match="two runs of different sizes"):
        fit_power_law([10, 10], [1.0, 2.0])


def test_the_experiments_script_is_the_command(tmp_path):
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "run_scaling_experiments.py"
    done = subprocess.run([sys.executable, str(script), "--grids", "depth", "--tokens", "2048", "--quick", "--out", "r"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(json.loads((tmp_path / "r" / "depth_scaling.json").read_text())) == 4
