"""Models and tokenizers in and out of nanollm: Hugging Face folders, GGUF files, tokenizer files.

    files.py        optional packages, JSON, safetensors folders: what every format shares
    hf.py           export_hf / import_hf: a Hugging Face folder of any architecture, in and out
    hf_gpt2.py      GPT-2 <-> transformers.GPT2LMHeadModel: names, layouts, config.json
    hf_llama.py     Llama <-> transformers.LlamaForCausalLM: names, layouts, config.json
    gguf_files.py   export_gguf / import_gguf: llama.cpp's one-file format, both architectures
    tokenizer_files.py  tiktoken ranks, vocab.json + merges.txt, tokenizer.json in and out (read_tokenizer)
"""

from nanollm.optional import MissingPackageError
from nanollm.interop.gguf_files import export_gguf, import_gguf
from nanollm.interop.hf import export_hf, export_hf_gpt2, import_hf, import_hf_gpt2
from nanollm.interop.hf_gpt2 import check_gpt2_compatible, from_hf_gpt2, hf_gpt2_config, model_config_from_hf, to_hf_gpt2
from nanollm.interop.hf_llama import (check_llama_compatible, from_hf_llama, hf_llama_config,
                                      model_config_from_hf_llama, to_hf_llama)

__all__ = ["MissingPackageError", "check_gpt2_compatible", "check_llama_compatible", "export_gguf", "export_hf",
           "export_hf_gpt2", "import_gguf",
           "from_hf_gpt2", "from_hf_llama", "hf_gpt2_config", "hf_llama_config", "import_hf", "import_hf_gpt2",
           "model_config_from_hf", "model_config_from_hf_llama", "to_hf_gpt2", "to_hf_llama"]
