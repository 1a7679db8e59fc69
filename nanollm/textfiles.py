"""Reading the user's text files, with errors that say what is wrong and where; writing our
JSON files atomically.

Every text nanollm learns from comes through here: a missing, empty, binary or non-UTF-8 file
is a one-line ValueError naming the file, the byte offset, line and column, and the fix, not a
UnicodeDecodeError from deep inside a tokenizer. ``iter_text_chunks`` reads a file of any size
in pieces cut at line ends, so a corpus larger than RAM is never held whole.
"""

import codecs
import json
import os
from pathlib import Path

CHUNK_BYTES = 16 * 1024 * 1024
UTF8_BOM = codecs.BOM_UTF8


def _check_path(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"text file {path!r} does not exist; check the path")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not a text file; give the path of a file inside it")
    if os.path.getsize(path) == 0:
        raise ValueError(f"text file {path!r} is empty; give a file with some text in it")
    return path


def _where(data, index, base_offset, base_line):
    """'offset N (line L, column C)' of byte ``index`` of ``data``, which starts at base_offset
    in the file on line base_line (1-based)."""
    line = base_line + data.count(b"\n", 0, index)
    column = index - (data.rfind(b"\n", 0, index) + 1) + 1
    return f"byte offset {base_offset + index:,} (line {line}, column {column})"


def _decode(data, path, base_offset=0, base_line=1):
    """UTF-8 bytes -> str, or a ValueError that says where the file stops being text."""
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValueError(f"{path!r} looks like a binary file, not text: a NUL byte at "
                         f"{_where(data, nul, base_offset, base_line)}; give a UTF-8 text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 1].hex()
        raise ValueError(f"{path!r} is not UTF-8 text: byte 0x{bad} at {_where(data, exc.start, base_offset, base_line)} "
                         "cannot be decoded; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def read_text_file(path):
    """The whole UTF-8 text of ``path`` (a leading byte-order mark dropped)."""
    path = _check_path(path)
    with open(path, "rb") as f:
        data = f.read()
    bom = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    return _decode(data[bom:], path, base_offset=bom)


def read_json_lines(path):
    """[(line number, value)] of a JSON Lines file's non-empty lines; a line that is not JSON is a
    ValueError naming the file and the line."""
    records = []
    for number, line in enumerate(read_text_file(path).splitlines(), 1):
        if line.strip():
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {number}: not JSON ({exc.msg})") from None
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def iter_text_chunks(path, chunk_bytes=CHUNK_BYTES):
    """Yield the text of ``path`` in pieces of about ``chunk_bytes`` that end at a line end
    (the last one wherever the file ends), checked as read_text_file checks the whole."""
    path = _check_path(path)
    offset, line = 0, 1
    with open(path, "rb") as f:
        carry = f.read(len(UTF8_BOM))
        if carry == UTF8_BOM:
            carry, offset = b"", len(UTF8_BOM)
        while True:
            block = f.read(chunk_bytes)
            data = carry + block
            if not block:
                if data:
                    yield _decode(data, path, offset, line)
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # no line end yet: keep reading (a file of one huge line)
                carry = data
                continue
            piece, carry = data[:cut], data[cut:]
            yield _decode(piece, path, offset, line)
            offset += len(piece)
            line += piece.count(b"\n")


def write_atomically(path, write):
    """The one atomic writer: ``write(f)`` fills a temporary file beside ``path`` (opened
    "wb"), which is fsynced and renamed over ``path``, and the rename made durable: a crash
    (even SIGKILL) leaves the old file or the new one, never half of one. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:  # open(), not mkstemp: the file gets the umask's usual permissions
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return path


def write_json_atomically(path, data, indent=None):
    """Write ``data`` as UTF-8 JSON to ``path`` atomically (write_atomically). Returns the path
    as given."""
    text = json.dumps(data, ensure_ascii=False, indent=indent)
    try:
        payload = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (a char vocabulary built on such text): escape them
        payload = json.dumps(data, indent=indent).encode("ascii")
    write_atomically(path, lambda f: f.write(payload))
    return path
