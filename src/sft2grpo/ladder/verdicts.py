"""The ladder's comparisons: each of the seed's claims, the A/A check and base -> grpo, as paired
differences with 95% intervals (`stats.py`), and results.json.

Runs are paired by seed (same train.seed: same prompt order) and problem (the same held-out
problems). The base model is evaluated once; its per-problem scores stand on the A side for every
seed of the B side.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .plan import AA, DESCRIPTIONS
from .stats import MARGIN, mean_interval, paired_interval, verdict

# Per-problem metrics (a RunResult attribute holding {prompt: score}) and per-seed ones (a float).
PER_PROBLEM = {"sampled_accuracy": "sampled", "greedy_accuracy": "greedy"}
PER_SEED = {"peak_mem_mb": "peak_mem_mb", "step_time_s": "step_time", "kl_to_base": "kl"}

# Each claim: its title, its kind (stats.verdict) and comparisons (A, B, what changes from A
# to B). The first comparison decides the claim; the others are further evidence, with their own
# interval and the same kind of verdict.
CLAIMS = [
    (
        "The negative gradient matters most",
        "better",
        [
            ("sft", "reinforce", "add the negative gradient (rung 1 -> 2)"),
            ("sft_o1", "reinforce", "the negative gradient vs sft-o1's extra passes"),
        ],
    ),
    (
        "Reward normalisation and clipping matter most",
        "better",
        [
            ("reinforce", "reward_norm", "normalise and clip the advantage (rung 2 -> 3)"),
            ("reinforce", "rloo", "a leave-one-out baseline instead (RLOO)"),
        ],
    ),
    (
        "Importance sampling can be varied or dropped",
        "droppable",
        [
            ("grpo", "no_is", "drop it from GRPO (no_is)"),
            ("grpo", "gspo", "vary it: one clipped ratio per sequence (GSPO)"),
        ],
    ),
    (
        "The KL penalty can be varied or dropped",
        "droppable",
        [("grpo", "no_kl", "drop it from GRPO (no_kl; the same objective as rung 4, importance)")],
    ),
]
VARIANTS = ("dr_grpo", "dapo", "rloo")  # against grpo, kind "differ"


@dataclass
class Comparison:
    a: str
    b: str
    metric: str
    # "claim 1".."claim 4", "evidence", "variant", "A/A", "base -> grpo", "cost", or "other metric"
    # (a claim's deciding pair, base -> grpo or A/A on greedy accuracy when sampled accuracy decides)
    role: str
    kind: str  # stats.verdict's kind
    what: str
    verdict: str  # "supported", "contradicted", "undecided", or "not measured"
    diff: float | None = None
    ci95: list[float] | None = None
    seeds: int = 0
    problems: int = 0
    method: str = ""


def per_problem_arrays(a_runs: list, b_runs: list, attr: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(S, P) scores of A and B on the seeds both finished and the problems every one of those runs
    scored, in the same order on both sides; None when nothing pairs."""
    a = {r.seed: getattr(r, attr) for r in a_runs if getattr(r, attr)}
    b = {r.seed: getattr(r, attr) for r in b_runs if getattr(r, attr)}
    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        return None
    problems = sorted(set.intersection(*(set(a[s]) & set(b[s]) for s in seeds)))
    if not problems:
        return None
    return (
        np.array([[a[s][p] for p in problems] for s in seeds]),
        np.array([[b[s][p] for p in problems] for s in seeds]),
    )


