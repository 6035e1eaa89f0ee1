"""Held-out evaluation: accuracy, pass@k, format-error rate and completion length.

Greedy decoding (eval.k = 1) gives one deterministic answer per problem. With k > 1 the engine
samples n >= k answers per problem and pass@k uses the unbiased estimator of Chen et al. (2021):

    pass@k = 1 - C(n - c, k) / C(n, k)      (c = correct answers among the n samples)

For example n = 4, c = 1, k = 2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from .models import chat_prompt_ids
from .rollout.base import SamplingParams, decode_completions, unpadded_ids


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k draws (without replacement) from n samples is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every k-subset holds a correct answer
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    samples: list[dict[str, Any]]


def evaluate(
    engine,
    tokenizer,
    examples: list,
    reward_fn,
    *,
    system_prompt: str | None,
    max_new_tokens: int,
    batch_size: int = 64,
    k: int = 1,
    samples: int | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    step: int = 0,
) -> EvalResult:
    """Score `examples` with `engine`; greedy when k == 1, else `samples` (>= k) draws per problem.
    `step` is the training step, which user reward functions see as `trainer_state.global_step`."""
    n = 1 if k == 1 else max(k, samples or k)
    greedy = k == 1
    per_problem = max(1, batch_size // n)  # rows per generate call stay near batch_size
    correct_total = fmt_total = len_total = 0.0
    pass_k = []
    out: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), desc="eval", leave=False)
    for start in range(0, len(examples), per_problem):
        chunk = examples[start : start + per_problem]
        prompts = chat_prompt_ids(tokenizer, [e.chat for e in chunk], system_prompt)
        params = SamplingParams(n=n, max_new_tokens=max_new_tokens, temperature=temperature, greedy=greedy)
        ro = engine.generate(prompts, params, generator)
        texts = decode_completions(tokenizer, ro.completion_ids, ro.mask)
        rows = [e for e in chunk for _ in range(n)]  # prompt-major
        res = reward_fn(texts, rows, completion_ids=unpadded_ids(ro.completion_ids, ro.mask), step=step)
        correct = res.correct.view(len(chunk), n)  # (P, n)
        fmt = res.format_error.view(len(chunk), n)
        lengths = ro.mask.sum(1).view(len(chunk), n)  # (P, n)
        correct_total += correct.float().mean(1).sum().item()
        fmt_total += fmt.float().mean(1).sum().item()
        len_total += lengths.float().mean(1).sum().item()
        for i, e in enumerate(chunk):
            pass_k.append(pass_at_k(n, int(correct[i].sum()), k))
            out.append(
                {
                    "prompt": e.prompt,
                    "answer": e.answer,
                    "completions": texts[i * n : (i + 1) * n],
                    "extracted": res.extracted[i * n : (i + 1) * n],
                    "correct": correct[i].tolist(),
                }
            )
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    total = max(1, len(examples))
    metrics = {
        "accuracy": correct_total / total,
        f"pass@{k}": sum(pass_k) / total,
        "format_error_rate": fmt_total / total,
        "completion_len": len_total / total,
        "problems": len(examples),
        "samples_per_problem": n,
    }
    metrics.update(reward_fn.drain_metrics(reserved=metrics))  # reward functions' log_metric means
    return EvalResult(metrics, out)


def evaluate_heldout(
    engine,
    tokenizer,
    task,
    reward_fn,
    cfg,
    shard: tuple[int, int] = (0, 1),
    progress: bool | None = None,
    split: str = "heldout",
    step: int = 0,
) -> EvalResult:
    """`evaluate` on the task's held-out split (or, with split="val", its validation split) with
    the settings of `cfg` (a Config): the one call that `sft2grpo eval` and the trainer's
    evaluations share. `shard=(i, n)` takes every n-th problem from the i-th (one process's share;
    `merge_evals` puts the shares back together)."""
    return on_split(
        engine,
        tokenizer,
        task,
        reward_fn,
        cfg,
        shard,
        split,
        k=cfg.eval.k,
        samples=cfg.eval.k_draws,
        temperature=cfg.eval.temperature,
        generator=torch.Generator().manual_seed(cfg.train.seed + shard[0]),
        progress=cfg.log.progress if progress is None else progress,
        step=step,
    )


def evaluate_sampled(
    engine,
    tokenizer,
    task,
    reward_fn,
    cfg,
    k: int,
    seed: int,
    shard: tuple[int, int] = (0, 1),
    step: int = 0,
    split: str = "heldout",
) -> EvalResult:
    """Sampled accuracy on the held-out split (or, with split="val", the validation split, for
    eval.val_draws): k answers per problem at the rollout temperature (the
    one training samples at), drawn from a generator seeded with 10_000 + seed (+ i for shard i of
    n, as in `evaluate_heldout`); per problem the share right (EvalResult.samples), and its mean in
    metrics["accuracy"]. A mean over k answers varies less than one greedy answer, so it separates
    two runs with fewer problems."""
    if k < 2:
        raise ValueError(f"sampled accuracy needs k >= 2 samples per problem, got {k}")
    return on_split(
        engine,
        tokenizer,
        task,
        reward_fn,
        cfg,
        shard,
        split,
        k=k,
        samples=k,
        temperature=cfg.rollout.temperature,
        generator=torch.Generator().manual_seed(10_000 + seed + shard[0]),
        step=step,
    )


def on_split(
    engine, tokenizer, task, reward_fn, cfg, shard: tuple[int, int], split: str, **sampling
) -> EvalResult:
    """`evaluate` of shard (i, n) of a split (every n-th problem from the i-th): the validation
    split, or the first eval.size (else task.eval_size) held-out problems, prompted and cut as cfg
    says; `sampling` holds evaluate's k, samples, temperature, generator, progress and step."""
    i, n = shard
    examples = task.val if split == "val" else task.eval[: cfg.eval.size or cfg.task.eval_size]
    return evaluate(
        engine,
        tokenizer,
        examples[i::n],
        reward_fn,
        system_prompt=cfg.model.system_prompt,
        max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        **sampling,
    )


