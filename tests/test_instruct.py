"""Instruction data: both JSONL formats, the chat template, masked-loss positions, bad lines."""

import json
from pathlib import Path

import numpy as np
import pytest

from nanollm import GPT, BPETokenizer, CharTokenizer, train_with_config
from nanollm.corpus import synthetic_instructions
from nanollm.instruct import (CHAT_SPECIAL_TOKENS, chat_prompt, encode_conversation, read_instructions, render_text)
from nanollm.ops.cross_entropy import IGNORE_INDEX
from nanollm.prepare import load_prepared, prepare

SAMPLES = Path(__file__).parent.parent / "data" / "instruct"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_alpaca_and_sharegpt_give_the_same_conversation(tmp_path):
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Reverse the word.", "input": "cat", "output": "tac"},
                                                {"instruction": "Say hi.", "output": "hi"}])
    sharegpt = write_jsonl(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "human", "value": "Reverse the word.\n\ncat"}, {"from": "gpt", "value": "tac"}]},
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "user", "value": "Say hi."},
                           {"from": "assistant", "value": "hi"}, {"from": "human", "value": "Again."},
                           {"from": "gpt", "value": "hi"}]}])
    (first_a, second_a), format_a = read_instructions(alpaca)
    (first_s, second_s), format_s = read_instructions(sharegpt)
    assert (format_a, format_s) == ("alpaca", "sharegpt") and first_a == first_s
    assert second_a == [("user", "Say hi."), ("assistant", "hi")]
    assert second_s[0] == ("system", "Be brief.") and len(second_s) == 5
    assert render_text(first_a) == "<|user|>\nReverse the word.\n\ncat\n<|assistant|>\ntac<|endoftext|>"
    assert chat_prompt("Say hi.") == "<|user|>\nSay hi.\n<|assistant|>\n"


@pytest.mark.parametrize("special", [True, False], ids=["markers-special", "markers-as-text"])
def test_loss_mask_covers_exactly_the_answers_and_end_tokens(special):
    conversation = [("system", "Be brief."), ("user", "Say hi."), ("assistant", "hi"), ("user", "More?"),
                    ("assistant", "no")]
    text = render_text(conversation)
    tok = CharTokenizer(sorted(set(text)), special_tokens=CHAT_SPECIAL_TOKENS if special else ())
    ids, mask = encode_conversation(tok, conversation)
    assert tok.decode(ids) == text
    trained = [tok.decode(ids[i:j]) for i, j in _runs(mask)]
    assert trained == ["hi<|endoftext|>", "no<|endoftext|>"]
    if special:  # the markers are single tokens
        assert len(ids) == len(text) - sum(text.count(m) * (len(m) - 1) for m in CHAT_SPECIAL_TOKENS)
    user_text_with_marker = tok.encode("<|user|>", allow_special=False)
    assert len(user_text_with_marker) == len("<|user|>")  # a user's words never become a marker


