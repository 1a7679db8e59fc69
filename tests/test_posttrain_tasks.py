"""Verifiable tasks: seeded draws, disjoint splits, rewards, DPO pairs, held-out accuracy."""

import random

import pytest

from nanollm.instruct import END_OF_TEXT, alpaca_conversation, chat_prompt, render_text
from nanollm.posttrain.tasks import (PARTIAL_CREDIT, SPLITS, TASKS, WORD_LIST, get_task, heldout_accuracy,
                                     preference_pairs, reward_fn, split_of, supervised_examples)

NAMES = list(TASKS)


def test_word_list_is_large_unique_and_never_a_palindrome():
    assert len(WORD_LIST) >= 300 and len(set(WORD_LIST)) == len(WORD_LIST)
    for word in WORD_LIST:
        assert word.isalpha() and word.islower() and word != word[::-1] and len(set(word)) > 1, word


@pytest.mark.parametrize("name", NAMES)
def test_draws_are_deterministic_per_seed(name):
    task = TASKS[name]
    for split in SPLITS:
        assert task.prompts(split, 50, seed=3) == task.prompts(split, 50, seed=3)
        assert task.prompts(split, 50, seed=3) != task.prompts(split, 50, seed=4)
    assert supervised_examples(name, 20, seed=1) == supervised_examples(name, 20, seed=1)
    assert preference_pairs(name, 20, seed=1) == preference_pairs(name, 20, seed=1)
    assert preference_pairs(name, 20, seed=1) != preference_pairs(name, 20, seed=2)


@pytest.mark.parametrize("name", NAMES)
def test_train_and_heldout_partition_every_example(name):
    """Exhaustive: each key of the task in exactly one split, and no prompt in both."""
    task = TASKS[name]
    train, heldout = task.split_keys("train"), task.split_keys("heldout")
    assert sorted(train + heldout) == sorted(task.keys()) and not set(train) & set(heldout)
    assert 0.1 < len(heldout) / len(task.keys()) < 0.3
    train_prompts = {user for user, _ in task.prompts("train")}
    heldout_prompts = {user for user, _ in task.prompts("heldout")}
    assert len(train_prompts) == len(train) and len(heldout_prompts) == len(heldout)
    assert not train_prompts & heldout_prompts


def test_addition_covers_all_pairs_and_holds_out_both_orders():
    task = TASKS["addition"]
    assert len(task.keys()) == 90 * 90
    for a, b in task.split_keys("heldout"):
        assert 10 <= a <= 99 and 10 <= b <= 99 and (b, a) in set(task.split_keys("heldout"))


def test_a_heldout_word_is_held_out_from_every_word_task():
    heldout = {word for word in WORD_LIST if split_of(word) == "heldout"}
    trained = {extra for name in ("reverse", "count_letters", "capitalise")
               for record in supervised_examples(name, 5000) for extra in [record["input"]]}
    assert heldout and not heldout & trained
    assert {word for word, _ in TASKS["count_letters"].split_keys("heldout")} == heldout


def test_count_past_the_split_repeats_only_after_using_every_example():
    task = TASKS["reverse"]
    size = len(task.split_keys("heldout"))
    drawn = task.prompts("heldout", 2 * size + 1, seed=5)
    assert len(set(drawn[:size])) == size and drawn[size:2 * size] == drawn[:size]
    assert task.prompts("heldout", None, seed=5) == drawn[:size]


@pytest.mark.parametrize("name", NAMES)
def test_the_answer_is_solved_from_the_prompt(name):
    task = TASKS[name]
    score = reward_fn(name)
    for user, answer in task.prompts("train", 200, seed=0):
        assert task.solve(user) == task.solve(chat_prompt(user)) == answer
        assert task.solve(chat_prompt(user, system="Be brief.")) == answer
        assert score(chat_prompt(user), answer + END_OF_TEXT) == 1.0


def test_formats_match_the_brief():
    assert TASKS["addition"].solve("Add the two numbers.\n\n34 and 58") == "34 + 58 = 92"
    assert TASKS["count_letters"].solve("Count the letter r in the word.\n\nstrawberry") == "3"
    assert TASKS["reverse"].solve("Reverse the word.\n\nlamp") == "pmal"
    assert TASKS["capitalise"].solve("Write the word in capital letters.\n\nlamp") == "LAMP"


@pytest.mark.parametrize("name, expected, partial, garbage", [
    ("addition", "34 + 58 = 92", ["34 + 58 = 93", "34 + 58 = 9", "34 + 58 = 920"],
     ["92", "58 + 34 = 92", "34 + 58 = -92", "34+58=92", "34 + 58 = 92.", "34 + 59 = 92", ""]),
    ("reverse", "pmal", ["lamp", "PMAL", "abcd"], ["pma", "pmall", "pm al", "pma1", "the word is pmal", ""]),
    ("count_letters", "3", ["2", "0", "12"], ["three", "-3", "3 r", "3.0", ""]),
    ("capitalise", "LAMP", ["lamp", "LAMp", "ABCD"], ["LAM", "LAMPS", "L A M P", "LAMP!", ""]),
])
def test_reward_exact_partial_and_garbage(name, expected, partial, garbage):
    task = TASKS[name]
    for exact in (expected, expected + END_OF_TEXT, f"  {expected}\n{END_OF_TEXT}\n",
                  expected + END_OF_TEXT + "<|user|>\nmore text"):
        assert task.reward(exact, expected) == 1.0, exact
    assert task.reward(expected + "\n<|user|>", expected) == 0.0  # a run-on answer is not the answer
    for text in partial:
        assert task.reward(text + END_OF_TEXT, expected) == PARTIAL_CREDIT, text
        assert task.reward(text, expected, partial=0.25) == 0.25
        assert task.reward(text, expected, partial=0.0) == 0.0
    for text in garbage:
        assert task.reward(text + END_OF_TEXT, expected) == 0.0, text
    assert task.reward(END_OF_TEXT + expected, expected) == 0.0  # nothing before the end