def paired_bootstrap(
    before: list[float], after: list[float], iters: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Mean change after - before over paired per-problem scores, with a 95% percentile interval
    from resampling the problems (the same resampled problems on both sides, so the problem-to-
    problem spread, which both share, cancels). `before` and `after` are (P,) scores in [0, 1], or
    (S, P) scores of S paired seeds: then the seeds are resampled too, independently of the
    problems (a crossed bootstrap). With few seeds that under-covers: the ladder's verdicts use
    `ladder.stats.paired_interval` instead.

    Example: before = [0, 0, 1, 0], after = [1, 0, 1, 0] -> diff 0.25; every resample's diff is a
    multiple of 1/4 between 0 and 1, so the interval is [0.0, 0.75] or tighter.
    """
    import numpy as np

    b, a = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if b.shape != a.shape or b.size == 0 or b.ndim not in (1, 2):
        size = " and ".join("x".join(map(str, x.shape)) or "a scalar" for x in (b, a))
        raise ValueError(f"paired_bootstrap needs two equal, non-empty (P,) or (S, P) arrays, got {size}")
    d = (a - b).reshape(-1, b.shape[-1])  # (S, P)
    rng = np.random.default_rng(seed)
    s, p = d.shape
    means = np.empty(iters)
    for lo in range(0, iters, 1000):  # chunks keep the (n, S, P) index arrays small
        n = min(1000, iters - lo)
        rows = rng.integers(0, s, size=(n, s, 1)) if s > 1 else np.zeros((n, 1, 1), dtype=int)
        cols = rng.integers(0, p, size=(n, 1, p))
        means[lo : lo + n] = d[rows, cols].mean(axis=(1, 2))  # (n,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    seeds = f"{s} seeds and " if b.ndim == 2 else ""
    return {
        "diff": float(d.mean()),
        "ci95": [float(lo), float(hi)],
        "problems": p,
        "method": f"paired bootstrap over {seeds}problems, {iters} resamples",
    }


def problem_scores(samples: list[dict[str, Any]]) -> dict[str, float]:
    """prompt -> the fraction of its answers that were correct, from `EvalResult.samples` rows (or
    the eval_*.jsonl files the trainer writes from them)."""
    return {r["prompt"]: sum(map(float, r["correct"])) / max(1, len(r["correct"])) for r in samples}


def heldout_change(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    """`paired_bootstrap` of the held-out scores before and after training, paired by prompt."""
    b, a = problem_scores(before), problem_scores(after)
    common = [p for p in b if p in a]
    return paired_bootstrap([b[p] for p in common], [a[p] for p in common])


def merge_evals(parts: list[EvalResult]) -> EvalResult:
    """The shares of `evaluate_heldout(shard=(i, n))`, i = 0..n-1, as one result: per-problem means
    weighted by each share's problem count, samples back in the split's order. A metric that only
    some shares have (a reward function's own, logged when it saw something to log) is the mean over
    the shares that have it."""
    if len(parts) == 1:
        return parts[0]
    metrics: dict[str, Any] = {}
    for part in parts:
        metrics.update({k: v for k, v in part.metrics.items() if k not in metrics})
    for key, value in metrics.items():
        if isinstance(value, float):
            have = [p for p in parts if key in p.metrics]
            n = sum(p.metrics["problems"] for p in have)
            metrics[key] = sum(p.metrics[key] * p.metrics["problems"] for p in have) / max(1, n)
    metrics["problems"] = sum(p.metrics["problems"] for p in parts)
    samples = []
    for j in range(max(len(p.samples) for p in parts)):  # share i holds problems i, i + n, ...
        samples += [p.samples[j] for p in parts if j < len(p.samples)]
    return EvalResult(metrics, samples)


def write_jsonl(path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
