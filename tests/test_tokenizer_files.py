"""Tokenizer files in and out: identical ids to `tokenizers` and tiktoken on the same files, whole id lists."""

import base64
import json
import os
import random
from pathlib import Path

import pytest

from nanollm import BPETokenizer, CharTokenizer
from nanollm.corpus import synthetic_text
from nanollm.interop import tokenizer_files as tf
from nanollm.tokenizers import GPT2_REGEX, load_tokenizer, pretokenize, tokenizer_from_dict

tokenizers = pytest.importorskip("tokenizers")
tiktoken = pytest.importorskip("tiktoken")
import tiktoken.load  # noqa: E402  (after the skip: tiktoken may be absent)

SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"
GPT2_TIKTOKEN = Path(os.environ.get("NANOLLM_GPT2_TIKTOKEN",
                                    "/tmp/whisper/openai_whisper-20250625/whisper/assets/gpt2.tiktoken"))
SPECIALS = {"<|endoftext|>": 0, "<|pad|>": 1}  # as `tokenizers`' trainer places them: first
EOT = "<|endoftext|>"


def generated_text(seed=0, pieces=3000):
    """Code, emoji, CJK, accents, whitespace runs, digits, numbers that are not digits ("²½Ⅻ①"),
    \\x1c-\\x1f, long runs and special-token strings: every corner of GPT-2's pattern."""
    rng = random.Random(seed)
    words = ["def", "return", "self", "x", "café", "naïve", "Ελληνικά", "русский", "日本語", "中文", "한국어", "😀",
             "👩‍👩‍👧", "²³", "½¾", "Ⅻ", "①②", "١٢٣", "3.14159", "1e10", "0x1F", "'s", "'ll", "'VE", "don't",
             "\u00a0", "\u3000", "\x85", "\x1c\x1d", "\x1e\x1f", "_under_", "a_b", "<|endoftext|>", "<|pad|>", "<|x|>"]
    out = []
    for k in range(pieces):
        kind = rng.random()
        if kind < 0.15:
            out.append(f"def f_{k}(x, y={k % 97}):\n    return x ** 2 + y  # ²½ ok\n\n")
        elif kind < 0.25:
            out.append(rng.choice(" \t\n\r") * rng.randint(1, 12))
        elif kind < 0.3:
            out.append(rng.choice("=-*#!a0 ") * rng.randint(20, 200))  # long chunks: the heap path
        else:
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) + rng.choice([" ", "\n", ". "]))
    return "".join(out)


@pytest.fixture(scope="module")
def text():
    """About 400 kB: Tiny Shakespeare's first 250 kB (synthetic text without it) and the generated text."""
    start = SHAKESPEARE.read_text(encoding="utf-8")[:250_000] if SHAKESPEARE.is_file() else synthetic_text(250_000)
    return start + generated_text()


@pytest.fixture(scope="module")
def trained(text, tmp_path_factory):
    """A byte-level BPE that `tokenizers` trained (3,000 tokens), saved as tokenizer.json and as
    vocab.json + merges.txt: (the `tokenizers` Tokenizer, its folder)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("hf")
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([text], trainer)
    hf.save(str(folder / "tokenizer.json"))
    hf.model.save(str(folder))  # vocab.json, merges.txt
    return hf, folder


@pytest.fixture(scope="module")
def ours_trained(text):
    """nanollm's own BPE (nanollm's layout, format_version 1) on the same text."""
    return BPETokenizer(vocab_size=2000, special_tokens=(EOT, "<|pad|>")).build_vocab(text=text[:200_000])


def hf_ids(hf, text):
    return hf.encode(text, add_special_tokens=False).ids


def write_ranks(path, tokenizer):
    """A tiktoken ranks file of ``tokenizer``'s tokens that are not special (rank = id)."""
    special = set(tokenizer.special_tokens.values())
    lines = [f"{base64.b64encode(tokenizer.token_bytes(i)).decode()} {i}" for i in range(tokenizer.vocab_size)
             if i not in special]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def tiktoken_encoding(path, special_tokens):
    ranks = tiktoken.load.load_tiktoken_bpe(str(path))
    return tiktoken.Encoding(name=Path(path).stem, pat_str=GPT2_REGEX, mergeable_ranks=ranks,
                             special_tokens=special_tokens)


# ---- pre-tokenization ---------------------------------------------------------------------------