def per_seed_arrays(a_runs: list, b_runs: list, attr: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(S,) values of A and B on the seeds where both have one."""
    a = {r.seed: getattr(r, attr) for r in a_runs if getattr(r, attr) is not None}
    b = {r.seed: getattr(r, attr) for r in b_runs if getattr(r, attr) is not None}
    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        return None
    return np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])


def compare(by_preset: dict, a: str, b: str, metric: str, kind: str, role: str, what: str) -> Comparison:
    """B - A on `metric` with its 95% interval and verdict; 'not measured' when nothing pairs."""
    get = per_problem_arrays if metric in PER_PROBLEM else per_seed_arrays
    attr = PER_PROBLEM.get(metric) or PER_SEED[metric]
    pair = get(by_preset.get(a, []), by_preset.get(b, []), attr)
    c = Comparison(a, b, metric, role, kind, what, "not measured")
    if pair is None:
        return c
    r = paired_interval(*pair)
    c.diff, c.ci95, c.seeds, c.problems, c.method = (
        r["diff"],
        r["ci95"],
        r["seeds"],
        r["problems"],
        r["method"],
    )
    if metric not in PER_PROBLEM:
        c.problems = 0
    c.verdict = verdict(r["ci95"], kind)
    return c


def comparisons(by_preset: dict, metric: str) -> list[Comparison]:
    """Every comparison of the report, in its order: the claims (deciding one first, then evidence),
    the variants against grpo, base -> grpo, the A/A check, and what dropping KL costs or saves."""
    out = []
    for i, (_, kind, pairs) in enumerate(CLAIMS, 1):
        for j, (a, b, what) in enumerate(pairs):
            if j == 0 or (a in by_preset and b in by_preset):  # evidence only from presets that ran
                out.append(
                    compare(by_preset, a, b, metric, kind, f"claim {i}" if j == 0 else "evidence", what)
                )
    for v in (v for v in VARIANTS if v in by_preset):
        out.append(compare(by_preset, "grpo", v, metric, "differ", "variant", DESCRIPTIONS[v]))
    out.append(
        compare(by_preset, "base", "grpo", metric, "better", "base -> grpo", "GRPO against the base model")
    )
    out.append(compare(by_preset, *AA, metric, "differ", "A/A", "one configuration, another sampling stream"))
    if metric != "greedy_accuracy":  # the same pairs on the noisier metric, for reference
        for c in [c for c in out if c.role.startswith("claim ") or c.role in ("base -> grpo", "A/A")]:
            out.append(compare(by_preset, c.a, c.b, "greedy_accuracy", c.kind, "other metric", c.what))
    for m, what in (
        ("peak_mem_mb", "peak memory, MB"),
        ("step_time_s", "median step time, s"),
        ("kl_to_base", "KL to the base model (k3 per token)"),
    ):
        out.append(compare(by_preset, "grpo", "no_kl", m, "differ", "cost", what))
    return out


def aa_status(comps: list[Comparison]) -> tuple[bool | None, str]:
    """(trusted, line): the A/A comparison must be 'undecided'. None when it was not measured, or when
    the two runs were the same run (a zero-width interval at 0), which tests nothing."""
    aa = next((c for c in comps if c.role == "A/A"), None)
    if aa is None or aa.verdict == "not measured":
        return None, (
            f"A/A check not run: {AA[0]} and {AA[1]} (one configuration) need a finished run each with "
            "the same seed; without it the false-verdict rate of these statistics is unchecked."
        )
    span = f"{100 * aa.diff:+.1f} points [{100 * aa.ci95[0]:+.1f}, {100 * aa.ci95[1]:+.1f}]"
    if aa.ci95[0] == aa.ci95[1] == 0.0:
        return None, (
            f"A/A check vacuous: {AA[0]} and {AA[1]} scored the same on every problem and seed ({span} on "
            f"{aa.metric}), so the pair cannot test these intervals (the same run twice, or runs too short "
            "to tell apart); their false-verdict rate rests on the synthetic checks of "
            "tests/test_ladder_stats.py."
        )
    if aa.verdict == "undecided":
        return True, (
            f"A/A check passed: {AA[0]} vs {AA[1]}, one configuration sampled from two streams, {span} on "
            f"{aa.metric}, undecided as it must be."
        )
    return False, (
        f"**Do not trust the statistics of this report: the A/A check failed.** {AA[0]} and {AA[1]} "
        f"train one configuration, yet their difference on {aa.metric} is {span}, an interval that "
        "excludes 0: the intervals here are too narrow for the run-to-run variation of this budget."
    )


def per_seed_values(runs: list, seeds: list[int], attr: str, problem: bool) -> list[float | None]:
    """One value per seed of `seeds` (None where the seed has none): a per-problem metric's mean."""
    by_seed = {r.seed: getattr(r, attr) for r in runs}
    out = []
    for s in seeds:
        v = by_seed.get(s)
        out.append((statistics.fmean(v.values()) if v else None) if problem else v)
    return out


def results_json(plan, by_preset: dict, comps: list[Comparison], metric: str) -> dict[str, Any]:
    """results.json: the seeds, per preset each metric's per-seed values (aligned with `seeds`), and
    every comparison with a, b, metric, diff, ci95 [lo, hi] and verdict."""
    trusted, _ = aa_status(comps)
    presets = {}
    for p in ["base", *plan.presets]:
        runs = by_preset.get(p, [])
        entry = {m: per_seed_values(runs, plan.seeds, attr, True) for m, attr in PER_PROBLEM.items()} | {
            m: per_seed_values(runs, plan.seeds, attr, False) for m, attr in PER_SEED.items()
        }
        if p == "base":
            entry = {m: v[:1] for m, v in entry.items() if m in PER_PROBLEM}  # evaluated once
        else:
            entry["status"] = [next((r.status for r in runs if r.seed == s), "not run") for s in plan.seeds]
        presets[p] = entry
    return {
        "schema": 1,
        "command": plan.command,
        "seeds": plan.seeds,
        "steps": plan.steps,
        "budget": plan.budget_name,
        "deciding_metric": metric,
        "level": 0.95,
        "method": "paired t interval over seeds and problems: se^2 = var over seeds of the per-seed "
        "mean difference / S + var over problems of the per-problem mean difference / P, t with S - 1 "
        "df (ladder.stats.paired_interval)",
        "margin": MARGIN,
        "aa_trusted": trusted,
        "presets": presets,
        "comparisons": [
            {k: v for k, v in asdict(c).items() if k != "kind"} | {"kind": c.kind} for c in comps
        ],
    }


def table_interval(xs: list[float], scale: float = 1.0, spec: str = ".1f") -> str:
    """'12.0 [9.1, 14.9]' (mean and 95% t interval over seeds), '12.0' for one seed, '-' for none."""
    if not xs:
        return "-"
    m = f"{scale * statistics.fmean(xs):{spec}}"
    if len(xs) < 2:
        return m
    lo, hi = mean_interval(xs)["ci95"]
    return f"{m} [{scale * lo:{spec}}, {scale * hi:{spec}}]"
