"""Tokenizers: the byte-level BPE (training, encoding, files) and the shared interface with CharTokenizer."""

import functools
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm import BPETokenizer, CharTokenizer
from nanollm.corpus import synthetic_text
from nanollm.tokenizers import (TOKENIZERS, _merge_by_rank, _merge_by_rank_heap, _merge_pair, load_tokenizer,
                                pretokenize, tokenizer_from_dict)

SPECIALS = ("<|endoftext|>", "<|pad|>")
EOT = "<|endoftext|>"
# Any str, lone surrogates included (st.text() alone leaves out category Cs). The round trips run
# more examples than the project's default profile: they are the tokenizers' main promise.
any_text = st.text(alphabet=st.characters(blacklist_categories=()))
text_with_specials = st.lists(st.one_of(st.text(), any_text, st.sampled_from(SPECIALS))).map("".join)


@functools.lru_cache(maxsize=None)
def trained_bpe():
    """A small BPE trained on English plus some multi-byte text, so merges span UTF-8 bytes."""
    text = synthetic_text(20_000, seed=0) + "日本語のテキスト 日本語 😀😀 héllo wörld\n" * 20
    return BPETokenizer(vocab_size=600, special_tokens=SPECIALS).build_vocab(text)


def reference_merges(chunks, num_merges, min_frequency=1):
    """Plain BPE training, recounting every pair each step: the specification the fast one must match."""
    words = [list(chunk.encode("utf-8", "surrogatepass")) for chunk in chunks]
    merges = []
    while len(merges) < num_merges:
        counts = {}
        for word in words:
            for pair in zip(word, word[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        if counts[best] < min_frequency:
            break
        merges.append(best)
        words = [_merge_pair(word, *best, 255 + len(merges)) for word in words]
    return merges


# ---- pre-tokenization ---------------------------------------------------------------------------

@given(any_text)
def test_pretokenize_chunks_concatenate_to_the_input(text):
    assert "".join(pretokenize(text)) == text


@pytest.mark.parametrize("text, chunks", [
    ("Hello world's 123 !!", ["Hello", " world", "'s", " 123", " !!"]),
    ("I'll go, you've gone", ["I", "'ll", " go", ",", " you", "'ve", " gone"]),
    ("a  b\n\nc", ["a", " ", " b", "\n", "\n", "c"]),
    ("x_y = 42;  ", ["x", "_", "y", " =", " 42", ";", "  "]),
    ("日本語 テスト😀!", ["日本語", " テスト", "😀!"]),
    ("abc123def", ["abc", "123", "def"]),
])
def test_pretokenize_splits_as_gpt2(text, chunks):
    assert pretokenize(text) == chunks


# ---- training -----------------------------------------------------------------------------------

def test_bpe_learns_the_hand_checked_merges():
    """Wikipedia's example: aaabdaaabac -> Z=aa, then Y=ab (ties with (Z, a), smaller pair wins), X=ZY."""
    assert pretokenize("aaabdaaabac") == ["aaabdaaabac"]
    tok = BPETokenizer(vocab_size=259, min_frequency=1, special_tokens=()).build_vocab("aaabdaaabac")
    assert tok.merges == [(97, 97), (97, 98), (256, 257)] and tok.vocab_size == 259
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.token_text(258) == "aaab"


@settings(max_examples=max(60, settings.default.max_examples))
@given(st.lists(st.text(alphabet="ab c\n'é", max_size=30), max_size=12), st.integers(1, 3))
def test_incremental_training_matches_plain_recounting(lines, min_frequency):
    text = "\n".join(lines) + "\n"
    tok = BPETokenizer(vocab_size=256 + 40, min_frequency=min_frequency, special_tokens=()).build_vocab(text)
    assert tok.merges == reference_merges(pretokenize(text), 40, min_frequency)


@settings(max_examples=max(100, settings.default.max_examples))
@given(st.lists(st.text(alphabet="aab= \n", max_size=40), max_size=12), st.integers(20, 80))
def test_training_never_makes_two_tokens_of_the_same_bytes(lines, num_merges):
    """vocab.json and tokenizer.json hold one id per token string: training must not need two."""
    text = "\n".join(lines) + "\n"
    tok = BPETokenizer(vocab_size=256 + num_merges, min_frequency=1, special_tokens=()).build_vocab(text)
    tokens = [tok.token_bytes(i) for i in range(tok.vocab_size)]
    assert len(set(tokens)) == len(tokens)


def test_training_stops_below_min_frequency():
    text = "ab ab ab cd\n"  # pairs: " a" 2, "ab" 3, " c" 1, "cd" 1
    tok = BPETokenizer(vocab_size=1000, min_frequency=2, special_tokens=(EOT,)).build_vocab(text)
    assert tok.merges == [(97, 98), (32, 256)]
    assert tok.vocab_size == 256 + 2 + 1 and tok.special_tokens == {EOT: 258}
    assert len(BPETokenizer(vocab_size=1000, min_frequency=1, special_tokens=()).build_vocab(text).merges) == 4


def test_bpe_compresses_the_text_it_learned_from():
    text = synthetic_text(5_000, seed=3)
    tok = BPETokenizer(vocab_size=512).build_vocab(text)
    ids = tok.encode(text)
    assert len(ids) < len(text.encode("utf-8")) / 2.5
    assert tok.decode(ids) == text


def test_special_tokens_take_the_last_ids_and_are_never_merged():
    text = ("the cat<|endoftext|>the cat<|endoftext|>" * 30) + "\n"
    tok = BPETokenizer(vocab_size=300, special_tokens=(EOT, "<|pad|>")).build_vocab(text)
    first = 256 + len(tok.merges)
    assert tok.special_tokens == {EOT: first, "<|pad|>": first + 1} and tok.vocab_size == first + 2
    assert not any("|" in tok.token_text(256 + k) for k in range(len(tok.merges)))  # learned around, not from
    ids = tok.encode("the cat<|endoftext|>")
    assert ids[-1] == first and first not in ids[:-1]
    spelled = tok.encode("the cat<|endoftext|>", allow_special=False)
    assert first not in spelled and len(spelled) > len(ids)
    assert tok.decode(spelled) == tok.decode(ids) == "the cat<|endoftext|>"
    assert tok.encode("<|pad|><|endoftext|>") == [first + 1, first]


def test_vocab_size_too_small_and_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"vocab_size must be an integer >= 257 \(256 byte tokens \+ 1 special"):
        BPETokenizer(vocab_size=256)
    BPETokenizer(vocab_size=256, special_tokens=())  # bytes only: allowed
    with pytest.raises(ValueError, match="min_frequency must be an integer >= 1"):
        BPETokenizer(vocab_size=300, min_frequency=0)
    with pytest.raises(ValueError, match="not the string"):
        BPETokenizer(vocab_size=300, special_tokens=EOT)
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer("abc", special_tokens=(EOT, EOT))


# ---- encoding and decoding ----------------------------------------------------------------------

@settings(max_examples=max(200, settings.default.max_examples))
@given(text_with_specials)
def test_bpe_round_trips_any_text(text):
    tok = trained_bpe()
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allow_special=False)) == text
    assert all(0 <= i < tok.vocab_size for i in tok.encode(text))


