"""nanollm: train GPT- and Llama-style language models with a hand-written NumPy autograd.

The public API (names kept stable; see DESIGN.md). More names arrive as their parts land.
"""

from nanollm import mpi_launch

mpi_launch.share_cores_between_ranks()  # before NumPy starts OpenBLAS's threads: k ranks share the cores

from nanollm import heap

heap.keep_freed_memory()  # each step's activations reuse the last step's pages (no page faults)

from nanollm.checkpoint import load_checkpoint, save_checkpoint
from nanollm.generate import generate_text
from nanollm.model import GPT, TransformerLanguageModel
from nanollm.seeding import set_seed
from nanollm.tokenizers import BPETokenizer, CharTokenizer
from nanollm.train import train_with_config

__version__ = "0.1.0"

__all__ = ["BPETokenizer", "CharTokenizer", "GPT", "TransformerLanguageModel", "generate_text", "load_checkpoint",
           "save_checkpoint", "set_seed", "train_with_config", "__version__"]
