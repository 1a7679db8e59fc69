"""How long export and import take, and how large the files are, per format and GGUF dtype.

    python -m nanollm.tools.interop_bench [--shapes medium,124m-sized]

Builds a Llama of each shape (random weights, seed 0; "medium" is the medium preset's shape,
"124m-sized" GPT-2 small's shape and vocabulary as a Llama), saves it as a checkpoint in a
temporary folder, then exports it to a Hugging Face folder and to GGUF in f32, f16, bf16 and
q8_0, imports each back, and prints seconds and MiB. Needs safetensors and gguf.
"""

import argparse
import tempfile
import time
from pathlib import Path

from nanollm.checkpoint import save_checkpoint
from nanollm.interop import export_gguf, export_hf, import_gguf, import_hf
from nanollm.model_config import build_model

SHAPES = {"medium": dict(vocab_size=65, embedding_dim=128, num_layers=6, ffn_hidden_dim=256, num_heads=4,
                         max_seq_len=256),
          "124m-sized": dict(vocab_size=50257, embedding_dim=768, num_layers=12, num_heads=12, max_seq_len=1024)}
FORMATS = (("hf", None), ("gguf", "f32"), ("gguf", "f16"), ("gguf", "bf16"), ("gguf", "q8_0"))


def size_of(path):
    """Bytes of a file, or of the files in a folder."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def bench_shape(label, folder):
    """Print one shape's table: a line per format."""
    model = build_model(dict(architecture="llama", **SHAPES[label]), seed=0)
    parameters = sum(value.size for value in model.params.values())
    checkpoint = save_checkpoint(Path(folder) / "c.npz", model)
    del model
    print(f"{label} Llama: {parameters:,} parameters; checkpoint {size_of(checkpoint) / 2**20:.1f} MiB")
    for form, dtype in FORMATS:
        out = Path(folder) / ("hf" if form == "hf" else f"model_{dtype}.gguf")
        start = time.perf_counter()
        export_hf(checkpoint, out) if form == "hf" else export_gguf(checkpoint, out, dtype=dtype)
        exported = time.perf_counter() - start
        start = time.perf_counter()
        back = Path(folder) / "back.npz"
        import_hf(out, back, overwrite=True) if form == "hf" else import_gguf(out, back, overwrite=True)
        imported = time.perf_counter() - start
        print(f"  {form:4} {dtype or 'f32':5} export {exported:6.2f} s   import {imported:6.2f} s   "
              f"{size_of(out) / 2**20:8.1f} MiB")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    args = parser.parse_args(argv)
    for label in args.shapes.split(","):
        if label not in SHAPES:
            parser.error(f"unknown shape {label!r}; choose from {', '.join(SHAPES)}")
        with tempfile.TemporaryDirectory() as folder:
            bench_shape(label, folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