@settings(max_examples=max(200, settings.default.max_examples))
@given(text_with_specials)
def test_char_tokenizer_round_trips_any_text_it_was_built_on(text):
    tok = CharTokenizer(text, special_tokens=SPECIALS)
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allow_special=False)) == text
    assert tok.vocab_size == len(tok.chars) + 2 and tok.special_tokens == {SPECIALS[0]: len(tok.chars),
                                                                         SPECIALS[1]: len(tok.chars) + 1}


def test_bpe_round_trips_hand_picked_text():
    tok = trained_bpe()
    for text in ["", "\n", "😀👩‍👩‍👧 日本語", "lone \ud800 surrogate \udfff", "\ud83d\ude00 pair",
                 "tabs\t\tand \r\n line ends", "<|endoftext|><|endoftext", "x" * 5000, "ab" * 3000]:
        assert tok.decode(tok.encode(text)) == text


@settings(max_examples=max(100, settings.default.max_examples))
@given(st.text(alphabet="aé日 \n", max_size=300))
def test_long_chunk_heap_merge_equals_round_by_round_merge(text):
    ranks = trained_bpe()._ranks
    ids = list(text.encode("utf-8"))
    assert _merge_by_rank_heap(ids, ranks) == _merge_by_rank(ids, ranks)


def test_decode_replaces_invalid_bytes_and_rejects_unknown_ids():
    tok = trained_bpe()
    assert tok.decode([0xE6, 0x97]) == "\ufffd"                    # a character cut in half
    assert tok.decode([ord("A"), 0xFF, ord("B")]) == "A\ufffdB"
    assert tok.decode([0xED, 0xA0, 0x80]) == "\ud800"              # a lone surrogate, surrogatepass-encoded
    with pytest.raises(ValueError, match=rf"token id {tok.vocab_size} is outside the vocabulary \[0, "
                                         rf"{tok.vocab_size}\)"):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(ValueError, match=r"token id -1 is outside"):
        tok.decode([-1])


