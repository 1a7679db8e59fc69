"""Text <-> token ids.

CharTokenizer: one id per distinct character, ids in sorted character order (as nanoGPT's
shakespeare_char). Saved as JSON, never pickled.
"""

import json
import os


class CharTokenizer:
    """Character-level tokenizer: ``build_vocab(path_or_text)``, ``encode``, ``decode``."""

    kind = "char"

    def __init__(self, chars=None):
        self.chars = []
        self.char_to_id = {}
        if chars is not None:
            self._set_chars(chars)

    def _set_chars(self, chars):
        self.chars = sorted(set(chars))
        self.char_to_id = {ch: i for i, ch in enumerate(self.chars)}

    @property
    def vocab_size(self):
        return len(self.chars)

    def build_vocab(self, source):
        """Take the vocabulary from a text file's path or from the text itself; returns self."""
        if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source
                                               and os.path.isfile(source)):
            with open(source, encoding="utf-8") as f:
                source = f.read()
        if not isinstance(source, str) or not source:
            raise ValueError("build_vocab needs a non-empty text or the path of a non-empty text file")
        self._set_chars(source)
        return self

    def encode(self, text):
        """text -> list of ids; a character outside the vocabulary is a ValueError naming it."""
        try:
            return [self.char_to_id[ch] for ch in text]
        except KeyError as exc:
            position = text.index(exc.args[0])
            raise ValueError(f"character {exc.args[0]!r} at position {position} is not in the vocabulary "
                             f"of {self.vocab_size} characters; build the vocabulary from text that "
                             "contains it") from None

    def decode(self, ids):
        """ids -> text; an id outside [0, vocab_size) is a ValueError."""
        chars = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            chars.append(self.chars[i])
        return "".join(chars)

    def to_dict(self):
        return {"kind": self.kind, "chars": self.chars}

    def save(self, path):
        """Write the vocabulary as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data, source="tokenizer data"):
        """The tokenizer that ``to_dict`` described (as saved in files and checkpoints)."""
        if not isinstance(data, dict) or data.get("kind") != cls.kind or not isinstance(data.get("chars"), list):
            raise ValueError(f"{source} is not a CharTokenizer (expected kind 'char' and a 'chars' list)")
        return cls(data["chars"])

    @classmethod
    def load(cls, path):
        """Read a vocabulary written by ``save``."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), source=str(path))


TOKENIZERS = {CharTokenizer.kind: CharTokenizer}


def tokenizer_from_dict(data, source="tokenizer data"):
    """Rebuild any tokenizer from its ``to_dict()``, choosing the class by its "kind"."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in TOKENIZERS:
        raise ValueError(f"{source} has tokenizer kind {kind!r}; known kinds: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[kind].from_dict(data, source)
