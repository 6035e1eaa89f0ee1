"""Rollout throughput, fast vs hf, side by side in one process on the same prompts and settings.

    python benchmarks/bench_rollout.py                       # 8 prompts x 8 samples x 64 tokens, 135M
    python benchmarks/bench_rollout.py --prompts 4 --samples 16 --tokens 128 --repeats 3
    python benchmarks/bench_rollout.py --engines fast,fast:int8,fast:bfloat16   # rollout.dtype
    python benchmarks/bench_rollout.py --engines fast,fast+compile,fast:int8,fast:int8+compile
    python benchmarks/bench_rollout.py --engines fast,fast:int8,fast:int8@32   # LOW_PRECISION_MAX_ROWS
    python benchmarks/bench_rollout.py --engines hf,fast,fast-plain   # tuning.prepack on / off

Prompts are the default task's (reasoning-gym chain_sum plus the task instruction) in the model's
chat template; rows stop naturally at EOS. Tokens counted are generated tokens (sum of the mask,
EOS included). The engines alternate within each repeat, so background load hits both alike; the
printed numbers are totals over the repeats. Timings, not assertions: this machine is noisy.
`fast:int8` is the fast engine decoding with an int8 copy of the weights (`rollout.dtype=int8`);
`fast` reads a copy prepacked for oneDNN in wide rollouts (`tuning.prepack`; `fast-plain` has
none), made in each rollout and timed with it, as in training. The int8 or bf16 copy is made once
here (the weights do not change), and the time one refresh costs, which a
training step pays after every optimizer step, is measured and printed apart. `+compile` wraps the
fast engine's decode step (one token for every live row) in `torch.compile(dynamic=True)`, an
experiment the engine does not do by itself: its compile time is the warm-up's, printed apart.
Ratios go to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sft2grpo.config import ModelConfig  # noqa: E402
from sft2grpo.models import chat_prompt_ids, completion_logprobs, load_policy  # noqa: E402
from sft2grpo.rollout import SamplingParams, make_engine  # noqa: E402


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


def logprob_gap(model, ro, samples: int, temperature: float) -> torch.Tensor:
    """|the trainer's log-prob - the engine's| of every generated token [tokens]: what the trainer
    logs as logprob_gap_mean / _max when the engine decodes with a copy of the weights."""
    rows = torch.arange(len(ro.prompt_ids)).repeat_interleave(samples)  # [B] each row's prompt
    with torch.no_grad():
        lp = completion_logprobs(model, ro.prompt_ids, rows, ro.completion_ids, ro.mask, temperature)
    return (lp - ro.logprobs)[ro.mask.bool()].abs()


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

    A name is an engine, or `fast:<rollout.dtype>`, either with `+compile` after it; `fast:int8@32`
    uses the copy for products of at most 32 rows (default LOW_PRECISION_MAX_ROWS); `-plain`
    (`fast-plain`, `fast:int8-plain`) turns tuning.prepack off. Returns
    {name: {"tokens", "seconds", "tokens_per_s", "warmup_s"}} (with "refresh_s" for a copy) plus
    "fast/hf" when both ran.
    """
    engines, warmup = {}, {}
    for name in names:
        base, compiled, _ = name.partition("+compile")
        base, _, max_rows = base.partition("@")
        base, plain, _ = base.partition("-plain")
        engine, _, dtype = base.partition(":")
        engines[name] = make_engine(engine, model, tok, dtype or "model", prepack=not plain)
        if max_rows:
            engines[name].low_max_rows = int(max_rows)
        if compiled:
            engines[name]._decode = torch.compile(engines[name]._decode, dynamic=True)
    for name, engine in engines.items():  # warm-up: first-call allocations, lazy imports, compiling
        t0 = time.perf_counter()
        if "+compile" in name:  # the measured shapes once: compiling is warm-up, not decoding
            engine.generate(
                ids,
                SamplingParams(n=samples, max_new_tokens=tokens),
                generator=torch.Generator().manual_seed(99),
            )
        engine.generate(
            ids[:1], SamplingParams(n=2, max_new_tokens=4), generator=torch.Generator().manual_seed(0)
        )
        warmup[name] = time.perf_counter() - t0

    gaps: dict[str, list] = {name: [] for name in names}
    count = dict.fromkeys(names, 0)
    seconds = dict.fromkeys(names, 0.0)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            gen = torch.Generator().manual_seed(seed + r)
            t0 = time.perf_counter()
            ro = engines[name].generate(
                ids, SamplingParams(n=samples, max_new_tokens=tokens, temperature=temperature), generator=gen
            )
            seconds[name] += time.perf_counter() - t0
            count[name] += ro.num_tokens
            if ":" in name:  # a low-precision copy: how far its log-probs are from the policy's
                gaps[name].append(logprob_gap(model, ro, samples, temperature))
            lengths = ro.mask.sum(1)
            log(
                f"  repeat {r} {name:>5}: {ro.num_tokens:5d} tokens in {seconds[name]:.2f} s so far; "
                f"length mean {lengths.mean():.1f} max {int(lengths.max())}, "
                f"{ro.finish_reasons.count('stop')}/{len(lengths)} stopped"
            )
    out: dict = {
        name: {
            "tokens": count[name],
            "seconds": seconds[name],
            "tokens_per_s": count[name] / seconds[name],
            "warmup_s": warmup[name],
        }
        for name in names
    }
    for name, g in gaps.items():
        if g:
            out[name]["logprob_gap_mean"] = sum(x.sum().item() for x in g) / sum(x.numel() for x in g)
            out[name]["logprob_gap_max"] = max(x.max().item() for x in g)
    for name, engine in engines.items():
        if getattr(engine, "low", None) or getattr(engine, "packed", None):  # a step adds one refresh
            engine.weights_changed()
            t0 = time.perf_counter()
            engine.refresh_copy()
            out[name]["refresh_s"] = time.perf_counter() - t0
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
    ap.add_argument("--json", default="bench_rollout.json", help="where the figures go ('' for nowhere)")
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
        refresh = ""
        if "refresh_s" in r:
            refresh = f" (+{r['refresh_s']:.2f} s per weight refresh"
        if "logprob_gap_mean" in r:
            gap = f"mean {r['logprob_gap_mean']:.3f} max {r['logprob_gap_max']:.2f}"
            refresh += f"; log-prob gap to the policy {gap}"
        refresh += ")" if refresh else ""
        print(
            f"{name:>21}: {r['tokens']:6d} tokens {r['seconds']:7.2f} s {r['tokens_per_s']:8.1f} tokens/s "
            f"(warm-up {r['warmup_s']:.1f} s){refresh}"
        )
    ratios = {
        f"{n}/fast": res[n]["tokens_per_s"] / res["fast"]["tokens_per_s"]
        for n in names
        if n.startswith(("fast:", "fast+", "fast-", "fast@"))
    }
    if "fast" in res:
        res.update(ratios)
    for k, v in [("fast/hf", res.get("fast/hf")), *ratios.items()]:
        if v is not None:
            print(f"{k}: {v:.2f}x")
    if args.json:
        res["settings"] = vars(args)
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
