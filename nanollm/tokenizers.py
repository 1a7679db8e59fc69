"""Text <-> token ids: a character tokenizer and a byte-level BPE tokenizer, saved as JSON, never pickled.

(About 900 lines: the two tokenizers share one JSON format, the special-token handling and
tokenizer_from_dict; apart, that format would be written twice.)

CharTokenizer: one id per distinct character, ids in sorted character order (as nanoGPT's
shakespeare_char), then the special tokens in the order given. Tiny vocabulary, long sequences:
the simplest thing that trains.

BPETokenizer: byte-level byte-pair encoding as GPT-2. Every byte is a token, so any text can be
encoded and nothing is ever out of vocabulary; merges join adjacent tokens into longer ones. Text
is first cut around special tokens, then into chunks by GPT-2's pre-tokenization pattern (words
with their leading space, numbers, punctuation runs, whitespace), and merges never cross a chunk.
Fewer, longer tokens than characters: a model sees more text for the same context length. A
trained one has nanollm's layout: ids 0..255 are the raw bytes, then one id per learned merge in
learning order, then the special tokens (GPT-2's "<|endoftext|>" last). ``from_vocab`` and
``from_ranks`` hold any other byte-level BPE vocabulary (GPT-2's own, `tokenizers`', tiktoken's)
and encode exactly as those libraries do; nanollm.interop.tokenizer_files reads and writes their files.

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
    {"kind": "bpe", "format_version": 2, "pattern": "gpt2",     any other vocabulary
     "merge_rule": "merges" or "ranks",            see BPETokenizer
     "tokens": ["!", "\"", ..., "Ġthe", ...],      each id's token in GPT-2's byte-level spelling
                                                   (special tokens: their text)
     "merges": [[left_id, right_id], ...],          "merges" rule only: first rank first
     "ignore_merges": true,                         only when set
     "special_tokens": {"<|endoftext|>": 50256}}

Checkpoints store ``to_dict()`` and rebuild with ``tokenizer_from_dict``.
"""

import array
import codecs
import heapq
import json
import os
import re
from collections import Counter
from itertools import repeat

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


# GPT-2's pre-tokenization pattern as GPT-2, tiktoken and `tokenizers` write it (the `regex` module's syntax).
GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Its quick stdlib `re` form: exact on text without the characters _GPT2Chunker sends to the exact form.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
PATTERNS = {"gpt2": GPT2_REGEX}
# Unicode's White_Space property (stable since Unicode 4.1): \s of GPT-2's pattern. Python's \s adds \x1c-\x1f.
WHITE_SPACE = r"\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _class_ranges(code_points):
    """Sorted code points (iterable of int) -> the inside of a regex character class: "\\U...-\\U..." runs."""
    parts, start, last = [], None, None
    for cp in code_points:
        if start is not None and cp == last + 1:
            last = cp
            continue
        if start is not None:
            parts.append(f"\\U{start:08x}" + (f"-\\U{last:08x}" if last > start else ""))
        start = last = cp
    if start is not None:
        parts.append(f"\\U{start:08x}" + (f"-\\U{last:08x}" if last > start else ""))
    return "".join(parts)