def test_pretokenize_splits_exactly_as_tokenizers_byte_level(text):
    """`tokenizers`' ByteLevel pre-tokenizer runs GPT-2's pattern with Oniguruma's \\p{L}, \\p{N}, \\s."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    unspell = {ch: b for b, ch in tf.bytes_to_unicode().items()}
    for sample in [text, "a²b ½c Ⅻ ①x \x1c\x1d y\x1e\x1fz \u3000\u3000w \x85 \xa0 "]:
        theirs = [bytes(unspell[ch] for ch in piece).decode("utf-8") for piece, _ in
                  byte_level.pre_tokenize_str(sample)]
        assert pretokenize(sample) == theirs


def test_pretokenize_equals_the_regex_module_on_every_assigned_character():
    regex = pytest.importorskip("regex")
    import unicodedata

    gpt2 = regex.compile(GPT2_REGEX)
    chars = [chr(cp) for cp in range(0x110000) if unicodedata.category(chr(cp)) not in ("Cn", "Cs")]
    sample = "".join(f"{ch} {ch}{ch}x{ch}1 \n" for ch in chars)  # each alone, in a run, beside letters and digits
    assert pretokenize(sample) == gpt2.findall(sample)


# ---- reading what `tokenizers` wrote ------------------------------------------------------------

def test_tokenizer_json_encodes_as_tokenizers(trained, text):
    hf, folder = trained
    ours = tf.load_hf_tokenizer_json(folder / "tokenizer.json")
    assert ours.vocab_size == hf.get_vocab_size() and ours.special_tokens == SPECIALS
    ids = ours.encode(text)
    assert ids == hf_ids(hf, text)
    assert ours.decode(ids) == text == hf.decode(ids, skip_special_tokens=False)
    assert ours.token_bytes(SPECIALS[EOT]) == EOT.encode()


def test_vocab_and_merges_encode_as_tokenizers(trained, text):
    hf, folder = trained
    ours = tf.load_vocab_and_merges(folder / "vocab.json", folder / "merges.txt")
    assert ours.special_tokens == SPECIALS  # tokens no merge makes: special
    assert ours.encode(text) == hf_ids(hf, text)
    given = tf.load_vocab_and_merges(folder / "vocab.json", folder / "merges.txt", special_tokens={EOT: 0})
    assert given.special_tokens == {EOT: 0}


def test_ids_in_any_order_encode_as_tokenizers(trained, text, tmp_path):
    """Merges whose made ids are not in rank order, bytes and special tokens scattered (the rank ->
    id table), and ignore_merges (a chunk that is a token is that token)."""
    from tokenizers import Tokenizer

    _, folder = trained
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    order = list(range(len(data["model"]["vocab"])))
    random.Random(3).shuffle(order)
    data["model"]["vocab"] = {token: order[i] for token, i in data["model"]["vocab"].items()}
    for added in data["added_tokens"]:
        added["id"] = data["model"]["vocab"][added["content"]]
    data["model"]["ignore_merges"] = True
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    ours = tf.read_tokenizer(tmp_path)
    assert ours.ignore_merges and ours._made is not None
    assert ours.encode(text) == hf_ids(hf, text) and ours.decode(ours.encode(text)) == text
    again = tokenizer_from_dict(json.loads(json.dumps(ours.to_dict())))
    assert again.to_dict() == ours.to_dict() and again.encode(text[-50_000:]) == ours.encode(text[-50_000:])


# ---- tiktoken -----------------------------------------------------------------------------------

def test_tiktoken_ranks_encode_as_tiktoken(trained, ours_trained, text, tmp_path):
    """Ranks files written from nanollm's trained BPE and from `tokenizers`' (specials fill ids 0, 1)."""
    _, folder = trained
    hf_loaded = tf.load_hf_tokenizer_json(folder / "tokenizer.json")
    for name, tokenizer in [("ours", ours_trained), ("hf", hf_loaded)]:
        path = write_ranks(tmp_path / f"{name}.tiktoken", tokenizer)
        ours = tf.load_tiktoken_ranks(path, special_tokens=tokenizer.special_tokens)
        assert ours.merge_rule == "ranks" and ours.special_tokens == tokenizer.special_tokens
        encoding = tiktoken_encoding(path, tokenizer.special_tokens)
        ids = ours.encode(text)
        assert ids == encoding.encode(text, allowed_special="all")
        assert ours.encode(text, allow_special=False) == encoding.encode_ordinary(text)
        assert ours.decode(ids) == text == encoding.decode(ids)


def test_gpt2_real_ranks_encode_as_tiktoken_and_export_to_tokenizers(text, tmp_path):
    """GPT-2's own ranks (openai-whisper ships them; NANOLLM_GPT2_TIKTOKEN names the file)."""
    from tokenizers import Tokenizer

    if not GPT2_TIKTOKEN.is_file():
        pytest.skip(f"GPT-2's ranks are not at {GPT2_TIKTOKEN}: pip download openai-whisper --no-deps --no-binary "
                    ":all:, unpack it and set NANOLLM_GPT2_TIKTOKEN to whisper/assets/gpt2.tiktoken")
    gpt2 = load_tokenizer(GPT2_TIKTOKEN)
    assert gpt2.vocab_size == 50257 and gpt2.special_tokens == {EOT: 50256}
    assert gpt2.token_bytes(0) == b"!" and gpt2.token_bytes(220) == b" "
    encoding = tiktoken_encoding(GPT2_TIKTOKEN, {EOT: 50256})
    ids = gpt2.encode(text)
    assert ids == encoding.encode(text, allowed_special="all") and gpt2.decode(ids) == text
    assert gpt2.encode("Hello world<|endoftext|>") == [15496, 995, 50256]
    hf = Tokenizer.from_file(str(tf.save_hf_tokenizer_json(gpt2, tmp_path / "tokenizer.json")))
    assert hf.encode(text).ids == ids  # every split of a token as its merges, and ignore_merges
    again = tokenizer_from_dict(json.loads(json.dumps(gpt2.to_dict())))
    assert again.to_dict() == gpt2.to_dict() and again.encode(text[-30_000:]) == gpt2.encode(text[-30_000:])


