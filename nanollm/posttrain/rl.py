"""`nanollm rl`: post-train a model on a verifiable task and measure it before and after.

    run_rl("grpo", "addition", out="runs/rl-addition", init_from="runs/sft", overrides=[{...}])

1. The start: init_from (a checkpoint or run folder with its tokenizer), or, without one, a
   supervised warm-up made here: sft_steps steps of the `small` preset on the task's training
   examples (instruction data, answers alone in the loss) in OUT/warmup. Reinforcement
   learning can only sharpen what a model already does sometimes: a model that never writes
   the answer's format gets no reward to learn from, so a new skill needs supervised examples
   first.
2. The held-out exact-match reward (greedy decoding, prompts no training prompt shares) of the
   start: reward_before.
3. The algorithm: grpo (sampled groups, the task's reward), ppo (the same samples, advantages
   from a value head), dpo (the task's preference pairs: the right answer against a corrupted
   one) in OUT, with OUT/checkpoint_final.npz at the end.
4. The same held-out reward after: reward_after; OUT/rl_results.json holds both, the steps, the
   time and the config.
"""

import json
import time
from pathlib import Path

import numpy as np

from nanollm.checkpoint import find_checkpoint, load_checkpoint
from nanollm.config import resolve
from nanollm.instruct import END_OF_TEXT, chat_prompt
from nanollm.posttrain.dpo import train_dpo
from nanollm.posttrain.grpo import train_grpo
from nanollm.posttrain.ppo import train_ppo
from nanollm.posttrain.rollouts import sample_group
from nanollm.posttrain.tasks import get_task, heldout_accuracy, preference_pairs, reward_fn, supervised_examples
from nanollm.textfiles import write_json_atomically

ALGORITHMS = ("grpo", "ppo", "dpo")
SFT_STEPS = 1500        # the warm-up's steps of the small preset when there is no init_from
HELDOUT_PROMPTS = 200   # held-out prompts scored before and after
# What `nanollm rl` trains with unless told otherwise. A policy gradient is mostly noise (most
# groups agree and teach nothing), and AdamW scales any gradient to steps of about the learning
# rate, so the supervised default (1e-3) walks a good policy away: measured on addition from an
# 83% warm-up, 3e-4 fell to 14.5% within 300 GRPO steps, 1e-5 rose to 91%.
RL_DEFAULTS = {"learning_rate": 1e-5, "lr_schedule": "constant", "warmup_steps": 0,
               "weight_decay": 0.0, "num_steps": 500, "eval_interval": 100, "log_interval": 10}
# GRPO's measured recipe on addition (TRAINING.md, "Post-training"): from a 55% warm-up, 8 prompts x
# 8 responses a step at temperature 0.7 and lr 2e-5 reached 77.5% held-out in 1500 steps (221 s on
# 2 cores); seed 7 went 53.5% -> 75.5%, temperature 0.5 55% -> 76.5%. At temperature 1 and lr 1e-5
# the same start reached 67% in 1000 steps.
ALGORITHM_DEFAULTS = {"grpo": {"learning_rate": 2e-5, "rl_temperature": 0.7, "rl_prompts_per_step": 8,
                               "num_steps": 1500}}
TRAIN_PROMPTS = 2000    # the task's training prompts (GRPO) or preference pairs (DPO)


def greedy_decoder(model, tokenizer, max_new_tokens):
    """prompt text -> the model's greedy completion, up to its <|endoftext|>."""
    stop_id = tokenizer.special_tokens.get(END_OF_TEXT)

    def generate(prompt):
        ids = tokenizer.encode(prompt, allow_special=True)
        sequences, lengths = sample_group(model, ids, 1, max_new_tokens, np.random.default_rng(0), temperature=0,
                                          stop_id=stop_id)
        return tokenizer.decode(sequences[0, len(ids):len(ids) + int(lengths[0])])

    return generate


