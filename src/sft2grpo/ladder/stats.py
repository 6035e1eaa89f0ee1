"""The ladder's statistics: a 95% interval for a paired difference over seeds and problems, and the
verdict it gives. Pure functions of arrays; the report (report.py) feeds them the per-problem
scores every run left.

Two presets A and B trained with the same seeds and scored on the same held-out problems give two
(S, P) arrays of per-problem scores (S seeds, P problems; a score is 1/0 for a greedy answer, the
share of correct samples for sampled accuracy). The difference d = B - A is paired twice: seed s of
A and seed s of B share their prompt order, problem p is the same problem on both sides. Its mean
varies for two reasons, a new set of seeds (run-to-run variation, which at a small budget is large:
two runs of one configuration landed 13 points apart) and a new set of problems. The interval adds
both (`paired_interval`):

    se^2 = var_s(mean_p d[s, p]) / S  +  var_p(mean_s d[s, p]) / P       (sample variances, ddof 1)

and the half-width sqrt(t_{S-1}^2 var_seed/S + t_{P-1}^2 var_prob/P): each term widened by Student's
t at its own degrees of freedom, so t at S - 1 where run-to-run variation dominates and at P - 1
where the problems do. Each term also holds a share of the seed x problem interaction, so the sum
overstates the variance a little: the safe side. A
bootstrap over 3 seeds would not do: its percentile interval spans about the seeds' min to max, so
with no effect all three seeds land on one side 2 times in 8 and it would call a difference
(tests/test_ladder_stats.py measures it).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

LEVEL = 0.95
# A claim that a part "can be dropped" is supported when dropping it costs less than this, with 95%
# confidence (the interval's lower end is above -MARGIN): a non-inferiority margin, in score units.
MARGIN = 0.03


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df > 0 degrees of freedom (df may be fractional; inf gives
    the normal's). E.g. t_quantile(0.975, 2) = 4.303, t_quantile(0.975, 1) = 12.706."""
    if not 0.5 <= p < 1:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1, got {p}")
    if not df > 0:
        raise ValueError(f"t_quantile needs df > 0, got {df}")
    if math.isinf(df) or df > 1e6:
        return _normal_quantile(p)
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    # bisection on the CDF: 1/2 + the density's integral from 0 to x (Simpson on a fine grid)
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        t = np.linspace(0.0, x, 2001)
        f = np.exp(logc - (df + 1) / 2 * np.log1p(t * t / df))
        h = x / 2000
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def _normal_quantile(p: float) -> float:
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p else (lo, mid)
    return (lo + hi) / 2


def paired_interval(a, b, level: float = LEVEL) -> dict[str, Any]:
    """Mean of b - a and its `level` interval, paired by seed (rows) and problem (columns).

    a, b: (S, P) arrays (or (S,) per-seed values, taken as P = 1: memory, step time, KL). With one
    seed only the problem term is left, and the result says so: run-to-run variation is then not
    in the interval. Returns {"diff", "ci95": [lo, hi], "se", "se_run", "se_problem", "t", "seeds",
    "problems", "method"} where se^2 = se_run^2 + se_problem^2 and t = half-width / se.

    Example: a = [[0, 0], [0, 0]], b = [[1, 0], [1, 1]]: d has seed means 0.5, 1 and problem means
    1, 0.5, each term 0.125/2; half-width sqrt(12.706^2 * 0.0625 + 12.706^2 * 0.0625) (1 df each)
    = 4.49, so diff 0.75 has the interval [-3.74, 5.24].
    """
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired_interval: a is {a.shape[0]} seeds x {a.shape[1]} problems, b is {b.shape}")
    d = b - a  # (S, P)
    s, p = d.shape
    # each variance term widened by its own t quantile (S - 1 and P - 1 degrees of freedom), then
    # added: t at S - 1 when the seeds dominate, at P - 1 when the problems do. (One Welch-Satterthwaite
    # df for the sum called a difference in 9.5% of no-effect cases with 3 seeds; t at S - 1 for the
    # whole sum lost most of its power when the problems dominate.)
    v_seed = d.mean(1).var(ddof=1) / s if s > 1 else 0.0  # run-to-run
    if s > 1 and p > 1:
        method = f"paired t interval over {s} seeds and {p} problems (each variance term with its own t)"
    elif s > 1:
        method = f"paired t interval over {s} seeds"
    else:
        method = f"paired t interval over {p} problems of 1 seed (run-to-run variation not included)"
    return _interval(d, v_seed, s - 1, level, method)


def _interval(d: np.ndarray, v_seed: float, seed_df: float, level: float, method: str) -> dict[str, Any]:
    """The interval of d's mean (S, P) from the run-to-run term v_seed (with seed_df degrees of
    freedom) and the problem term var_p(mean_s d) / P (P - 1 df), each widened by its own t."""
    s, p = d.shape
    v_prob = d.mean(0).var(ddof=1) / p if p > 1 else 0.0  # problem-to-problem
    se = math.sqrt(v_seed + v_prob)
    q = 0.5 + level / 2
    half = math.sqrt(
        (t_quantile(q, seed_df) ** 2 * v_seed if v_seed > 0 else 0.0)
        + (t_quantile(q, p - 1) ** 2 * v_prob if p > 1 else 0.0)
    )
    diff = float(d.mean())
    return {
        "diff": diff,
        "ci95": [diff - half, diff + half],
        "se": se,
        "se_run": math.sqrt(v_seed),
        "se_problem": math.sqrt(v_prob),
        "t": half / se if se > 0 else math.inf,  # the t quantile the interval amounts to
        "seeds": s,
        "problems": p,
        "method": method,
    }