def gpt2_merge(token, ranks):
    """The one merge that makes ``token`` in GPT-2's merges.txt: BPE on its bytes with the merges
    ranked before it, which leaves two parts (tiktoken's data_gym conversion checks the same)."""
    parts, limit = [bytes([b]) for b in token], ranks[token]
    while len(parts) > 2:
        found = [(ranks.get(a + b, limit), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(found)
        assert rank < limit
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def test_gpt2_vocab_json_and_merges_txt_encode_as_tiktoken(text, tmp_path):
    """GPT-2's vocab.json + merges.txt, rebuilt from its ranks, read by nanollm and by `tokenizers`
    (GPT-2's tokenizer.json settings) encode as tiktoken does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    if not GPT2_TIKTOKEN.is_file():
        pytest.skip(f"GPT-2's ranks are not at {GPT2_TIKTOKEN} (see the test above)")
    ranks = tiktoken.load.load_tiktoken_bpe(str(GPT2_TIKTOKEN))
    spell = tf.spell_token
    vocab = {spell(token): rank for token, rank in ranks.items()}
    vocab[EOT] = 50256
    merges = [" ".join(map(spell, gpt2_merge(token, ranks))) for token, _ in sorted(ranks.items(), key=lambda kv: kv[1])
              if len(token) > 1]
    assert len(merges) == 50000
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    ours = load_tokenizer(tmp_path)
    assert ours.special_tokens == {EOT: 50256} and ours.merge_rule == "merges" and ours._made is None
    expected = tiktoken_encoding(GPT2_TIKTOKEN, {EOT: 50256}).encode(text, allowed_special="all")
    assert ours.encode(text) == expected
    hf = Tokenizer(models.BPE(vocab, [tuple(merge.split(" ")) for merge in merges]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.post_processor, hf.decoder = processors.ByteLevel(trim_offsets=False), decoders.ByteLevel()
    hf.add_special_tokens([EOT])
    hf.save(str(tmp_path / "tokenizer.json"))
    assert hf.encode(text).ids == expected
    assert tf.load_hf_tokenizer_json(tmp_path / "tokenizer.json").to_dict() == ours.to_dict()


# ---- writing tokenizer.json ---------------------------------------------------------------------

def test_saved_tokenizer_json_loads_in_tokenizers_and_encodes_identically(trained, ours_trained, text, tmp_path):
    from tokenizers import Tokenizer

    _, folder = trained
    ranks = tf.load_tiktoken_ranks(write_ranks(tmp_path / "r.tiktoken", ours_trained),
                                   special_tokens=ours_trained.special_tokens)
    for name, ours in [("nanollm", ours_trained), ("hf", tf.read_tokenizer(folder)), ("ranks", ranks)]:
        path = tf.save_hf_tokenizer_json(ours, tmp_path / f"{name}.json")
        hf = Tokenizer.from_file(str(path))
        ids = ours.encode(text)
        assert hf.encode(text).ids == ids and hf.decode(ids, skip_special_tokens=False) == text
        back = tf.read_tokenizer(path)
        assert back.encode(text) == ids
    # nanollm's layout survives the trip: the same format_version 1 dict
    assert tf.read_tokenizer(tmp_path / "nanollm.json").to_dict() == ours_trained.to_dict()


def test_char_tokenizer_becomes_a_merge_less_bpe_in_tokenizer_json(text, tmp_path):
    from tokenizers import Tokenizer

    char = CharTokenizer(special_tokens=(EOT,)).build_vocab(text)
    hf = Tokenizer.from_file(str(tf.save_hf_tokenizer_json(char, tmp_path / "tokenizer.json")))
    ids = char.encode(text)
    assert hf.encode(text).ids == ids and hf.decode(ids, skip_special_tokens=False) == text
    back = load_tokenizer(tmp_path)
    assert isinstance(back, CharTokenizer) and back.to_dict() == char.to_dict()


# ---- nanollm's own JSON, byte-level strings, every form -----------------------------------------

def test_general_vocabularies_round_trip_through_nanollms_json(trained, ours_trained, text, tmp_path):
    _, folder = trained
    hf_loaded = tf.read_tokenizer(folder / "tokenizer.json")
    ranks = tf.load_tiktoken_ranks(write_ranks(tmp_path / "r.tiktoken", ours_trained),
                                   special_tokens=ours_trained.special_tokens)
    sample = text[-60_000:]
    for tokenizer, rule in [(hf_loaded, "merges"), (ranks, "ranks")]:
        data = tokenizer.to_dict()
        assert data["format_version"] == 2 and data["merge_rule"] == rule
        for again in [tokenizer_from_dict(json.loads(json.dumps(data))),
                      BPETokenizer.load(tokenizer.save(tmp_path / f"{rule}.json")),
                      load_tokenizer(tmp_path / f"{rule}.json")]:
            assert again.to_dict() == data and again.encode(sample) == tokenizer.encode(sample)
    # a vocabulary in nanollm's layout, however it arrives, is written as format_version 1
    assert BPETokenizer.from_vocab(tf_tokens(ours_trained), tf_merges(ours_trained),
                                   ours_trained.special_tokens).to_dict() == ours_trained.to_dict()


def tf_tokens(tokenizer):
    special = set(tokenizer.special_tokens.values())
    return [None if i in special else tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]


def tf_merges(tokenizer):
    return [(tokenizer.token_bytes(left), tokenizer.token_bytes(right)) for left, right in tokenizer.merges]


def test_byte_level_strings_round_trip(trained, ours_trained, text):
    _, folder = trained
    spelling = tf.bytes_to_unicode()
    from tokenizers import pre_tokenizers

    assert len(set(spelling.values())) == 256 and set(spelling.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert spelling[ord(" ")] == "Ġ" and spelling[ord("\n")] == "Ċ" and spelling[ord("!")] == "!"
    for tokenizer in [ours_trained, tf.read_tokenizer(folder)]:
        tokens, merges = tf.byte_level_tokens(tokenizer), tf.byte_level_merges(tokenizer)
        assert all(" " not in merge.replace(" ", "", 1) for merge in merges)
        again = tf.bpe_from_byte_level(tokens, merges, tokenizer.special_tokens.values())
        assert again.to_dict() == tokenizer.to_dict() and again.encode(text) == tokenizer.encode(text)


def test_read_tokenizer_recognises_every_form(trained, ours_trained, tmp_path):
    _, folder = trained
    sample = "To be, or not to be 😀 ²½<|endoftext|>"
    expected = tf.load_hf_tokenizer_json(folder / "tokenizer.json").encode(sample)
    vocab_only = tmp_path / "vocab_only"
    vocab_only.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (vocab_only / name).write_bytes((folder / name).read_bytes())
    openai = tmp_path / "openai"
    openai.mkdir()
    (openai / "encoder.json").write_bytes((folder / "vocab.json").read_bytes())
    (openai / "vocab.bpe").write_bytes((folder / "merges.txt").read_bytes())
    for path in [folder, folder / "tokenizer.json", vocab_only, vocab_only / "vocab.json", openai,
                 openai / "encoder.json"]:
        assert load_tokenizer(path).encode(sample) == expected, path
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    write_ranks(ranks / "mine.tiktoken", BPETokenizer(300, special_tokens=()))
    assert load_tokenizer(ranks).vocab_size == 256 and load_tokenizer(ranks / "mine.tiktoken").merge_rule == "ranks"
    own = tmp_path / "own"
    ours_trained.save(own / "nanollm_tokenizer.json")
    tf.save_hf_tokenizer_json(CharTokenizer("abc"), own / "tokenizer.json")  # nanollm's own file goes first
    assert load_tokenizer(own).to_dict() == ours_trained.to_dict()


def test_prepare_encodes_with_a_tokenizer_folder_or_ranks_file(trained, tmp_path):
    from nanollm.prepare import load_prepared, prepare

    _, folder = trained
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(generated_text(seed=1, pieces=300), encoding="utf-8")
    for name, spec in [("folder", folder), ("vocab", folder / "vocab.json")]:
        meta = prepare(corpus, tmp_path / name, tokenizer=spec, val_fraction=0.1)
        data = load_prepared(tmp_path / name)
        assert meta["vocab_size"] == 3000 and data["tokenizer"].to_dict() == tf.read_tokenizer(folder).to_dict()
    with pytest.raises(ValueError, match="is neither 'char', 'bpe' nor a saved tokenizer.json"):
        prepare(corpus, tmp_path / "x", tokenizer=tmp_path / "missing")


def test_tokenizer_bench_against_tiktoken(tmp_path, capsys):
    from nanollm.tools.tokenizer_bench import main

    path = tmp_path / "t.txt"
    path.write_text(generated_text(seed=2, pieces=400), encoding="utf-8")
    assert main(["--against", "tiktoken", "--text", str(path), "--vocab-size", "400", "--bytes", "20000"]) == 0
    out = capsys.readouterr().out
    assert "tiktoken:" in out and "ids identical: yes" in out and "MB/s" in out


# ---- errors: one line, naming the file ----------------------------------------------------------

def hf_json(folder, **changes):
    """The trained tokenizer.json with top-level or model keys changed (keys "model.x")."""
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    for key, value in changes.items():
        where, _, name = key.rpartition("__")
        (data["model"] if where == "model" else data)[name] = value
    return data


@pytest.mark.parametrize("changes, message", [
    ({"normalizer": {"type": "NFC"}}, "normalizer NFC: nanollm applies no normalizer"),
    ({"pre_tokenizer": {"type": "Whitespace"}}, "pre_tokenizer Whitespace is not GPT-2's"),
    ({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}},
     "pre_tokenizer ByteLevel with add_prefix_space=True is not GPT-2's"),
    ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{N}{1,3}"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}},
     r"Split on '\\\\p\{N\}\{1,3\}'"),
    ({"model__dropout": 0.1}, "BPE dropout 0.1 makes encoding random"),
    ({"model__continuing_subword_prefix": "##"}, "continuing_subword_prefix '##'"),
    ({"model__end_of_word_suffix": "</w>"}, "end_of_word_suffix '</w>'"),
    ({"model__byte_fallback": True}, "byte_fallback is a SentencePiece-style BPE"),
    ({"model__type": "WordPiece"}, "model 'WordPiece': nanollm reads only byte-level BPE"),
    ({"post_processor": {"type": "TemplateProcessing", "single": [], "pair": [], "special_tokens": {}}},
     "post_processor TemplateProcessing adds or changes tokens"),
    ({"decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True}}, "decoder WordPiece"),
    ({"truncation": {"max_length": 8}}, "'truncation' is set"),
    ({"added_tokens": [{"id": 0, "content": EOT, "lstrip": True}]}, "added token '<|endoftext|>' has lstrip"),
    ({"model__merges": ["Ġ zzzq"]}, r"merge 0 \(' ' \+ 'zzzq'\) needs the token 'zzzq', which is not in"),
    ({"model__merges": ["a b c"]}, "merge 0 is 'a b c', not \"left right\""),
    ({"model__vocab": {"a b": 2}}, "token 2 'a b' is not in GPT-2's byte-level spelling"),
])
def test_tokenizer_json_we_cannot_reproduce_is_refused_in_one_line(trained, tmp_path, changes, message):
    _, folder = trained
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(hf_json(folder, **changes)), encoding="utf-8")
    for reader in (tf.load_hf_tokenizer_json, load_tokenizer):
        with pytest.raises(ValueError, match=r"bad\.json.*" + message) as info:
            reader(path)
        assert "\n" not in str(info.value)


def test_missing_bytes_and_bad_vocabularies_are_one_line_errors(trained, tmp_path):
    _, folder = trained
    data = hf_json(folder)
    del data["model"]["vocab"]["Ā"]  # byte 0x00: its id is left without a token
    bad = tmp_path / "gap.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"gap\.json: no token has id \d+; ids must run from 0 to 2999"):
        load_tokenizer(bad)
    with pytest.raises(ValueError, match=r"bytes: no token is the single byte 0xff \(1 of the 256 bytes are missing\)"):
        BPETokenizer.from_vocab([bytes([b]) for b in range(255)], [], source="bytes")
    cases = {
        "lonely.json": (json.dumps({"Ġ": 0}), r"lonely\.json is a vocab.json, but no merges.txt or vocab.bpe is "),
        "notes.txt": ("just some words\n", r"notes\.txt' is no tokenizer nanollm reads; give nanollm's tokenizer JSON"),
        "list.json": ("[1, 2]", r"list\.json' is JSON but no tokenizer nanollm reads"),
        "bad.tiktoken": ("IQ== 0\nnot-a-line\n", r"bad\.tiktoken line 2: b'not-a-line' is not \"base64-token rank\""),
        "b64.tiktoken": ("IQ== 0\n!!!! 1\n", r"b64\.tiktoken line 2: b'!!!!' is not base64"),
        "gap.tiktoken": ("".join(f"{base64.b64encode(bytes([b])).decode()} {b + 1}\n" for b in range(256)),
                         r"gap\.tiktoken: id 0 has no token"),
        "twice.tiktoken": ("IQ== 0\nIQ== 1\n", r"twice\.tiktoken line 2: token '!' already has rank 0"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
        with pytest.raises(ValueError, match=message) as info:
            load_tokenizer(tmp_path / name)
        assert "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"folder '.*empty' holds no tokenizer nanollm reads"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"tokenizer file '.*nothing' does not exist"):
        load_tokenizer(tmp_path / "nothing")


def test_what_tokenizer_json_cannot_hold_is_a_one_line_error(tmp_path):
    # A hand-written nanollm file may make the same bytes twice (training never does): vocab.json cannot say so.
    twice = BPETokenizer.from_dict({"kind": "bpe", "format_version": 1, "pattern": "gpt2", "special_tokens": {},
                                    "merges": [[97, 98], [256, 99], [98, 99], [97, 258]]})
    assert twice.token_bytes(257) == twice.token_bytes(259) == b"abc"
    with pytest.raises(ValueError, match=r"saving .*t\.json: ids 257 and 259 are both the token 'abc'"):
        tf.save_hf_tokenizer_json(twice, tmp_path / "t.json")
    with pytest.raises(ValueError, match="lone surrogate"):
        tf.save_hf_tokenizer_json(CharTokenizer("ab\ud800"), tmp_path / "c.json")
    with pytest.raises(ValueError, match="byte_level_tokens needs a BPETokenizer, got a CharTokenizer"):
        tf.byte_level_tokens(CharTokenizer("ab"))
    with pytest.raises(ValueError, match="vocabulary: ids 97 and 256 are both the token 'a'"):
        BPETokenizer.from_vocab([bytes([b]) for b in range(256)] + [b"a"], [], {})
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda d: {"merge_rule": "bytes"}, "merge_rule 'bytes'; known: merges, ranks"),
    (lambda d: {"tokens": "abc"}, "no 'tokens' list of strings"),
    (lambda d: {"merges": [[0, 9999]]}, r"merge 0 is \[0, 9999\], not a \[left id, right id\] pair"),
    (lambda d: {"tokens": d["tokens"][:2] + ["a b"] + d["tokens"][3:]}, "token 2 'a b' is not in GPT-2's byte-level"),
    (lambda d: {"tokens": d["tokens"][:-1]}, r"merge \d+ \(.*\) needs the token '\w+', which is not in the vocab"),
])
def test_malformed_version_2_files_name_the_file(trained, tmp_path, change, message):
    _, folder = trained
    data = tf.read_tokenizer(folder).to_dict()
    path = tmp_path / "v2.json"
    path.write_text(json.dumps({**data, **change(data)}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"v2\.json.*" + message):
        load_tokenizer(path)