class _GPT2Chunker:
    r"""GPT2_REGEX with stdlib `re`: ``findall(text)`` -> the chunks GPT-2's `regex` pattern gives.

    Stdlib `re` has no \p{..}, and its \w, \d, \s differ from \p{L}, \p{N} and White_Space in two
    places: numbers that are not decimal digits (categories Nl and No: "²", "½", "Ⅻ", "①") are in \w
    but not \d, and \s holds \x1c-\x1f, which White_Space does not. GPT2_PATTERN (\p{L} as [^\W\d_],
    \p{N} as \d, \s as \s) is therefore exact on text without those characters, and is the fast
    one. Text with any of them (or any character beyond U+FFFF, to keep the check one quick class)
    goes to the exact form, whose classes are built at first use from this Python's unicodedata
    (about 0.05 s): Nl/No join \p{N} and leave \p{L}, and \s is White_Space, written out.

    Exact means: the same chunks as GPT-2's pattern under the Unicode version of this Python's
    unicodedata (3.11: 14.0). The `regex` module, `tokenizers` (Oniguruma) and tiktoken (Rust)
    carry newer tables, so characters assigned after that version (unassigned here, hence neither
    letter nor number) may split differently.
    """

    def __init__(self):
        self._fast = re.compile(GPT2_PATTERN)
        self._exact = self._needs_exact = None

    def _build(self):
        everything = array.array("I", range(0x110000)).tobytes().decode("utf-32-le", "surrogatepass")
        other_numbers = []  # Nl and No: in [^\W\d_] (str.isnumeric) but not str.isalpha (the categories L*)
        for match in re.finditer(r"[^\W\d_]+", everything):
            run = match.group()
            if not run.isalpha():
                other_numbers.extend(ord(ch) for ch in run if not ch.isalpha())
        numbers = _class_ranges(other_numbers)
        letter, number = rf"[^\W\d_{numbers}]", rf"[\d{numbers}]"
        other = r"(?:[^\s\w]|[_\x1c-\x1f])"  # neither White_Space, \p{L} nor \p{N}: "_" and \x1c-\x1f too
        space = f"[{WHITE_SPACE}]"
        self._exact = re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?{letter}+| ?{number}+| ?{other}+"
                                 rf"|{space}+(?![^{WHITE_SPACE}])|{space}+")
        bmp_numbers = _class_ranges(cp for cp in other_numbers if cp < 0x10000)
        self._needs_exact = re.compile(rf"[\x1c-\x1f{bmp_numbers}\U00010000-\U0010ffff]")

    def findall(self, text):
        if self._exact is None:
            self._build()
        chunker = self._fast if self._needs_exact.search(text) is None else self._exact
        return chunker.findall(text)


_CHUNKERS = {"gpt2": _GPT2Chunker()}


def pretokenize(text, pattern="gpt2"):
    r"""text (str) -> list of chunks (str) that BPE merges within; "".join(chunks) == text always.

    GPT-2 splits with the `regex` module's pattern GPT2_REGEX,
        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    which _GPT2Chunker reproduces with stdlib `re` (nanollm takes no dependency for \p{..}): the
    same chunks, up to the Unicode versions of the tables (see _GPT2Chunker).
    """
    return _CHUNKERS[pattern].findall(text)


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


_NO_MERGE = 1 << 62  # the rank of a pair that never merges: above every real rank


def _merge_by_rank(ids, ranks, made=None):
    """ids (list of int) with the pairs in ranks ({(left, right): rank}) merged one at a time: each
    step merges the adjacent pair of lowest rank, the leftmost among equals, as `tokenizers` and
    tiktoken do. made[rank] is the id that merge makes; made=None when the rank is that id itself
    (nanollm's own layout, tiktoken's ranks). O(len(ids) * merges): right for short chunks.

    For a vocabulary that nanollm trained this equals replaying the merges in training order: a
    merge only creates pairs that rank after it, so equal ranks are the same pair, left to right."""
    ids = list(ids)
    get = ranks.get
    pair_ranks = list(map(get, zip(ids, ids[1:]), repeat(_NO_MERGE)))  # pair_ranks[i]: (ids[i], ids[i + 1])
    while pair_ranks:
        rank = min(pair_ranks)
        if rank == _NO_MERGE:
            break
        i = pair_ranks.index(rank)
        new_id = rank if made is None else made[rank]
        ids[i] = new_id
        del ids[i + 1], pair_ranks[i]
        if i < len(pair_ranks):
            pair_ranks[i] = get((new_id, ids[i + 1]), _NO_MERGE)
        if i:
            pair_ranks[i - 1] = get((ids[i - 1], new_id), _NO_MERGE)
    return ids


