"""What every format of nanollm.interop shares: optional packages, JSON files, safetensors folders.

    require("gguf", "exporting to GGUF")         the module, or a one-line MissingPackageError (nanollm.optional)
    read_json_file(path, what)                   a JSON object, or an error naming the file
    write_safetensors(path, tensors)             atomically (textfiles.write_atomically)
    load_safetensors_folder(folder)              {name: NumPy array} from model.safetensors or its shards
    check_shape(name, value, shapes, source)     an array's shape against a parameter table
"""

import json
from pathlib import Path

import numpy as np

from nanollm.optional import require
from nanollm.textfiles import write_atomically

WEIGHTS_FILE = "model.safetensors"
SHARD_INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"


def read_json_file(path, what):
    """The JSON object in ``path``, or an error naming the file (``what`` says what it should hold)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; a model folder needs {what}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def check_out_files(paths, overwrite):
    """A FileExistsError naming the first of ``paths`` that exists, unless overwrite."""
    if not overwrite:
        for path in paths:
            if Path(path).exists():
                raise FileExistsError(f"{path} already exists; write to another path or pass --overwrite "
                                      "(overwrite=True) to replace it")


def write_safetensors(path, tensors):
    """Write {name: array} as a .safetensors file, atomically. The "format": "pt" metadata is what
    transformers checks before it loads a file."""
    save = require("safetensors.numpy", "writing safetensors").save
    contiguous = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    return write_atomically(path, lambda f: f.write(save(contiguous, metadata={"format": "pt"})))


def check_shape(name, value, shapes, source):
    """A ValueError when an array's shape differs from the config's (scalars are not checked)."""
    shape = getattr(value, "shape", None)
    if shapes is not None and shape is not None and tuple(shape) != shapes[name]:
        raise ValueError(f"{source} has shape {tuple(shape)} but the config says {shapes[name]}; pass the config "
                         "of the model these arrays belong to")


def as_numpy(value):
    """A torch tensor -> NumPy (sharing memory where it can; bfloat16 via float32); else unchanged."""
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return value


# safetensors dtype codes -> NumPy dtypes, for the files safetensors.numpy cannot read (bfloat16).
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U8": "u1", "BOOL": "?"}


def _load_safetensors_raw(path):
    """Read a .safetensors file by hand (8-byte header size, JSON header, raw data), bfloat16
    becoming float32 (its 16 bits are the top half of a float32). Only for files with bfloat16,
    which safetensors.numpy refuses."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        data = np.memmap(f, dtype=np.uint8, mode="r", offset=8 + size)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        if info["dtype"] == "BF16":
            value = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in _ST_DTYPES:
            value = np.array(raw.view(_ST_DTYPES[info["dtype"]]))
        else:
            raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which nanollm cannot import")
        out[name] = value.reshape(info["shape"])
    return out


def load_safetensors_folder(folder):
    """{name: array} from folder/model.safetensors, or from the shards model.safetensors.index.json
    lists; bfloat16 tensors come back as float32."""
    load_file = require("safetensors.numpy", "importing").load_file
    folder = Path(folder)
    weights, index = folder / WEIGHTS_FILE, folder / SHARD_INDEX_FILE
    if weights.is_file():
        files = [weights]
    elif index.is_file():
        weight_map = read_json_file(index, "its shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map' object; it is not a safetensors shard index")
        files = [folder / shard for shard in dict.fromkeys(weight_map.values())]
    else:
        hint = (" (it holds pytorch_model.bin: re-save it with save_pretrained(dir, safe_serialization=True))"
                if (folder / "pytorch_model.bin").exists() else "")
        raise FileNotFoundError(f"{weights} does not exist{hint}; import needs the weights as model.safetensors")
    state = {}
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (listed in {index})")
        try:
            state.update(load_file(str(path)))
        except TypeError as exc:
            if "bfloat16" not in str(exc):
                raise
            state.update(_load_safetensors_raw(path))
        except Exception as exc:  # safetensors raises its own SafetensorError for a damaged file
            raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
    return state
