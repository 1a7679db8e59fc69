"""The post-training trainers on toy tasks a tiny model learns in seconds: GRPO online and
offline, DPO; bit-exact resume (rollouts included), the NaN guard, LoRA, metrics.jsonl."""

import json

import numpy as np
import pytest

from nanollm import CharTokenizer, TransformerLanguageModel, load_checkpoint
from nanollm.instruct import CHAT_SPECIAL_TOKENS, chat_prompt
from nanollm.metrics import read_metrics
from nanollm.posttrain.dpo import train_dpo
from nanollm.posttrain.grpo import read_groups, train_grpo, train_grpo_offline
from nanollm.posttrain.rollouts import Rows, response_logprobs, sample_group

TOKENIZER = CharTokenizer(special_tokens=CHAT_SPECIAL_TOKENS).build_vocab(text="abcdefgh \n")
PROMPTS = [chat_prompt(f"say {c}") for c in "abcd"]
QUICK = {"learning_rate": 1e-2, "rl_group_size": 8, "rl_prompts_per_step": 4, "rl_max_new_tokens": 3,
         "batch_size": 16, "log_interval": 1, "warmup_steps": 0, "lr_schedule": "constant"}


def tiny(seed=0):
    return TransformerLanguageModel(TOKENIZER.vocab_size, embedding_dim=32, num_layers=2, num_heads=4,
                                    max_seq_len=32, seed=seed)


def share_of_a(prompt, completion):
    """The share of a completion's characters that are "a" (special tokens are not characters)."""
    text = completion
    for special in CHAT_SPECIAL_TOKENS:
        text = text.replace(special, "#")
    return text.count("a") / 3


def test_sample_group_is_reproducible_and_stops_at_the_stop_token():
    model = tiny()
    prompt = TOKENIZER.encode(PROMPTS[0])
    first = sample_group(model, prompt, 6, 5, np.random.default_rng(1), stop_id=TOKENIZER.special_tokens["<|endoftext|>"])
    again = sample_group(model, prompt, 6, 5, np.random.default_rng(1), stop_id=TOKENIZER.special_tokens["<|endoftext|>"])
    np.testing.assert_array_equal(first[0], again[0])
    sequences, lengths = first
    assert (sequences[:, :len(prompt)] == prompt).all() and (lengths >= 1).all() and (lengths <= 5).all()
    greedy = sample_group(model, prompt, 3, 5, np.random.default_rng(2), temperature=0)[0]
    assert (greedy == greedy[0]).all()  # temperature 0: every row the argmax
    rows = Rows.of(sequences, [len(prompt)] * 6, lengths)
    assert rows.mask.sum(axis=1).tolist() == lengths.tolist()
    assert rows.mask[:, len(prompt) - 1].all() and not rows.mask[:, :len(prompt) - 1].any()


def test_grpo_raises_the_reward_and_logs_every_figure(tmp_path):
    results = train_grpo(tiny(), PROMPTS, share_of_a, {**QUICK, "num_steps": 25, "rl_beta": 0.04,
                                                       "checkpoint_dir": str(tmp_path)}, tokenizer=TOKENIZER)
    history = results["history"]
    assert history[-1]["reward_mean"] > history[0]["reward_mean"] + 0.3, [h["reward_mean"] for h in history]
    assert {"reward_mean", "reward_std", "kl", "clip_fraction", "entropy", "response_length", "loss",
            "grad_norm"} <= set(history[-1])
    assert history[-1]["kl"] > 0 and read_metrics(tmp_path / "metrics.jsonl") == history
    assert (tmp_path / "reference_weights.npz").exists() and (tmp_path / "checkpoint_final.npz").exists()


def test_grpo_resume_is_bit_exact_rollouts_included(tmp_path):
    settings = {**QUICK, "num_steps": 6, "rl_inner_epochs": 2}
    straight = tiny()
    train_grpo(straight, PROMPTS, share_of_a, {**settings, "checkpoint_dir": str(tmp_path / "a")}, tokenizer=TOKENIZER)
    interrupted = tiny()
    train_grpo(interrupted, PROMPTS, share_of_a, {**settings, "num_steps": 3, "checkpoint_dir": str(tmp_path / "b")},
               tokenizer=TOKENIZER)
    resumed = tiny(seed=9)  # its own weights are replaced by the checkpoint's
    train_grpo(resumed, PROMPTS, share_of_a, {**settings, "checkpoint_dir": str(tmp_path / "b"),
                                              "resume_from": str(tmp_path / "b" / "checkpoint_final.npz")},
               tokenizer=TOKENIZER)
    for name, value in straight.params.items():
        assert np.array_equal(resumed.params[name], value), name
    assert read_metrics(tmp_path / "a" / "metrics.jsonl")[-1]["reward_mean"] == \
        read_metrics(tmp_path / "b" / "metrics.jsonl")[-1]["reward_mean"]


