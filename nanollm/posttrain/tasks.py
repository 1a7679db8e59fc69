"""Verifiable tasks on the embedded corpus's instructions: prompts, rewards, DPO pairs, held-out accuracy.

Four tasks, each with one right answer a program can check (no reward model, nothing downloaded):

    addition       "Add the two numbers.\\n\\n34 and 58"             -> "34 + 58 = 92"  (each 10..99)
    reverse        "Reverse the word.\\n\\nlamp"                      -> "pmal"
    count_letters  "Count the letter r in the word.\\n\\nstrawberry"  -> "3"  (a bare integer; the
                   letter is always one of the word's, so the count is at least 1)
    capitalise     "Write the word in capital letters.\\n\\nlamp"     -> "LAMP"

The user text is instruction + "\\n\\n" + input, what ``nanollm.instruct`` makes of an Alpaca
record, and the answers keep ``corpus.instruction_pair``'s formats, so a model warmed up on the
corpus already knows them. The model sees ``chat_prompt(user_text)`` and should answer with the
answer then ``<|endoftext|>``.

Train and held-out never share a prompt: every example goes to one split by a hash of its
operands, fixed by construction. Addition hashes the unordered pair, so "58 and 34" is held out
with "34 and 58" and commutativity leaks nothing; the word tasks hash the word alone, so a
held-out word is held out from all three word tasks (about 20% of the 8,100 pairs and of the
335 words of ``WORD_LIST``).

Rewards: ``task.reward(completion, expected)`` cuts the completion at its first <|endoftext|>
(what follows the end is not part of the answer) and strips whitespace; the exact answer earns
1.0, the right format with a wrong answer ``PARTIAL_CREDIT`` (0.1: the same "a + b = " with
another sum, a word of letters of the right length, an integer), anything else 0.0. The answer
is verifiable from the prompt alone (``task.solve``), so ``reward_fn(task)`` is a plain
``(prompt_text, completion_text) -> float`` that needs no table of expected answers.

Every draw comes from a ``random.Random`` seeded by (task, purpose, seed): no global state.
"""

import hashlib
import random
import re

from nanollm.instruct import END_OF_TEXT, ROLE_MARKERS, chat_prompt

SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 20
PARTIAL_CREDIT = 0.1

# Common short English words: 3-10 lowercase letters, at least two different letters, no
# palindromes (so a reversed word always differs from the word).
WORD_LIST = tuple("""
    ant ape apple arm art ash bag balloon banana basket bat bed bee bell belt berry bird boat
    bone book boot bottle bowl box bread brick bubble bucket bug bus butter button cabbage cake
    camp candle cap car card carrot cart castle cat cello chair chalk cheese cherry chicken chin
    circle clock cloud coat coconut coffee coin cone cook cookie copper corn cotton cow crab
    crow cup dance desk dinner dish dog doll door dove dragon drum duck dust egg elbow elk farm
    feather fern field fig film finger fire fish flag flame floor flower fog foot fork fox frog
    fruit game garden gate ghost gift giraffe glass glove goat gold goose grape grass green
    guitar hammer hand happy hat hawk hill hippo hive hollow honey hook horn horse house ice
    igloo ink jacket jam jar jelly jet juice kettle key king kitchen kite kitten knee knife
    ladder lake lamb lamp leaf lemon letter lid lily lime lion lip little lizard llama lock log
    mammal map marble mask meal melon milk mint mirror mitten money monkey moon moss moth mouse
    mud muffin mug nail needle nest net night noodle nose note nut oak oar ocean onion orange
    owl pan paper park parrot pea peach peanut pear pebble pen pencil penguin pepper piano
    pickle pig pillow pin pipe pizza plant plate plum pocket pond pony poppy pot puppy purple
    puzzle queen quilt rabbit raccoon rain rat ribbon rice ring river road robin rock rocket
    roof room rope rose ruby rug saddle sail salt sand scarf school seal seed sheep shell ship
    shoe silk silly sink skirt sky sled slide snail snake snow soap sock soup spider spoon star
    stick stone storm straw strawberry street sugar summer sun supper swan sweet table tail tea
    teeth tennis tent tiger tiny toast toe tomato tooth towel town toy train tree truck tulip
    tunnel turtle umbrella valley van vase violin wagon wall wallet water wave whale wheel
    willow wind window wing winter wolf wood wool worm yarn yellow zebra zoo
""".split())

_WORD = re.compile(r"[A-Za-z]+")
_SUM = re.compile(r"(\d+) \+ (\d+) = (\d+)")


