"""python -m nanollm.tools.gpu_bench: its CPU smoke form runs the whole benchmark (nanollm beside
PyTorch, every dtype) on a tiny model; on a machine without a GPU, asking for the GPU is a
one-line error. The GPU figures themselves come from running it on a GPU (BENCHMARKS.md)."""

import importlib.util
import json

import pytest

from nanollm import backends
from nanollm.tools import gpu_bench

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_the_cpu_smoke_form_times_both_sides_for_every_dtype(tmp_path, capsys):
    previous = backends.current_name()
    try:
        figures = gpu_bench.main(["--backend", "numpy", "--device", "cpu", "--config", "tiny", "--steps", "2",
                                  "--warmup", "1", "--dtypes", "float32,float16", "--json", str(tmp_path / "g.json")])
    finally:
        backends.use(previous)
    assert json.loads((tmp_path / "g.json").read_text()) == figures
    assert set(figures["results"]) == {"float32", "float16"}
    for row in figures["results"].values():
        assert row["nanollm"]["tokens_per_second"] > 0 and row["nanollm"]["final_loss"] > 0
        if HAS_TORCH:
            assert row["pytorch"]["tokens_per_second"] > 0
            assert row["ratio"] == pytest.approx(row["nanollm"]["tokens_per_second"] / row["pytorch"]["tokens_per_second"])
        else:
            assert row["pytorch"] is None and row["ratio"] is None
    printed = capsys.readouterr().out
    assert "nanollm / PyTorch" in printed and "float16" in printed


def test_without_a_gpu_the_cupy_backend_is_a_one_line_error(capsys):
    if backends.available()["cupy"] is None:
        pytest.skip("a GPU is here: the benchmark would run")
    with pytest.raises(SystemExit, match=r"nanollm.tools.gpu_bench: backend 'cupy' cannot load .*pip install"):
        gpu_bench.main(["--steps", "1"])


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_bench.main(["--dtypes", "float8"])
    assert "--dtypes takes float32, bfloat16, float16 (got float8)" in capsys.readouterr().err
