"""The embedded default corpus: deterministic synthetic text, so nothing has to be downloaded.

Seven kinds of line, drawn from small templates with a seeded generator (the same seed and
size always give the same text):

    stories       "Ada went to the park with Ben. They saw a cat near the lamp. ..."
    facts         "The sky is blue."  "A cow says moo."  "Snow is cold and white."
    sequences     "Monday, Tuesday, Wednesday."  "two, three, four, five"
    arithmetic    "12 + 7 = 19"  "9 - 4 = 5"  "3 x 4 = 12"
    questions     "Q: What colour is the grass? A: The grass is green."
    instructions  a user request and its answer in the chat template of nanollm.instruct
                  (add two numbers, reverse or spell a word, count, upper-case, a fact)

Each kind has a rule a small model can find (a sound belongs to its animal, a sum is right, a
reversed word is the word backwards), so the loss falls well below the unigram entropy within
a few hundred steps and samples visibly improve. ``synthetic_instructions`` gives the same
instruction pairs as Alpaca or ShareGPT records for the instruction-tuning examples and tests.
"""

import random

from nanollm.instruct import alpaca_conversation, render_text

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jun", "Kim", "Lea"]
ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "hen", "pig"]
PLACES = ["the park", "the river", "the market", "the old mill", "school", "the garden", "the hill"]
THINGS = ["red ball", "blue kite", "apple tree", "small boat", "stone wall", "lamp", "book"]
FEELINGS = ["happy", "tired", "brave", "hungry", "calm", "curious"]
FOODS = ["bread", "soup", "apples", "rice", "cake", "plums"]
COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "sun": "yellow", "sea": "blue",
           "leaf": "green", "milk": "white", "cherry": "red"}
SOUNDS = {"cat": "meow", "dog": "woof", "cow": "moo", "owl": "hoot", "hen": "cluck", "pig": "oink",
          "bee": "buzz", "fox": "yip"}
QUALITIES = {"snow": "cold", "fire": "hot", "ice": "cold", "sugar": "sweet", "lemon": "sour", "stone": "hard"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
WORDS = ["cat", "sun", "tree", "book", "milk", "rain", "bird", "lamp", "star", "fish", "road", "moon"]


def _story(rng):
    a, b = rng.sample(NAMES, 2)
    animal, place, thing = rng.choice(ANIMALS), rng.choice(PLACES), rng.choice(THINGS)
    feeling, food = rng.choice(FEELINGS), rng.choice(FOODS)
    return rng.choice([
        f"{a} went to {place} with {b}. They saw a {animal} near the {thing}. "
        f"The {animal} said {SOUNDS[animal]}. {a} felt {feeling}, and {b} laughed.\n",
        f"One day {a} lost a {thing} at {place}. {b} helped {a} look for it. "
        f"They found it under a {animal}, who said {SOUNDS[animal]}.\n",
        f"{a} was {feeling}, so {a} ate some {food}. Then {a} and {b} walked to {place} and back.\n",
    ])


def _fact(rng):
    noun, animal, thing = rng.choice(sorted(COLOURS)), rng.choice(ANIMALS), rng.choice(sorted(QUALITIES))
    return rng.choice([f"The {noun} is {COLOURS[noun]}.\n", f"A {animal} says {SOUNDS[animal]}.\n",
                       f"{thing.capitalize()} is {QUALITIES[thing]}.\n"])


def _sequence(rng):
    if rng.random() < 0.5:
        start = rng.randrange(len(DAYS))
        days = [DAYS[(start + i) % 7] for i in range(rng.randint(3, 5))]
        return ", ".join(days) + ".\n"
    start = rng.randint(0, 6)
    return ", ".join(NUMBER_WORDS[start:start + rng.randint(3, 5)]) + "\n"


def _arithmetic(rng):
    x, y = rng.randint(0, 20), rng.randint(0, 20)
    kind = rng.random()
    if kind < 0.4:
        return f"{x} + {y} = {x + y}\n"
    if kind < 0.8:
        x, y = max(x, y), min(x, y)
        return f"{x} - {y} = {x - y}\n"
    x, y = x % 10, y % 10
    return f"{x} x {y} = {x * y}\n"


def _question(rng):
    if rng.random() < 0.5:
        noun = rng.choice(sorted(COLOURS))
        return f"Q: What colour is the {noun}? A: The {noun} is {COLOURS[noun]}.\n"
    animal = rng.choice(ANIMALS)
    return f"Q: What does the {animal} say? A: The {animal} says {SOUNDS[animal]}.\n"


def instruction_pair(rng):
    """One (instruction, input, output) triple: a request with one right answer."""
    word = rng.choice(WORDS)
    x, y = rng.randint(0, 20), rng.randint(0, 20)
    kind = rng.randrange(6)
    if kind == 0:
        return "Add the two numbers.", f"{x} and {y}", f"{x} + {y} = {x + y}"
    if kind == 1:
        return "Reverse the word.", word, word[::-1]
    if kind == 2:
        return "Spell the word.", word, "-".join(word)
    if kind == 3:
        return "Write the word in capital letters.", word, word.upper()
    if kind == 4:
        start = rng.randint(0, 6)
        end = start + rng.randint(2, 4)
        return f"Count from {start} to {end}.", "", ", ".join(str(i) for i in range(start, end + 1))
    animal = rng.choice(ANIMALS)
    return f"What does the {animal} say?", "", f"The {animal} says {SOUNDS[animal]}."


def _conversation(instruction, extra, output):
    return alpaca_conversation({"instruction": instruction, "input": extra, "output": output})


def _instruction(rng):
    return render_text(_conversation(*instruction_pair(rng))) + "\n"


GENERATORS = (_story, _story, _fact, _sequence, _arithmetic, _question, _instruction)


def synthetic_text(num_chars=100_000, seed=0):
    """About ``num_chars`` characters (whole lines, never fewer) of the synthetic corpus."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < num_chars:
        line = rng.choice(GENERATORS)(rng)
        lines.append(line)
        size += len(line)
    return "".join(lines)


def synthetic_instructions(count=100, seed=0, format="alpaca"):
    """``count`` instruction records as Alpaca dicts (instruction, input, output) or ShareGPT
    dicts (conversations: [{from: human, value}, {from: gpt, value}]), ready for JSON Lines."""
    if format not in ("alpaca", "sharegpt"):
        raise ValueError(f"format must be 'alpaca' or 'sharegpt', got {format!r}")
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        instruction, extra, output = instruction_pair(rng)
        if format == "alpaca":
            records.append({"instruction": instruction, "input": extra, "output": output})
        else:
            (_, user), (_, answer) = _conversation(instruction, extra, output)
            records.append({"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]})
    return records
