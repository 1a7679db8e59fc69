"""Models and tokenizers in and out of nanollm: Hugging Face folders, GGUF files, tokenizer files.

    files.py        optional packages, JSON, safetensors folders: what every format shares
    hf_gpt2.py      GPT-2 <-> transformers.GPT2LMHeadModel (names, config.json, export/import)
"""

from nanollm.interop.files import MissingPackageError
from nanollm.interop.hf_gpt2 import (check_gpt2_compatible, export_hf_gpt2, from_hf_gpt2, hf_gpt2_config,
                                     import_hf_gpt2, model_config_from_hf, to_hf_gpt2)

__all__ = ["MissingPackageError", "check_gpt2_compatible", "export_hf_gpt2", "from_hf_gpt2", "hf_gpt2_config",
           "import_hf_gpt2", "model_config_from_hf", "to_hf_gpt2"]