def _runs(mask):
    """(start, end) of each run of ones in a 0/1 array."""
    edges = np.diff(np.concatenate([[0], mask, [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def test_malformed_lines_are_all_reported_with_their_numbers(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([
        json.dumps({"instruction": "ok", "output": "fine"}),
        "{not json",
        json.dumps({"instruction": "no output"}),
        "",
        json.dumps(["a", "list"]),
        json.dumps({"instruction": "x", "input": 3, "output": "y"}),
    ]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        read_instructions(path)
    message = str(error.value)
    assert "bad.jsonl: 5 malformed lines (alpaca)" in message and "\n" not in message
    for expected in ("line 2: not valid JSON", "line 3: Alpaca record needs a string 'output'", "line 4: blank line",
                     "line 5: expected a JSON object, got list", "line 6: Alpaca 'input' must be a string"):
        assert expected in message


@pytest.mark.parametrize("record, message", [
    ({"conversations": []}, "ShareGPT record needs a non-empty list 'conversations'"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "conversations\\[0\\] has from='robot'"),
    ({"conversations": [{"from": "human", "value": "x"}]}, "ShareGPT record has no 'gpt'/'assistant' turn"),
    ({"conversations": [{"from": "human"}]}, "conversations\\[0\\] needs a string 'value'"),
    ({"prompt": "x"}, "neither Alpaca .* nor ShareGPT"),
])
def test_sharegpt_and_unknown_records(tmp_path, record, message):
    with pytest.raises(ValueError, match="line 1: " + message):
        read_instructions(write_jsonl(tmp_path / "x.jsonl", [record]))


def test_instruction_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_instructions(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="instruction format 'csv' is unknown"):
        read_instructions(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "output": "b"}]), format="csv")
    (tmp_path / "latin.jsonl").write_bytes(b'{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(ValueError, match=r"is not UTF-8 text: byte 0xe9 at byte offset 20 \(line 1, column 21\)"):
        read_instructions(tmp_path / "latin.jsonl")


@pytest.mark.parametrize("sample", ["alpaca_sample.jsonl", "sharegpt_sample.jsonl"])
def test_prepare_instruction_samples_writes_masks(sample, tmp_path):
    path = SAMPLES / sample
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout")
    meta = prepare(path, tmp_path / "prep", tokenizer="char", val_fraction=0.1)
    assert meta["instruction_format"] == sample.split("_")[0]
    files = sorted(p.name for p in (tmp_path / "prep").iterdir())
    assert files == ["meta.json", "tokenizer.json", "train.bin", "train_mask.bin", "val.bin", "val_mask.bin"]
    data = load_prepared(tmp_path / "prep")
    tok, train = data["tokenizer"], data["train"]
    assert tok.special_tokens.keys() == set(CHAT_SPECIAL_TOKENS)
    end = tok.special_tokens["<|endoftext|>"]
    records = synthetic_instructions(200, seed=0)
    answers = [tok.decode(train.tokens[i:j]) for i, j in _runs(np.asarray(train.loss_mask))]
    assert answers[:3] == [r["output"] + "<|endoftext|>" for r in records[:3]]
    assert int((np.asarray(train.tokens) == end).sum()) == 180 and int((np.asarray(data["val"].tokens) == end).sum()) == 20


def test_masked_training_only_learns_the_answers(tmp_path):
    """The loss training reports is the mean over answer tokens: equal to a hand-masked loss."""
    path = write_jsonl(tmp_path / "d.jsonl", synthetic_instructions(60, seed=1))
    prepare(path, tmp_path / "prep", tokenizer="bpe", vocab_size=300, val_fraction=0.2)
    data = load_prepared(tmp_path / "prep")
    tok = data["tokenizer"]
    assert isinstance(tok, BPETokenizer) and tok.encode("<|assistant|>") == [tok.special_tokens["<|assistant|>"]]
    model = GPT(vocab_size=tok.vocab_size, embedding_dim=32, num_layers=1, num_heads=2, max_seq_len=32, seed=0)
    inputs, targets = data["train"].windows([0, 5], 32)
    masked = np.asarray(data["train"].loss_mask)[np.arange(32)[None, :] + np.array([[1], [6]])]
    assert ((targets == IGNORE_INDEX) == (masked == 0)).all() and (masked == 0).any() and (masked == 1).any()
    _, loss = model.forward(inputs, targets)
    logits, _ = model.forward(inputs)
    logits = np.asarray(logits, dtype=np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    keep = targets != IGNORE_INDEX
    by_hand = -logp[keep, targets[keep]].mean()
    assert float(loss) == pytest.approx(by_hand, rel=1e-5)
    results = train_with_config(model, data["train"], {"num_steps": 40, "batch_size": 8, "learning_rate": 3e-3,
                                                       "eval_interval": 0, "log_interval": 0},
                                val_tokens=data["val"], tokenizer=tok)
    assert results["final_val_loss"] < results["history"][0]["loss"]


def test_accumulating_masked_micro_batches_equals_one_big_batch():
    """Micro-batches with different numbers of answer tokens are weighted by those numbers."""
    conversations = [[("user", "Say " + "x" * (i % 7)), ("assistant", "y" * (1 + i % 5))] for i in range(40)]
    tok = CharTokenizer(sorted(set("".join(render_text(c) for c in conversations))), special_tokens=CHAT_SPECIAL_TOKENS)
    pieces = [encode_conversation(tok, c) for c in conversations]
    from nanollm.data import TokenDataset

    data = TokenDataset(np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces]))
    finals = []
    for batch_size, accumulate in ((6, 1), (2, 3)):
        model = GPT(vocab_size=tok.vocab_size, embedding_dim=16, num_layers=1, num_heads=2, max_seq_len=12,
                    dtype="float64", seed=0)
        train_with_config(model, data, {"num_steps": 3, "batch_size": batch_size, "grad_accum_steps": accumulate,
                                        "val_fraction": 0, "log_interval": 0, "learning_rate": 1e-2,
                                        "max_grad_norm": 0})
        finals.append(model.params)
    for name in finals[0]:
        np.testing.assert_allclose(finals[1][name], finals[0][name], rtol=1e-10, atol=1e-13, err_msg=name)
