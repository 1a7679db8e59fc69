"""The example scripts run (in a few steps) and print what they measured."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"Tiny Shakespeare is not at {SHAKESPEARE}")
def test_shakespeare_char_example_trains_and_reports(tmp_path):
    result = subprocess.run([sys.executable, "examples/shakespeare_char.py", "--steps", "20", "--eval-steps", "2",
                             "--results", str(tmp_path / "results.json"), "--checkpoint-dir", str(tmp_path / "ck")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    assert "vocabulary 65, train 1,003,854 / val 111,540 tokens" in result.stdout
    assert "val loss" in result.stdout and "tokens/s" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["steps"] == 20 and results["final_val_loss"] < 4.2
    assert results["config"]["embedding_dim"] == 128 and results["config"]["lr_schedule"] == "cosine"
    assert (tmp_path / "ck" / "checkpoint_final.npz").is_file()


def test_shakespeare_char_example_without_the_data_says_where_to_get_it(tmp_path):
    result = subprocess.run([sys.executable, "examples/shakespeare_char.py", "--data", str(tmp_path / "none.txt")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "pass --data PATH/tinyshakespeare.txt" in result.stderr


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"Tiny Shakespeare is not at {SHAKESPEARE}")
def test_pytorch_side_by_side_example_trains_and_reports():
    pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0 to compare")
    result = subprocess.run([sys.executable, "examples/shakespeare_char_pytorch.py", "--steps", "20", "--eval-every",
                             "10", "--target", "4.3"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    loss = float(result.stdout.split("val loss ")[1].split()[0])
    assert 2.5 < loss < 4.2 and "tokens/s" in result.stdout
    assert "eval step 20 | train seconds" in result.stdout and "reached val 4.3 after" in result.stdout


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"Tiny Shakespeare is not at {SHAKESPEARE}")
def test_the_speedrun_command_trains_its_preset_to_a_time_budget(tmp_path):
    """TRAINING.md's speedrun command, its 10-minute budget cut to 4 seconds."""
    subprocess.run([sys.executable, "-m", "nanollm", "train", "--preset", "shakespeare-speedrun", "--data",
                    str(SHAKESPEARE), "--out", str(tmp_path / "run"), "--max_train_seconds=4", "--eval_interval=0",
                    "--num-samples", "0"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    cfg = results["config"]
    assert (cfg["architecture"], cfg["qk_norm"], cfg["optimizer"], cfg["eval_steps"]) == ("llama", True, "muon", None)
    assert results["stopped_because"].startswith("max_train_seconds=4 spent")
    assert 0 < results["steps"] < cfg["num_steps"] and results["final_val_loss"] < 4.2