def test_grpo_with_lora_trains_the_adapters_alone():
    model = tiny()
    base = {name: value.copy() for name, value in model.params.items()}
    train_grpo(model, PROMPTS, share_of_a, {**QUICK, "num_steps": 3, "lora_rank": 2}, tokenizer=TOKENIZER)
    assert model.lora is not None
    for name, value in base.items():
        assert np.array_equal(model.params[name], value), name  # the base weights are frozen
    assert any(not np.all(model.params[name] == 0) for name in model.trainable if name.endswith("lora_B"))


def test_grpo_stops_at_a_non_finite_reward_without_updating():
    model = tiny()
    before = {name: value.copy() for name, value in model.params.items()}
    results = train_grpo(model, PROMPTS, lambda prompt, completion: float("nan"), {**QUICK, "num_steps": 3},
                         tokenizer=TOKENIZER)
    assert results["diverged"] and "diverged at step 1" in results["stopped_because"]
    for name, value in before.items():
        assert np.array_equal(model.params[name], value), name


def test_offline_grpo_raises_the_better_responses_probability(tmp_path):
    groups = [{"prompt": p, "responses": ["a<|endoftext|>", "b<|endoftext|>", "c<|endoftext|>"],
               "rewards": [1.0, 0.0, 0.0]} for p in PROMPTS]
    path = tmp_path / "groups.jsonl"
    path.write_text("".join(json.dumps(g) + "\n" for g in groups), encoding="utf-8")
    model = tiny()

    def logprob_of(answer):
        prompt = TOKENIZER.encode(PROMPTS[0])
        ids = TOKENIZER.encode(answer)
        rows = Rows.of(np.array([prompt + ids]), [len(prompt)], [len(ids)])
        return float((response_logprobs(model, rows) * rows.mask).sum())

    before = logprob_of("a<|endoftext|>") - logprob_of("b<|endoftext|>")
    train_grpo_offline(model, path, {**QUICK, "num_steps": 10, "rl_beta": 0.0}, tokenizer=TOKENIZER)
    assert logprob_of("a<|endoftext|>") - logprob_of("b<|endoftext|>") > before + 1.0
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "responses": ["a"], "rewards": [1, 2]}\n')
    with pytest.raises(ValueError, match="bad.jsonl line 1: a group is"):
        read_groups(tmp_path / "bad.jsonl")


def test_dpo_prefers_the_chosen_answers_and_resumes_bit_exactly(tmp_path):
    pairs = [{"prompt": p, "chosen": p.split("say ")[1][0] + "<|endoftext|>", "rejected": "h<|endoftext|>"}
             for p in PROMPTS]
    settings = {**QUICK, "num_steps": 6, "batch_size": 4, "dpo_beta": 0.5}
    straight = tiny()
    results = train_dpo(straight, pairs, {**settings, "checkpoint_dir": str(tmp_path / "a")}, tokenizer=TOKENIZER)
    history = results["history"]
    assert history[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)  # the policy is the reference at first
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["reward_accuracy"] == 1.0
    resumed = tiny()
    train_dpo(resumed, pairs, {**settings, "num_steps": 3, "checkpoint_dir": str(tmp_path / "b")}, tokenizer=TOKENIZER)
    train_dpo(resumed, pairs, {**settings, "checkpoint_dir": str(tmp_path / "b"),
                               "resume_from": str(tmp_path / "b" / "checkpoint_final.npz")}, tokenizer=TOKENIZER)
    for name, value in straight.params.items():
        assert np.array_equal(resumed.params[name], value), name
    with pytest.raises(ValueError, match="batch_size must be even"):
        train_dpo(tiny(), pairs, {**settings, "batch_size": 3}, tokenizer=TOKENIZER)
    assert load_checkpoint(tmp_path / "a" / "checkpoint_final.npz")["step"] == 6