def run_variance(means, seed_effects: bool = True) -> tuple[float, int]:
    """The run-to-run variance pooled over every preset, and its degrees of freedom.

    means: (A, S) held-out means of A presets' runs with the same S seeds (every cell filled). With
    seed_effects, the model is means[a, s] = preset a + seed s + e[a, s] (a seed orders the prompts of
    every preset alike) and the result is the variance of e, from the residuals of that two-way fit,
    with (A - 1)(S - 1) df: two presets' per-seed difference then varies by 2 var(e), the seed term
    cancelling. Without, it is the variance of one run around its preset's mean (seed term included:
    what a difference against the base model, evaluated once, varies by), with A(S - 1) df.

    Example: means [[1, 2, 3], [2, 3, 4]] is preset + seed exactly: var(e) = 0 with 2 df; without seed
    effects each row varies by 1 around its mean: (2 + 2) / 4 = 1 with 4 df.
    """
    m = np.asarray(means, dtype=float)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 2 or not np.isfinite(m).all():
        raise ValueError(f"run_variance: means must be a finite (presets, seeds >= 2) array, got {m.shape}")
    a, s = m.shape
    if seed_effects:
        if a < 2:
            raise ValueError("run_variance: seed effects need at least 2 presets")
        r = m - m.mean(1, keepdims=True) - m.mean(0, keepdims=True) + m.mean()
        df = (a - 1) * (s - 1)
    else:
        r = m - m.mean(1, keepdims=True)
        df = a * (s - 1)
    return float((r**2).sum() / df), df


def pooled_interval(a, b, run_var: float, run_df: float, level: float = LEVEL) -> dict[str, Any]:
    """`paired_interval` with the run-to-run term from a variance pooled over the whole ladder. The
    report used it until the ladder's presets were seen to vary from 0.4 to 3.8 points from run to
    run; it now takes each preset's own (`welch_interval`), and this stays for the comparison on
    synthetic ladders in tests/test_ladder_stats.py.

    a, b: (S, P) scores as for paired_interval. run_var: the variance of one seed's mean difference
    B - A (2 var(e) between two presets, the one-way variance against the base model: `run_variance`),
    with run_df degrees of freedom. The interval's variance is v / S + var_p(mean_s d) / P, each term
    widened by t at its own df (run_df, P - 1), where v is run_var or, when larger, the pair's own
    variance over seeds var_s(mean_p d): pooling assumes every preset varies alike from run to run,
    and a pair noisier than the pool keeps its own spread. With 9 presets x 3 seeds the run term's t
    is t_16 = 2.12 instead of t_2 = 4.30. On synthetic ladders (tests/test_ladder_stats.py) the A/A
    pair was called different in 2.25% of 400, with an interval 0.77x as wide as `paired_interval`'s;
    8.5% when one of its presets varied twice as much as the rest, 12% at three times.
    """
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"pooled_interval: a is {a.shape[0]} seeds x {a.shape[1]} problems, b is {b.shape}")
    if not (run_var >= 0 and run_df > 0):
        raise ValueError(f"pooled_interval: needs run_var >= 0 and run_df > 0, got {run_var}, {run_df}")
    d = b - a
    s, p = d.shape
    own = d.mean(1).var(ddof=1) if s > 1 else 0.0
    method = (
        f"paired t interval over {s} seeds and {p} problems, run-to-run variance pooled over the "
        f"ladder ({run_df:g} df)"
    )
    return _interval(d, max(run_var, own) / s, run_df, level, method)


