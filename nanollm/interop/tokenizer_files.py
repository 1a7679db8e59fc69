"""GPT-2's byte-level BPE tokenizer files in and out of nanollm: tiktoken ranks, vocab.json +
merges.txt, and the `tokenizers` library's tokenizer.json.

    read_tokenizer(path)                              any form below, nanollm's own JSON, or a folder of one
    load_tiktoken_ranks(path, special_tokens=None)    "base64 rank" lines (gpt2.tiktoken)
    load_vocab_and_merges(vocab_json, merges_txt, special_tokens=None)   GPT-2's own two files
    load_hf_tokenizer_json(path)                      tokenizer.json: BPE model, ByteLevel pre-tokenizer
    save_hf_tokenizer_json(tokenizer, path)           BPETokenizer or CharTokenizer -> tokenizer.json
    bytes_to_unicode()                                GPT-2's printable spelling of the 256 bytes
    byte_level_tokens(tok), byte_level_merges(tok)    the vocabulary as vocab.json, merges.txt and GGUF
    bpe_from_byte_level(tokens, merges, special_ids)  spell it, and back

Every reader gives a tokenizer that encodes exactly as the library the file came from (tiktoken
for ranks, `tokenizers` for the others); what nanollm cannot reproduce (a normalizer, another
pre-tokenization pattern, dropout, ...) is refused in one line that names it. Nothing here needs
`tokenizers` or tiktoken installed: the files are JSON and text.

A tiktoken ranks file holds no pre-tokenization pattern: nanollm splits with GPT-2's, right for
gpt2.tiktoken (r50k_base); cl100k_base and o200k_base files need patterns nanollm does not have.
"""

import base64
import binascii
import re
from pathlib import Path

from nanollm.textfiles import read_text_file, write_json_atomically
from nanollm.tokenizers import (GPT2_REGEX, BPETokenizer, CharTokenizer, _read_json, _show,
                                tokenizer_from_dict)

FORMS = ("nanollm's tokenizer JSON, a Hugging Face tokenizer.json, a vocab.json with merges.txt beside it, a "
         "tiktoken ranks file (.tiktoken), or a folder holding one of them")
GPT2_RANKS_NAMES = ("gpt2", "r50k_base")  # ranks files of GPT-2's vocabulary, which lack <|endoftext|>
GPT2_RANKS = 50256
END_OF_TEXT = "<|endoftext|>"
# A folder's files, in the order read_tokenizer looks for them (nanollm's own first: it is lossless).
FOLDER_FILES = ("nanollm_tokenizer.json", "tokenizer.json")
VOCAB_AND_MERGES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))  # HF's names, OpenAI's
_RANKS_LINE = re.compile(rb"\s*[A-Za-z0-9+/=]+ \d+\s*$")


# ---- GPT-2's spelling of bytes ---------------------------------------------------------------------