def _merge_by_rank_heap(ids, ranks, made=None):
    """The same result as ``_merge_by_rank`` in O(n log n), for long chunks (a line of base64, DNA, ...).

    The ids form a linked list; a heap holds (rank, position) of every mergeable adjacent pair, so
    the lowest rank goes first and, within a rank, the leftmost, as `tokenizers`' BPE does. An
    entry is stale when the pair standing at its position no longer has its rank (a pair changes
    only by growing, and a longer byte string is another token, of another rank)."""
    n = len(ids)
    values = list(ids)                 # values[i]: the id at position i, None once merged away
    following = list(range(1, n + 1))  # following[i]: the next live position (n: none)
    preceding = list(range(-1, n - 1))
    heap = [(ranks[pair], i) for i, pair in enumerate(zip(ids, ids[1:])) if pair in ranks]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = following[i]
        if values[i] is None or j >= n or ranks.get((values[i], values[j])) != rank:
            continue
        new_id = rank if made is None else made[rank]
        values[i], values[j] = new_id, None
        k = following[j]
        following[i] = k
        if k < n:
            preceding[k] = i
            next_rank = ranks.get((new_id, values[k]))
            if next_rank is not None:
                heapq.heappush(heap, (next_rank, i))
        h = preceding[i]
        if h >= 0:
            next_rank = ranks.get((values[h], new_id))
            if next_rank is not None:
                heapq.heappush(heap, (next_rank, h))
    return [v for v in values if v is not None]


