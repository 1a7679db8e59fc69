"""The embedded default corpus: deterministic synthetic text, so nothing has to be downloaded.

Short stories, plain facts, arithmetic and question/answer pairs drawn from small templates
with a seeded generator: the same seed and size always give the same text. The structure is
regular enough that a small model visibly learns it within a few hundred steps.
"""

import random

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jun", "Kim", "Lea"]
ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "hen", "pig"]
PLACES = ["the park", "the river", "the market", "the old mill", "school", "the garden", "the hill"]
THINGS = ["red ball", "blue kite", "apple tree", "small boat", "stone wall", "lamp", "book"]
FEELINGS = ["happy", "tired", "brave", "hungry", "calm", "curious"]
COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "sun": "yellow"}
SOUNDS = {"cat": "meow", "dog": "woof", "cow": "moo", "owl": "hoot", "hen": "cluck", "pig": "oink",
          "bee": "buzz", "fox": "yip"}


def _story(rng):
    a, b = rng.sample(NAMES, 2)
    animal, place, thing, feeling = rng.choice(ANIMALS), rng.choice(PLACES), rng.choice(THINGS), rng.choice(FEELINGS)
    return (f"{a} went to {place} with {b}. They saw a {animal} near the {thing}. "
            f"The {animal} said {SOUNDS[animal]}. {a} felt {feeling}, and {b} laughed.\n")


def _fact(rng):
    noun = rng.choice(sorted(COLOURS))
    animal = rng.choice(ANIMALS)
    return rng.choice([f"The {noun} is {COLOURS[noun]}.\n", f"A {animal} says {SOUNDS[animal]}.\n"])


def _arithmetic(rng):
    x, y = rng.randint(0, 20), rng.randint(0, 20)
    if rng.random() < 0.5:
        return f"{x} + {y} = {x + y}\n"
    x, y = max(x, y), min(x, y)
    return f"{x} - {y} = {x - y}\n"


def _question(rng):
    if rng.random() < 0.5:
        noun = rng.choice(sorted(COLOURS))
        return f"Q: What colour is the {noun}? A: The {noun} is {COLOURS[noun]}.\n"
    animal = rng.choice(ANIMALS)
    return f"Q: What does the {animal} say? A: The {animal} says {SOUNDS[animal]}.\n"


GENERATORS = (_story, _fact, _arithmetic, _question)


def synthetic_text(num_chars=100_000, seed=0):
    """About ``num_chars`` characters (whole lines, never fewer) of the synthetic corpus."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < num_chars:
        line = rng.choice(GENERATORS)(rng)
        lines.append(line)
        size += len(line)
    return "".join(lines)