def _byte_spelling():
    """{byte: character}: printable Latin-1 bytes stand for themselves, the 68 others (controls, space,
    DEL, NBSP, soft hyphen) for U+0100 onward, in byte order; GPT-2's encoder.py builds the same."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + len(spelling) - len(printable))
    return spelling


_BYTE_TO_CHAR = _byte_spelling()
_SPELL = str.maketrans({chr(b): ch for b, ch in _BYTE_TO_CHAR.items()})  # latin-1 text -> spelling
# spelling -> latin-1 text; a character that stands for no byte becomes U+FFFF, which latin-1 refuses
_UNSPELL = str.maketrans({**{chr(b): "\uffff" for b in range(256)}, **{ch: chr(b) for b, ch in _BYTE_TO_CHAR.items()}})


def bytes_to_unicode():
    """{byte (int): character (str)}: GPT-2's spelling of bytes as printable characters, which
    vocab.json, merges.txt, tokenizer.json and GGUF use for byte-level tokens (space is "Ġ",
    newline "Ċ"). A new dict each call."""
    return dict(_BYTE_TO_CHAR)


def spell_token(token):
    """Token bytes -> their byte-level spelling (str)."""
    return token.decode("latin-1").translate(_SPELL)


def _unspell(text, what, source):
    try:
        return text.translate(_UNSPELL).encode("latin-1")
    except UnicodeEncodeError:
        bad = next(ch for ch in text if ch.translate(_UNSPELL) == "\uffff" or ord(ch.translate(_UNSPELL)) > 255)
        raise ValueError(f"{source}: {what} {text!r} is not in GPT-2's byte-level spelling (its character "
                         f"{bad!r} stands for no byte); only byte-level BPE vocabularies can be read") from None


def unspell_token(text, token_id, source="vocabulary"):
    """A token's byte-level spelling (str) -> its bytes; a ValueError naming ``source`` and the id if
    a character stands for no byte."""
    return _unspell(text, f"token {token_id}", source)


# ---- the vocabulary as byte-level strings (vocab.json, merges.txt, GGUF) ---------------------------

def _require_bpe(tokenizer, what):
    if not isinstance(tokenizer, BPETokenizer):
        raise ValueError(f"{what} needs a BPETokenizer, got a {type(tokenizer).__name__}")


def byte_level_tokens(tokenizer):
    """Each id's token as vocab.json, tokenizer.json and GGUF spell it (list of str in id order):
    its bytes in bytes_to_unicode characters; a special token as its plain text."""
    _require_bpe(tokenizer, "byte_level_tokens")
    special = {i: text for text, i in tokenizer.special_tokens.items()}
    return [special[i] if i in special else spell_token(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)]


def byte_level_merges(tokenizer):
    """The merges as merges.txt and GGUF's tokenizer.ggml.merges write them: "left right" (str), first
    rank first. For a "ranks" tokenizer (tiktoken's), every split of a token into two tokens."""
    _require_bpe(tokenizer, "byte_level_merges")
    spelled = {}

    def spell(i):
        if i not in spelled:
            spelled[i] = spell_token(tokenizer.token_bytes(i))
        return spelled[i]

    return [f"{spell(left)} {spell(right)}" for left, right in tokenizer.merges]


def _merge_parts(merge, k, source):
    """One merge ("left right", or a [left, right] pair as tokenizers >= 0.20 writes them) -> two bytes."""
    parts = merge.split(" ") if isinstance(merge, str) else merge
    if not isinstance(parts, (list, tuple)) or len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"{source}: merge {k} is {merge!r}, not \"left right\" (two tokens and one space)")
    return tuple(_unspell(part, f"merge {k} part", source) for part in parts)


def bpe_from_byte_level(tokens, merges, special_ids=(), pattern="gpt2", ignore_merges=False,
                        source="byte-level vocabulary"):
    """The BPETokenizer of a byte-level vocabulary: tokens (str per id, in id order, as
    byte_level_tokens gives them), merges ("left right" str or [left, right], first rank first, as
    byte_level_merges gives them), special_ids (the ids that are special tokens: their text as it is)."""
    tokens = list(tokens)
    special_ids = sorted(set(special_ids))
    for i in special_ids:
        if not (isinstance(i, int) and 0 <= i < len(tokens)):
            raise ValueError(f"{source}: special id {i!r} is not an id of the {len(tokens)} tokens")
    for i, token in enumerate(tokens):
        if not isinstance(token, str) or not token:
            raise ValueError(f"{source}: token {i} is {token!r}, not a non-empty string")
    specials = set(special_ids)
    table = [None if i in specials else unspell_token(token, i, source) for i, token in enumerate(tokens)]
    pairs = [_merge_parts(merge, k, source) for k, merge in enumerate(merges)]
    return BPETokenizer.from_vocab(table, pairs, {tokens[i]: i for i in special_ids}, pattern, ignore_merges,
                                   source)


# ---- tiktoken ranks ------------------------------------------------------------------------------

def _read_bytes(path, what):
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} '{path}' is a folder, not a file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{what} '{path}' does not exist") from None


