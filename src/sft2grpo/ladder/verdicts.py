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
from .stats import (
    LEVEL,
    MARGIN,
    bartlett,
    family_level,
    mean_interval,
    paired_interval,
    verdict,
    welch_interval,
)

# Per-problem metrics (a RunResult attribute holding {prompt: score}) and per-seed ones (a float).
PER_PROBLEM = {"sampled_accuracy": "sampled", "greedy_accuracy": "greedy"}
PER_SEED = {"peak_mem_mb": "peak_mem_mb", "step_time_s": "step_time", "kl_to_base": "kl"}


@dataclass(frozen=True)
class Claim:
    """One of the seed's claims. `deciding`: pairs (A, B, what) of the claim's kind (stats.verdict);
    the claim is supported when every one is, contradicted when one is. `evidence`: further pairs
    (A, B, kind, what) with their own interval and verdict, each labelled with what it tests."""

    title: str
    kind: str
    deciding: tuple[tuple[str, str, str], ...]
    evidence: tuple[tuple[str, str, str, str], ...] = ()


# "Matters most" (claims 1 and 2) is read off the leave-one-out ablations from GRPO: removing the
# negative gradient (or normalisation and clipping) costs more than removing importance sampling and
# more than removing the KL penalty, i.e. GRPO without IS (or without KL) beats GRPO without it.
# Claims 3 and 4 ask that removing IS (KL) costs less than the margin. "Without IS" has three readings:
# stay on-policy (no_is_mu1, one pass, no ratio needed: how a user drops it, and the one claims 1 and 2
# compare against), reuse answers with a KL to pi_old instead of the ratio (no_is_prox, the seed's
# regulariser reading), and reuse them with no guard at all (no_is, evidence only: it drops the clip
# on reused answers too). "Without KL" is rung 4 itself (importance). The additive rungs stay as
# evidence: what each rung adds to the one below, which is another question (rung 2 is REINFORCE
# without a baseline). Claims whose deciding pairs share a preset's runs are not independent: the
# report counts such verdicts as one finding (`findings`).
CLAIMS = [
    Claim(
        "The negative gradient matters most",
        "better",
        (
            ("grpo_no_neg", "no_is_mu1", "removing the negative gradient costs more than removing IS"),
            ("grpo_no_neg", "importance", "removing the negative gradient costs more than removing KL"),
        ),
        (
            ("grpo_no_neg", "grpo", "better", "what the negative gradient adds to GRPO (leave-one-out)"),
            (
                "grpo_no_neg",
                "no_is",
                "better",
                "removing it costs more than reusing answers with no guard (no_is)",
            ),
            (
                "onpolicy_sft",
                "reinforce",
                "better",
                "rung 1 -> 2: the negative gradient as REINFORCE, raw rewards, no baseline",
            ),
            ("sft_o1", "reinforce", "better", "the negative gradient vs sft-o1's extra passes"),
        ),
    ),
    Claim(
        "Reward normalisation and clipping matter most",
        "better",
        (
            ("grpo_no_norm", "no_is_mu1", "removing normalisation and clipping costs more than removing IS"),
            ("grpo_no_norm", "importance", "removing normalisation and clipping costs more than removing KL"),
        ),
        (
            ("grpo_no_norm", "grpo", "better", "what normalisation and clipping add to GRPO (leave-one-out)"),
            ("reinforce", "reward_norm", "better", "rung 2 -> 3: normalise and clip REINFORCE's advantage"),
            ("reinforce", "rloo", "better", "a leave-one-out baseline instead (RLOO)"),
        ),
    ),
    Claim(
        "Importance sampling can be varied or dropped",
        "droppable",
        (
            ("grpo", "no_is_mu1", "drop it and stay on-policy (one pass, no_is_mu1)"),
            ("grpo", "no_is_prox", "drop it, reusing answers with a KL to pi_old (no_is_prox)"),
        ),
        (
            ("grpo", "no_is", "droppable", "drop it and reuse answers with no guard (no_is)"),
            (
                "importance",
                "reward_norm",
                "droppable",
                "rung 4 -> 3: drop it (and the second pass) from rung 4",
            ),
            ("grpo", "gspo", "droppable", "vary it: one clipped ratio per sequence (GSPO)"),
        ),
    ),
    Claim(
        "The KL penalty can be varied or dropped",
        "droppable",
        (("grpo", "importance", "drop it from GRPO (rung 4, importance; configs/no_kl.yaml)"),),
    ),
]
VARIANTS = ("dr_grpo", "dapo", "rloo")  # against grpo, kind "differ"