def supervised_warmup(task, out, sft_steps, seed, echo=print):
    """The small preset trained sft_steps steps on the task's training examples: its run folder."""
    from nanollm.launch import launch_training

    folder = Path(out) / "warmup"
    data = Path(out) / "warmup.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    records = supervised_examples(task, TRAIN_PROMPTS, seed=seed)
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    echo(f"supervised warm-up: {sft_steps} steps of the small preset on {len(records)} {task.name} examples "
         f"(a new skill needs examples before rewards can sharpen it) -> {folder}")
    launch_training(data=str(data), preset="small", out=str(folder), num_samples=0, echo=echo,
                    overrides=[{"num_steps": sft_steps, "seed": seed, "eval_interval": 0, "log_interval": 250}],
                    sources=["nanollm rl's warm-up"])
    return folder


def run_rl(algorithm, task, out, init_from=None, overrides=(), sft_steps=SFT_STEPS, heldout=HELDOUT_PROMPTS,
           echo=print):
    """Steps 1-4 of the module docstring; returns the rl_results.json dict."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"--algorithm {algorithm!r} is not available; choose one of {', '.join(ALGORITHMS)}")
    task = get_task(task)
    out = Path(out)
    cfg = resolve(RL_DEFAULTS, ALGORITHM_DEFAULTS.get(algorithm, {}), *overrides, {"checkpoint_dir": str(out)})
    if (out / "rl_results.json").exists() and not cfg["overwrite"]:
        raise FileExistsError(f"{out} holds an earlier rl run (rl_results.json); choose another --out or pass "
                              "--overwrite=true")
    if init_from is None:
        init_from = supervised_warmup(task, out, sft_steps, cfg["seed"], echo)
    start = load_checkpoint(find_checkpoint(init_from))
    model, tokenizer = start["model"], start["tokenizer"]
    if tokenizer is None or END_OF_TEXT not in tokenizer.special_tokens:
        raise ValueError(f"{init_from} needs a tokenizer with {END_OF_TEXT} (a chat model, as nanollm train makes "
                         "from instruction data); train the warm-up on the task's examples first")
    max_new = cfg["rl_max_new_tokens"]
    before, _ = heldout_accuracy(greedy_decoder(model, tokenizer, max_new), task, heldout, seed=cfg["seed"])
    echo(f"held-out exact match before {algorithm}: {before:.1%} ({heldout} prompts)")

    def evaluate(current):
        return {"heldout_reward": heldout_accuracy(greedy_decoder(current, tokenizer, max_new), task,
                                                   min(heldout, 50), seed=cfg["seed"])[0]}

    tick = time.perf_counter()
    settings = cfg  # --resume_from=OUT/checkpoint_step_N.npz continues an interrupted run (the trainer resumes it)
    if algorithm in ("grpo", "ppo"):
        prompts = [chat_prompt(user) for user, _ in task.prompts("train", TRAIN_PROMPTS, seed=cfg["seed"])]
        trainer = train_grpo if algorithm == "grpo" else train_ppo
        results = trainer(model, prompts, reward_fn(task), settings, tokenizer=tokenizer, evaluate=evaluate)
    else:
        pairs = preference_pairs(task, TRAIN_PROMPTS, seed=cfg["seed"])
        results = train_dpo(model, pairs, settings, tokenizer=tokenizer, evaluate=evaluate)
    seconds = time.perf_counter() - tick
    after, _ = heldout_accuracy(greedy_decoder(model, tokenizer, max_new), task, heldout, seed=cfg["seed"])
    echo(f"held-out exact match after {algorithm}: {after:.1%} ({heldout} prompts), {results['steps']} steps in "
         f"{seconds:.0f} s")
    record = {"algorithm": algorithm, "task": task.name, "init_from": str(init_from), "reward_before": before,
              "reward_after": after, "heldout_prompts": heldout, "steps": results["steps"],
              "seconds": seconds, "diverged": results["diverged"], "checkpoint": results["checkpoints"]["final"],
              "config": results["config"]}
    write_json_atomically(out / "rl_results.json", record, indent=2)
    return record
