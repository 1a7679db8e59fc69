"""How much the KV cache speeds up generation: tokens/s with and without it, side by side.

    python -m nanollm.tools.generation_bench [--preset medium] [--architecture gpt2 llama]
                                             [--new-tokens 256] [--prompt-tokens 16] [--checkpoint PATH]

For each architecture, a model of the preset's shape (seeded random weights; or the
checkpoint's model) generates --new-tokens greedily from the same prompt twice: once with the
KV cache, once recomputing the whole context for every token. The context is made long enough
for prompt + new tokens, so the cache is never full. Both runs must give the same tokens; the
line printed is the two speeds and their ratio.
"""

import argparse
import time

import numpy as np

from nanollm.checkpoint import load_checkpoint
from nanollm.config import PRESETS, resolve
from nanollm.generate import generate_ids
from nanollm.model_config import build_training_model


def timed_generation(model, prompt, new_tokens, use_cache):
    """(generated ids, new tokens per second) of one greedy generation."""
    start = time.perf_counter()
    ids = generate_ids(model, prompt, new_tokens, temperature=0, use_cache=use_cache)
    return ids, new_tokens / (time.perf_counter() - start)


def compare(model, prompt, new_tokens):
    """{"cached", "recomputed": tokens/s, "speedup", "identical"} for one model (after a
    short warm-up of both paths, so compilation is not timed)."""
    timed_generation(model, prompt, 4, True)
    timed_generation(model, prompt, 4, False)
    cached_ids, cached = timed_generation(model, prompt, new_tokens, True)
    recomputed_ids, recomputed = timed_generation(model, prompt, new_tokens, False)
    return {"cached": cached, "recomputed": recomputed, "speedup": cached / recomputed,
            "identical": cached_ids == recomputed_ids}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nanollm.tools.generation_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="medium", choices=sorted(PRESETS), help="model shape (default medium)")
    parser.add_argument("--architecture", nargs="+", default=["gpt2", "llama"], choices=["gpt2", "llama"])
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens generated per run (default 256)")
    parser.add_argument("--prompt-tokens", type=int, default=16, help="prompt length (default 16)")
    parser.add_argument("--vocab-size", type=int, default=65, help="vocabulary of the random model (default 65)")
    parser.add_argument("--checkpoint", help="time this trained model instead of random ones")
    args = parser.parse_args(argv)
    if args.new_tokens < 1 or args.prompt_tokens < 1:
        parser.error("--new-tokens and --prompt-tokens must be >= 1")

    prompt = [int(i) for i in np.random.default_rng(0).integers(0, args.vocab_size, size=args.prompt_tokens)]
    if args.checkpoint:
        try:
            model = load_checkpoint(args.checkpoint)["model"]
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
        prompt = [i % model.vocab_size for i in prompt][-model.max_seq_len:]
        models = [(model.architecture, model)]
    else:
        context = args.prompt_tokens + args.new_tokens  # the whole text fits: the cache never fills
        models = [(arch, build_training_model(resolve({"max_seq_len": context, "architecture": arch, "seed": 0},
                                             preset=args.preset), args.vocab_size))
                  for arch in args.architecture]
    print(f"greedy generation of {args.new_tokens} tokens after a {len(prompt)}-token prompt, float32, "
          f"{'checkpoint ' + args.checkpoint if args.checkpoint else 'preset ' + args.preset + ' shape'}")
    for arch, model in models:
        result = compare(model, prompt, args.new_tokens)
        same = "identical tokens" if result["identical"] else "TOKENS DIFFER"
        print(f"{arch:<6} {model.num_parameters():>10,} params  KV cache {result['cached']:8.1f} tok/s   "
              f"recomputed {result['recomputed']:8.1f} tok/s   speed-up {result['speedup']:5.1f}x   {same}")


if __name__ == "__main__":
    main()
