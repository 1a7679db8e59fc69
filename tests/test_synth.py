"""`nanollm synth` and nanollm.corpus.synthesize: counts per kind, the same bytes for the same
arguments, the formats, the uniqueness figure it prints, its refusals, and files that prepare
and train take as they are."""

import json
import re

import pytest
from test_cli import assert_one_line_error, nanollm

from nanollm.corpus import DEFAULT_COUNTS, KINDS, records_text, synthesize, write_synthetic
from nanollm.instruct import alpaca_conversation, read_instructions, render_text
from nanollm.prepare import load_prepared

FACT = re.compile(r"^(The \w+ is \w+\.|A \w+ says \w+\.|\w+ is \w+\.)\n$")
ARITHMETIC = re.compile(r"^(\d+) ([-+x]) (\d+) = (\d+)\n$")
TINY_MODEL = ["--embedding_dim=16", "--num_layers=1", "--num_heads=2", "--ffn_hidden_dim=32", "--max_seq_len=16",
              "--batch_size=4", "--log_interval=0", "--eval_interval=0", "--num-samples", "0"]


# ---------------------------------------------------------------- the Python API


def test_counts_give_that_many_records_of_each_kind():
    records = synthesize({"facts": 30, "arithmetic": 40}, seed=1)
    assert len(records) == 70 and all(line.endswith("\n") for line in records)
    assert sum(bool(FACT.match(line)) for line in records) == 30
    sums = [ARITHMETIC.match(line) for line in records if ARITHMETIC.match(line)]
    assert len(sums) == 40
    for match in sums:  # every sum is right: the rule a model can learn
        x, op, y, result = match.groups()
        assert {"+": int(x) + int(y), "-": int(x) - int(y), "x": int(x) * int(y)}[op] == int(result)
    assert len(synthesize({"stories": 0, "questions": 5})) == 5


def test_the_same_seed_gives_the_same_records_and_another_seed_others():
    counts = {kind: 20 for kind in KINDS}
    assert synthesize(counts, seed=3) == synthesize(counts, seed=3)
    assert synthesize(counts, seed=3) != synthesize(counts, seed=4)
    assert synthesize({"instructions": 20}, seed=3, format="sharegpt") == \
        synthesize({"instructions": 20}, seed=3, format="sharegpt")


def test_a_kinds_records_do_not_depend_on_the_other_counts():
    alone = synthesize({"stories": 15}, seed=2)
    mixed = synthesize({"stories": 15, "facts": 50, "arithmetic": 7}, seed=2)
    assert sorted(alone) == sorted(line for line in mixed if line in set(alone))


def test_text_instructions_are_the_alpaca_pairs_in_the_chat_template():
    alpaca = synthesize({"instructions": 25}, seed=5, format="alpaca")
    text = synthesize({"instructions": 25}, seed=5, format="text")
    assert sorted(text) == sorted(render_text(alpaca_conversation(r)) + "\n" for r in alpaca)
    sharegpt = synthesize({"instructions": 25}, seed=5, format="sharegpt")
    assert [r["conversations"][1]["value"] for r in sharegpt] == [r["output"] for r in alpaca]


def test_defaults_when_no_count_is_given():
    assert len(synthesize()) == sum(DEFAULT_COUNTS["text"].values())
    assert synthesize() == synthesize({}) == synthesize({"stories": None})
    records = synthesize(format="alpaca")
    assert len(records) == DEFAULT_COUNTS["alpaca"]["instructions"] and set(records[0]) == {"instruction", "input",
                                                                                               "output"}


@pytest.mark.parametrize("counts, format, message", [
    ({"poems": 3}, "text", "unknown kind 'poems'; the kinds are stories, facts"),
    ({"stories": -1}, "text", "--stories (the count of stories) must be a whole number >= 0, got -1"),
    ({"stories": 2.5}, "text", "must be a whole number"),
    ({"stories": 0}, "text", "every count is 0"),
    ({"stories": 3, "instructions": 4}, "alpaca", "--format alpaca holds instruction pairs only, so --stories 3"),
    ({"instructions": 4}, "markdown", "format must be one of text, alpaca, sharegpt"),
])
def test_bad_counts_and_formats_are_named(counts, format, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        synthesize(counts, format=format)


def test_write_synthetic_counts_unique_records_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "facts.txt"
    summary = write_synthetic(path, {"facts": 200, "stories": 10}, seed=0)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert summary["records"] == len(lines) == 210 and summary["bytes"] == path.stat().st_size
    assert summary["unique"] == len(set(lines)) and summary["kinds"]["facts"]["unique"] <= 23  # 23 facts exist
    assert summary["kinds"] == {"facts": {"records": 200, "unique": summary["kinds"]["facts"]["unique"]},
                                "stories": {"records": 10, "unique": 10}}
    with pytest.raises(FileExistsError, match="facts.txt already exists; choose another --out or pass --overwrite"):
        write_synthetic(path, {"facts": 1})
    assert len(path.read_text(encoding="utf-8").splitlines()) == 210
    write_synthetic(path, {"facts": 1}, overwrite=True)
    assert len(path.read_text(encoding="utf-8").splitlines()) == 1
    with pytest.raises(ValueError, match="ends in .jsonl, which train and prepare read as instruction JSON Lines"):
        write_synthetic(tmp_path / "x.jsonl", {"facts": 1}, format="text")
    with pytest.raises(ValueError, match="name the file x.jsonl"):
        write_synthetic(tmp_path / "x.txt", {"instructions": 1}, format="sharegpt")
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "x.txt").exists()


