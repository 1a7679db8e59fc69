"""Character tokenizer, the embedded corpus, sampling, and the first-run demo command."""


import pytest

from nanollm import GPT, CharTokenizer, generate_text
from nanollm.corpus import synthetic_text


def test_char_tokenizer_round_trip_save_and_load(tmp_path):
    tok = CharTokenizer().build_vocab("hello world\n")
    assert tok.vocab_size == 9 and tok.chars[0] == "\n"
    ids = tok.encode("lower hello")
    assert tok.decode(ids) == "lower hello"
    tok.save(tmp_path / "tok.json")
    assert CharTokenizer.load(tmp_path / "tok.json").encode("hello") == tok.encode("hello")


def test_char_tokenizer_builds_from_a_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcab", encoding="utf-8")
    assert CharTokenizer().build_vocab(str(path)).chars == ["a", "b", "c"]
    assert CharTokenizer().build_vocab(path).vocab_size == 3


def test_char_tokenizer_errors_name_the_problem(tmp_path):
    tok = CharTokenizer().build_vocab("abc")
    with pytest.raises(ValueError, match=r"character 'z' at position 2 is not in the vocabulary of 3"):
        tok.encode("abz")
    with pytest.raises(ValueError, match=r"token id 3 is outside the vocabulary \[0, 3\)"):
        tok.decode([0, 3])
    (tmp_path / "bad.json").write_text('{"kind": "bpe"}', encoding="utf-8")
    with pytest.raises(ValueError, match="is not a CharTokenizer"):
        CharTokenizer.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="non-empty text"):
        CharTokenizer().build_vocab("")


def test_synthetic_corpus_is_deterministic_and_varied():
    text = synthetic_text(20_000, seed=1)
    assert text == synthetic_text(20_000, seed=1) != synthetic_text(20_000, seed=2)
    assert len(text) >= 20_000 and text.endswith("\n")
    for marker in ("Q: ", " = ", " x ", "went to", "<|user|>\n", "<|assistant|>\n", "<|endoftext|>", "Monday"):
        assert marker in text, marker


@pytest.fixture
def tiny_model_and_tokenizer():
    tok = CharTokenizer().build_vocab("abcdefgh ")
    return GPT(vocab_size=tok.vocab_size, embedding_dim=16, num_layers=1, max_seq_len=8, seed=0), tok


def test_generate_text_greedy_seeded_and_cropped(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    greedy = generate_text(model, tok, "abc", max_length=5, temperature=0)
    assert greedy.startswith("abc") and len(greedy) == 8
    assert greedy == generate_text(model, tok, "abc", max_length=5, temperature=0, seed=123)
    sampled = generate_text(model, tok, "abc", max_length=20, temperature=1.5, seed=7)
    assert sampled == generate_text(model, tok, "abc", max_length=20, temperature=1.5, seed=7)
    long_prompt = "abcdefgh abcdefgh"  # longer than max_seq_len=8: cropped from the left, no error
    assert len(generate_text(model, tok, long_prompt, max_length=3, top_k=2, top_p=0.9, seed=0)) == 20
    assert model.training, "generation must restore the training mode"


def test_top_k_one_is_greedy(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    assert (generate_text(model, tok, "ab", 10, temperature=1.0, top_k=1, seed=3)
            == generate_text(model, tok, "ab", 10, temperature=0))


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1), "temperature must be >= 0"),
    (dict(top_k=0), "top_k must be >= 1"),
    (dict(top_p=0.0), "top_p must be in"),
])
def test_generate_rejects_bad_settings(tiny_model_and_tokenizer, kwargs, message):
    model, tok = tiny_model_and_tokenizer
    with pytest.raises(ValueError, match=message):
        generate_text(model, tok, "ab", 3, **kwargs)


def test_shipped_sample_files_are_the_generator_output():
    """data/ holds what data/prepare_sample.py writes: the files must not drift from it."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parent.parent / "data" / "prepare_sample.py"
    if not script.exists():
        pytest.skip(f"{script} is not in this checkout")
    spec = importlib.util.spec_from_file_location("prepare_sample", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = module.sample_files()
    assert len(files) == 3
    for path, text in files.items():
        assert path.read_text(encoding="utf-8") == text, f"{path} drifted; run python data/prepare_sample.py"