def split_of(key):
    """"train" or "heldout" for a split key, by a stable hash (not Python's salted hash())."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return "heldout" if int.from_bytes(digest, "big") % 100 < HELDOUT_PERCENT else "train"


def _clean(completion):
    """The answer in a completion: the text before its first <|endoftext|>, stripped."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}; decode the ids first")
    return completion.split(END_OF_TEXT, 1)[0].strip()


def _user_text(prompt_text):
    """The last user turn of a chat prompt, or the text itself when it is not one."""
    user = prompt_text.rsplit(ROLE_MARKERS["user"], 1)[-1]
    return user.removesuffix(ROLE_MARKERS["assistant"]).removesuffix("\n")


class Task:
    """One verifiable task; a subclass says what an example is, how to check and how to corrupt it."""

    name = ""
    pattern = None  # compiled regex that fullmatches a user text of this task

    def keys(self):
        """Every example's key, in a fixed order."""
        raise NotImplementedError

    def split_key(self, key):
        """What the split hashes: examples that must stay together share it."""
        return key

    def example(self, key):
        """(instruction, input, answer) of one key."""
        raise NotImplementedError

    def answer(self, match):
        """The right answer from the pattern's match of a user text."""
        raise NotImplementedError

    def right_format(self, text, expected):
        """True when a wrong answer still has the answer's form (earns partial credit)."""
        raise NotImplementedError

    def corrupt(self, answer, rng):
        """A wrong answer in the right format, never equal to ``answer``."""
        raise NotImplementedError

    def split_keys(self, split):
        """The keys of one split, in ``keys()`` order (computed once)."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is unknown; use one of {', '.join(SPLITS)}")
        if not hasattr(self, "_by_split"):
            self._by_split = {name: [] for name in SPLITS}
            for key in self.keys():
                self._by_split[split_of(self.split_key(key))].append(key)
        return self._by_split[split]

    def draw(self, split, count=None, seed=0, purpose="prompts"):
        """``count`` (instruction, input, answer) triples of a split in a seeded shuffled order;
        all of them when count is None; past the split's size the same order repeats."""
        keys = list(self.split_keys(split))
        if count is None:
            count = len(keys)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be a non-negative integer or None, got {count!r}")
        random.Random(f"{self.name}:{split}:{purpose}:{seed}").shuffle(keys)
        return [self.example(keys[i % len(keys)]) for i in range(count)]

    def prompts(self, split, count=None, seed=0):
        """``count`` (user_text, answer) examples of a split; ``chat_prompt(user_text)`` is what
        the model reads."""
        return [(_join(instruction, extra), answer) for instruction, extra, answer in self.draw(split, count, seed)]

    def solve(self, prompt_text):
        """The right answer to a prompt of this task (a chat prompt or the bare user text)."""
        match = self.pattern.fullmatch(_user_text(prompt_text))
        if match is None:
            raise ValueError(f"{prompt_text!r} is not a prompt of task {self.name!r}; make prompts with "
                             f"TASKS[{self.name!r}].prompts(...) and chat_prompt(user_text)")
        return self.answer(match)

    def reward(self, completion, expected, partial=PARTIAL_CREDIT):
        """1.0 for the exact answer, ``partial`` for a wrong one in the right format, else 0.0."""
        text = _clean(completion)
        if text == expected:
            return 1.0
        return float(partial) if self.right_format(text, expected) else 0.0


def _join(instruction, extra):
    return instruction + "\n\n" + extra  # as instruct.alpaca_conversation joins them


def _word_of_letters(text, expected):
    return _WORD.fullmatch(text) is not None and len(text) == len(expected)


class Addition(Task):
    name = "addition"
    pattern = re.compile(r"Add the two numbers\.\n\n(\d+) and (\d+)")

    def keys(self):
        return [(a, b) for a in range(10, 100) for b in range(10, 100)]

    def split_key(self, key):
        return tuple(sorted(key))

    def example(self, key):
        a, b = key
        return "Add the two numbers.", f"{a} and {b}", f"{a} + {b} = {a + b}"

    def answer(self, match):
        a, b = match.groups()
        return f"{a} + {b} = {int(a) + int(b)}"

    def right_format(self, text, expected):
        got, want = _SUM.fullmatch(text), _SUM.fullmatch(expected)
        return got is not None and got.group(1, 2) == want.group(1, 2)

    def corrupt(self, answer, rng):
        a, b, total = _SUM.fullmatch(answer).groups()
        return f"{a} + {b} = {int(total) + rng.choice((-3, -2, -1, 1, 2, 3))}"  # sums are >= 20