def welch_interval(a, b, level: float = LEVEL, satterthwaite: bool = False) -> dict[str, Any]:
    """`paired_interval` with a run-to-run term that lets A and B vary differently from run to run.

    a, b: (S, P) scores as for paired_interval (the base model, evaluated once, stands on the A side
    as S equal rows). Each side's run-to-run variance is its own, over its seeds: v_A = var_s(mean_p
    a) and v_B likewise (S - 1 df each), and the run term is v_A / S + v_B / S (Welch's), widened by
    t at S - 1 degrees of freedom: the lower bound of the Welch-Satterthwaite df

        df = (v_A / S + v_B / S)^2 / ((v_A / S)^2 / (S - 1) + (v_B / S)^2 / (S - 1))

    which runs from S - 1 (one side varies, the other not) to 2 (S - 1) (both alike), and which
    `satterthwaite=True` uses instead. Measured on synthetic ladders (tests/test_ladder_stats.py,
    5 seeds, run-to-run SDs 10x apart, no seed effect, 4000 repetitions): the A/A pair was called
    different in 5.5% with the Satterthwaite df and in 4.7% with S - 1, hence S - 1. The problem
    term is paired_interval's. A seed effect both presets share (the prompt order) cancels in the
    paired difference but stays in v_A and v_B, so the interval errs on the wide side when seeds
    matter; it does not assume that presets vary alike, which the ladder's runs did not (per-preset
    SDs from 0.4 to 3.8 points at step 40).

    Example: a = [[0, 0], [0, 0]], b = [[1, 0], [1, 1]]: v_A = 0, v_B = var(0.5, 1) = 0.125, so
    the run term is 0.0625 with 1 df (t 12.71), the problem term 0.0625 with 1 df: [-3.74, 5.24].
    """
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"welch_interval: a is {a.shape[0]} seeds x {a.shape[1]} problems, b is {b.shape}")
    s, p = a.shape
    if s < 2:
        return paired_interval(a, b, level)
    va, vb = a.mean(1).var(ddof=1) / s, b.mean(1).var(ddof=1) / s
    v = va + vb
    df = float(s - 1)
    if satterthwaite and v > 0:
        df = v * v / ((va * va + vb * vb) / (s - 1))
    method = (
        f"paired t interval over {s} seeds and {p} problems, each preset's own run-to-run variance "
        f"(Welch, t at {df:.3g} df)"
    )
    r = _interval(b - a, v, df, level, method)
    r["run_df"] = df
    return r


def bartlett(variances, dfs) -> tuple[float, float]:
    """Bartlett's test that k groups share one variance: (statistic, p-value), the statistic on k - 1
    df of the chi-square. variances: each group's sample variance; dfs: their degrees of freedom.
    Used on the presets' run-to-run variances to measure, not assume, whether they vary alike.

    Example: equal variances give 0 and p = 1; [1, 4] with 2 df each gives 0.714 (p 0.398).
    """
    v, n = np.asarray(variances, dtype=float), np.asarray(dfs, dtype=float)
    if v.size < 2 or (v <= 0).any() or (n <= 0).any():
        raise ValueError(f"bartlett: needs >= 2 positive variances with positive df, got {v}, {n}")
    total = n.sum()
    pooled = (n * v).sum() / total
    stat = (total * math.log(pooled) - (n * np.log(v)).sum()) / (
        1 + ((1 / n).sum() - 1 / total) / (3 * (v.size - 1))
    )
    return float(stat), chi2_sf(float(stat), v.size - 1)


def chi2_sf(x: float, k: int) -> float:
    """P(X > x) for a chi-square with k degrees of freedom: 1 - the regularised lower gamma P(k/2,
    x/2), by its series. E.g. chi2_sf(3.841, 1) = 0.05, chi2_sf(5.991, 2) = 0.05."""
    if x <= 0:
        return 1.0
    a, z = k / 2, x / 2
    term = total = 1.0 / a
    n = 0
    while term > 1e-15 * total and n < 10000:
        n += 1
        term *= z / (a + n)
        total += term
    lower = math.exp(a * math.log(z) - z - math.lgamma(a)) * total
    return max(0.0, 1.0 - lower)


def family_level(members: int, level: float = LEVEL) -> float:
    """The per-comparison level at which `members` intervals hold together at `level` (Bonferroni):
    1 - (1 - level) / members, e.g. 0.99167 for 6 at 95%."""
    if members < 1:
        raise ValueError(f"family_level: needs at least one member, got {members}")
    return 1 - (1 - level) / members


def mean_interval(x, level: float = LEVEL) -> dict[str, Any]:
    """Mean of per-seed values x (S,) and its t interval over seeds: a preset's memory, step time or
    KL in the table. paired_interval against zeros."""
    x = np.asarray(x, dtype=float)
    return paired_interval(np.zeros_like(x), x, level)


def _as_2d(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(
            f"paired_interval: {name} must be a non-empty (seeds, problems) array, got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"paired_interval: {name} holds NaN or inf")
    return arr


def verdict(ci: list[float], kind: str, margin: float = MARGIN) -> str:
    """'supported', 'contradicted' or 'undecided' for a claim about B - A, from its 95% interval.

    kind "better": the claim is that B beats A (adding a part matters; GRPO beats the base model):
    supported when lo > 0, contradicted when hi < 0.
    kind "droppable": the claim is that B (A without a part) loses nothing: supported when lo >
    -margin (non-inferiority), contradicted when hi < 0 (dropping it cost accuracy).
    kind "differ": the claim is only that B differs from A: supported when the interval excludes 0.
    The A/A check asks it of two identical configurations, where 'undecided' is the right answer.
    """
    lo, hi = ci
    if kind == "better":
        return "supported" if lo > 0 else "contradicted" if hi < 0 else "undecided"
    if kind == "droppable":
        return "contradicted" if hi < 0 else "supported" if lo > -margin else "undecided"
    if kind == "differ":
        return "supported" if lo > 0 or hi < 0 else "undecided"
    raise ValueError(f"verdict: unknown kind '{kind}' (better, droppable or differ)")