def test_encode_cache_is_bounded_and_transparent():
    tok = BPETokenizer(vocab_size=400).build_vocab(synthetic_text(5_000, seed=1))
    tok.CACHE_LIMIT = 10
    text = synthetic_text(3_000, seed=2)
    ids = tok.encode(text)
    assert len(tok._cache) <= 10 and ids == tok.encode(text) and tok.decode(ids) == text


def test_numpy_ids_decode():
    np = pytest.importorskip("numpy")
    tok = trained_bpe()
    ids = tok.encode("hello world")
    assert tok.decode(np.array(ids, dtype=np.int64)) == "hello world"


# ---- building from files, and path-looking strings ----------------------------------------------

@pytest.mark.parametrize("cls", [CharTokenizer, lambda: BPETokenizer(vocab_size=300)])
def test_build_vocab_from_a_path_and_mistyped_paths(cls, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abc abc abd\n", encoding="utf-8")
    from_str, from_path = cls().build_vocab(str(path)), cls().build_vocab(path)
    assert from_str.to_dict() == from_path.to_dict() == cls().build_vocab("abc abc abd\n").to_dict()
    for missing in [str(tmp_path / "nope.txt"), "data/corpus", "notes.md", "C:\\data\\x"]:
        with pytest.raises(ValueError, match=r"text file '.*' does not exist; "):
            cls().build_vocab(missing)
    cls().build_vocab("one line of text/with a slash\n")  # a newline: always text


# ---- files --------------------------------------------------------------------------------------

def test_bpe_save_load_and_to_dict_round_trip(tmp_path):
    tok = trained_bpe()
    path = tok.save(tmp_path / "tok.json")
    assert os.listdir(tmp_path) == ["tok.json"]  # the temporary file was renamed, none left behind
    data = json.loads((tmp_path / "tok.json").read_text(encoding="utf-8"))
    assert data["kind"] == "bpe" and data["format_version"] == 1 and data["pattern"] == "gpt2"
    assert data["merges"][0] == list(tok.merges[0]) and data["special_tokens"] == tok.special_tokens
    assert data["tokens"][0] == tok.token_text(256)
    text = "日本語 and <|endoftext|> the cat 😀"
    for again in [BPETokenizer.load(path), load_tokenizer(path), tokenizer_from_dict(tok.to_dict()),
                  tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))]:
        assert isinstance(again, BPETokenizer) and again.to_dict() == tok.to_dict()
        assert again.encode(text) == tok.encode(text) and again.vocab_size == tok.vocab_size


def test_char_tokenizer_special_tokens_files_and_the_old_format(tmp_path):
    tok = CharTokenizer(special_tokens=(EOT,)).build_vocab("hello\n")
    assert tok.special_tokens == {EOT: len(tok.chars)} and "<" in tok.chars  # spelled-out form encodable
    assert tok.encode("he" + EOT) == [tok.char_to_id["h"], tok.char_to_id["e"], len(tok.chars)]
    again = load_tokenizer(tok.save(tmp_path / "c.json"))
    assert isinstance(again, CharTokenizer) and again.to_dict() == tok.to_dict()
    assert again.encode("hello" + EOT) == tok.encode("hello" + EOT)
    old = {"kind": "char", "chars": ["\n", "a", "b"]}  # as older files and checkpoints store it
    assert CharTokenizer.from_dict(old).to_dict() == old and CharTokenizer.from_dict(old).special_tokens == {}
    assert CharTokenizer("ab", special_tokens=(EOT,)).encode(EOT, allow_special=False) == \
        [CharTokenizer("ab", special_tokens=(EOT,)).char_to_id[c] for c in EOT]


