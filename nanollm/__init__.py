"""nanollm: train GPT- and Llama-style language models with a hand-written NumPy autograd.

The public API (names kept stable; see DESIGN.md). More names arrive as their parts land.
"""

from nanollm.model import GPT, TransformerLanguageModel
from nanollm.seeding import set_seed

__version__ = "0.1.0"

__all__ = ["GPT", "TransformerLanguageModel", "set_seed", "__version__"]
