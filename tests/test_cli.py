"""The `nanollm` command, driven in subprocesses as a user would: train on a tiny corpus, resume,
sample, info, plot, export/import; and the errors: one line on stderr, a non-zero status, no
traceback. Quick argument checks call nanollm.cli.main in-process."""

import argparse
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from nanollm import cli
from nanollm.checkpoint import read_checkpoint
from nanollm.config import DEFAULTS
from nanollm.corpus import synthetic_text

TINY_MODEL = ["--embedding_dim=16", "--num_layers=1", "--num_heads=2", "--ffn_hidden_dim=32", "--max_seq_len=16",
              "--batch_size=4", "--lr_schedule=constant", "--warmup_steps=0", "--log_interval=10",
              "--eval_interval=10", "--eval_steps=2", "--sample_length=20"]


def nanollm(*args, cwd, check=True, stdin=None):
    """Run `python -m nanollm ARGS` in cwd (so the installed package is imported)."""
    done = subprocess.run([sys.executable, "-m", "nanollm", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, input=stdin)
    if check and done.returncode != 0:
        pytest.fail(f"nanollm {' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def assert_one_line_error(done, *phrases):
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and "error" in lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_nanollm_alone_trains_the_nano_preset_on_the_embedded_corpus(tmp_path):
    """`nanollm` with no arguments is `nanollm train`: here shortened to 300 steps."""
    done = nanollm("--num_steps=300", "--log_interval=50", cwd=tmp_path)
    assert "preset nano" in done.stdout and "the embedded corpus" in done.stdout
    losses = [float(line.split("loss ")[1].split()[0]) for line in done.stdout.splitlines() if line.startswith("step")]
    assert losses[0] > 3.5 and losses[-1] < losses[0] - 1.5, done.stdout
    results = json.loads((tmp_path / "runs" / "nano" / "results.json").read_text())
    assert results["steps"] == 300 and results["config"]["embedding_dim"] == 32
    again = nanollm("--num_steps=1", "--num-samples", "0", cwd=tmp_path)  # a second run gets its own folder
    assert "run folder: runs/nano-2" in again.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run on a text file: 30 steps, checkpoints every 10."""
    folder = tmp_path_factory.mktemp("cli")
    (folder / "corpus.txt").write_text(synthetic_text(20_000, seed=3), encoding="utf-8")
    done = nanollm("train", "--data", "corpus.txt", "--out", "run", "--num_steps=30", "--checkpoint_interval=10",
                   "--num-samples", "1", *TINY_MODEL, cwd=folder)
    return folder, done


def test_train_on_a_text_file_writes_a_complete_run(trained):
    folder, done = trained
    run = folder / "run"
    for name in ("checkpoint_final.npz", "checkpoint_best.npz", "metrics.jsonl", "results.json", "run.json",
                 "data/train.bin", "data/val.bin", "data/tokenizer.json"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 30 and results["config"]["embedding_dim"] == 16
    assert results["final_val_loss"] is not None and results["config"]["checkpoint_dir"] == "run"
    assert json.loads((run / "run.json").read_text())["data"] == str((folder / "corpus.txt").resolve())
    assert "step 30/30" in done.stdout and "--- sample 1 ---" in done.stdout
    assert "nanollm sample --checkpoint run" in done.stdout


def test_resume_continues_the_run_and_equals_an_uninterrupted_one(trained):
    """--resume needs only the run folder: data and config come from run.json and the checkpoint;
    the resumed run ends where a run straight to 40 steps ends, parameter for parameter."""
    folder, _ = trained
    done = nanollm("train", "--resume", "run", "--num_steps=40", cwd=folder)
    assert "resuming" in done.stdout and "step 40/40" in done.stdout
    assert json.loads((folder / "run" / "results.json").read_text())["steps"] == 40
    steps = [json.loads(line)["step"] for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 40

    nanollm("train", "--data", "corpus.txt", "--out", "straight", "--num_steps=40", "--checkpoint_interval=10",
            "--num-samples", "0", *TINY_MODEL, cwd=folder)
    _, resumed = read_checkpoint(folder / "run" / "checkpoint_final.npz")
    _, straight = read_checkpoint(folder / "straight" / "checkpoint_final.npz")
    for name in (key for key in straight if key.startswith("params/")):
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)


def test_sample_with_the_same_seed_gives_the_same_text(trained):
    folder, _ = trained
    args = ["sample", "--checkpoint", "run/checkpoint_best.npz", "--prompt", "Q: What", "--max-new-tokens", "30",
            "--num-samples", "2", "--top-k", "5"]
    first = nanollm(*args, "--seed", "7", cwd=folder).stdout
    assert nanollm(*args, "--seed", "7", cwd=folder).stdout == first
    assert nanollm(*args, "--seed", "8", cwd=folder).stdout != first
    samples = first.split("-" * 40 + "\n")
    assert len(samples) == 2 and all(s.startswith("Q: What") for s in samples)
    (folder / "prompt.txt").write_text("Q: What", encoding="utf-8")
    from_file = nanollm("generate", "--checkpoint", "run/checkpoint_best.npz", "--prompt-file", "prompt.txt",
                        "--max-new-tokens", "30", "--num-samples", "2", "--top-k", "5", "--seed", "7", cwd=folder)
    assert from_file.stdout == first


def test_interactive_sampling_reads_prompts_until_end_of_input(trained):
    folder, _ = trained
    done = nanollm("sample", "--checkpoint", "run", "--interactive", "--num-samples", "1", "--max-new-tokens", "5",
                   "--temperature", "0", cwd=folder, stdin="Ada\nBen\n")
    outputs = [part.strip() for part in done.stdout.split("-" * 40) if part.strip()]
    assert [o[:3] for o in outputs] == ["Ada", "Ben"]
    assert done.stderr.count("prompt> ") == 3


def test_info_on_a_checkpoint_counts_every_parameter(trained):
    folder, _ = trained
    metadata, arrays = read_checkpoint(folder / "run" / "checkpoint_final.npz")
    total = sum(a.size for name, a in arrays.items() if name.startswith("params/"))
    text = nanollm("info", "run", cwd=folder).stdout
    assert f"{total:,}" in text and "blocks.0.attn.qkv.weight" in text
    figures = json.loads(nanollm("info", "run/checkpoint_final.npz", "--json", cwd=folder).stdout)
    assert figures["total_parameters"] == total
    assert figures["memory_bytes"]["parameters"] == 4 * total  # float32


def test_info_on_presets_and_config_files(tmp_path):
    gpt2 = json.loads(nanollm("info", "--preset", "gpt2-124m", "--json", cwd=tmp_path).stdout)
    assert gpt2["total_parameters"] == 124_439_808
    (tmp_path / "model.toml").write_text('embedding_dim = 48\nnum_heads = 6\nvocab_size = 100\n', encoding="utf-8")
    figures = json.loads(nanollm("info", "model.toml", "--json", "--num_layers=3", cwd=tmp_path).stdout)
    assert (figures["embedding_dim"], figures["num_heads"], figures["num_layers"]) == (48, 6, 3)
    assert figures["vocab_size"] == 100
    assert tomllib.loads((tmp_path / "model.toml").read_text())["embedding_dim"] == 48


def test_info_counts_the_batch_shards_this_machine_would_run(tmp_path, monkeypatch):
    """GPT-2 124M at B=4, T=1024: 2 shards on 2 threads (4,096 tokens), none with threads=1 or
    dropout, and none where a shard would keep fewer than 256 tokens."""
    def shards(*options):
        return json.loads(nanollm("info", "--preset", "gpt2-124m", "--json", *options, cwd=tmp_path).stdout)[
            "assumptions"]["batch_shards"]

    assert shards("--batch_size=4", "--threads=2") == 2
    assert shards("--batch_size=4", "--threads=1") == 1
    assert shards("--batch_size=4", "--threads=2", "--dropout=0.1") == 1
    assert shards("--batch_size=4", "--threads=2", "--lora_rank=4", "--lora_dropout=0.1") == 1
    assert shards("--batch_size=2", "--max_seq_len=64") == 1  # auto: 64 tokens a shard would lose


def test_plot_writes_a_png(trained):
    folder, _ = trained
    done = nanollm("plot", "run", cwd=folder)
    png = folder / "run" / "curves.png"
    assert done.stdout.strip() == "run/curves.png" or Path(done.stdout.strip()) == png.relative_to(folder)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    nanollm("plot", "run", "--out", "elsewhere.png", cwd=folder)
    assert (folder / "elsewhere.png").read_bytes()[:4] == b"\x89PNG"


def test_export_then_import_gives_identical_arrays(trained):
    pytest.importorskip("safetensors", reason="export needs the safetensors package")
    folder, _ = trained
    nanollm("export", "--format", "hf-gpt2", "run/checkpoint_final.npz", "hf", cwd=folder)
    assert {"model.safetensors", "config.json", "nanollm_tokenizer.json"} <= {p.name for p in (folder / "hf").iterdir()}
    nanollm("import", "--format", "hf-gpt2", "hf", "imported.npz", cwd=folder)
    original_meta, original = read_checkpoint(folder / "run" / "checkpoint_final.npz")
    imported_meta, imported = read_checkpoint(folder / "imported.npz")
    params = sorted(key for key in original if key.startswith("params/"))
    assert sorted(imported) == params
    for name in params:
        assert imported[name].dtype == original[name].dtype
        np.testing.assert_array_equal(imported[name], original[name], err_msg=name)
    assert imported_meta["tokenizer"] == original_meta["tokenizer"]
    assert imported_meta["model_config"] == original_meta["model_config"]
    again = nanollm("export", "run", "hf", cwd=folder, check=False)  # the folder is taken now
    assert_one_line_error(again, "overwrite")
    # the imported checkpoint samples like the original
    args = ["--prompt", "Ada", "--max-new-tokens", "20", "--seed", "1", "--num-samples", "1"]
    assert (nanollm("sample", "--checkpoint", "imported.npz", *args, cwd=folder).stdout
            == nanollm("sample", "--checkpoint", "run/checkpoint_final.npz", *args, cwd=folder).stdout)


def test_a_fresh_run_never_replaces_an_earlier_one(trained):
    folder, _ = trained
    before = (folder / "run" / "checkpoint_final.npz").read_bytes()
    done = nanollm("train", "--data", "corpus.txt", "--out", "run", "--num_steps=5", *TINY_MODEL, cwd=folder,
                   check=False)
    assert_one_line_error(done, "already holds a run", "overwrite=true")
    assert (folder / "run" / "checkpoint_final.npz").read_bytes() == before


def test_bad_arguments_give_one_line_errors_in_a_subprocess(tmp_path):
    assert_one_line_error(nanollm("train", "--lerning_rate=1", cwd=tmp_path, check=False),
                          "unknown option --lerning_rate", "did you mean --learning_rate")
    assert_one_line_error(nanollm("sample", "--checkpoint", "missing.npz", cwd=tmp_path, check=False),
                          "missing.npz", "does not exist")
    done = nanollm("frobnicate", cwd=tmp_path, check=False)
    assert_one_line_error(done, "frobnicate")
    assert done.returncode == cli.EXIT_USAGE


@pytest.mark.parametrize("argv, phrases, status", [
    (["train", "--learning_rate=fast"], ["learning_rate must be a number", "--learning_rate=3e-4"], 1),
    (["train", "--batch-size=0"], ["batch_size must be > 0"], 1),
    (["train", "--optimizer=adamm"], ["adamw"], 1),
    (["train", "--preset", "tiny"], ["invalid choice: 'tiny'"], 2),
    (["train", "--config", "missing.toml"], ["missing.toml", "does not exist"], 1),
    (["train", "--data", "missing.txt", "--num_steps=1"], ["missing.txt", "does not exist"], 1),
    (["train", "--resume", "nowhere"], ["nowhere", "does not exist"], 1),
    (["train", "--resume", "nowhere", "--preset", "small"], ["--preset applies to new runs"], 1),
    (["train", "stray"], ["unexpected argument stray"], 2),
    (["sample"], ["--checkpoint"], 2),
    (["sample", "--checkpoint", "x", "--prompt", "a", "--prompt-file", "b"], ["not both"], 2),
    (["sample", "--checkpoint", "x", "--num-samples", "0"], ["--num-samples must be >= 1"], 2),
    (["info", "--embedding_dim=30", "--num_heads=4"], ["not divisible by num_heads=4"], 1),
    (["info", "--num_heads=x"], ["num_heads must be an integer"], 1),
    (["plot", "nowhere"], ["holds no metrics.jsonl"], 1),
    (["plot", "a", "b", "--out", "c.png"], ["--out names one file"], 2),
    (["prepare", "missing.txt", "out"], ["missing.txt", "does not exist"], 1),
    (["prepare", "missing.txt", "out", "--min-unique", "1.5"], ["--min-unique must be a fraction in [0, 1]"], 2),
    (["synth"], ["--out"], 2),
    (["synth", "--stories", "2", "--format", "sharegpt", "--out", "s.jsonl"], ["instruction pairs only"], 1),
    (["export", "--format", "onnx", "a", "b"], ["invalid choice: 'onnx'"], 2),
    (["import", "nowhere", "x.npz"], ["nowhere"], 1),
    (["bench", "--configs", "huge"], ["unknown config 'huge'"], 2),
])
def test_bad_arguments_are_one_line_errors(argv, phrases, status, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == status
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nanollm {argv[0]}: error: "), captured.err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_config_files_json_and_toml_set_keys_and_bad_ones_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("a.json").write_text('{"embedding_dim": 48, "num_heads": 6, "vocab_size": 10}', encoding="utf-8")
    assert cli.main(["info", "--config", "a.json", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embedding_dim"] == 48
    Path("bad.toml").write_text("embedding_dim = \n", encoding="utf-8")
    assert cli.main(["info", "--config", "bad.toml"]) == 1
    assert "bad.toml" in capsys.readouterr().err
    Path("typo.json").write_text('{"learnin_rate": 1}', encoding="utf-8")
    assert cli.main(["info", "--config", "typo.json"]) == 1
    err = capsys.readouterr().err
    assert "typo.json" in err and "did you mean 'learning_rate'" in err


def _subcommand_parsers():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    return {name: sub for name, sub in commands.choices.items()}


@pytest.mark.parametrize("name", ["train", "sample", "info", "prepare", "synth", "plot", "export", "import", "bench"])
def test_help_lists_every_option_with_its_default(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([name, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    parser = _subcommand_parsers()[name]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help" or action.help == argparse.SUPPRESS:
            continue
        assert action.option_strings[0] in text
        assert "default:" in parser._get_formatter()._expand_help(action), action.option_strings[0]
    if name in ("train", "info"):
        assert all(f"--{key} VALUE" in text for key in DEFAULTS)


def test_a_subcommands_own_dashed_option_is_not_taken_for_a_config_key(tmp_path, monkeypatch, capsys):
    """prepare's --vocab-size must not become --vocab_size (a config key train understands)."""
    monkeypatch.chdir(tmp_path)
    Path("in.txt").write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    assert cli.main(["prepare", "in.txt", "out", "--tokenizer", "bpe", "--vocab-size", "270"]) == 0, \
        capsys.readouterr().err
    assert json.loads(Path("out/meta.json").read_text())["vocab_size"] <= 270


def test_init_from_fine_tunes_a_pretrained_run_on_instruction_data(trained):
    """nanollm train --data answers.jsonl --init-from RUN: the run's shape, weights and tokenizer,
    a new run folder, a fresh step count; the preset's shape does not apply."""
    folder, _ = trained
    lines = [line for line in synthetic_text(4_000, seed=3).splitlines() if line.strip()][:40]
    records = [{"instruction": "Continue the text.", "input": a, "output": b} for a, b in zip(lines, lines[1:])]
    (folder / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    done = nanollm("train", "--data", "answers.jsonl", "--init-from", "run", "--out", "tuned", "--num_steps=5",
                   "--learning_rate=1e-3", "--batch_size=4", "--eval_steps=2", "--num-samples", "0", cwd=folder)
    assert "weights from run/checkpoint_final.npz" in done.stdout and "width 16" in done.stdout, done.stdout
    results = json.loads((folder / "tuned" / "results.json").read_text())
    assert results["steps"] == 5 and results["config"]["init_from"] == "run/checkpoint_final.npz"
    assert json.loads((folder / "tuned" / "data" / "meta.json").read_text())["instruction_format"] == "alpaca"
    assert json.loads((folder / "tuned" / "data" / "tokenizer.json").read_text()) == \
        json.loads((folder / "run" / "data" / "tokenizer.json").read_text())
    clash = nanollm("train", "--data", "answers.jsonl", "--init-from", "run", "--embedding_dim=32", "--out", "x",
                    cwd=folder, check=False)
    assert_one_line_error(clash, "embedding_dim=32", "embedding_dim=16", "keeps its checkpoint's shape")


def test_train_and_sample_a_llama_model_from_the_command_line(trained):
    """--architecture=llama (with GQA and an untied head) trains, its checkpoint says so, and
    sample and info read it back."""
    folder, _ = trained
    nanollm("train", "--data", "corpus.txt", "--out", "llama", "--num_steps=5", "--architecture=llama",
            "--num_kv_heads=1", "--tie_embeddings=false", "--rope_base=500", "--num-samples", "0", *TINY_MODEL,
            cwd=folder)
    results = json.loads((folder / "llama" / "results.json").read_text())
    assert results["config"]["architecture"] == "llama" and results["config"]["tie_embeddings"] is False
    info = nanollm("info", "llama", cwd=folder).stdout
    assert "llama: 1 layer, 2 heads (1 key/value)" in info and "lm_head.weight" in info and "norm_f.weight" in info
    sample = nanollm("sample", "--checkpoint", "llama", "--max-new-tokens", "10", "--seed", "1", cwd=folder).stdout
    assert sample.strip()