@pytest.mark.parametrize("name", NAMES)
def test_preference_pairs_differ_and_are_near_misses(name):
    task = TASKS[name]
    pairs = preference_pairs(name, 2000, seed=0)
    train_prompts = {chat_prompt(user) for user, _ in task.prompts("train")}
    kinds = set()
    for pair in pairs:
        assert set(pair) == {"prompt", "chosen", "rejected"} and pair["prompt"] in train_prompts
        assert pair["chosen"].endswith(END_OF_TEXT) and pair["rejected"].endswith(END_OF_TEXT)
        assert pair["chosen"] != pair["rejected"]
        expected = task.solve(pair["prompt"])
        assert pair["chosen"] == expected + END_OF_TEXT
        assert task.reward(pair["rejected"], expected) == PARTIAL_CREDIT, pair
        kinds.add(_kind(name, expected, pair["rejected"][:-len(END_OF_TEXT)]))
    assert kinds == {"addition": {"off by 1-3"}, "reverse": {"not reversed", "two letters swapped"},
                     "count_letters": {"one more", "one less"},
                     "capitalise": {"lower case", "one letter lower"}}[name]


def _kind(name, expected, rejected):
    if name == "addition":
        assert 1 <= abs(int(rejected.split(" = ")[1]) - int(expected.split(" = ")[1])) <= 3
        return "off by 1-3"
    if name == "reverse":
        if rejected == expected[::-1]:
            return "not reversed"
        assert sum(a != b for a, b in zip(rejected, expected)) == 2 and sorted(rejected) == sorted(expected)
        return "two letters swapped"
    if name == "count_letters":
        return {1: "one more", -1: "one less"}[int(rejected) - int(expected)]
    if rejected == expected.lower():
        return "lower case"
    assert sum(a != b for a, b in zip(rejected, expected)) == 1 and rejected.upper() == expected
    return "one letter lower"


@pytest.mark.parametrize("name", NAMES)
def test_heldout_accuracy_of_a_perfect_and_a_wrong_generator(name):
    task = TASKS[name]
    seen = []

    def perfect(prompt):
        seen.append(prompt)
        return task.solve(prompt) + END_OF_TEXT + "junk after the end"

    accuracy, results = heldout_accuracy(perfect, name, count=40, seed=2)
    assert accuracy == 1.0 and len(results) == 40 and all(r["correct"] and r["reward"] == 1.0 for r in results)
    heldout = {chat_prompt(user) for user, _ in task.prompts("heldout")}
    assert set(seen) <= heldout and [r["prompt"] for r in results] == seen
    accuracy, results = heldout_accuracy(lambda prompt: "I do not know." + END_OF_TEXT, name, count=40, seed=2)
    assert accuracy == 0.0 and all(r["reward"] == 0.0 and not r["correct"] for r in results)

    random_source = random.Random(0)

    def wrong_but_well_formed(prompt):
        return task.corrupt(task.solve(prompt), random_source) + END_OF_TEXT

    accuracy, results = heldout_accuracy(wrong_but_well_formed, task, count=40, seed=2)
    assert accuracy == 0.0 and all(r["reward"] == PARTIAL_CREDIT for r in results)


@pytest.mark.parametrize("name", NAMES)
def test_supervised_examples_are_train_alpaca_records_that_render(name):
    task = TASKS[name]
    train = set(task.prompts("train"))
    for record in supervised_examples(name, 100, seed=0):
        assert set(record) == {"instruction", "input", "output"}
        conversation = alpaca_conversation(record)
        (_, user), (_, output) = conversation
        assert (user, output) in train
        assert render_text(conversation) == chat_prompt(user) + output + END_OF_TEXT


def test_errors_name_the_value_and_the_fix():
    with pytest.raises(ValueError, match="'subtraction' is unknown; use one of addition, reverse"):
        get_task("subtraction")
    with pytest.raises(ValueError, match="split 'test' is unknown; use one of train, heldout"):
        TASKS["addition"].prompts("test", 3)
    with pytest.raises(ValueError, match="count must be a non-negative integer or None, got -1"):
        supervised_examples("reverse", -1)
    with pytest.raises(ValueError, match="is not a prompt of task 'addition'; make prompts with"):
        reward_fn("addition")(chat_prompt("Reverse the word.\n\nlamp"), "pmal")
    with pytest.raises(TypeError, match="completion must be a str, got list"):
        TASKS["reverse"].reward([1, 2], "pmal")
