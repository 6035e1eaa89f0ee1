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


def compare_engines(
    model,
    tok,
    ids: list[list[int]],
    names: list[str],
    samples: int,
    tokens: int,
    temperature: float = 1.0,
    repeats: int = 1,
    seed: int = 0,
    log=print,
) -> dict:
    """Time each engine on the same prompt ids, alternating within each repeat.

    Returns {name: {"tokens", "seconds", "tokens_per_s"}} plus "fast/hf" when both ran.
    """
    engines = {name: make_engine(name, model, tok) for name in names}
    for engine in engines.values():  # warm-up: first-call allocations and lazy imports
        engine.generate(ids[:1], n=2, max_new_tokens=4, generator=torch.Generator().manual_seed(0))

    count = dict.fromkeys(names, 0)
    seconds = dict.fromkeys(names, 0.0)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            gen = torch.Generator().manual_seed(seed + r)
            t0 = time.perf_counter()
            ro = engines[name].generate(
                ids, n=samples, max_new_tokens=tokens, temperature=temperature, generator=gen
            )
            seconds[name] += time.perf_counter() - t0
            count[name] += ro.num_tokens
            lengths = ro.mask.sum(1)
            log(
                f"  repeat {r} {name:>5}: {ro.num_tokens:5d} tokens in {seconds[name]:.2f} s so far; "
                f"length mean {lengths.mean():.1f} max {int(lengths.max())}, "
                f"{ro.finish_reasons.count('stop')}/{len(lengths)} stopped"
            )
    out: dict = {
        name: {"tokens": count[name], "seconds": seconds[name], "tokens_per_s": count[name] / seconds[name]}
        for name in names
    }
    if "fast" in out and "hf" in out:
        out["fast/hf"] = out["fast"]["tokens_per_s"] / out["hf"]["tokens_per_s"]
    return out


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
    print(
        f"model={args.model} prompts={args.prompts} samples={args.samples} max_new_tokens={args.tokens} "
        f"temperature={args.temperature} threads={torch.get_num_threads()} "
        f"prompt_tokens={sum(map(len, ids))}"
    )
    res = compare_engines(
        model, tok, ids, names, args.samples, args.tokens, args.temperature, args.repeats, args.seed
    )
    for name in names:
        r = res[name]
        print(f"{name:>5}: {r['tokens']:6d} tokens {r['seconds']:7.2f} s {r['tokens_per_s']:8.1f} tokens/s")
    if "fast/hf" in res:
        print(f"fast/hf: {res['fast/hf']:.2f}x")


if __name__ == "__main__":
    main()
