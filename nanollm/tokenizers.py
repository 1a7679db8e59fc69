"""Text <-> token ids: a character tokenizer and a byte-level BPE tokenizer, saved as JSON, never pickled.

(About 590 lines: the two tokenizers share one JSON format, the special-token handling and
tokenizer_from_dict; apart, that format would be written twice.)

CharTokenizer: one id per distinct character, ids in sorted character order (as nanoGPT's
shakespeare_char), then the special tokens in the order given. Tiny vocabulary, long sequences:
the simplest thing that trains.

BPETokenizer: byte-level byte-pair encoding as GPT-2. Ids 0..255 are the raw UTF-8 bytes, so any
text can be encoded and nothing is ever out of vocabulary; then one id per learned merge, in
learning order; then the special tokens (GPT-2's "<|endoftext|>" last). Text is first cut around
special tokens, then into chunks by GPT-2's pre-tokenization pattern (words with their leading
space, numbers, punctuation runs, whitespace), and merges never cross a chunk. Fewer, longer tokens
than characters: a model sees more text for the same context length.

Both tokenizers share one interface::

    tok.build_vocab(path_or_text) -> tok          learn the vocabulary
    tok.encode(text, allow_special=True) -> [int]  special-token strings -> their ids (or spelled out)
    tok.decode(ids) -> str                         a ValueError for an id outside [0, vocab_size)
    tok.vocab_size, tok.special_tokens ({str: id}), tok.kind ("char" / "bpe")
    tok.to_dict(), Cls.from_dict(d), tok.save(path), Cls.load(path), load_tokenizer(path)

File formats (UTF-8 JSON, written atomically: a temporary file beside the target, then os.replace):

    {"kind": "char", "chars": ["\\n", " ", "a", ...], "special_tokens": {"<|endoftext|>": 65}}
        ("special_tokens" only when there are some: older files and checkpoints have none)
    {"kind": "bpe", "format_version": 1, "pattern": "gpt2",
     "merges": [[left_id, right_id], ...],          merge k makes id 256 + k
     "special_tokens": {"<|endoftext|>": 256 + len(merges)},
     "tokens": ["th", "e ", ...]}                    saved files only: token k's text, for humans;
                                                     ignored on load (the merges are the truth)

Checkpoints store ``to_dict()`` and rebuild with ``tokenizer_from_dict``.
"""

import codecs
import heapq
import json
import os
import re
from collections import Counter

from nanollm.textfiles import read_text_file, write_json_atomically

# Suffixes of text files: a one-line string ending so (or holding a path separator) that names no
# existing file is a mistyped path, not text to learn from.
TEXT_FILE_SUFFIXES = (".txt", ".text", ".md", ".rst", ".json", ".jsonl", ".csv", ".tsv", ".xml", ".html",
                      ".htm", ".log", ".py")


def _read_source(source, text=None):
    """The text of ``source``: a path (os.PathLike, or a one-line str naming an existing file) or the
    text itself; or ``text``, taken as it is."""
    if text is not None:
        if source is not None:
            raise ValueError("build_vocab takes a path or text=..., not both")
        if not isinstance(text, str) or not text:
            raise ValueError("build_vocab needs a non-empty text")
        return text
    if isinstance(source, os.PathLike):
        return read_text_file(source)
    if isinstance(source, str) and source and "\n" not in source:
        if os.path.isfile(source):
            return read_text_file(source)
        if "/" in source or "\\" in source or source.lower().endswith(TEXT_FILE_SUFFIXES):
            raise ValueError(f"text file {source!r} does not exist; give the path of an existing file, or pass "
                             "the text itself with a newline in it (one-line text that looks like a path is "
                             "taken for a path)")
    if not isinstance(source, str) or not source:
        raise ValueError("build_vocab needs a non-empty text or the path of a non-empty text file")
    return source


