"""Tools beside the engine, not needed to train: benchmarks and independent reference implementations.

    bench             `nanollm bench` / `python -m nanollm.tools.bench`: primitives and train steps per backend
    gpu_bench         `python -m nanollm.tools.gpu_bench`: the train step on an NVIDIA GPU beside PyTorch eager's
    memory_bench      `python -m nanollm.tools.memory_bench`: GPT-2 124M's train step, tokens/s and peak memory
    parallel_bench    `python -m nanollm.tools.parallel_bench`: data-parallel tokens/s on 1 and 2 MPI ranks
    generation_bench  `python -m nanollm.tools.generation_bench`: generation with and without the KV cache
    attention_bench   `python -m nanollm.tools.attention_bench`: fused (flash) vs unfused causal attention
    tokenizer_bench   `python -m nanollm.tools.tokenizer_bench`: BPE training, encoding and decoding speed
    torch_reference   the same GPT-2 model in PyTorch, for side-by-side figures and tests (needs torch)
    config_reference  `python -m nanollm.tools.config_reference TRAINING.md`: TRAINING.md's config table

Nothing in the training path imports this package.
"""
