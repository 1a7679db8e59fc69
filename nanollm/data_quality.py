"""Data quality: the figures ``prepare`` reports before it writes anything, so a corpus that is
mostly repeats, holds stray control characters, or hands validation the lines training sees is
caught before a run is spent on it.

    quality = TextQuality()
    for piece, cut in pieces:            # pieces end at line ends; cut: where validation starts
        quality.add(piece, cut)
    figures = quality.figures()          # a plain dict, what meta.json keeps under "quality"
    print(format_quality(figures, "input.txt"))
    check_min_unique(figures, 0.5, "input.txt")   # a one-line ValueError for mostly-duplicate data

Text is counted by line; instruction data by record (one conversation, compared by its text
in the chat template). Everything is one pass over the pieces: a Counter of lines, a bincount
of code points; no pairwise comparison. Memory grows with the distinct lines (each is held
once), not with the file's size when it repeats itself.
"""

import heapq
import unicodedata
from collections import Counter

import numpy as np

TOP_CHARACTERS = 8      # most frequent characters listed
MOST_REPEATED = 3       # most repeated lines (records) listed
SHOWN_TEXT = 40         # a repeated line is shown up to this many characters
ALLOWED_CONTROLS = "\n\t"  # the only characters str.isprintable() rejects that are not reported
COUNT_SLICE = 1 << 20   # characters counted at a time


class TextQuality:
    """Figures of a text read in pieces that end at line ends (as ``iter_text_chunks`` gives).

    ``add(piece, cut)``: the first ``cut`` characters of the piece are training text, the rest
    validation (``cut == len(piece)``: all training). A line the cut falls inside counts as a
    training line; validation lines are the whole lines after it."""

    def __init__(self, unit="line"):
        self.unit = unit
        self.lines = Counter()        # every whole line of the file -> its count
        self.val_lines = Counter()    # the whole lines of the validation split -> their count
        self.code_points = np.zeros(128, dtype=np.int64)  # count of each character, by code point
        self.total = 0

    def add(self, piece, cut):
        lines = _split_lines(piece)
        self.lines.update(lines)
        self.total += len(lines)
        if cut < len(piece):
            start = cut if cut == 0 or piece[cut - 1] == "\n" else piece.find("\n", cut) + 1
            if start > 0 or cut == 0:  # find() gives -1 + 1 = 0 when no whole line follows the cut
                self.val_lines.update(_split_lines(piece[start:]))
        self._count_characters(piece)

    def add_records(self, texts, num_val):
        """Instruction data: each text is one record; the last num_val are validation."""
        self.lines.update(texts)
        self.val_lines.update(texts[len(texts) - num_val:])
        self.total += len(texts)
        self._count_characters("".join(texts))

    def _count_characters(self, text):
        for start in range(0, len(text), COUNT_SLICE):  # a slice at a time: 4 bytes a character, briefly
            counts = np.bincount(np.frombuffer(text[start:start + COUNT_SLICE].encode("utf-32-le"), dtype=np.uint32))
            if len(counts) > len(self.code_points):
                counts[:len(self.code_points)] += self.code_points
                self.code_points = counts
            else:
                self.code_points[:len(counts)] += counts

    def characters(self):
        """Every distinct character of the text, in code point order."""
        return [chr(c) for c in np.flatnonzero(self.code_points)]

    def figures(self):
        """The figures as a plain dict (JSON-ready); see ``format_quality`` for their meaning."""
        non_empty = unique = repeated = 0
        for line, count in self.lines.items():  # one loop over the distinct lines
            if line.strip():
                non_empty += count
                unique += 1
                repeated += count if count > 1 else 0
        most = heapq.nlargest(MOST_REPEATED, ((n, line) for line, n in self.lines.items() if n > 1 and line.strip()))
        val_total = val_in_train = 0
        for line, count in self.val_lines.items():
            if line.strip():
                val_total += count
                val_in_train += count if self.lines[line] > count else 0  # occurs outside validation too
        present = np.flatnonzero(self.code_points)
        characters = int(self.code_points.sum())
        by_count = sorted(present, key=lambda c: (-self.code_points[c], c))
        odd = [c for c in by_count if not chr(c).isprintable() and chr(c) not in ALLOWED_CONTROLS]
        return {"unit": self.unit, "total": self.total, "non_empty": non_empty, "unique": unique,
                "unique_fraction": _fraction(unique, non_empty) or 0.0,
                "duplicate_share": _fraction(repeated, non_empty) or 0.0,
                "most_repeated": [[line, n] for n, line in most],
                "characters": characters, "distinct_characters": len(present),
                "top_characters": [[chr(c), int(self.code_points[c])] for c in by_count[:TOP_CHARACTERS]],
                "non_printable": int(sum(self.code_points[c] for c in odd)),
                "non_printable_characters": [[f"U+{c:04X}", int(self.code_points[c])] for c in odd[:TOP_CHARACTERS]],
                "val_total": val_total, "val_in_train": val_in_train,
                "val_in_train_fraction": _fraction(val_in_train, val_total)}