def test_jsonl_records_read_back_as_instructions(tmp_path):
    summary = write_synthetic(tmp_path / "i.jsonl", {"instructions": 40}, seed=9)  # alpaca by the suffix
    conversations, format = read_instructions(tmp_path / "i.jsonl")
    assert format == "alpaca" and len(conversations) == 40 == summary["records"]
    records = [json.loads(line) for line in (tmp_path / "i.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records == synthesize({"instructions": 40}, seed=9, format="alpaca")
    assert records_text(records, "alpaca") == (tmp_path / "i.jsonl").read_text(encoding="utf-8")


# ---------------------------------------------------------------- the command


def _figures(stdout):
    """(records, unique, percent) from the line "N records, U unique (x%)"."""
    match = re.search(r"^([\d,]+) records, ([\d,]+) unique \(([\d.]+)%\)$", stdout, flags=re.M)
    assert match, stdout
    records, unique, percent = match.groups()
    return int(records.replace(",", "")), int(unique.replace(",", "")), float(percent)


def test_synth_command_writes_the_same_bytes_for_the_same_arguments(tmp_path):
    args = ["--stories", "40", "--facts", "60", "--sequences", "5", "--arithmetic", "30", "--questions", "5",
            "--instructions", "10", "--seed", "7"]
    first = nanollm("synth", *args, "--out", "a.txt", cwd=tmp_path)
    nanollm("synth", *args, "--out", "b.txt", cwd=tmp_path)
    nanollm("synth", *args[:-1], "8", "--out", "c.txt", cwd=tmp_path)
    a = (tmp_path / "a.txt").read_bytes()
    assert a == (tmp_path / "b.txt").read_bytes() != (tmp_path / "c.txt").read_bytes()
    assert a.decode("utf-8") == records_text(synthesize({"stories": 40, "facts": 60, "sequences": 5, "arithmetic": 30,
                                                         "questions": 5, "instructions": 10}, seed=7))
    assert f"wrote a.txt: {len(a):,} bytes" in first.stdout
    records = synthesize({"stories": 40, "facts": 60, "sequences": 5, "arithmetic": 30, "questions": 5,
                          "instructions": 10}, seed=7)
    assert _figures(first.stdout) == (150, len(set(records)), round(100 * len(set(records)) / 150, 1))
    assert re.search(r"^  facts +60 records, +\d+ unique", first.stdout, flags=re.M), first.stdout


def test_synth_command_jsonl_uniqueness_is_that_of_the_lines(tmp_path):
    done = nanollm("synth", "--instructions", "120", "--format", "sharegpt", "--out", "chat.jsonl", cwd=tmp_path)
    lines = (tmp_path / "chat.jsonl").read_text(encoding="utf-8").splitlines()
    records, unique, _ = _figures(done.stdout)
    assert records == len(lines) == 120 and unique == len(set(lines)) < 120  # few distinct pairs: repeats are shown
    assert all(set(json.loads(line)) == {"conversations"} for line in lines)


def test_synth_command_refusals_are_one_line_and_write_nothing(tmp_path):
    nanollm("synth", "--facts", "3", "--out", "f.txt", cwd=tmp_path)
    before = (tmp_path / "f.txt").read_bytes()
    assert_one_line_error(nanollm("synth", "--facts", "9", "--out", "f.txt", cwd=tmp_path, check=False),
                          "f.txt already exists", "--overwrite")
    assert (tmp_path / "f.txt").read_bytes() == before
    nanollm("synth", "--facts", "9", "--out", "f.txt", "--overwrite", cwd=tmp_path)
    assert len((tmp_path / "f.txt").read_text(encoding="utf-8").splitlines()) == 9
    assert_one_line_error(nanollm("synth", "--stories", "5", "--instructions", "5", "--format", "alpaca", "--out",
                                  "s.jsonl", cwd=tmp_path, check=False),
                          "--format alpaca holds instruction pairs only", "--stories 5", "--format text")
    assert_one_line_error(nanollm("synth", "--facts", "-2", "--out", "n.txt", cwd=tmp_path, check=False),
                          "--facts", ">= 0, got -2")
    assert_one_line_error(nanollm("synth", "--facts", "2", cwd=tmp_path, check=False), "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_synth_output_prepares_and_trains_as_it_is(tmp_path):
    """A text file through prepare, and into train prepared or as it is; a JSONL file straight into train."""
    nanollm("synth", "--stories", "150", "--arithmetic", "150", "--instructions", "60", "--seed", "2", "--out",
            "corpus.txt", cwd=tmp_path)
    done = nanollm("prepare", "corpus.txt", "prepared", cwd=tmp_path)
    assert "data quality of corpus.txt" in done.stdout
    data = load_prepared(tmp_path / "prepared")
    text = (tmp_path / "corpus.txt").read_text(encoding="utf-8")
    assert data["tokenizer"].special_tokens == {"<|endoftext|>": data["tokenizer"].vocab_size - 1}  # the chat turns end
    assert data["meta"]["quality"]["characters"] == len(text)
    for data, run in (("prepared", "run"), ("corpus.txt", "direct")):  # the prepared folder, and the file itself
        trained = nanollm("train", "--data", data, "--out", run, "--num_steps=3", *TINY_MODEL, cwd=tmp_path)
        assert "step 3/3" in trained.stdout and (tmp_path / run / "checkpoint_final.npz").is_file()

    nanollm("synth", "--instructions", "80", "--out", "answers.jsonl", cwd=tmp_path)
    tuned = nanollm("train", "--data", "answers.jsonl", "--out", "sft", "--num_steps=3", *TINY_MODEL, cwd=tmp_path)
    assert "step 3/3" in tuned.stdout
    assert (tmp_path / "sft" / "data" / "train_mask.bin").is_file()  # read as instruction data: answers trained