class WordTask(Task):
    """A task on one word of WORD_LIST: ``instruction``, the word, and ``transform(word)`` the answer
    (a word of the same length, so the right format is a word of letters that long)."""
    instruction = None

    def __init__(self):
        self.pattern = re.compile(re.escape(self.instruction) + r"\n\n([a-z]+)")

    def keys(self):
        return list(WORD_LIST)

    def example(self, word):
        return self.instruction, word, self.transform(word)

    def answer(self, match):
        return self.transform(match.group(1))

    right_format = staticmethod(_word_of_letters)


class Reverse(WordTask):
    name = "reverse"
    instruction = "Reverse the word."

    @staticmethod
    def transform(word):
        return word[::-1]

    def corrupt(self, answer, rng):
        """The word not reversed, or the reversal with two different neighbouring letters swapped."""
        word = answer[::-1]
        if word != answer and rng.random() < 0.5:
            return word
        i = rng.choice([i for i in range(len(answer) - 1) if answer[i] != answer[i + 1]])
        return answer[:i] + answer[i + 1] + answer[i] + answer[i + 2:]


class CountLetters(Task):
    name = "count_letters"
    pattern = re.compile(r"Count the letter ([a-z]) in the word\.\n\n([a-z]+)")

    def keys(self):
        return [(word, letter) for word in WORD_LIST for letter in sorted(set(word))]

    def split_key(self, key):
        return key[0]

    def example(self, key):
        word, letter = key
        return f"Count the letter {letter} in the word.", word, str(word.count(letter))

    def answer(self, match):
        letter, word = match.groups()
        return str(word.count(letter))

    def right_format(self, text, expected):
        return re.fullmatch(r"\d+", text) is not None

    def corrupt(self, answer, rng):
        count = int(answer)
        return str(count + 1 if count == 0 or rng.random() < 0.5 else count - 1)


class Capitalise(WordTask):
    name = "capitalise"
    instruction = "Write the word in capital letters."

    @staticmethod
    def transform(word):
        return word.upper()

    def corrupt(self, answer, rng):
        """The word in lower case, or with one letter left in lower case."""
        if rng.random() < 0.5:
            return answer.lower()
        i = rng.randrange(len(answer))
        return answer[:i] + answer[i].lower() + answer[i + 1:]


TASKS = {task.name: task for task in (Addition(), Reverse(), CountLetters(), Capitalise())}


def get_task(task):
    """A Task from its name (or the Task itself), or a ValueError listing the names."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"task {task!r} is unknown; use one of {', '.join(TASKS)}")
    return TASKS[task]


def reward_fn(task, partial=PARTIAL_CREDIT):
    """``reward(prompt_text, completion_text) -> float`` for a trainer: the expected answer is
    solved from the prompt, so any prompt of the task works, no lookup table needed."""
    task = get_task(task)

    def reward(prompt_text, completion_text):
        return task.reward(completion_text, task.solve(prompt_text), partial)

    return reward


def supervised_examples(task, count, seed=0):
    """``count`` Alpaca records {"instruction", "input", "output"} of the train split, for the
    supervised warm-up a new skill needs before reinforcement learning."""
    triples = get_task(task).draw("train", count, seed, purpose="supervised")
    return [{"instruction": instruction, "input": extra, "output": answer} for instruction, extra, answer in triples]


def preference_pairs(task, count, seed=0):
    """``count`` DPO pairs {"prompt": chat_prompt(user_text), "chosen": answer + <|endoftext|>,
    "rejected": wrong answer + <|endoftext|>} from the train split; the wrong answer is a near
    miss in the right format (a sum off by 1-3, a word half reversed, a count off by one, a
    letter left lower-case), so the pair teaches the answer, not the format."""
    task = get_task(task)
    rng = random.Random(f"{task.name}:corrupt:{seed}")
    pairs = []
    for instruction, extra, answer in task.draw("train", count, seed, purpose="preference"):
        pairs.append({"prompt": chat_prompt(_join(instruction, extra)), "chosen": answer + END_OF_TEXT,
                      "rejected": task.corrupt(answer, rng) + END_OF_TEXT})
    return pairs


def heldout_accuracy(generate, task, count=None, seed=0):
    """(accuracy, results): the share of ``count`` held-out prompts (all of them when None) that
    ``generate(chat_prompt_text) -> completion_text`` answers exactly; results holds one dict
    {"prompt", "expected", "completion", "reward", "correct"} per prompt, reward with partial
    credit. ``generate`` is any greedy decoder; this module holds no model code."""
    task = get_task(task)
    results = []
    for user_text, expected in task.prompts("heldout", count, seed):
        prompt = chat_prompt(user_text)
        completion = generate(prompt)
        reward = task.reward(completion, expected)
        results.append({"prompt": prompt, "expected": expected, "completion": completion,
                        "reward": reward, "correct": reward == 1.0})
    accuracy = sum(result["correct"] for result in results) / len(results) if results else 0.0
    return accuracy, results