def _read_head(path, size=4096):
    """The first bytes of a file, or the one-line error load_tokenizer has always given."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except FileNotFoundError:
        raise ValueError(f"tokenizer file '{path}' does not exist") from None


def load_tiktoken_ranks(path, special_tokens=None):
    """A tiktoken ranks file (one "base64-token rank" line per token) as a BPETokenizer that encodes
    exactly as tiktoken with GPT-2's pattern (``BPETokenizer.from_ranks``): ids are the ranks.

    special_tokens ({text: id}): tiktoken keeps them outside the file. None: for GPT-2's own file
    (named gpt2.tiktoken or r50k_base.tiktoken, 50,256 ranks) <|endoftext|> = 50256, as GPT-2; for
    any other, none."""
    path = Path(path)
    ranks = {}
    for number, line in enumerate(_read_bytes(path, "tiktoken ranks file").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"{path} line {number}: {line[:60]!r} is not \"base64-token rank\"; a tiktoken ranks "
                             "file has one such line per token")
        try:
            token = base64.b64decode(parts[0], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{path} line {number}: {parts[0][:60]!r} is not base64") from None
        if token in ranks:
            raise ValueError(f"{path} line {number}: token {_show(token)} already has rank {ranks[token]}")
        ranks[token] = int(parts[1])
    if special_tokens is None:
        gpt2 = path.name.split(".")[0] in GPT2_RANKS_NAMES and len(ranks) == GPT2_RANKS
        special_tokens = {END_OF_TEXT: GPT2_RANKS} if gpt2 else {}
    return BPETokenizer.from_ranks(ranks, special_tokens, source=str(path))


# ---- vocab.json + merges.txt ---------------------------------------------------------------------

def _vocab_list(vocab, source):
    """{token str: id} -> tokens in id order (str), checked: ids from 0 without gaps or repeats."""
    if not isinstance(vocab, dict) or not vocab or not all(isinstance(i, int) and not isinstance(i, bool)
                                                           for i in vocab.values()):
        raise ValueError(f"{source}: the vocabulary must map each token (str) to its id (int)")
    tokens = [None] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        if i < 0:
            raise ValueError(f"{source}: token {token!r} has id {i}; ids start at 0")
        if tokens[i] is not None:
            raise ValueError(f"{source}: tokens {tokens[i]!r} and {token!r} both have id {i}")
        tokens[i] = token
    return tokens


def _read_merges_txt(path):
    """merges.txt (vocab.bpe): "#version" header lines, then one "left right" per line -> list of str."""
    try:
        text = read_text_file(path)
    except ValueError as exc:
        raise ValueError(f"merges file: {exc}") from None
    return [line for line in text.splitlines() if line and not line.startswith("#version")]


def load_vocab_and_merges(vocab_json, merges_txt, special_tokens=None):
    """GPT-2's vocab.json (or encoder.json) and merges.txt (or vocab.bpe) as a BPETokenizer that
    encodes exactly as `tokenizers`' BPE on them.

    special_tokens ({text: id}); None: every token that is neither a single byte nor made by a
    merge (so that BPE can never produce it), as its text: GPT-2's <|endoftext|>."""
    source = f"{vocab_json} + {merges_txt}"
    tokens = _vocab_list(_read_json(vocab_json), str(vocab_json))
    merges = _read_merges_txt(merges_txt)
    if special_tokens is None:
        made = {merge.replace(" ", "", 1) for merge in merges}
        special_ids = [i for i, token in enumerate(tokens)
                       if token is not None and len(token) > 1 and token not in made]
    else:
        if not isinstance(special_tokens, dict):
            raise ValueError(f"special_tokens must map each special token's text to its id, got {special_tokens!r}")
        for text, i in special_tokens.items():
            if not (isinstance(i, int) and 0 <= i):
                raise ValueError(f"{source}: special token {text!r} has id {i!r}")
            tokens.extend([None] * (i + 1 - len(tokens)))
            tokens[i] = text
        special_ids = list(special_tokens.values())
    missing = [i for i, token in enumerate(tokens) if token is None]
    if missing:
        raise ValueError(f"{source}: no token has id {missing[0]}; ids must run from 0 to {len(tokens) - 1}")
    return bpe_from_byte_level(tokens, merges, special_ids, source=source)


# ---- tokenizer.json ------------------------------------------------------------------------------