def _read_json(path):
    """The JSON object in the tokenizer file ``path``, or a ValueError naming the file and the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"tokenizer file '{path}' does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"tokenizer file '{path}' is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"tokenizer file '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"tokenizer file '{path}' is not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from None


def _check_special_tokens(special_tokens):
    """special_tokens (a sequence of distinct non-empty str) as a tuple, else a ValueError."""
    if isinstance(special_tokens, str):
        raise ValueError(f"special_tokens must be a sequence of strings, not the string {special_tokens!r}; "
                         f"write ({special_tokens!r},)")
    special_tokens = tuple(special_tokens)
    for token in special_tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens must be distinct, got {list(special_tokens)}")
    return special_tokens


def _special_splitter(special_tokens):
    """A compiled regex whose split() alternates text, special token, text, ... (longest token first)."""
    if not special_tokens:
        return None
    alternatives = sorted(special_tokens, key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(token) for token in alternatives) + ")")


def _check_ids(ids, vocab_size):
    """ids (iterable of int, or a NumPy array) as a list of int; an id outside [0, vocab_size) is a ValueError."""
    ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = next(i for i in ids if not 0 <= i < vocab_size)
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    return ids


class CharTokenizer:
    """Character-level tokenizer: ``build_vocab(path_or_text)``, ``encode``, ``decode``.

    chars: the characters (any iterable; kept as a sorted list of distinct ones); special_tokens:
    strings that get one id each after the characters, in the given order. The characters of the
    special tokens join the vocabulary too, so ``encode(..., allow_special=False)`` can spell them out.
    """

    kind = "char"

    def __init__(self, chars=None, special_tokens=()):
        self._special_list = _check_special_tokens(special_tokens)
        self._splitter = _special_splitter(self._special_list)
        self.chars = []
        self.char_to_id = {}
        self.special_tokens = {}
        self._set_chars(chars if chars is not None else "")

    def _set_chars(self, chars):
        self.chars = sorted(set(chars).union(*self._special_list))
        self.char_to_id = {ch: i for i, ch in enumerate(self.chars)}
        self.special_tokens = {token: len(self.chars) + k for k, token in enumerate(self._special_list)}
        self._id_to_text = self.chars + list(self._special_list)

    @property
    def vocab_size(self):
        """Characters plus special tokens."""
        return len(self.chars) + len(self._special_list)

    def build_vocab(self, source=None, *, text=None):
        """Take the vocabulary from a text file's path or from the text itself (``text=`` is
        always text, never taken for a path); returns self."""
        self._set_chars(_read_source(source, text))
        return self

    def _encode_chars(self, text, offset):
        try:
            return [self.char_to_id[ch] for ch in text]
        except KeyError as exc:
            position = offset + text.index(exc.args[0])
            raise ValueError(f"character {exc.args[0]!r} at position {position} is not in the vocabulary "
                             f"of {len(self.chars)} characters; build the vocabulary from text that "
                             "contains it") from None

    def encode(self, text, allow_special=True):
        """text -> list of ids; a character outside the vocabulary is a ValueError naming it.

        With allow_special, each special-token string in the text becomes its one id; without, it is
        encoded character by character like any other text."""
        if not (allow_special and self._splitter):
            return self._encode_chars(text, 0)
        ids, position = [], 0
        for k, piece in enumerate(self._splitter.split(text)):
            if k % 2:
                ids.append(self.special_tokens[piece])
            else:
                ids.extend(self._encode_chars(piece, position))
            position += len(piece)
        return ids

    def decode(self, ids):
        """ids -> text; an id outside [0, vocab_size) is a ValueError."""
        table = self._id_to_text
        return "".join([table[i] for i in _check_ids(ids, len(table))])

    def to_dict(self):
        """A JSON-able dict; "special_tokens" only when there are some, so older checkpoints compare equal."""
        data = {"kind": self.kind, "chars": list(self.chars)}
        if self._special_list:
            data["special_tokens"] = dict(self.special_tokens)
        return data

    def save(self, path):
        """Write the vocabulary as JSON (atomically)."""
        return write_json_atomically(path, self.to_dict())

    @classmethod
    def from_dict(cls, data, source="tokenizer data"):
        """The tokenizer that ``to_dict`` described (as saved in files and checkpoints)."""
        if not isinstance(data, dict) or data.get("kind") != cls.kind or not isinstance(data.get("chars"), list):
            kind = data.get("kind") if isinstance(data, dict) else None
            raise ValueError(f"{source} is not a CharTokenizer (expected kind 'char' and a 'chars' list, "
                             f"found kind {kind!r}); load_tokenizer reads any kind")
        chars = data["chars"]
        if not all(isinstance(ch, str) and len(ch) == 1 for ch in chars) or len(set(chars)) != len(chars):
            raise ValueError(f"{source}: 'chars' must be a list of distinct single characters")
        special = data.get("special_tokens", {})
        if not isinstance(special, dict) or not all(isinstance(i, int) for i in special.values()):
            raise ValueError(f"{source}: 'special_tokens' must map strings to integer ids")
        ordered = sorted(special, key=special.get)
        try:
            tokenizer = cls(chars, special_tokens=ordered)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        if len(tokenizer.chars) != len(chars) or tokenizer.special_tokens != special:
            raise ValueError(f"{source}: special token ids must follow the {len(chars)} characters in order "
                             f"({len(chars)}, {len(chars) + 1}, ...) and their characters must be in 'chars'")
        return tokenizer

    @classmethod
    def load(cls, path):
        """Read a vocabulary written by ``save``."""
        return cls.from_dict(_read_json(path), source=str(path))


# GPT-2's pre-tokenization pattern in stdlib `re` syntax: see pretokenize() for the translation.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
PATTERNS = {"gpt2": GPT2_PATTERN}
_COMPILED = {name: re.compile(pattern) for name, pattern in PATTERNS.items()}


def pretokenize(text, pattern="gpt2"):
    r"""text (str) -> list of chunks (str) that BPE merges within; "".join(chunks) == text always.

    GPT-2 splits with the `regex` module's pattern
        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    Stdlib `re` has no \p{..} classes (and nanollm takes no dependency for them), so:
        \p{L} (letter) -> [^\W\d_]    word characters that are neither digits nor "_"
        \p{N} (number) -> \d          Unicode decimal digits (category Nd) only
        other          -> [^\s\w]|_   neither whitespace nor word character, or "_"
    Letters, digits, other and \s between them cover every character, so nothing is ever dropped.
    The splits equal GPT-2's (checked on Tiny Shakespeare and on random mixed-script text) except
    in rare characters: \w holds every str.isalnum() character, so numbers that are not decimal
    digits (superscripts "²", fractions "½", Roman numerals "Ⅻ") count as letters here; and \s
    follows str.isspace(), which also holds the control characters \x1c-\x1f.
    """
    return _COMPILED[pattern].findall(text)


_SURROGATEPASS = codecs.lookup_error("surrogatepass")


def _surrogatepass_or_replace(error):
    """Decode error handler: a UTF-8-encoded lone surrogate decodes to itself (as "surrogatepass"),
    any other invalid byte sequence to U+FFFD (as "replace")."""
    try:
        return _SURROGATEPASS(error)
    except UnicodeDecodeError:
        return codecs.replace_errors(error)


codecs.register_error("nanollm.surrogatepass_or_replace", _surrogatepass_or_replace)


def _merge_pair(ids, left, right, new_id):
    """ids (list of int) with every non-overlapping (left, right), scanned left to right, replaced by new_id."""
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == left and ids[i + 1] == right:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_by_rank(ids, ranks):
    """ids (list of int) with the pairs in ranks ({(left, right): new id}) merged, lowest new id first.

    Each round merges every occurrence of the adjacent pair learned first, as replaying the merges
    in training order would. O(len(ids) * rounds): right for the short chunks of ordinary text."""
    missing = float("inf")
    while len(ids) > 1:
        best = min(zip(ids, ids[1:]), key=lambda pair: ranks.get(pair, missing))
        new_id = ranks.get(best)
        if new_id is None:
            break
        ids = _merge_pair(ids, best[0], best[1], new_id)
    return ids


def _merge_by_rank_heap(ids, ranks):
    """The same result as ``_merge_by_rank`` in O(n log n), for long chunks (a line of base64, DNA, ...).

    The ids form a linked list; a heap holds (new id, position) of every mergeable adjacent pair, so
    the lowest rank goes first and, within a rank, the leftmost, as the round-by-round scan does.
    A merge only creates pairs with a higher new id than its own, so the order stays right. An entry
    is stale when its pair no longer stands at that position (ids only grow, so none comes back)."""
    n = len(ids)
    values = list(ids)                 # values[i]: the id at position i, None once merged away
    following = list(range(1, n + 1))  # following[i]: the next live position (n: none)
    preceding = list(range(-1, n - 1))
    heap = [(ranks[pair], i) for i, pair in enumerate(zip(ids, ids[1:])) if pair in ranks]
    heapq.heapify(heap)
    while heap:
        new_id, i = heapq.heappop(heap)
        j = following[i]
        if values[i] is None or j >= n or ranks.get((values[i], values[j])) != new_id:
            continue
        values[i], values[j] = new_id, None
        k = following[j]
        following[i] = k
        if k < n:
            preceding[k] = i
            rank = ranks.get((new_id, values[k]))
            if rank is not None:
                heapq.heappush(heap, (rank, i))
        h = preceding[i]
        if h >= 0:
            rank = ranks.get((values[h], new_id))
            if rank is not None:
                heapq.heappush(heap, (rank, h))
    return [v for v in values if v is not None]


class BPETokenizer:
    """Byte-level BPE as GPT-2: ``build_vocab(path_or_text)`` learns merges, ``encode``, ``decode``.

    vocab_size (int): the most ids wanted, counting the 256 bytes, the merges and the special
    tokens; training stops earlier when the most frequent pair occurs fewer than min_frequency
    times, and the ``vocab_size`` property then reports the real, smaller size.
    special_tokens: strings that get one id each after the merges, in the given order; they are
    cut out of the text before anything else, so they are never merged or learned from.

    Training: the text is split into chunks (``pretokenize``), identical chunks are counted once
    with their frequency, and each step merges the most frequent adjacent pair of ids into a new
    id. Among pairs with the same count the smallest (left id, right id) wins, so training is
    deterministic. Pair counts are kept up to date incrementally (only the chunks containing the
    merged pair are touched) and the best pair comes from a heap with lazy invalidation, so an 8k
    vocabulary on 1 MB of text takes seconds in pure Python. (Text without spaces, such as DNA or
    base64, makes a few very long chunks, each rewritten whole by every merge it holds: slow.)

    Encoding: each chunk's bytes are merged by rank (repeatedly the adjacent pair learned first),
    which gives the same ids as replaying the merges in order; results are cached per chunk.
    Decoding never fails for ids in range: bytes that are not valid UTF-8 become U+FFFD, and
    decode(encode(s)) == s for every str s, lone surrogates included (encoded "surrogatepass").
    """

    kind = "bpe"
    FORMAT_VERSION = 1
    CACHE_LIMIT = 100_000  # chunk -> ids entries kept before the encode cache is cleared
    LONG_CHUNK = 64        # chunks of more bytes merge with a heap: O(n log n), not O(n * merges)

    def __init__(self, vocab_size=8192, min_frequency=2, special_tokens=("<|endoftext|>",), pattern="gpt2"):
        self._special_list = _check_special_tokens(special_tokens)
        smallest = 256 + len(self._special_list)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
            raise ValueError(f"vocab_size must be an integer >= {smallest} (256 byte tokens + "
                             f"{len(self._special_list)} special tokens), got {vocab_size!r}")
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
        if pattern not in PATTERNS:
            raise ValueError(f"unknown pre-tokenization pattern {pattern!r}; known: {', '.join(PATTERNS)}")
        self.requested_vocab_size = vocab_size
        self.min_frequency = min_frequency
        self.pattern = pattern
        self._chunker = _COMPILED[pattern]
        self._splitter = _special_splitter(self._special_list)
        self._set_merges([])

    def _set_merges(self, merges):
        """Install merges (list of (left, right) int pairs; merge k makes id 256 + k) and derive the tables."""
        self.merges = [tuple(pair) for pair in merges]
        self._ranks = {pair: 256 + k for k, pair in enumerate(self.merges)}  # pair -> new id; lower = earlier
        vocab = [bytes([b]) for b in range(256)]
        for left, right in self.merges:
            vocab.append(vocab[left] + vocab[right])
        first_special = len(vocab)
        self.special_tokens = {token: first_special + k for k, token in enumerate(self._special_list)}
        vocab.extend(token.encode("utf-8", "surrogatepass") for token in self._special_list)
        self._vocab = vocab  # id -> bytes
        self._cache = {}

    @property
    def vocab_size(self):
        """The real number of ids: 256 bytes + merges + special tokens."""
        return len(self._vocab)

    # ---- training -----------------------------------------------------------------------------

    def build_vocab(self, source=None, *, text=None):
        """Learn the merges from a text file's path or from the text itself (``text=`` is
        always text, never taken for a path); returns self."""
        text = _read_source(source, text)
        pieces = self._splitter.split(text)[::2] if self._splitter else [text]
        chunk_counts = Counter()
        for piece in pieces:
            chunk_counts.update(self._chunker.findall(piece))
        self._set_merges(self._learn_merges(chunk_counts))
        return self

    def _learn_merges(self, chunk_counts):
        """chunk_counts ({chunk str: frequency}) -> merges (list of (left, right)), most frequent pair first."""
        num_merges = self.requested_vocab_size - 256 - len(self._special_list)
        words = [list(chunk.encode("utf-8", "surrogatepass")) for chunk in chunk_counts]
        freqs = list(chunk_counts.values())
        counts = {}  # (left, right) -> occurrences, weighted by chunk frequency
        where = {}   # (left, right) -> indices of the words that contain it
        for index, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                counts[pair] = counts.get(pair, 0) + freq
                where.setdefault(pair, set()).add(index)
        # Max-heap by count, then smallest pair, via (-count, pair). An entry may be stale (its count
        # higher than the pair's count now): it is re-pushed with the right count when popped. Only
        # pairs that contain the newest id can gain occurrences, and those are pushed when created.
        heap = [(-count, pair) for pair, count in counts.items()]
        heapq.heapify(heap)
        merges = []
        while len(merges) < num_merges and heap:
            negative_count, best = heapq.heappop(heap)
            count = counts.get(best, 0)
            if count != -negative_count:
                if count:
                    heapq.heappush(heap, (-count, best))
                continue
            if count < self.min_frequency:
                break
            new_id = 256 + len(merges)
            merges.append(best)
            left, right = best
            del counts[best]
            fresh = set()
            for index in where.pop(best):
                word, freq = words[index], freqs[index]
                merged = _merge_pair(word, left, right, new_id)
                old_pairs = list(zip(word, word[1:]))
                new_pairs = list(zip(merged, merged[1:]))
                for pair in old_pairs:
                    if pair != best:
                        counts[pair] -= freq
                for pair in new_pairs:
                    counts[pair] = counts.get(pair, 0) + freq
                    if new_id in pair:
                        fresh.add(pair)
                new_set = set(new_pairs)
                for pair in set(old_pairs) - new_set:
                    holders = where.get(pair)
                    if holders is not None:
                        holders.discard(index)
                        if not holders:
                            del where[pair], counts[pair]
                for pair in new_set:
                    where.setdefault(pair, set()).add(index)
                words[index] = merged
            for pair in fresh:
                heapq.heappush(heap, (-counts[pair], pair))
        return merges

    # ---- encoding and decoding ----------------------------------------------------------------

    def _encode_chunk(self, chunk):
        """One pre-tokenized chunk (str) -> ids (list of int), merged by rank."""
        ids = list(chunk.encode("utf-8", "surrogatepass"))
        if len(ids) > self.LONG_CHUNK:
            return _merge_by_rank_heap(ids, self._ranks)
        return _merge_by_rank(ids, self._ranks)

    def _encode_ordinary(self, text, ids):
        """Append the ids of text without special tokens to ids (list)."""
        cache = self._cache
        for chunk in self._chunker.findall(text):
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                chunk_ids = self._encode_chunk(chunk)
                if len(cache) >= self.CACHE_LIMIT:
                    cache.clear()
                cache[chunk] = chunk_ids
            ids.extend(chunk_ids)

    def encode(self, text, allow_special=True):
        """text (str) -> list of ids. With allow_special, each special-token string becomes its one id;
        without, it is encoded as ordinary text (bytes and merges)."""
        if not isinstance(text, str):
            raise TypeError(f"encode needs a str, got {type(text).__name__}")
        ids = []
        if allow_special and self._splitter:
            for k, piece in enumerate(self._splitter.split(text)):
                if k % 2:
                    ids.append(self.special_tokens[piece])
                elif piece:
                    self._encode_ordinary(piece, ids)
        else:
            self._encode_ordinary(text, ids)
        return ids

    def decode_bytes(self, ids):
        """ids -> the raw bytes they stand for; an id outside [0, vocab_size) is a ValueError."""
        vocab = self._vocab
        return b"".join([vocab[i] for i in _check_ids(ids, len(vocab))])

    def decode(self, ids):
        """ids -> text; bytes that are not valid UTF-8 (a token sequence cut mid-character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", "nanollm.surrogatepass_or_replace")

    def token_text(self, token_id):
        """The text of one id, for people reading a vocabulary (invalid UTF-8 shown as U+FFFD)."""
        return self.decode([token_id])

    # ---- files --------------------------------------------------------------------------------

    def to_dict(self):
        """A JSON-able dict: the merges and the special tokens, from which every id follows."""
        return {"kind": self.kind, "format_version": self.FORMAT_VERSION, "pattern": self.pattern,
                "merges": [list(pair) for pair in self.merges], "special_tokens": dict(self.special_tokens)}

    def save(self, path):
        """Write the tokenizer as JSON (atomically), with each merged token's text for people to read."""
        data = self.to_dict()
        data["tokens"] = [self.token_text(256 + k) for k in range(len(self.merges))]
        return write_json_atomically(path, data)

    @classmethod
    def from_dict(cls, data, source="tokenizer data"):
        """The tokenizer that ``to_dict`` described, validated: a ValueError naming ``source`` if malformed."""
        if not isinstance(data, dict) or data.get("kind") != cls.kind:
            kind = data.get("kind") if isinstance(data, dict) else None
            raise ValueError(f"{source} is not a BPETokenizer (expected kind 'bpe', found kind {kind!r}); "
                             "load_tokenizer reads any kind")
        version = data.get("format_version")
        if version != cls.FORMAT_VERSION:
            raise ValueError(f"{source} has BPE tokenizer format_version {version!r}; this nanollm reads "
                             f"{cls.FORMAT_VERSION}")
        pattern = data.get("pattern")
        if pattern not in PATTERNS:
            raise ValueError(f"{source} has pre-tokenization pattern {pattern!r}; known: {', '.join(PATTERNS)}")
        merges = data.get("merges")
        if not isinstance(merges, list):
            raise ValueError(f"{source} has no 'merges' list")
        seen = {}
        for k, pair in enumerate(merges):
            new_id = 256 + k
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair)):
                raise ValueError(f"{source}: merge {k} is {pair!r}, not a [left id, right id] pair of integers")
            if not all(0 <= i < new_id for i in pair):
                raise ValueError(f"{source}: merge {k} (making id {new_id}) is {list(pair)}, but a merge may "
                                 f"only join ids made before it (0 to {new_id - 1})")
            if tuple(pair) in seen:
                raise ValueError(f"{source}: merge {k} repeats merge {seen[tuple(pair)]} {list(pair)}")
            seen[tuple(pair)] = k
        special = data.get("special_tokens")
        if not isinstance(special, dict) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                    for i in special.values()):
            raise ValueError(f"{source}: 'special_tokens' must map strings to integer ids")
        first = 256 + len(merges)
        if sorted(special.values()) != list(range(first, first + len(special))):
            raise ValueError(f"{source}: special token ids must follow the merges: {first} to "
                             f"{first + len(special) - 1}, got {sorted(special.values())}")
        ordered = sorted(special, key=special.get)
        try:
            tokenizer = cls(vocab_size=first + len(special), special_tokens=ordered, pattern=pattern)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        tokenizer._set_merges(merges)
        return tokenizer

    @classmethod
    def load(cls, path):
        """Read a tokenizer written by ``save``."""
        return cls.from_dict(_read_json(path), source=str(path))


TOKENIZERS = {CharTokenizer.kind: CharTokenizer, BPETokenizer.kind: BPETokenizer}


def tokenizer_from_dict(data, source="tokenizer data"):
    """Rebuild any tokenizer from its ``to_dict()``, choosing the class by its "kind"."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in TOKENIZERS:
        raise ValueError(f"{source} has tokenizer kind {kind!r}; known kinds: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[kind].from_dict(data, source)


def load_tokenizer(path):
    """Read any tokenizer written by ``save`` (the class is chosen by the file's "kind")."""
    return tokenizer_from_dict(_read_json(path), source=str(path))
