"""Token files, datasets and batches, prepare/load_prepared, and every bad input they meet."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm import GPT, CharTokenizer, train_with_config
from nanollm.corpus import synthetic_text
from nanollm.data import TokenDataset
from nanollm.ops.cross_entropy import IGNORE_INDEX
from nanollm.prepare import load_prepared, prepare
from nanollm.textfiles import iter_text_chunks, read_text_file
from nanollm.tokenfile import HEADER_BYTES, MASK_FORMAT, read_token_file, token_format, write_token_file

# ---------------------------------------------------------------- the .bin layout


def test_token_file_header_is_llm_c_layout_and_reads_as_memmap(tmp_path):
    ids = np.array([5, 0, 65535, 7], dtype=np.int64)
    path = write_token_file(tmp_path / "t.bin", ids, token_format(65536))
    raw = path.read_bytes()
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert list(header[:3]) == [20240520, 1, 4] and not header[3:].any()
    assert np.frombuffer(raw[HEADER_BYTES:], dtype="<u2").tolist() == ids.tolist()
    tokens = read_token_file(path)
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16 and tokens.tolist() == ids.tolist()


def test_large_vocabularies_use_uint32(tmp_path):
    assert token_format(65536) == (20240520, 1) and token_format(65537) == (20240801, 7)
    path = write_token_file(tmp_path / "t.bin", [70_000, 1], token_format(100_000))
    assert read_token_file(path).dtype == np.uint32 and read_token_file(path).tolist() == [70_000, 1]
    with pytest.raises(ValueError, match="value 70000 does not fit t16.bin's uint16"):
        write_token_file(tmp_path / "t16.bin", [70_000], token_format(100))
    assert not (tmp_path / "t16.bin").exists() and not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:100], "truncated: 100 bytes, shorter than the 1024-byte header"),
    (lambda raw: raw[:-2], r"truncated: the header counts 4 tokens, the file holds 3"),
    (lambda raw: raw + b"\0\0", "longer than its header says"),
    (lambda raw: b"\1\2\3\4" + raw[4:], "is not a token file: header magic 67305985"),
])
def test_damaged_token_files_are_clear_errors(tmp_path, damage, message):
    path = write_token_file(tmp_path / "t.bin", [1, 2, 3, 4], token_format(10))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=message):
        read_token_file(path)


def test_token_file_kinds_are_not_confused(tmp_path):
    mask = write_token_file(tmp_path / "m.bin", [0, 1, 1], MASK_FORMAT)
    tokens = write_token_file(tmp_path / "t.bin", [0, 1, 1], token_format(10))
    with pytest.raises(ValueError, match="is a loss-mask file where a token file was expected"):
        read_token_file(mask)
    with pytest.raises(ValueError, match="is a token file where a loss-mask file was expected"):
        read_token_file(tokens, expect_mask=True)
    with pytest.raises(ValueError, match="token file .*missing.bin' does not exist"):
        read_token_file(tmp_path / "missing.bin")


# ---------------------------------------------------------------- datasets and batches


@settings(max_examples=30, deadline=None)
@given(num_tokens=st.integers(20, 300), seq_len=st.integers(1, 16), batch_size=st.integers(1, 5), seed=st.integers(0, 99))
def test_random_batches_are_shifted_windows(num_tokens, seq_len, batch_size, seed):
    data = TokenDataset(np.arange(num_tokens) % 251)
    inputs, targets = data.random_batch(np.random.default_rng(seed), batch_size, seq_len)
    assert inputs.shape == targets.shape == (batch_size, seq_len) and inputs.dtype == np.int64
    assert (targets[:, :-1] == inputs[:, 1:]).all()
    assert ((targets[:, -1] - inputs[:, -1]) % 251 == 1).all()


def test_epoch_batches_cover_every_window_once_in_seeded_order():
    data = TokenDataset(np.arange(101))
    batches = list(data.epoch_batches(batch_size=3, seq_len=10, epoch=0, seed=5, drop_last=False))
    firsts = sorted(int(x) for inputs, _ in batches for x in inputs[:, 0])
    assert firsts == list(range(0, 100, 10)) and [len(b[0]) for b in batches] == [3, 3, 3, 1]
    again = list(data.epoch_batches(batch_size=3, seq_len=10, epoch=0, seed=5, drop_last=False))
    other_epoch = list(data.epoch_batches(batch_size=3, seq_len=10, epoch=1, seed=5, drop_last=False))
    assert all((a[0] == b[0]).all() for a, b in zip(batches, again))
    assert any((a[0] != b[0]).any() for a, b in zip(batches, other_epoch))
    assert len(list(data.epoch_batches(3, 10, drop_last=True))) == 3


def test_loss_mask_turns_targets_into_ignore_index():
    data = TokenDataset(np.arange(10), loss_mask=np.array([1, 1, 0, 0, 1, 1, 1, 0, 1, 1], dtype=np.uint8))
    inputs, targets = data.windows([0, 3], 4)
    assert inputs.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6]]
    assert targets.tolist() == [[1, IGNORE_INDEX, IGNORE_INDEX, 4], [4, 5, 6, IGNORE_INDEX]]
    with pytest.raises(ValueError, match="loss_mask has shape"):
        TokenDataset(np.arange(10), loss_mask=np.ones(9))


def test_bad_ids_are_named():
    with pytest.raises(ValueError, match="must be a list of integer token ids"):
        TokenDataset(["a", "b"])
    with pytest.raises(ValueError, match="holds token id 12 outside the model's vocabulary \\[0, 10\\)"):
        TokenDataset([1, 12, 3]).check_vocab(10)
    with pytest.raises(ValueError, match="holds token id -1 outside"):
        TokenDataset(np.array([1, -1])).check_vocab(10)


# ---------------------------------------------------------------- text files


@pytest.mark.parametrize("content, message", [
    (b"", "is empty; give a file with some text in it"),
    (b"abc\ndef\0ghi", r"looks like a binary file, not text: a NUL byte at byte offset 7 \(line 2, column 4\)"),
    (b"ok\nline two\ncaf\xe9\n", r"is not UTF-8 text: byte 0xe9 at byte offset 15 \(line 3, column 4\)"),
])
def test_bad_text_files_say_what_and_where(tmp_path, content, message):
    path = tmp_path / "input.txt"
    path.write_bytes(content)
    for read in (read_text_file, lambda p: list(iter_text_chunks(p, chunk_bytes=4))):
        with pytest.raises(ValueError, match=message):
            read(path)
    with pytest.raises(ValueError, match="input.txt"):
        prepare(path, tmp_path / "out")
    assert not (tmp_path / "out" / "train.bin").exists()


def test_missing_text_file_and_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_text_file(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="is a folder, not a text file"):
        read_text_file(tmp_path)
    with pytest.raises(ValueError, match="input file .*nope.txt' does not exist"):
        prepare(tmp_path / "nope.txt", tmp_path / "out")


@settings(max_examples=25, deadline=None)
@given(text=st.text(min_size=1, max_size=300), chunk=st.integers(1, 40))
def test_text_chunks_join_to_the_file_and_end_at_line_ends(tmp_path_factory, text, chunk):
    path = tmp_path_factory.mktemp("chunks") / "t.txt"
    path.write_bytes(text.replace("\0", "").encode("utf-8", errors="surrogatepass") or b"x")
    try:
        whole = read_text_file(path)
    except ValueError:
        return  # lone surrogates are not UTF-8: both readers refuse them (checked above)
    pieces = list(iter_text_chunks(path, chunk_bytes=chunk))
    assert "".join(pieces) == whole and all(piece.endswith("\n") for piece in pieces[:-1])


# ---------------------------------------------------------------- prepare / load_prepared


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(synthetic_text(20_000, seed=3), encoding="utf-8")
    return path


def test_prepare_char_writes_the_files_and_round_trips(corpus_file, tmp_path):
    meta = prepare(corpus_file, tmp_path / "prep", tokenizer="char", val_fraction=0.1, chunk_bytes=997)
    files = sorted(p.name for p in (tmp_path / "prep").iterdir())
    assert files == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert json.loads((tmp_path / "prep" / "meta.json").read_text()) == meta
    data = load_prepared(tmp_path / "prep")
    tok, train, val = data["tokenizer"], data["train"], data["val"]
    assert isinstance(train.tokens, np.memmap) and train.loss_mask is None
    text = corpus_file.read_text(encoding="utf-8")
    assert tok.decode(np.concatenate([train.tokens, val.tokens])) == text
    raw = text.encode("utf-8")
    assert tok.decode(val.tokens) == raw[len(raw) - int(0.1 * len(raw)):].decode("utf-8")
    assert meta["train_tokens"] == len(train) and meta["vocab_size"] == tok.vocab_size
    assert meta["token_dtype"] == "uint16" and tok.special_tokens == {"<|endoftext|>": tok.vocab_size - 1}
    assert tok.encode("<|endoftext|>") == [tok.vocab_size - 1]


def test_prepare_bpe_and_reuse_a_saved_tokenizer(corpus_file, tmp_path):
    meta = prepare(corpus_file, tmp_path / "bpe", tokenizer="bpe", vocab_size=300, val_fraction=0.05)
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] == 300
    data = load_prepared(tmp_path / "bpe")
    text = corpus_file.read_text(encoding="utf-8")
    assert data["tokenizer"].decode(np.concatenate([data["train"].tokens, data["val"].tokens])) == text
    assert len(data["train"]) + len(data["val"]) < 0.7 * len(text.encode())  # merges compress
    prepare(corpus_file, tmp_path / "again", tokenizer=tmp_path / "bpe" / "tokenizer.json")
    assert load_prepared(tmp_path / "again")["tokenizer"].to_dict() == data["tokenizer"].to_dict()
    with pytest.raises(ValueError, match="is neither 'char', 'bpe' nor a saved tokenizer.json"):
        prepare(corpus_file, tmp_path / "x", tokenizer="wordpiece")


def test_prepare_never_replaces_data_unasked_and_keeps_it_when_failing(corpus_file, tmp_path):
    out = tmp_path / "prep"
    prepare(corpus_file, out)
    before = (out / "train.bin").read_bytes()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds prepared data .*pass overwrite=True"):
        prepare(corpus_file, out)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n" * 1000 + b"\xff")
    with pytest.raises(ValueError, match="is not UTF-8"):
        prepare(bad, out, overwrite=True)
    assert (out / "train.bin").read_bytes() == before and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "notes.txt", "tokenizer.json", "train.bin", "val.bin"]


def test_a_text_tokenizer_lacking_a_character_names_the_file(corpus_file, tmp_path):
    CharTokenizer().build_vocab("abc").save(tmp_path / "tok.json")
    with pytest.raises(ValueError, match="corpus.txt: character .* is not in the vocabulary"):
        prepare(corpus_file, tmp_path / "out", tokenizer=tmp_path / "tok.json")


def test_load_prepared_errors(corpus_file, tmp_path):
    with pytest.raises(ValueError, match="prepared data folder .* does not exist"):
        load_prepared(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no meta.json: it is not a prepared data folder"):
        load_prepared(tmp_path / "empty")
    prepare(corpus_file, tmp_path / "prep")
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    (tmp_path / "prep" / "meta.json").write_text(json.dumps({**meta, "vocab_size": 3}))
    with pytest.raises(ValueError, match="come from different runs of prepare"):
        load_prepared(tmp_path / "prep")


# ---------------------------------------------------------------- training from prepared data


def test_train_with_config_reads_a_prepared_folder(corpus_file, tmp_path):
    prepare(corpus_file, tmp_path / "prep")
    data = load_prepared(tmp_path / "prep")
    tok = data["tokenizer"]
    model = GPT(vocab_size=tok.vocab_size, embedding_dim=32, num_layers=1, num_heads=2, max_seq_len=32, seed=0)
    results = train_with_config(model, data["train"], {"num_steps": 30, "batch_size": 8, "learning_rate": 3e-3,
                                                       "eval_interval": 0, "log_interval": 0},
                                val_tokens=data["val"], tokenizer=tok)
    assert results["final_val_loss"] < results["history"][0]["loss"]
    wrong = CharTokenizer().build_vocab("abc")
    with pytest.raises(ValueError, match="the tokenizer has 3 tokens but the model has vocab_size="):
        train_with_config(model, data["train"], {"num_steps": 1}, tokenizer=wrong)


def test_text_shorter_than_one_window_names_the_file(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("a short text\n", encoding="utf-8")
    prepare(path, tmp_path / "prep", val_fraction=0.0)
    data = load_prepared(tmp_path / "prep")
    assert data["val"] is None
    model = GPT(vocab_size=data["tokenizer"].vocab_size, embedding_dim=8, num_layers=1, max_seq_len=64, seed=0)
    with pytest.raises(ValueError, match=r"the training data \(.*train.bin\) has 13 tokens, fewer than one window "
                                         r"of max_seq_len \+ 1 = 65"):
        train_with_config(model, data["train"], {"num_steps": 1, "val_fraction": 0})


def test_ids_beyond_the_model_vocabulary_in_a_token_file(tmp_path):
    path = write_token_file(tmp_path / "t.bin", np.arange(200) % 50, token_format(50))
    model = GPT(vocab_size=40, embedding_dim=8, num_layers=1, max_seq_len=8, seed=0)
    with pytest.raises(ValueError, match=r"t.bin holds token id 49 outside the model's vocabulary \[0, 40\)"):
        train_with_config(model, TokenDataset.from_file(path), {"num_steps": 1})


SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"


def test_char_vocabulary_has_the_end_token_only_when_the_text_uses_it(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("to be or not to be\n" * 20, encoding="utf-8")
    prepare(plain, tmp_path / "plain")
    tok = load_prepared(tmp_path / "plain")["tokenizer"]
    assert tok.special_tokens == {} and tok.vocab_size == len(set("to be or not\n"))


def test_prepare_shakespeare_script_gives_nanogpts_vocabulary(tmp_path):
    """data/prepare_shakespeare.py: nanoGPT's shakespeare_char (65 characters, 90/10 split)."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"Tiny Shakespeare is not at {SHAKESPEARE} (it is not shipped with nanollm)")
    script = Path(__file__).resolve().parents[1] / "data" / "prepare_shakespeare.py"
    done = subprocess.run([sys.executable, str(script), "--text", str(SHAKESPEARE), "--out", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["vocab_size"] == 65 and meta["train_tokens"] + meta["val_tokens"] == 1_115_394
    again = subprocess.run([sys.executable, str(script), "--text", str(SHAKESPEARE), "--out", str(tmp_path / "c")],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "already holds prepared data" in again.stderr
    assert "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1


@settings(max_examples=20, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\ufeff"), min_size=1,
                    max_size=400),
       kind=st.sampled_from(["char", "bpe"]), val_fraction=st.sampled_from([0.0, 0.1, 0.5]), chunk=st.integers(1, 64))
def test_prepared_files_decode_to_the_text_for_any_unicode(tmp_path_factory, text, kind, val_fraction, chunk):
    folder = tmp_path_factory.mktemp("prep")
    path = folder / "in.txt"
    path.write_bytes(text.encode("utf-8"))
    text = read_text_file(path)  # a leading byte-order mark is not text
    if not text:
        return
    raw = text.encode("utf-8")
    if not raw[:len(raw) - int(len(raw) * val_fraction)].decode("utf-8", errors="ignore"):
        with pytest.raises(ValueError, match="leaves no training text: validation takes its last"):
            prepare(path, folder / "out", tokenizer=kind, vocab_size=300, val_fraction=val_fraction)
        return
    prepare(path, folder / "out", tokenizer=kind, vocab_size=300, val_fraction=val_fraction, chunk_bytes=chunk)
    data = load_prepared(folder / "out")
    val = data["val"].tokens if data["val"] is not None else np.zeros(0, dtype=np.int64)
    assert data["tokenizer"].decode(np.concatenate([data["train"].tokens, val])) == text


# ---------------------------------------------------------------- data quality: what prepare reports


TRAIN_TEXT = "alpha\nbeta\nalpha\n\ngamma\x07\ndelta\u00a0x\nepsilon\n"  # a bell and a no-break space
VAL_TEXT = "beta\nomega\nalpha\n"  # two of its three lines occur in training


def _hand_made(tmp_path):
    """The text above and the val_fraction whose cut falls exactly where VAL_TEXT starts."""
    path = tmp_path / "hand.txt"
    path.write_text(TRAIN_TEXT + VAL_TEXT, encoding="utf-8")
    size = path.stat().st_size
    return path, (len(VAL_TEXT.encode()) + 0.5) / size


@pytest.mark.parametrize("chunk", [3, 8, 1 << 20])
def test_quality_figures_of_a_hand_made_text(tmp_path, chunk):
    path, val_fraction = _hand_made(tmp_path)
    text = TRAIN_TEXT + VAL_TEXT
    meta = prepare(path, tmp_path / "out", val_fraction=val_fraction, chunk_bytes=chunk)
    assert load_prepared(tmp_path / "out")["tokenizer"].decode(load_prepared(tmp_path / "out")["val"].tokens) == VAL_TEXT
    q = meta["quality"]
    assert (q["unit"], q["total"], q["non_empty"], q["unique"]) == ("line", 10, 9, 6)
    assert q["unique_fraction"] == pytest.approx(6 / 9, abs=1e-6)
    assert q["duplicate_share"] == pytest.approx(5 / 9, abs=1e-6)  # alpha x3 and beta x2 occur more than once
    assert q["most_repeated"] == [["alpha", 3], ["beta", 2]]
    assert (q["val_total"], q["val_in_train"]) == (3, 2) and q["val_in_train_fraction"] == pytest.approx(2 / 3, abs=1e-6)
    assert q["non_printable"] == 2 and q["non_printable_characters"] == [["U+0007", 1], ["U+00A0", 1]]
    assert q["characters"] == len(text) and q["distinct_characters"] == len(set(text))
    top_char, top_count = max(sorted(set(text)), key=text.count), max(map(text.count, set(text)))
    assert q["top_characters"][0] == [top_char, top_count]
    assert (q["vocab_size"], q["tokens"], q["tokens_per_char"]) == (len(set(text)), len(text), 1.0)
    assert json.loads((tmp_path / "out" / "meta.json").read_text(encoding="utf-8"))["quality"] == q


def test_a_cut_inside_a_line_makes_it_a_training_line():
    from nanollm.data_quality import TextQuality

    quality = TextQuality()
    quality.add("ab\ncd\nab\n", cut=4)  # validation starts inside "cd": its whole lines are only "ab"
    figures = quality.figures()
    assert (figures["val_total"], figures["val_in_train"], figures["total"]) == (1, 1, 3)
    quality = TextQuality()
    quality.add("ab\ncd", cut=4)  # inside the last line: no whole validation line
    assert quality.figures()["val_in_train_fraction"] is None and quality.figures()["val_total"] == 0


def test_quality_of_instruction_jsonl_counts_records(tmp_path):
    rows = [("Say hi.", "hi"), ("Say no.", "no"), ("Say hi.", "hi"), ("Say yes.", "yes"), ("Say no.", "no")]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"instruction": q, "input": "", "output": a}) + "\n" for q, a in rows),
                    encoding="utf-8")
    meta = prepare(path, tmp_path / "out", val_fraction=0.4)  # validation: the last two records
    q = meta["quality"]
    assert (q["unit"], q["total"], q["non_empty"], q["unique"]) == ("record", 5, 5, 3)
    assert q["unique_fraction"] == 0.6 and q["duplicate_share"] == 0.8
    assert (q["val_total"], q["val_in_train"]) == (2, 1)  # "Say no." was trained on, "Say yes." was not
    from nanollm.instruct import alpaca_conversation, render_text

    rendered = [render_text(alpaca_conversation({"instruction": a, "output": b})) for a, b in rows]
    assert q["characters"] == sum(map(len, rendered)) and q["tokens"] == meta["train_tokens"] + meta["val_tokens"]
    assert q["tokens_per_char"] < 1  # the role markers and <|endoftext|> are one token each
    with pytest.raises(ValueError, match=r"chat.jsonl: only 60.0% of its 5 records are unique \(3 distinct\), "
                                         r"below min_unique=0.7 \(--min-unique\)"):
        prepare(path, tmp_path / "refused", min_unique=0.7)
    assert not (tmp_path / "refused").exists()