def _describe(component):
    """How an error names a tokenizer.json component: its type, with what sets it apart."""
    if not isinstance(component, dict):
        return repr(component)
    kind = component.get("type")
    if kind == "Split":
        pattern = component.get("pattern", {})
        return f"Split on {pattern.get('Regex', pattern.get('String'))!r}"
    if kind == "ByteLevel":
        flags = [flag for flag, default in (("add_prefix_space", False), ("use_regex", True))
                 if component.get(flag, default) != default]
        return "ByteLevel" + "".join(f" with {flag}={component[flag]}" for flag in flags)
    if kind == "Sequence":
        parts = (component.get("pretokenizers") or component.get("normalizers") or component.get("processors")
                 or component.get("decoders") or [])
        return "Sequence[" + ", ".join(_describe(part) for part in parts) + "]"
    return str(kind)


def _is_gpt2_split(component):
    pattern = component.get("pattern") if isinstance(component, dict) else None
    return (isinstance(component, dict) and component.get("type") == "Split" and isinstance(pattern, dict)
            and pattern.get("Regex") == GPT2_REGEX and component.get("behavior") == "Isolated"
            and not component.get("invert", False))


def _byte_level_pre_tokenizer(pre, source):
    """True for GPT-2's ByteLevel pre-tokenization (alone, or Split on GPT-2's pattern then ByteLevel
    without its own regex, as transformers converts tiktoken files), False for none; else an error."""
    if pre is None:
        return False

    def byte_level(component, use_regex):
        return (isinstance(component, dict) and component.get("type") == "ByteLevel"
                and component.get("use_regex", True) == use_regex and not component.get("add_prefix_space", False))

    if byte_level(pre, True):
        return True
    parts = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else None
    if parts is not None and len(parts) == 2 and _is_gpt2_split(parts[0]) and byte_level(parts[1], False):
        return True
    if parts is not None and len(parts) == 1 and byte_level(parts[0], True):
        return True
    raise ValueError(f"{source}: pre_tokenizer {_describe(pre)} is not GPT-2's; nanollm reproduces only "
                     "ByteLevel (use_regex, no add_prefix_space) or Split on GPT-2's pattern then ByteLevel")


def _check_hf_components(data, source):
    """Refuse, in one line naming it, any part of a tokenizer.json that would make `tokenizers`
    encode or decode otherwise than nanollm."""
    normalizer = data.get("normalizer")
    if normalizer is not None and not (isinstance(normalizer, dict) and normalizer.get("type") == "Sequence"
                                       and not normalizer.get("normalizers")):
        raise ValueError(f"{source}: normalizer {_describe(normalizer)}: nanollm applies no normalizer, so it would "
                         "encode otherwise; only tokenizers without one can be read")
    for key in ("truncation", "padding"):
        if data.get(key) is not None:
            raise ValueError(f"{source}: '{key}' is set; nanollm's encode neither truncates nor pads: save the "
                             f"tokenizer without {key}")
    post = data.get("post_processor")
    parts = post.get("processors") if isinstance(post, dict) and post.get("type") == "Sequence" else [post]
    if post is not None and not all(isinstance(part, dict) and part.get("type") == "ByteLevel" for part in parts):
        raise ValueError(f"{source}: post_processor {_describe(post)} adds or changes tokens after encoding, which "
                         "nanollm does not; only ByteLevel or none can be read")
    decoder = data.get("decoder")
    if decoder is not None and not (isinstance(decoder, dict) and decoder.get("type") in ("ByteLevel", "Fuse")):
        raise ValueError(f"{source}: decoder {_describe(decoder)}: nanollm decodes byte-level BPE tokens to their "
                         "bytes (ByteLevel) and characters joined (Fuse); no other decoder can be read")
    model = data["model"]
    if model.get("dropout") not in (None, 0, 0.0):
        raise ValueError(f"{source}: BPE dropout {model['dropout']} makes encoding random; nanollm encodes "
                         "deterministically: set dropout to null")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ValueError(f"{source}: {key} {model[key]!r}: nanollm's byte-level BPE has none")
    if model.get("byte_fallback"):
        raise ValueError(f"{source}: byte_fallback is a SentencePiece-style BPE, not GPT-2's byte-level one")