def test_bpe_tokenizer_in_a_checkpoint(tmp_path):
    from nanollm import TransformerLanguageModel, load_checkpoint, save_checkpoint

    tok = trained_bpe()
    model = TransformerLanguageModel(vocab_size=tok.vocab_size, embedding_dim=8, num_layers=1, ffn_hidden_dim=16,
                                     max_seq_len=8)
    save_checkpoint(tmp_path / "ck.npz", model, tokenizer=tok)
    info = load_checkpoint(tmp_path / "ck.npz", model, tokenizer=tok)  # equal dicts after JSON: no error
    assert info["tokenizer"].encode("the cat 😀") == tok.encode("the cat 😀")


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_load_tokenizer_dispatch_and_errors(tmp_path):
    assert set(TOKENIZERS) == {"char", "bpe"}
    with pytest.raises(ValueError, match=r"tokenizer file '.*nope\.json' does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(ValueError, match=r"tokenizer file '.*bad\.json' is not valid JSON"):
        load_tokenizer(write(tmp_path, "bad.json", '{"kind": "bpe", '))
    with pytest.raises(ValueError, match=r"odd\.json has tokenizer kind 'wordpiece'; known kinds: char, bpe"):
        load_tokenizer(write(tmp_path, "odd.json", {"kind": "wordpiece"}))
    with pytest.raises(ValueError, match=r"char\.json is not a BPETokenizer .*found kind 'char'"):
        BPETokenizer.load(CharTokenizer("ab").save(tmp_path / "char.json"))
    with pytest.raises(ValueError, match="is not a CharTokenizer"):
        CharTokenizer.load(trained_bpe().save(tmp_path / "bpe.json"))


@pytest.mark.parametrize("change, message", [
    ({"merges": [[97, 98], [257, 97]]}, r"merge 1 \(making id 257\) is \[257, 97\], but a merge may only join"),
    ({"merges": [[97, 98], [-1, 97]]}, r"merge 1 \(making id 257\) is \[-1, 97\]"),
    ({"merges": [[97, 98], [97, 98]]}, "merge 1 repeats merge 0"),
    ({"merges": [[97, 98, 99]]}, r"merge 0 is \[97, 98, 99\], not a \[left id, right id\] pair"),
    ({"merges": "ab"}, "no 'merges' list"),
    ({"special_tokens": {EOT: 300}}, r"special token ids must follow the merges: 257 to 257"),
    ({"special_tokens": [EOT]}, "'special_tokens' must map strings to integer ids"),
    ({"format_version": 3}, "format_version 3; this nanollm reads 1 and 2"),
    ({"pattern": "cl100k"}, "pattern 'cl100k'"),
])
def test_malformed_bpe_files_are_errors_naming_the_file(tmp_path, change, message):
    data = {"kind": "bpe", "format_version": 1, "pattern": "gpt2", "merges": [[97, 98]], "special_tokens": {EOT: 257}}
    BPETokenizer.from_dict(data)  # the unchanged data is valid
    path = write(tmp_path, "broken.json", {**data, **change})
    for loader in (BPETokenizer.load, load_tokenizer):
        with pytest.raises(ValueError, match=r"broken\.json.*" + message):
            loader(path)


def test_tokenizer_bench_prints_its_figures(tmp_path, capsys):
    from nanollm.corpus import synthetic_text
    from nanollm.tools.tokenizer_bench import main

    text = tmp_path / "t.txt"
    text.write_text(synthetic_text(30_000, seed=4), encoding="utf-8")
    assert main(["--text", str(text), "--vocab-size", "400", "--bytes", "20000"]) == 0
    out = capsys.readouterr().out
    for expected in ("train: vocab 400", "encode: ", "MB/s", "decode: ", "round trip decode(encode(text)) == text: ok"):
        assert expected in out


@pytest.mark.parametrize("cls", [CharTokenizer, BPETokenizer])
def test_text_keyword_is_never_taken_for_a_path(cls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "abc").write_text("zzz", encoding="utf-8")
    assert cls().build_vocab(text="abc").decode(cls().build_vocab(text="abc").encode("abc")) == "abc"
    assert "a" in CharTokenizer().build_vocab(text="abc").chars and "z" in CharTokenizer().build_vocab("abc").chars
    assert cls().build_vocab(text="data/x.txt").encode("data/x.txt")
    with pytest.raises(ValueError, match="takes a path or text=..., not both"):
        cls().build_vocab("abc", text="abc")
    with pytest.raises(ValueError, match="needs a non-empty text"):
        cls().build_vocab(text="")