def test_min_unique_refuses_before_anything_is_written(tmp_path):
    path, val_fraction = _hand_made(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    seen = []

    def report(figures):
        seen.append(sorted(p.name for p in out.iterdir()))

    with pytest.raises(ValueError, match=r"hand.txt: only 66.7% of its 9 non-empty lines are unique \(6 distinct\), "
                                         r"below min_unique=0.7 \(--min-unique\); remove the duplicates"):
        prepare(path, out, val_fraction=val_fraction, min_unique=0.7, report=report)
    assert seen == [["notes.txt"]] and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    meta = prepare(path, out, val_fraction=val_fraction, min_unique=0.6, report=report)
    assert seen[1] == ["notes.txt"] and meta["quality"]["unique"] == 6  # the report came before the files
    with pytest.raises(ValueError, match=r"min_unique must be a fraction in \[0, 1\], got 2"):
        prepare(path, tmp_path / "other", min_unique=2)


def test_prepare_command_prints_the_quality_and_refuses_with_min_unique(tmp_path):
    from test_cli import assert_one_line_error, nanollm

    path, val_fraction = _hand_made(tmp_path)
    done = nanollm("prepare", path.name, "refused", "--val-fraction", val_fraction, "--min-unique", "0.7", cwd=tmp_path,
                   check=False)
    assert_one_line_error(done, "hand.txt: only 66.7% of its 9 non-empty lines are unique", "--min-unique")
    assert "unique         6 of 9 non-empty lines (66.7%)" in done.stdout  # the figures, then the refusal
    assert not (tmp_path / "refused").exists()
    done = nanollm("prepare", path.name, "out", "--val-fraction", val_fraction, "--min-unique", "0.5", cwd=tmp_path)
    for line in ("data quality of hand.txt (by line):", "size           58 characters in 10 lines (9 non-empty)",
                 "most repeated  3x 'alpha', 2x 'beta'", "non-printable  2 (U+0007 x1, U+00A0 x1)",
                 "val in train   2 of 3 non-empty validation lines (66.7%) also occur in the training split",
                 "tokens         58 with a vocabulary of 18, 1.000 tokens per character"):
        assert line in done.stdout, done.stdout
    assert json.loads((tmp_path / "out" / "meta.json").read_text(encoding="utf-8"))["quality"]["unique"] == 6