def _added_tokens(data, source):
    """tokenizer.json's added_tokens -> {content: id}: all become nanollm special tokens."""
    special = {}
    for token in data.get("added_tokens") or []:
        if not isinstance(token, dict) or not isinstance(token.get("content"), str) or not token["content"] \
                or not isinstance(token.get("id"), int):
            raise ValueError(f"{source}: added token {token!r} has no content and id")
        for flag in ("single_word", "lstrip", "rstrip"):
            if token.get(flag):
                raise ValueError(f"{source}: added token {token['content']!r} has {flag}, which nanollm's special "
                                 "tokens do not reproduce")
        special[token["content"]] = token["id"]
    return special


def _hf_from_data(data, source):
    model = data.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{source} has no 'model' object: not a Hugging Face tokenizer.json")
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE":
        raise ValueError(f"{source}: model {kind!r}: nanollm reads only byte-level BPE tokenizers (model BPE)")
    _check_hf_components(data, source)
    special = _added_tokens(data, source)
    byte_level = _byte_level_pre_tokenizer(data.get("pre_tokenizer"), source)
    tokens = _vocab_list(model.get("vocab"), source)
    merges = model.get("merges")
    if not isinstance(merges, list):
        raise ValueError(f"{source}: the BPE model has no 'merges' list")
    for text, i in special.items():
        tokens.extend([None] * (i + 1 - len(tokens)))
        tokens[i] = text
    missing = [i for i, token in enumerate(tokens) if token is None]
    if missing:
        raise ValueError(f"{source}: no token has id {missing[0]}; ids must run from 0 to {len(tokens) - 1}")
    if byte_level:
        return bpe_from_byte_level(tokens, merges, special.values(), ignore_merges=model.get("ignore_merges", False),
                                   source=source)
    return _char_from_hf(tokens, merges, special, source)


def _char_from_hf(tokens, merges, special, source):
    """A BPE model without pre-tokenizer and merges, whose tokens are single characters: what
    save_hf_tokenizer_json writes for a CharTokenizer, read back as one."""
    special_ids = set(special.values())
    chars = [token for i, token in enumerate(tokens) if i not in special_ids]
    if merges or not all(len(ch) == 1 for ch in chars):
        raise ValueError(f"{source}: a BPE model without the ByteLevel pre-tokenizer is character-level BPE; "
                         "nanollm reads it only without merges and with single-character tokens (a CharTokenizer)")
    tokenizer = CharTokenizer(chars, special_tokens=sorted(special, key=special.get))
    if tokenizer.chars != chars or tokenizer.special_tokens != special:
        raise ValueError(f"{source}: a character vocabulary must list its characters in sorted order, then the "
                         "special tokens (nanollm's CharTokenizer layout)")
    return tokenizer


