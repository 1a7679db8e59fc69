"""Instruction data: Alpaca and ShareGPT JSON Lines -> conversations -> ids with a loss mask.

Both formats become a conversation, a list of (role, text) turns with role in system / user /
assistant, rendered with one chat template:

    <|system|>\\n{system text}\\n          (only when there is one)
    <|user|>\\n{user text}\\n
    <|assistant|>\\n{assistant text}<|endoftext|>
    ... further user / assistant turns ...

Only the assistant's text and its closing <|endoftext|> are trained: every other token's target
is masked (the cross-entropy's ignore_index), so the model learns to answer, not to write
questions. The markers are special tokens of a tokenizer that has them (``CHAT_SPECIAL_TOKENS``,
what ``prepare`` gives a tokenizer it builds for instruction data) and plain text otherwise.

    Alpaca    {"instruction": str, "input": str (optional), "output": str}
              -> user: instruction, or instruction + "\\n\\n" + input; assistant: output
    ShareGPT  {"conversations": [{"from": "system" | "human" | "user" | "gpt" | "assistant",
                                  "value": str}, ...]}  with at least one assistant turn

Malformed lines are collected and reported together with their line numbers; none is skipped.
"""

import json
import os

import numpy as np

from nanollm.textfiles import read_text_file

END_OF_TEXT = "<|endoftext|>"
ROLE_MARKERS = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}
CHAT_SPECIAL_TOKENS = (END_OF_TEXT, "<|system|>", "<|user|>", "<|assistant|>")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
FORMATS = ("alpaca", "sharegpt")
MAX_REPORTED = 10


def alpaca_conversation(record):
    """An Alpaca record -> conversation, or a ValueError saying what is wrong with it."""
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            raise ValueError(f"Alpaca record needs a string {key!r}" + (f", got {type(record[key]).__name__}"
                                                                        if key in record else ""))
    extra = record.get("input", "")
    if not isinstance(extra, str):
        raise ValueError(f"Alpaca 'input' must be a string, got {type(extra).__name__}")
    user = record["instruction"] + ("\n\n" + extra if extra else "")
    return [("user", user), ("assistant", record["output"])]


def _sharegpt(record):
    """A ShareGPT record -> conversation, or a ValueError saying what is wrong with it."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("ShareGPT record needs a non-empty list 'conversations'")
    conversation = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(f"conversations[{index}] needs a string 'value'")
        role = SHAREGPT_ROLES.get(turn.get("from"))
        if role is None:
            raise ValueError(f"conversations[{index}] has from={turn.get('from')!r}; "
                             f"use one of {', '.join(SHAREGPT_ROLES)}")
        conversation.append((role, turn["value"]))
    if not any(role == "assistant" for role, _ in conversation):
        raise ValueError("ShareGPT record has no 'gpt'/'assistant' turn, so nothing to train on")
    return conversation


PARSERS = {"alpaca": alpaca_conversation, "sharegpt": _sharegpt}


def _detect(record):
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record:
        return "alpaca"
    return None


def read_instructions(path, format="auto"):
    """The conversations of a JSON Lines file, and its format: (list of conversations, format).

    format: "alpaca", "sharegpt" or "auto" (decided by the first record's keys). Every
    malformed line is reported in one ValueError naming the file and the line numbers."""
    if format not in ("auto", *FORMATS):
        raise ValueError(f"instruction format {format!r} is unknown; use auto, {', '.join(FORMATS)}")
    path = os.fspath(path)
    lines = read_text_file(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    conversations, problems = [], []
    for number, line in enumerate(lines, start=1):
        try:
            if not line.strip():
                raise ValueError("blank line (JSON Lines holds one JSON object per line)")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            if format == "auto":
                format = _detect(record) or "auto"
                if format == "auto":
                    raise ValueError("neither Alpaca ('instruction', 'output') nor ShareGPT ('conversations') keys")
            conversations.append(PARSERS[format](record))
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED])
        more = f"; and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise ValueError(f"{path}: {len(problems)} malformed line{'s' * (len(problems) > 1)} "
                         f"({format if format != 'auto' else 'format unknown'}): {shown}{more}; fix or remove them")
    if not conversations:
        raise ValueError(f"instruction file {path!r} holds no records; give one JSON object per line")
    return conversations, format


def render(conversation):
    """The chat template as segments (text, trained, is_marker): trained is True for the
    assistant's words and the <|endoftext|> that closes them; markers (role tags, the end token)
    may be special tokens, the words of a turn never are."""
    segments = []
    for role, text in conversation:
        segments.append((ROLE_MARKERS[role], False, True))
        if role == "assistant":
            segments += [(text, True, False), (END_OF_TEXT, True, True)]
        else:
            segments.append((text + "\n", False, False))
    return segments


def render_text(conversation):
    """The whole conversation as one string (what a tokenizer is built from)."""
    return "".join(text for text, _, _ in render(conversation))


def chat_prompt(user_text, system=None):
    """The text that asks a tuned model for its answer: the template up to the assistant's turn."""
    turns = ([("system", system)] if system else []) + [("user", user_text)]
    return render_text(turns) + ROLE_MARKERS["assistant"]


def encode_conversation(tokenizer, conversation):
    """ids (N,) int64 and loss mask (N,) uint8 of one rendered conversation."""
    ids, mask = [], []
    for text, trained, is_marker in render(conversation):
        piece = tokenizer.encode(text, allow_special=is_marker)
        ids += piece
        mask += [int(trained)] * len(piece)
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.uint8)
