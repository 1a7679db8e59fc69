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

``synthesize`` (and ``nanollm synth``, through ``write_synthetic``) asks for a number of
records of each kind instead of a size: each kind draws from its own seeded stream, so the
stories of seed 3 are the same whatever the other counts, and the same arguments always give
the same records, byte for byte.
"""

import json
import random
from pathlib import Path

from nanollm.instruct import alpaca_conversation, render_text
from nanollm.textfiles import write_atomically

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
    return [_instruction_record(instruction_pair(rng), format) for _ in range(count)]


def _instruction_record(pair, format):
    instruction, extra, output = pair
    if format == "alpaca":
        return {"instruction": instruction, "input": extra, "output": output}
    (_, user), (_, answer) = _conversation(instruction, extra, output)
    return {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]}


# ------------------------------------------------------------------ records by kind: synthesize

KINDS = {"stories": _story, "facts": _fact, "sequences": _sequence, "arithmetic": _arithmetic,
         "questions": _question, "instructions": _instruction}
SYNTH_FORMATS = ("text", "alpaca", "sharegpt")
# Without counts: about 300,000 characters of text (the embedded corpus's mix, fewer of the kinds
# with few distinct lines), or 1,000 instruction records.
DEFAULT_COUNTS = {"text": {"stories": 2000, "facts": 200, "sequences": 300, "arithmetic": 1000, "questions": 200,
                           "instructions": 1000},
                  "alpaca": {"instructions": 1000}, "sharegpt": {"instructions": 1000}}


def _resolve_counts(counts, format):
    """{kind: count} with every kind present: the defaults when no count is given, else the
    given ones (kinds left out or None: 0). Errors name the kind and the fix."""
    if format not in SYNTH_FORMATS:
        raise ValueError(f"format must be one of {', '.join(SYNTH_FORMATS)}, got {format!r}")
    given = {kind: n for kind, n in (counts or {}).items() if n is not None}
    unknown = sorted(set(given) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown kind {unknown[0]!r}; the kinds are {', '.join(KINDS)}")
    for kind, n in given.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"--{kind} (the count of {kind}) must be a whole number >= 0, got {n!r}")
    resolved = {kind: given.get(kind, 0) if given else DEFAULT_COUNTS[format].get(kind, 0) for kind in KINDS}
    others = [f"--{kind} {n}" for kind, n in resolved.items() if n and kind != "instructions"]
    if format != "text" and others:
        raise ValueError(f"--format {format} holds instruction pairs only, so {', '.join(others)} cannot be written "
                         f"in it; leave {'them' if len(others) > 1 else 'it'} out, or write --format text (where "
                         "instructions are rendered in the chat template among the other lines)")
    if not sum(resolved.values()):
        raise ValueError("every count is 0, so there is nothing to write; ask for at least one record (e.g. "
                         "--stories 100)")
    return resolved


def _synthesize(counts, seed, format):
    """[(kind, record), ...]: text lines shuffled together (seeded), or instruction records."""
    records = []
    for kind, count in _resolve_counts(counts, format).items():
        rng = random.Random(f"{seed}:{kind}")  # a stream per kind: no kind depends on another's count
        if kind == "instructions" and format != "text":
            records += [(kind, _instruction_record(instruction_pair(rng), format)) for _ in range(count)]
        else:
            records += [(kind, KINDS[kind](rng)) for _ in range(count)]
    if format == "text":
        random.Random(f"{seed}:order").shuffle(records)
    return records


def synthesize(counts=None, seed=0, format="text"):
    """Synthetic records: counts is {kind: number} over KINDS (stories, facts, sequences,
    arithmetic, questions, instructions); None or {} gives DEFAULT_COUNTS[format], and kinds not
    named are 0. format "text": lines (str, each ending in a newline; an instruction is rendered
    in the chat template, several lines), shuffled; "alpaca" / "sharegpt": instruction records
    (dicts), the same pairs as text's instructions of that seed. Same arguments, same records."""
    return [record for _, record in _synthesize(counts, seed, format)]


def records_text(records, format="text"):
    """The file content of records: the lines joined, or one JSON object per line."""
    if format == "text":
        return "".join(records)
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def _key(record):
    return record if isinstance(record, str) else json.dumps(record, sort_keys=True, ensure_ascii=False)


def write_synthetic(path, counts=None, seed=0, format=None, overwrite=False):
    """Write ``synthesize(counts, seed, format)`` to path (atomically) and return what it holds:
    {"path", "format", "seed", "bytes", "records", "unique", "kinds": {kind: {"records", "unique"}}}.

    format None: alpaca for a .jsonl path, else text. A .jsonl file must hold JSON Lines and
    JSON Lines must be named .jsonl, since nanollm train and prepare tell them apart by that."""
    path = Path(path)
    format = format or ("alpaca" if path.suffix == ".jsonl" else "text")
    if format == "text" and path.suffix == ".jsonl":
        raise ValueError(f"{str(path)!r} ends in .jsonl, which train and prepare read as instruction JSON Lines, but "
                         "--format text writes plain lines; name it .txt or give --format alpaca or sharegpt")
    if format in ("alpaca", "sharegpt") and path.suffix != ".jsonl":
        raise ValueError(f"--format {format} writes JSON Lines, which train and prepare recognise by the .jsonl "
                         f"suffix; name the file {path.stem}.jsonl")
    if path.is_dir():
        raise ValueError(f"--out {str(path)!r} is a folder; give the path of the file to write")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another --out or pass --overwrite to replace it")
    pairs = _synthesize(counts, seed, format)
    payload = records_text([record for _, record in pairs], format).encode("utf-8")
    write_atomically(path, lambda f: f.write(payload))
    kinds = {kind: {"records": 0, "unique": set()} for kind in KINDS}
    for kind, record in pairs:
        kinds[kind]["records"] += 1
        kinds[kind]["unique"].add(_key(record))
    kinds = {kind: k for kind, k in kinds.items() if k["records"]}
    unique = len(set().union(*(k["unique"] for k in kinds.values())))
    return {"path": str(path), "format": format, "seed": seed, "bytes": len(payload), "records": len(pairs),
            "unique": unique, "kinds": {kind: {"records": k["records"], "unique": len(k["unique"])}
                                        for kind, k in kinds.items()}}
