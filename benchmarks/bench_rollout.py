"""Rollout throughput, fast vs hf, side by side in one process on the same prompts and settings.

    python benchmarks/bench_rollout.py                       # 8 prompts x 8 samples x 64 tokens, 135M
    python benchmarks/bench_rollout.py --prompts 4 --samples 16 --tokens 128 --repeats 3

Prompts are the default task's (reasoning-gym chain_sum plus the task instruction) in the model's
chat template; rows stop naturally at EOS. Tokens counted are generated tokens (sum of the mask,
EOS included). The engines alternate within each repeat, so background load hits both alike; the
printed numbers are totals over the repeats. Timings, not assertions: this machine is noisy.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sft2grpo.config import ModelConfig  # noqa: E402
from sft2grpo.models import chat_prompt_ids, load_policy  # noqa: E402
from sft2grpo.rollout import make_engine  # noqa: E402


def task_prompts(k: int, seed: int) -> list[str]:
    """The first k training prompts of the default task (chain_sum, instruction appended)."""
    try:
        from sft2grpo.config import TaskConfig
        from sft2grpo.tasks import load_task

        return [e.prompt for e in load_task(TaskConfig(size=k, eval_size=0, seed=seed)).train[:k]]
    except ImportError:  # the same kind of problem without reasoning-gym
        g = torch.Generator().manual_seed(seed)
        nums = torch.randint(1, 100, (k, 3), generator=g).tolist()
        return [f"What is {a} + {b} - {c}?\nAnswer with the final number." for a, b, c in nums]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny, a folder or a .gguf")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8, help="completions per prompt (group size)")
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--engines", default="fast,hf")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model, tok = load_policy(ModelConfig(name=args.model, dtype=args.dtype, threads=args.threads))
    ids = chat_prompt_ids(tok, task_prompts(args.prompts, args.seed), None)
    names = args.engines.split(",")
    engines = {name: make_engine(name, model, tok) for name in names}
    print(
        f"model={args.model} prompts={args.prompts} samples={args.samples} max_new_tokens={args.tokens} "
        f"temperature={args.temperature} threads={torch.get_num_threads()} "
        f"prompt_tokens={sum(map(len, ids))}"
    )
    for engine in engines.values():  # warm-up: first-call allocations and lazy imports
        engine.generate(ids[:1], n=2, max_new_tokens=4, generator=torch.Generator().manual_seed(0))

    tokens = dict.fromkeys(names, 0)
    seconds = dict.fromkeys(names, 0.0)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            gen = torch.Generator().manual_seed(args.seed + r)
            t0 = time.perf_counter()
            ro = engines[name].generate(
                ids, n=args.samples, max_new_tokens=args.tokens, temperature=args.temperature, generator=gen
            )
            seconds[name] += time.perf_counter() - t0
            tokens[name] += ro.num_tokens
            lengths = ro.mask.sum(1)
            print(
                f"  repeat {r} {name:>5}: {ro.num_tokens:5d} tokens in {seconds[name]:.2f} s so far; "
                f"length mean {lengths.mean():.1f} max {int(lengths.max())}, "
                f"{ro.finish_reasons.count('stop')}/{len(lengths)} stopped"
            )
    rate = {name: tokens[name] / seconds[name] for name in names}
    for name in names:
        print(f"{name:>5}: {tokens[name]:6d} tokens {seconds[name]:7.2f} s {rate[name]:8.1f} tokens/s")
    if "fast" in rate and "hf" in rate:
        print(f"fast/hf: {rate['fast'] / rate['hf']:.2f}x")


if __name__ == "__main__":
    main()