def test_nanollm_rl_warms_up_post_trains_and_reports_before_and_after(tmp_path):
    """The command end to end, shortened: the supervised warm-up it makes, DPO and GRPO from it,
    rl_results.json, a checkpoint `nanollm sample` reads, and an earlier run kept."""
    import subprocess
    import sys

    def nanollm(*args, check=True):
        done = subprocess.run([sys.executable, "-m", "nanollm", *map(str, args)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert not check or done.returncode == 0, done.stderr[-2000:]
        return done

    quick = ["--num_steps=2", "--heldout", "5", "--rl_group_size=4", "--rl_prompts_per_step=2", "--batch_size=8"]
    nanollm("rl", "--algorithm", "dpo", "--task", "capitalise", "--out", "dpo", "--sft-steps", "20", *quick)
    record = json.loads((tmp_path / "dpo" / "rl_results.json").read_text())
    assert record["algorithm"] == "dpo" and record["steps"] == 2 and 0 <= record["reward_before"] <= 1
    assert {"reward_after", "seconds", "config", "heldout_prompts"} <= set(record)
    assert (tmp_path / "dpo" / "warmup" / "checkpoint_final.npz").exists()
    nanollm("rl", "--algorithm", "grpo", "--task", "capitalise", "--init-from", "dpo/warmup", "--out", "grpo", *quick)
    grpo = json.loads((tmp_path / "grpo" / "rl_results.json").read_text())
    assert grpo["init_from"] == "dpo/warmup"
    # GRPO's measured recipe where the command line is silent; DPO keeps the shared defaults
    assert (grpo["config"]["learning_rate"], grpo["config"]["rl_temperature"]) == (2e-5, 0.7)
    assert (record["config"]["learning_rate"], record["config"]["rl_temperature"]) == (1e-5, 1.0)
    assert grpo["config"]["rl_prompts_per_step"] == 2  # the command line wins
    sampled = nanollm("sample", "--checkpoint", "grpo", "--prompt", "hello", "--max-new-tokens", "5",
                      "--num-samples", "1")
    assert sampled.stdout.strip()
    again = nanollm("rl", "--algorithm", "grpo", "--task", "capitalise", "--init-from", "dpo/warmup", "--out", "grpo",
                    *quick, check=False)
    assert again.returncode != 0 and "holds an earlier rl run" in again.stderr and len(again.stderr.splitlines()) == 1


def test_value_head_gradients_check_through_the_whole_model():
    """d/dW of sum(values * weights) + sum(logits * other weights), float64, against central
    differences: the head's own weights and a trunk weight the values reach through."""
    from nanollm.gradcheck import check_gradients

    model = TransformerLanguageModel(TOKENIZER.vocab_size, embedding_dim=8, num_layers=1, num_heads=2,
                                     max_seq_len=8, dtype="float64", seed=0).add_value_head(seed=1)
    assert model.trainable[-2:] == ["value_head.weight", "value_head.bias"]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, TOKENIZER.vocab_size, size=(2, 5))
    value_weights = rng.standard_normal((2, 5))
    logit_weights = rng.standard_normal((2, 5, TOKENIZER.vocab_size))

    def loss():
        logits, _ = model.forward(idx)
        return float((model.values * value_weights).sum() + (logits * logit_weights).sum())

    loss()
    grads = model.backward(dlogits=logit_weights, dvalues=value_weights)
    names = ["value_head.weight", "value_head.bias", "ln_f.weight", "blocks.0.mlp.fc.weight"]
    errors = check_gradients(loss, {n: model.params[n] for n in names}, {n: grads[n] for n in names})
    assert max(errors.values()) < 1e-6, errors
    model.forward(idx)
    assert not model.backward(dlogits=logit_weights)["value_head.weight"].any()  # no dvalues: no gradient


def test_ppo_raises_the_reward_resumes_bit_exactly_and_exports_the_policy_alone(tmp_path):
    from nanollm.posttrain.ppo import train_ppo

    settings = {**QUICK, "ppo_value_coef": 0.5, "ppo_entropy_coef": 0.01}
    model = tiny()
    results = train_ppo(model, PROMPTS, share_of_a, {**settings, "num_steps": 25, "checkpoint_dir": str(tmp_path / "a")},
                        tokenizer=TOKENIZER)
    history = results["history"]
    assert history[-1]["reward_mean"] > history[0]["reward_mean"] + 0.3, [h["reward_mean"] for h in history]
    assert {"value_loss", "value_mean", "entropy", "kl", "clip_fraction"} <= set(history[-1])
    assert model.value_head and load_checkpoint(tmp_path / "a" / "checkpoint_final.npz")["model"].value_head

    straight, resumed = tiny(), tiny()
    train_ppo(straight, PROMPTS, share_of_a, {**settings, "num_steps": 4, "checkpoint_dir": str(tmp_path / "b")},
              tokenizer=TOKENIZER)
    train_ppo(resumed, PROMPTS, share_of_a, {**settings, "num_steps": 2, "checkpoint_dir": str(tmp_path / "c")},
              tokenizer=TOKENIZER)
    train_ppo(tiny(), PROMPTS, share_of_a, {**settings, "num_steps": 4, "checkpoint_dir": str(tmp_path / "c"),
                                            "resume_from": str(tmp_path / "c" / "checkpoint_final.npz")},
              tokenizer=TOKENIZER)
    final = load_checkpoint(tmp_path / "c" / "checkpoint_final.npz")["model"]
    for name, value in straight.params.items():
        assert np.array_equal(final.params[name], value), name

    pytest.importorskip("gguf", reason="the export check needs gguf")
    from nanollm.interop import export_gguf, import_gguf

    export_gguf(tmp_path / "a" / "checkpoint_final.npz", tmp_path / "policy.gguf")
    policy = load_checkpoint(import_gguf(tmp_path / "policy.gguf", tmp_path / "policy.npz"))["model"]
    assert not policy.value_head and "value_head.weight" not in policy.params