@dataclass
class Comparison:
    a: str
    b: str
    metric: str
    # "claim 1".."claim 4" (a deciding pair), "evidence", "variant", "A/A", "base -> grpo", or "other
    # metric" (a deciding pair, base -> grpo or A/A on greedy accuracy when sampled accuracy decides)
    role: str
    kind: str  # stats.verdict's kind
    what: str
    verdict: str  # "supported", "contradicted", "undecided", or "not measured"
    diff: float | None = None
    ci95: list[float] | None = None
    seeds: int = 0
    problems: int = 0
    method: str = ""
    horizon: int | None = None  # the training step the runs were scored at (None: the end)
    se_run: float | None = None  # the two parts of the standard error (stats.paired_interval)
    se_problem: float | None = None
    identical: bool = False  # A and B scored the same on every problem of every seed
    run_df: float | None = None  # the run-to-run term's degrees of freedom (stats.welch_interval)
    # a deciding pair's interval at the family's level (Bonferroni over the deciding pairs of every
    # claim at one horizon) and the verdict it gives; the claims' verdicts are read from these
    family: int = 0
    ci_family: list[float] | None = None
    verdict_family: str | None = None


def per_problem_arrays(
    a_runs: list, b_runs: list, attr: str, horizon: int | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """(S, P) scores of A and B at `horizon` (RunResult.scores) on the seeds both have and the
    problems every one of those runs scored, in the same order on both sides; None when nothing pairs."""
    a = {r.seed: r.scores(attr, horizon) for r in a_runs if r.scores(attr, horizon)}
    b = {r.seed: r.scores(attr, horizon) for r in b_runs if r.scores(attr, horizon)}
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


def compare(
    by_preset: dict,
    a: str,
    b: str,
    metric: str,
    kind: str,
    role: str,
    what: str,
    horizon: int | None = None,
    family: int = 0,
) -> Comparison:
    """B - A on `metric` at `horizon` with its 95% interval and verdict; 'not measured' when nothing
    pairs. Accuracy pairs with 2 seeds or more take each preset's own run-to-run variance
    (`stats.welch_interval`). `family` > 0: also the interval at the level that holds for that many
    comparisons together (`stats.family_level`) and its verdict."""
    c = Comparison(a, b, metric, role, kind, what, "not measured", horizon=horizon)
    if metric in PER_PROBLEM:
        pair = per_problem_arrays(by_preset.get(a, []), by_preset.get(b, []), PER_PROBLEM[metric], horizon)
    else:
        pair = per_seed_arrays(by_preset.get(a, []), by_preset.get(b, []), PER_SEED[metric])
    if pair is None:
        return c
    welch = metric in PER_PROBLEM and pair[0].shape[0] > 1
    interval = welch_interval if welch else paired_interval
    r = interval(*pair)
    c.diff, c.ci95, c.seeds, c.problems, c.method = (
        r["diff"],
        r["ci95"],
        r["seeds"],
        r["problems"],
        r["method"],
    )
    c.se_run, c.se_problem, c.run_df = r["se_run"], r["se_problem"], r.get("run_df")
    c.identical = bool(np.array_equal(*pair))
    if metric not in PER_PROBLEM:
        c.problems = 0
    c.verdict = verdict(r["ci95"], kind)
    if family:
        c.family = family
        c.ci_family = interval(*pair, level=family_level(family))["ci95"]
        c.verdict_family = verdict(c.ci_family, kind)
    return c


def claim_verdict(deciding: list[Comparison]) -> str:
    """A claim's verdict from its deciding comparisons (their family-wise verdicts where they have
    them): supported when all are, contradicted when one is, 'not measured' when one is, else
    undecided."""
    vs = [c.verdict_family or c.verdict for c in deciding]
    if not vs or "not measured" in vs:
        return "not measured"
    if "contradicted" in vs:
        return "contradicted"
    return "supported" if all(v == "supported" for v in vs) else "undecided"


def deciding_pairs() -> list[tuple[str, str]]:
    """Every claim's deciding pairs (A, B): one family at each horizon."""
    return [(a, b) for claim in CLAIMS for a, b, _ in claim.deciding]


def comparisons(by_preset: dict, metric: str, horizon: int | None = None) -> list[Comparison]:
    """Every accuracy comparison of the report at `horizon`, in its order: the claims (deciding pairs
    first, then the evidence from presets that ran), the variants against grpo, base -> grpo, the A/A
    check, then the deciding pairs on greedy accuracy when sampled accuracy decides."""
    out = []
    # the deciding pairs of every claim form one family (`stats.family_level`)
    members = sum(1 for a, b in deciding_pairs() if a in by_preset and b in by_preset)

    def add(a, b, m, kind, role, what, family=0):
        out.append(compare(by_preset, a, b, m, kind, role, what, horizon, family))

    for i, claim in enumerate(CLAIMS, 1):
        for a, b, what in claim.deciding:
            add(a, b, metric, claim.kind, f"claim {i}", what, members)
        for a, b, kind, what in claim.evidence:
            if a in by_preset and b in by_preset:
                add(a, b, metric, kind, "evidence", what)
    for v in (v for v in VARIANTS if v in by_preset):
        add("grpo", v, metric, "differ", "variant", DESCRIPTIONS[v])
    add("base", "grpo", metric, "better", "base -> grpo", "GRPO against the base model")
    add(*AA, metric, "differ", "A/A", "one configuration, another sampling stream")
    if metric != "greedy_accuracy":  # the same pairs on the noisier metric, for reference
        for c in [c for c in out if c.role.startswith("claim ") or c.role in ("base -> grpo", "A/A")]:
            add(c.a, c.b, "greedy_accuracy", c.kind, "other metric", c.what)
    return out


def cost_comparisons(by_preset: dict) -> list[Comparison]:
    """What dropping KL costs or saves in the ladder's runs (grpo -> importance, rung 4 = GRPO without
    KL): KL to the base model. The
    reference model's memory and time come from `ladder.costs`, runs alone on one batch, not from
    runs that shared the cores."""
    return [
        compare(
            by_preset,
            "grpo",
            "importance",
            "kl_to_base",
            "differ",
            "cost",
            "KL to the base model (k3 per token)",
        )
    ]


def aa_status(comps: list[Comparison]) -> tuple[bool | None, str]:
    """(trusted, line): the A/A comparison must be 'undecided'. None when it was not measured, or when
    the two runs were the same run (no difference on any problem), which tests nothing."""
    aa = next((c for c in comps if c.role == "A/A"), None)
    if aa is None or aa.verdict == "not measured":
        return None, (
            f"A/A check not run: {AA[0]} and {AA[1]} (one configuration) need a finished run each with "
            "the same seed; without it the false-verdict rate of these statistics is unchecked."
        )
    span = f"{100 * aa.diff:+.1f} points [{100 * aa.ci95[0]:+.1f}, {100 * aa.ci95[1]:+.1f}]"
    if aa.identical:
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


def per_seed_values(
    runs: list, seeds: list[int], attr: str, problem: bool, horizon: int | None = None
) -> list[float | None]:
    """One value per seed of `seeds` (None where the seed has none): a per-problem metric's mean (at
    `horizon`, None: after training)."""
    by_seed = {r.seed: r for r in runs}
    out = []
    for s in seeds:
        r = by_seed.get(s)
        if r is None:
            out.append(None)
        elif problem:
            v = r.scores(attr, horizon)
            out.append(statistics.fmean(v.values()) if v else None)
        else:
            out.append(getattr(r, attr))
    return out


def horizon_label(verdicts: list[str], horizons: list[int]) -> str:
    """How a verdict behaves over the horizons (`verdicts[i]` at step `horizons[i]`, the last is the
    end): 'stands at every horizon', 'settles at step N' (the same from step N on, undecided before),
    'flips' (supported at one horizon, contradicted at another) or 'fades' (decided earlier,
    undecided at the end). Only the first two are findings."""
    decided = {v for v in verdicts if v in ("supported", "contradicted")}
    if len(decided) > 1:
        return "flips: not a finding"
    if len(set(verdicts)) == 1:
        return "stands at every horizon"
    if verdicts[-1] not in decided:
        return "fades by the end: not a finding"
    i = len(verdicts) - 1
    while i > 0 and verdicts[i - 1] == verdicts[-1]:
        i -= 1
    return f"settles at step {horizons[i]}"


def claim_rows(comps: list[Comparison]) -> list[dict[str, Any]]:
    """Each claim's verdict at each horizon of `comps` (`claim_verdict` of its deciding pairs, read
    family-wise)."""
    horizons = sorted({c.horizon for c in comps if c.horizon is not None})
    rows = []
    for i, claim in enumerate(CLAIMS, 1):
        for h in horizons:
            deciding = [c for c in comps if c.role == f"claim {i}" and c.horizon == h]
            rows.append({"claim": i, "title": claim.title, "horizon": h, "verdict": claim_verdict(deciding)})
    return rows


def is_finding(label: str) -> bool:
    """A verdict is a finding when it holds (family-wise) at the last horizon and does not reverse
    or fade over the earlier ones: horizon_label's 'stands' or 'settles'."""
    return label.startswith(("stands", "settles"))


def findings(comps: list[Comparison]) -> list[dict[str, Any]]:
    """The claims whose verdict is a finding, grouped where they rest on the same runs.

    A decided claim rests on the presets of the pairs that decided it at the last horizon (all its
    deciding pairs when supported, the contradicted ones when contradicted). Two such claims that
    share a preset share that preset's runs: their verdicts are not independent evidence, and they
    count as one finding. Returns one entry per finding: {"claims": [i, ...], "verdicts": {i: v},
    "shared": [presets two of its claims share]}, in claim order."""
    horizons = sorted({c.horizon for c in comps if c.horizon is not None})
    if not horizons:
        return []
    last, rests = horizons[-1], {}
    verdicts = {}
    for i, _ in enumerate(CLAIMS, 1):
        vs = [
            claim_verdict([c for c in comps if c.role == f"claim {i}" and c.horizon == h]) for h in horizons
        ]
        if vs[-1] not in ("supported", "contradicted") or not is_finding(horizon_label(vs, horizons)):
            continue
        deciding = [c for c in comps if c.role == f"claim {i}" and c.horizon == last]
        used = [c for c in deciding if vs[-1] == "supported" or c.verdict_family == "contradicted"]
        rests[i], verdicts[i] = {p for c in used for p in (c.a, c.b)}, vs[-1]
    groups: list[list[int]] = []
    for i in rests:  # connected components of "shares a preset"
        linked = [g for g in groups if any(rests[i] & rests[j] for j in g)]
        merged = sorted({i, *(j for g in linked for j in g)})
        groups = [g for g in groups if g not in linked] + [merged]
    out = []
    for g in sorted(groups):
        shared = sorted({p for a in g for b in g if a < b for p in rests[a] & rests[b]})
        out.append({"claims": g, "verdicts": {i: verdicts[i] for i in g}, "shared": shared})
    return out


def per_problem_json(runs: list, seeds: list[int], problems: list[str], horizons: list[int], steps: int):
    """One entry per seed of `seeds` (None where the seed has no finished run): per horizon (the
    step, as a string; the last is the end of training) each problem's sampled share right and
    greedy right, in the order of `problems` (None where a problem was not scored)."""
    by_seed = {r.seed: r for r in runs if r.status == "finished"}
    out = []
    for s in seeds:
        r = by_seed.get(s)
        if r is None:
            out.append(None)
            continue
        entry = {}
        for h in horizons:
            at = None if h == steps else h
            entry[str(h)] = {
                attr: [r.scores(attr, at).get(q) for q in problems] for attr in ("sampled", "greedy")
            }
        out.append(entry)
    return out


def variance_check(by_preset: dict, seeds: list[int], horizon: int | None = None) -> dict[str, Any] | None:
    """How alike the presets vary from run to run on sampled accuracy at `horizon`: each trained
    preset's SD over its seeds (points), the largest over the smallest, and Bartlett's test that they
    share one variance (`stats.bartlett`); None with fewer than 2 presets of 2 seeds or more."""
    sds, dfs = {}, {}
    for p, runs in by_preset.items():
        if p == "base":
            continue
        xs = [v for v in per_seed_values(runs, seeds, "sampled", True, horizon) if v is not None]
        if len(xs) > 1 and statistics.variance(xs) > 0:
            sds[p], dfs[p] = 100 * statistics.stdev(xs), len(xs) - 1
    if len(sds) < 2:
        return None
    stat, pvalue = bartlett([v * v for v in sds.values()], list(dfs.values()))
    return {
        "sd_points": sds,
        "sd_ratio": max(sds.values()) / min(sds.values()),
        "bartlett": stat,
        "bartlett_p": pvalue,
    }


METHOD = (
    "paired t interval over seeds and problems: se^2 = v_A / S + v_B / S + var over problems of the "
    "per-problem mean difference / P; v_A and v_B are each preset's own run-to-run variance over its "
    "seeds (Welch; the base model, evaluated once, has none), the run term widened by t at S - 1 df "
    "and the problem term by t at P - 1 (ladder.stats.welch_interval). The deciding pairs of all "
    "claims at one horizon form one family: ci_family is the interval at level 1 - 0.05 / family "
    "(Bonferroni), and the claims' verdicts are read from it. A verdict is a finding when it holds "
    "family-wise at the last horizon and does not reverse or fade over the earlier ones; claims whose "
    "deciding pairs share a preset's runs count as one finding (ladder.verdicts.findings)"
)


def results_json(
    plan, by_preset: dict, comps: list[Comparison], metric: str, costs: dict | None = None
) -> dict[str, Any]:
    """results.json: the seeds and horizons, per preset each metric's per-seed values (aligned with
    `seeds`; accuracies also at the earlier horizons) and every run's per-problem scores (`problems`
    gives their order), every comparison with a, b, metric, horizon, diff, ci95 [lo, hi], verdict
    and, for deciding pairs, ci_family and verdict_family; each claim's verdict per horizon, the
    findings, how alike the presets vary (`variance_check`) and the cost runs. ladder.recompute
    rebuilds every comparison from this file alone."""
    end = [c for c in comps if c.horizon == plan.steps]
    trusted, _ = aa_status(end)
    scored = [r for runs in by_preset.values() for r in runs if r.status == "finished"]
    problems = sorted({q for r in scored for q in r.scores("sampled") or r.scores("greedy")})
    presets = {}
    for p in ["base", *plan.presets]:
        runs = by_preset.get(p, [])
        entry = {m: per_seed_values(runs, plan.seeds, attr, True) for m, attr in PER_PROBLEM.items()} | {
            m: per_seed_values(runs, plan.seeds, attr, False) for m, attr in PER_SEED.items()
        }
        for m, attr in PER_PROBLEM.items():
            entry[f"{m}_at"] = {
                str(h): per_seed_values(runs, plan.seeds, attr, True, h) for h in plan.horizons[:-1]
            }
        if p == "base":  # evaluated once, the same at every horizon
            entry = {m: v[:1] for m, v in entry.items() if m in PER_PROBLEM}
            entry["per_problem"] = per_problem_json(runs, plan.seeds[:1], problems, plan.horizons, plan.steps)
        else:
            planned = {r.seed for r in plan.runs if r.preset == p}
            entry["status"] = [
                next((r.status for r in runs if r.seed == s), "not run") if s in planned else "not planned"
                for s in plan.seeds
            ]
            entry["per_problem"] = per_problem_json(runs, plan.seeds, problems, plan.horizons, plan.steps)
        presets[p] = entry
    members = max((c.family for c in comps), default=0)
    return {
        "schema": 3,
        "command": plan.command,
        "seeds": plan.seeds,
        "steps": plan.steps,
        "horizons": plan.horizons,
        "budget": plan.budget_name,
        "deciding_metric": metric,
        "level": LEVEL,
        "family": {"members": members, "level": family_level(members) if members else None},
        "method": METHOD,
        "margin": MARGIN,
        "aa_trusted": trusted,
        "variance_check": {
            str(h): variance_check(by_preset, plan.seeds, None if h == plan.steps else h)
            for h in plan.horizons
        },
        "problems": problems,
        "presets": presets,
        "claims": claim_rows(comps),
        "findings": findings(comps),
        "comparisons": [
            {k: v for k, v in asdict(c).items() if k != "kind"} | {"kind": c.kind} for c in comps
        ],
        "costs": costs,
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