def _split_lines(text):
    """The lines of text cut at "\\n" only (not at \\r or the other breaks splitlines knows)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return lines


def _fraction(part, whole):
    return round(part / whole, 6) if whole else None


def add_token_figures(figures, vocab_size, tokens):
    """The tokenizer's figures, known once the text is encoded: vocab_size, tokens, tokens_per_char."""
    figures.update(vocab_size=vocab_size, tokens=tokens,
                   tokens_per_char=round(tokens / figures["characters"], 4) if figures["characters"] else None)
    return figures


def check_min_unique(figures, min_unique, source):
    """A one-line ValueError when fewer than min_unique of the non-empty lines (records) are distinct."""
    if min_unique is None or figures["unique_fraction"] >= min_unique:
        return
    raise ValueError(f"{source}: only {figures['unique_fraction']:.1%} of its {figures['non_empty']:,} "
                     f"{_counted(figures)} are unique ({figures['unique']:,} distinct), below min_unique={min_unique:g} "
                     f"(--min-unique); remove the duplicates or lower --min-unique; nothing was written")


def _counted(figures, what=""):
    """'non-empty lines' / 'non-empty validation lines', or 'records' / 'validation records'."""
    if figures["unit"] == "line":
        return f"non-empty {what}lines"
    return f"{what}records"


def _shown(text):
    text = text if len(text) <= SHOWN_TEXT else text[:SHOWN_TEXT] + "..."
    return repr(text)


def _character(char):
    name = unicodedata.name(char, "")  # named where repr escapes it (U+00A0 -> '\xa0' (no-break space))
    return repr(char) + (f" ({name.lower()})" if name and repr(char)[1:-1] != char else "")


def format_quality(figures, source):
    """The figures as a short block of text, one labelled line each."""
    unit, q = figures["unit"], figures
    rows = [("size", f"{q['characters']:,} characters in {q['total']:,} {unit}s"
                     + (f" ({q['non_empty']:,} non-empty)" if unit == "line" else "")),
            ("unique", f"{q['unique']:,} of {q['non_empty']:,} {_counted(q)} ({q['unique_fraction']:.1%}); "
                       f"{q['duplicate_share']:.1%} are {unit}s that occur more than once")]
    if q["most_repeated"]:
        rows.append(("most repeated", ", ".join(f"{n:,}x {_shown(text)}" for text, n in q["most_repeated"])))
    top = ", ".join(f"{_character(c)} {n / q['characters']:.1%}" for c, n in q["top_characters"])
    rows.append(("characters", f"{q['distinct_characters']:,} distinct; most used: {top}"))
    odd = ", ".join(f"{c} x{n:,}" for c, n in q["non_printable_characters"])
    rows.append(("non-printable", f"{q['non_printable']:,}" + (f" ({odd})" if odd else "")))
    if q["val_in_train_fraction"] is None:
        rows.append(("val in train", f"no {_counted(q, 'validation ')}"))
    else:
        rows.append(("val in train", f"{q['val_in_train']:,} of {q['val_total']:,} {_counted(q, 'validation ')} "
                                     f"({q['val_in_train_fraction']:.1%}) also occur in the training split"))
    if "tokens" in q:
        rows.append(token_row(q))
    counted = "by line" if unit == "line" else "by record: one conversation, as the chat template renders it"
    return "\n".join([f"data quality of {source} ({counted}):"] + [f"  {k:<14} {v}" for k, v in rows])


def token_row(figures):
    """("tokens", text) for the figures add_token_figures added."""
    per_char = figures["tokens_per_char"]
    return ("tokens", f"{figures['tokens']:,} with a vocabulary of {figures['vocab_size']:,}"
                      + (f", {per_char:.3f} tokens per character" if per_char is not None else ""))