def _show(token):
    """How an error message shows a token (bytes): as text when it is UTF-8, else as bytes."""
    try:
        return repr(token.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(token)


def _is_id(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _vocab_table(tokens, special_tokens, source):
    """Check from_vocab's tokens (bytes per id; None at special ids) and special_tokens ({text: id}):
    returns (vocab: id -> bytes, special_tokens, index: {bytes: id} of the tokens that are not special)."""
    if (not isinstance(special_tokens, dict) or not all(isinstance(t, str) and t for t in special_tokens)
            or not all(_is_id(i) and i >= 0 for i in special_tokens.values())):
        raise ValueError(f"{source}: special_tokens must map non-empty strings to integer ids >= 0")
    by_id = {}
    for text, i in special_tokens.items():
        if i in by_id:
            raise ValueError(f"{source}: special tokens {by_id[i]!r} and {text!r} both have id {i}")
        by_id[i] = text
    tokens = list(tokens)
    size = max(len(tokens), max(by_id, default=-1) + 1)
    vocab, index = [], {}
    for i in range(size):
        token = tokens[i] if i < len(tokens) else None
        if i in by_id:
            text = by_id[i].encode("utf-8", "surrogatepass")
            if token is not None and token != text:
                raise ValueError(f"{source}: id {i} is the special token {by_id[i]!r} but its token is {_show(token)}")
            vocab.append(text)
            continue
        if not isinstance(token, (bytes, bytearray)) or not token:
            raise ValueError(f"{source}: id {i} has no token ({token!r}); ids must run from 0 to {size - 1}, each "
                             "a non-empty byte string or a special token")
        token = bytes(token)
        if token in index:
            raise ValueError(f"{source}: ids {index[token]} and {i} are both the token {_show(token)}; a vocabulary "
                             "holds each byte string once")
        index[token] = i
        vocab.append(token)
    missing = [b for b in range(256) if bytes([b]) not in index]
    if missing:
        raise ValueError(f"{source}: no token is the single byte {missing[0]:#04x} ({len(missing)} of the 256 bytes "
                         "are missing); a byte-level BPE needs all 256 (with `tokenizers`, train with "
                         "initial_alphabet=pre_tokenizers.ByteLevel.alphabet())")
    return vocab, dict(special_tokens), index


def _merges_from_ranks(vocab, index):
    """tiktoken's ranks as merges ((left, right, made) id triples): every split of a token into two
    tokens, ordered by the token's rank (its id), then by the ranks of the two parts; the merges
    transformers' TikTokenConverter derives."""
    merges = []
    for token_id, token in enumerate(vocab):
        if len(token) < 2 or index.get(token) != token_id:  # a byte, or a special token
            continue
        local = []
        for cut in range(1, len(token)):
            left, right = index.get(token[:cut]), index.get(token[cut:])
            if left is not None and right is not None:
                local.append((left, right, token_id))
        local.sort()
        merges.extend(local)
    return merges


class BPETokenizer:
    """Byte-level BPE as GPT-2: ``build_vocab(path_or_text)`` learns merges, ``encode``, ``decode``;
    ``from_vocab`` and ``from_ranks`` hold any other byte-level BPE (GPT-2's own, a `tokenizers` or
    a tiktoken vocabulary) and encode as those libraries do.

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
    Training never makes two tokens of the same bytes: a token's merges happen inside its own
    bytes exactly as they would in a chunk of those bytes alone, so the first merge that makes
    them makes them everywhere, and no later merge meets the same bytes in two parts.

    Vocabularies: a trained one has nanollm's layout (ids 0..255 the bytes, then one id per merge
    in learning order, then the special tokens). Any other is an id -> bytes table (GPT-2's id 0
    is "!"), merges ranked by their place in the list whatever ids they make, and special tokens
    at any ids. ``merge_rule`` says which adjacent pair of a chunk merges next:
        "merges"  the pair listed first in the merges (GPT-2's merges.txt, `tokenizers`' BPE)
        "ranks"   any two tokens whose bytes make a token, that token of lowest rank (= id) first;
                  a chunk that is itself a token is that token (tiktoken; see from_ranks)
    Under both, equal ranks merge leftmost first, one merge at a time, as both libraries do.
    ``ignore_merges`` (with "merges"): a chunk that is itself a token is that token (`tokenizers`).

    Encoding: each chunk's bytes are merged by that rule; results are cached per chunk. Decoding
    never fails for ids in range: bytes that are not valid UTF-8 become U+FFFD, and
    decode(encode(s)) == s for every str s, lone surrogates included (encoded "surrogatepass").
    """

    kind = "bpe"
    FORMAT_VERSION = 1     # files of nanollm's layout; every other vocabulary is written as version 2
    FORMAT_VERSIONS = (1, 2)
    CACHE_LIMIT = 100_000  # chunk -> ids entries kept before the encode cache is cleared
    LONG_CHUNK = 64        # chunks of more bytes merge with a heap: O(n log n), not O(n * merges)
    MERGE_RULES = ("merges", "ranks")

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
        self._chunker = _CHUNKERS[pattern]
        self._set_merges([])

    def _set_merges(self, merges):
        """Install nanollm's layout: merges (list of (left, right) int pairs; merge k makes id 256 + k),
        then the special tokens in the order of self._special_list."""
        merges = [tuple(pair) for pair in merges]
        vocab = [bytes([b]) for b in range(256)]
        for left, right in merges:
            vocab.append(vocab[left] + vocab[right])
        first_special = len(vocab)
        special = {token: first_special + k for k, token in enumerate(self._special_list)}
        vocab.extend(token.encode("utf-8", "surrogatepass") for token in self._special_list)
        self._install(vocab, [(left, right, 256 + k) for k, (left, right) in enumerate(merges)], special)

    def _install(self, vocab, merges, special_tokens, merge_rule="merges", ignore_merges=False):
        """Derive every table from vocab (id -> bytes; a special id holds its text's UTF-8), merges
        ((left, right, made) id triples, first rank first) and special_tokens ({text: id})."""
        self._vocab = vocab
        self.special_tokens = dict(special_tokens)
        self._special_list = tuple(sorted(special_tokens, key=special_tokens.get))
        self._splitter = _special_splitter(self._special_list)
        self.merges = [(left, right) for left, right, _ in merges]  # in rank order
        self.merge_rule, self.ignore_merges = merge_rule, ignore_merges
        specials = set(special_tokens.values())
        index = {token: i for i, token in enumerate(vocab) if i not in specials}  # bytes -> id, special ids aside
        byte_ids = [index[bytes([b])] for b in range(256)]
        self._byte_ids = None if byte_ids == list(range(256)) else byte_ids  # byte -> its id (None: the byte)
        made = [new_id for _, _, new_id in merges]
        if merge_rule == "ranks" or all(a < b for a, b in zip(made, made[1:])):
            self._ranks = {(left, right): new_id for left, right, new_id in merges}  # the rank is the id made
            self._made = None
        else:
            self._ranks = {(left, right): k for k, (left, right, _) in enumerate(merges)}  # pair -> rank
            self._made = made                                                          # rank -> id made
        self._whole = index if ignore_merges or merge_rule == "ranks" else None  # chunk bytes -> id
        self._nanollm_layout = (merge_rule == "merges" and not ignore_merges and self._byte_ids is None
                                and made == list(range(256, 256 + len(made)))
                                and all(left < new_id and right < new_id for left, right, new_id in merges)
                                and sorted(specials) == list(range(256 + len(made), len(vocab))))
        self._cache = {}

    @classmethod
    def _assemble(cls, vocab, merges, special_tokens, pattern, merge_rule, ignore_merges, source):
        ordered = sorted(special_tokens, key=special_tokens.get)
        try:
            tokenizer = cls(vocab_size=len(vocab), special_tokens=ordered, pattern=pattern)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        tokenizer._install(vocab, merges, special_tokens, merge_rule, bool(ignore_merges))
        return tokenizer

    @classmethod
    def from_vocab(cls, tokens, merges, special_tokens=None, pattern="gpt2", ignore_merges=False,
                   source="vocabulary"):
        """Any byte-level BPE with the "merges" rule (GPT-2's vocab.json + merges.txt, `tokenizers`).

        tokens: each id's bytes, in id order (None, or the text's UTF-8, at a special id; special
        ids may also follow the list); every single byte must be a token, no bytes twice.
        merges: (left bytes, right bytes) pairs, first rank first; left, right and left + right
        must be tokens. special_tokens: {text: id}. A ValueError naming ``source`` if malformed."""
        vocab, special, index = _vocab_table(tokens, special_tokens or {}, source)
        triples, seen = [], {}
        for k, pair in enumerate(merges):
            if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                    or not all(isinstance(part, (bytes, bytearray)) for part in pair)):
                raise ValueError(f"{source}: merge {k} is {pair!r}, not a (left bytes, right bytes) pair")
            left, right = bytes(pair[0]), bytes(pair[1])
            for part in (left, right, left + right):
                if part not in index:
                    raise ValueError(f"{source}: merge {k} ({_show(left)} + {_show(right)}) needs the token "
                                     f"{_show(part)}, which is not in the vocabulary")
            ids = (index[left], index[right])
            if ids in seen:
                raise ValueError(f"{source}: merge {k} ({_show(left)} + {_show(right)}) repeats merge {seen[ids]}")
            seen[ids] = k
            triples.append((ids[0], ids[1], index[left + right]))
        return cls._assemble(vocab, triples, special, pattern, "merges", ignore_merges, source)

    @classmethod
    def from_ranks(cls, ranks, special_tokens=None, pattern="gpt2", source="ranks"):
        """tiktoken's form, the "ranks" rule: ranks {token bytes: rank} (tiktoken's mergeable_ranks);
        a token's id is its rank, and special_tokens ({text: id}) fill the ids the ranks leave.

        Two adjacent tokens merge when their bytes make a token, the lowest rank first, and a chunk
        that is itself a token is that token: tiktoken's encoder. ``merges`` lists every split of a
        token into two tokens, as transformers' TikTokenConverter derives them."""
        if not isinstance(ranks, dict):
            raise ValueError(f"{source}: ranks must be a dict of token bytes to ranks, got {type(ranks).__name__}")
        tokens = {}
        for token, rank in ranks.items():
            if not _is_id(rank) or rank < 0:
                raise ValueError(f"{source}: token {_show(token)} has rank {rank!r}, not an integer >= 0")
            if rank in tokens:
                raise ValueError(f"{source}: tokens {_show(tokens[rank])} and {_show(token)} both have rank {rank}")
            tokens[rank] = token
        table = [tokens.get(i) for i in range(max(tokens, default=-1) + 1)]
        return cls._from_rank_table(table, special_tokens or {}, pattern, source)

    @classmethod
    def _from_rank_table(cls, tokens, special_tokens, pattern, source):
        vocab, special, index = _vocab_table(tokens, special_tokens, source)
        return cls._assemble(vocab, _merges_from_ranks(vocab, index), special, pattern, "ranks", True, source)

    @property
    def vocab_size(self):
        """The real number of ids: every token, special tokens included."""
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
        """One pre-tokenized chunk (str) -> ids (list of int), merged by the merge rule."""
        data = chunk.encode("utf-8", "surrogatepass")
        if self._whole is not None:
            token_id = self._whole.get(data)
            if token_id is not None:
                return [token_id]
        ids = list(data) if self._byte_ids is None else list(map(self._byte_ids.__getitem__, data))
        if len(ids) > self.LONG_CHUNK:
            return _merge_by_rank_heap(ids, self._ranks, self._made)
        return _merge_by_rank(ids, self._ranks, self._made)

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

    def token_bytes(self, token_id):
        """The bytes of one id (a special token: its text's UTF-8)."""
        return self._vocab[_check_ids([token_id], len(self._vocab))[0]]

    # ---- files --------------------------------------------------------------------------------

    def to_dict(self):
        """A JSON-able dict from which every id follows. nanollm's layout (a trained tokenizer) is
        format_version 1: the merges and the special tokens. Any other vocabulary is version 2:
        every id's token in GPT-2's byte-level spelling (special tokens as their text), the merge
        rule, and for the "merges" rule the merges as [left id, right id] (for "ranks" they follow)."""
        if self._nanollm_layout:
            return {"kind": self.kind, "format_version": 1, "pattern": self.pattern,
                    "merges": [list(pair) for pair in self.merges], "special_tokens": dict(self.special_tokens)}
        from nanollm.interop.tokenizer_files import byte_level_tokens

        data = {"kind": self.kind, "format_version": 2, "pattern": self.pattern, "merge_rule": self.merge_rule,
                "tokens": byte_level_tokens(self), "special_tokens": dict(self.special_tokens)}
        if self.merge_rule == "merges":
            data["merges"] = [list(pair) for pair in self.merges]
        if self.ignore_merges:
            data["ignore_merges"] = True
        return data

    def save(self, path):
        """Write the tokenizer as JSON (atomically); format_version 1 adds each merged token's text for people."""
        data = self.to_dict()
        if data["format_version"] == 1:
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
        if version not in cls.FORMAT_VERSIONS:
            raise ValueError(f"{source} has BPE tokenizer format_version {version!r}; this nanollm reads "
                             f"{' and '.join(map(str, cls.FORMAT_VERSIONS))}")
        pattern = data.get("pattern")
        if pattern not in PATTERNS:
            raise ValueError(f"{source} has pre-tokenization pattern {pattern!r}; known: {', '.join(PATTERNS)}")
        if version == 2:
            return cls._from_dict_v2(data, pattern, source)
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
    def _from_dict_v2(cls, data, pattern, source):
        from nanollm.interop.tokenizer_files import unspell_token

        tokens, special = data.get("tokens"), data.get("special_tokens")
        if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
            raise ValueError(f"{source} has no 'tokens' list of strings (format_version 2)")
        if not isinstance(special, dict) or not all(_is_id(i) for i in special.values()):
            raise ValueError(f"{source}: 'special_tokens' must map strings to integer ids")
        rule = data.get("merge_rule")
        if rule not in cls.MERGE_RULES:
            raise ValueError(f"{source} has merge_rule {rule!r}; known: {', '.join(cls.MERGE_RULES)}")
        special_ids = set(special.values())
        table = [None if i in special_ids else unspell_token(token, i, source) for i, token in enumerate(tokens)]
        if rule == "ranks":
            return cls._from_rank_table(table, special, pattern, source)
        merges = data.get("merges")
        if not isinstance(merges, list):
            raise ValueError(f"{source} has no 'merges' list")
        pairs = []
        for k, pair in enumerate(merges):
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(_is_id(i) and 0 <= i < len(table) and table[i] is not None for i in pair)):
                raise ValueError(f"{source}: merge {k} is {pair!r}, not a [left id, right id] pair of ids of "
                                 "tokens that are not special")
            pairs.append((table[pair[0]], table[pair[1]]))
        return cls.from_vocab(table, pairs, special, pattern, bool(data.get("ignore_merges", False)), source)

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
    """Any tokenizer nanollm reads: its own JSON (the class chosen by "kind"), a Hugging Face
    tokenizer.json, GPT-2's vocab.json + merges.txt, a tiktoken ranks file, or a folder holding
    one of them (nanollm.interop.tokenizer_files.read_tokenizer says how each is recognised)."""
    from nanollm.interop.tokenizer_files import read_tokenizer  # not at the top: that module imports this one

    return read_tokenizer(path)
