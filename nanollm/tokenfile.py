"""Token files: llm.c's ``.bin`` layout, read through ``np.memmap`` so size never matters.

    header  256 x int32 (1024 bytes): [0] magic, [1] version, [2] number of tokens, rest 0
    body    the tokens, little-endian, in the dtype the (magic, version) pair names

    magic 20240520, version 1: uint16 tokens (llm.c's GPT-2 files; vocabularies up to 65,536)
    magic 20240801, version 7: uint32 tokens (llm.c's Llama 3 files; larger vocabularies)
    magic 20261121, version 1: uint8 loss masks (nanollm's own: 1 = this token is a trained
                               target, 0 = ignored, e.g. an instruction's prompt)

Files are written to a temporary name and renamed into place, so a crash never leaves a
half-written file under the real name, and they can be written in pieces (``TokenFileWriter``)
so a corpus larger than RAM never has to be held whole.
"""

import os
from pathlib import Path

import numpy as np

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
FORMATS = {  # (magic, version) -> little-endian dtype of the body
    (20240520, 1): np.dtype("<u2"),
    (20240801, 7): np.dtype("<u4"),
    (20261121, 1): np.dtype("u1"),
}
UINT16_MAX_VOCAB = 2 ** 16
MASK_FORMAT = (20261121, 1)


def token_format(vocab_size):
    """(magic, version) for ids of a vocabulary of ``vocab_size``: uint16 when they fit."""
    return (20240520, 1) if vocab_size <= UINT16_MAX_VOCAB else (20240801, 7)


class TokenFileWriter:
    """Append arrays of ids (or mask bytes) to a token file; ``close()`` writes the header's
    count and renames the file into place. Use as a context manager: on an exception the
    temporary file is removed and an existing file of that name is left untouched."""

    def __init__(self, path, file_format):
        self.path, self.format = Path(path), file_format
        self.dtype = FORMATS[file_format]
        self.count = 0
        self.temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.file = open(self.temporary, "wb")
        self.file.write(b"\0" * HEADER_BYTES)

    def write(self, values):
        """Append the 1-D ``values``; each must fit the file's dtype."""
        values = np.asarray(values)
        if values.size:
            info = np.iinfo(self.dtype)
            low, high = int(values.min()), int(values.max())
            if low < info.min or high > info.max:
                bad = low if low < info.min else high
                raise ValueError(f"value {bad} does not fit {self.path.name}'s {self.dtype.name} entries")
        self.file.write(values.astype(self.dtype).tobytes())
        self.count += values.size

    def close(self):
        header = np.zeros(HEADER_INTS, dtype="<i4")
        header[0], header[1], header[2] = self.format[0], self.format[1], self.count
        self.file.seek(0)
        self.file.write(header.tobytes())
        self.file.close()
        os.replace(self.temporary, self.path)
        return self.path

    def abort(self):
        self.file.close()
        self.temporary.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self.close()
        else:
            self.abort()


def write_token_file(path, values, file_format):
    """Write all of ``values`` (1-D) as one token file; returns its path."""
    with TokenFileWriter(path, file_format) as writer:
        writer.write(values)
    return writer.path


def read_token_file(path, expect_mask=False):
    """The body of a token file as a read-only np.memmap (nothing is read until indexed), after
    checking the header and that the file holds exactly the tokens the header counts."""
    path = Path(path)
    what = "loss-mask file" if expect_mask else "token file"
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist; write it with nanollm.prepare.prepare(...)")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(f"{what} {str(path)!r} is truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte "
                         "header; prepare the data again")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, count = (int(v) for v in header[:3])
    if (magic, version) not in FORMATS:
        known = ", ".join(f"{m} v{v}" for m, v in FORMATS)
        raise ValueError(f"{str(path)!r} is not a token file: header magic {magic} version {version} (known: {known}); "
                         "write token files with nanollm.prepare.prepare(...)")
    is_mask = (magic, version) == MASK_FORMAT
    if is_mask != expect_mask:
        raise ValueError(f"{str(path)!r} is a {'loss-mask' if is_mask else 'token'} file where a {what} was expected")
    dtype = FORMATS[(magic, version)]
    body = size - HEADER_BYTES
    if count < 0 or body != count * dtype.itemsize:
        held = body // dtype.itemsize
        problem = "truncated" if body < count * dtype.itemsize else "longer than its header says"
        raise ValueError(f"{what} {str(path)!r} is {problem}: the header counts {count:,} tokens, the file holds "
                         f"{held:,}; prepare the data again")
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))