def load_hf_tokenizer_json(path):
    """A `tokenizers` tokenizer.json as a nanollm tokenizer that encodes and decodes as
    `tokenizers` does: a BPE model with GPT-2's ByteLevel pre-tokenization -> BPETokenizer (its
    added_tokens become special tokens, special or not); a merge-less BPE of single characters
    without pre-tokenizer (save_hf_tokenizer_json's form of a CharTokenizer) -> CharTokenizer.
    Anything else is a one-line ValueError naming the part nanollm cannot reproduce."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"tokenizer file '{path}' holds {type(data).__name__}, not a JSON object")
    return _hf_from_data(data, str(path))


def _vocab_dict(tokens, source):
    vocab = {}
    for i, token in enumerate(tokens):
        if token in vocab:
            raise ValueError(f"{source}: ids {vocab[token]} and {i} are both the token {token!r}, which "
                             "vocab.json and tokenizer.json cannot hold (one id per token string)")
        vocab[token] = i
    return vocab


def _hf_added(tokenizer):
    return [{"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True} for text, i in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])]


def save_hf_tokenizer_json(tokenizer, path):
    """Write ``tokenizer`` as a `tokenizers` tokenizer.json that `tokenizers.Tokenizer.from_file`
    loads and that encodes (with add_special_tokens=False or True alike) and decodes as it does.

    BPETokenizer: GPT-2's form: a BPE model, ByteLevel pre-tokenizer, decoder and post-processor,
    the special tokens as added tokens (special). A "ranks" (tiktoken) tokenizer gets every split
    of a token as its merges and ignore_merges, as transformers converts tiktoken files.
    CharTokenizer: a BPE model without merges (each character its own token) and without
    pre-tokenizer, and the Fuse decoder (characters joined without spaces). Returns path."""
    source = f"saving {path}"
    if isinstance(tokenizer, CharTokenizer):
        surrogates = [ch for ch in tokenizer.chars if "\ud800" <= ch <= "\udfff"]
        if surrogates:
            raise ValueError(f"{source}: the character vocabulary holds the lone surrogate {surrogates[0]!r}, which "
                             "tokenizer.json (UTF-8) cannot hold")
        tokens = list(tokenizer.chars) + sorted(tokenizer.special_tokens, key=tokenizer.special_tokens.get)
        model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                 "vocab": _vocab_dict(tokens, source), "merges": []}
        pre_tokenizer, post_processor, decoder = None, None, {"type": "Fuse"}
    else:
        _require_bpe(tokenizer, "save_hf_tokenizer_json")
        model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                 "vocab": _vocab_dict(byte_level_tokens(tokenizer), source), "merges": byte_level_merges(tokenizer)}
        if tokenizer.ignore_merges:
            model["ignore_merges"] = True
        pre_tokenizer = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        post_processor = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    data = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": _hf_added(tokenizer),
            "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": post_processor, "decoder": decoder,
            "model": model}
    return write_json_atomically(path, data)


# ---- any form ------------------------------------------------------------------------------------

def _merges_beside(vocab_path):
    """The merges file beside a vocab.json: the one its name pairs with (vocab.json: merges.txt,
    encoder.json: vocab.bpe), else either."""
    names = [merges for vocab, merges in VOCAB_AND_MERGES if vocab == vocab_path.name]
    names += [merges for _, merges in VOCAB_AND_MERGES if merges not in names]
    for name in names:
        if vocab_path.with_name(name).is_file():
            return vocab_path.with_name(name)
    raise ValueError(f"{vocab_path} is a vocab.json, but no {' or '.join(names)} is beside it; a byte-level BPE "
                     "needs its merges too")


def _read_json_form(path):
    data = _read_json(path)
    if isinstance(data, dict) and "kind" in data:
        return tokenizer_from_dict(data, source=str(path))
    if isinstance(data, dict) and "model" in data:
        return _hf_from_data(data, str(path))
    if isinstance(data, dict) and data and all(isinstance(i, int) for i in data.values()):
        return load_vocab_and_merges(path, _merges_beside(path))
    raise ValueError(f"tokenizer file '{path}' is JSON but no tokenizer nanollm reads; give {FORMS}")


def _read_folder(folder):
    for name in FOLDER_FILES:
        if (folder / name).is_file():
            return _read_json_form(folder / name)
    for vocab_name, merges_name in VOCAB_AND_MERGES:
        if (folder / vocab_name).is_file() and (folder / merges_name).is_file():
            return load_vocab_and_merges(folder / vocab_name, folder / merges_name)
    ranks = sorted(folder.glob("*.tiktoken"))
    if len(ranks) == 1:
        return load_tiktoken_ranks(ranks[0])
    raise ValueError(f"folder '{folder}' holds no tokenizer nanollm reads: it needs {' or '.join(FOLDER_FILES)}, "
                     "vocab.json with merges.txt, or one .tiktoken file")


def read_tokenizer(path):
    """Any tokenizer nanollm reads, recognised by its content, not its name: a JSON object with
    "kind" is nanollm's own (tokenizer_from_dict), with "model" a Hugging Face tokenizer.json, of
    token -> id a vocab.json (merges.txt or vocab.bpe beside it); lines "base64 rank" a tiktoken
    ranks file. A folder: nanollm_tokenizer.json, tokenizer.json, vocab.json + merges.txt,
    encoder.json + vocab.bpe, or a lone .tiktoken file, in that order. Anything else is a one-line
    ValueError listing the forms."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    head = _read_head(path)
    if head.lstrip()[:1] in (b"{", b"["):
        return _read_json_form(path)
    first_line = head.split(b"\n", 1)[0]
    if _RANKS_LINE.match(first_line):
        return load_tiktoken_ranks(path)
    raise ValueError(f"tokenizer file '{path}' is no tokenizer nanollm reads; give {FORMS}")
