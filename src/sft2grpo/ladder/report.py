"""The report of `sft2grpo ladder`: REPORT.md, results.json, curves.png and final.png from the files
its runs left.

Per preset, the mean over seeds with a 95% interval of the sampled and greedy held-out accuracy,
KL to the base model, step time and peak memory (and means of the rest); a verdict at 95% on each of
the seed's claims from paired differences (verdicts.py, stats.py); and the A/A check,
whose failure the report's first lines state.

    write_report(make_plan(budget="small", output="ladder"))   # redraw the report of a ladder folder
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from ..evaluate import problem_scores
from ..tracking import seed_band
from .costs import IN_PLAN, cost_lines
from .plan import DESCRIPTIONS, RUNGS, Plan, Run, is_finished, read_json
from .stats import MARGIN
from .verdicts import (
    AA,
    CLAIMS,
    Comparison,
    aa_status,
    claim_verdict,
    comparisons,
    cost_comparisons,
    findings,
    horizon_label,
    results_json,
    table_interval,
    variance_check,
)


@dataclass
class RunResult:
    """What the report needs from one finished run; None where a file was missing."""

    preset: str
    seed: int
    status: str  # "finished", "failed: ...", "not run"
    accuracy: float | None = None  # greedy, held-out, after training
    sampled_accuracy: float | None = None  # mean over eval_samples samples per problem
    greedy: dict[str, float] = field(default_factory=dict)  # prompt -> 1/0, the greedy answer
    sampled: dict[str, float] = field(default_factory=dict)  # prompt -> share of correct samples
    format_error_rate: float | None = None
    completion_len: float | None = None
    kl: float | None = None
    step_time: float | None = None
    peak_mem_mb: float | None = None
    train_time_s: float | None = None
    final_reward: float | None = None  # mean training reward over the last steps
    reward_curve: dict[int, float] = field(default_factory=dict)
    eval_curve: dict[int, float] = field(default_factory=dict)
    # the same per-problem scores at the earlier horizons (steps before the end: heldout/step-N/)
    greedy_at: dict[int, dict[str, float]] = field(default_factory=dict)
    sampled_at: dict[int, dict[str, float]] = field(default_factory=dict)

    def scores(self, attr: str, horizon: int | None = None) -> dict[str, float]:
        """prompt -> score of `attr` ("greedy" or "sampled") at `horizon` (None: after training)."""
        return getattr(self, attr) if horizon is None else getattr(self, f"{attr}_at").get(horizon, {})


# ---------------------------------------------------------------------------------------------------
# Reading the results.


def read_rows(path: Path, tag: str | None = None) -> dict[int, dict]:
    """A JSONL log by step (only rows with `tag`, if given); a resumed run's repeated steps keep
    their last row."""
    rows: dict[int, dict] = {}
    try:
        text = path.read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and "step" in r and (tag is None or r.get("tag") == tag):
            rows[int(r["step"])] = r
    return rows


def read_scores(path: Path) -> dict[str, float]:
    """prompt -> score from an eval_*.jsonl file (`evaluate.problem_scores`); {} when missing."""
    rows = []
    try:
        for line in path.read_text().splitlines():
            rows.append(json.loads(line))
    except (OSError, ValueError):
        return {}
    return problem_scores(rows)


def load_base(plan: Plan) -> list[RunResult]:
    """The base model as a preset "base" with one result per seed, all the same evaluation (it is
    evaluated once), so that comparisons with it pair like any other."""
    base = read_json(plan.out / "base" / "eval.json")
    if not base:
        return []
    greedy = read_scores(plan.out / "base" / "eval_samples.jsonl")
    sampled = read_scores(plan.out / "base" / "eval_sampled.jsonl")
    acc = (read_json(plan.out / "base" / "sampled.json") or {}).get("accuracy")
    early = plan.horizons[:-1]  # the base model is the same at every horizon
    return [
        RunResult(
            "base",
            s,
            "finished",
            accuracy=base.get("accuracy"),
            sampled_accuracy=acc,
            greedy=greedy,
            sampled=sampled,
            format_error_rate=base.get("format_error_rate"),
            completion_len=base.get("completion_len"),
            kl=0.0,
            greedy_at=dict.fromkeys(early, greedy),
            sampled_at=dict.fromkeys(early, sampled),
        )
        for s in plan.seeds
    ]


def load_result(run: Run, failed: dict, base_acc: float | None, early: list[int] = ()) -> RunResult:
    key = (run.preset, run.seed)
    if not is_finished(run):
        status = f"failed: {failed[key]}" if key in failed else "not run"
        return RunResult(run.preset, run.seed, status)
    s = read_json(run.dir / "summary.json") or {}
    after = s.get("after") or {}
    metrics = read_rows(run.dir / "metrics.jsonl")
    # the curve is on the validation split, from the run's own step-0 evaluation of the base model
    evals = {k: r["accuracy"] for k, r in read_rows(run.dir / "evals.jsonl", tag="val").items()}
    if not evals and "accuracy" in after:  # a trainer without eval.every: held-out, base and final
        evals = {s.get("steps", run.cfg.train.steps): after["accuracy"]}
        if base_acc is not None:
            evals[0] = base_acc
    rewards = {k: r["reward_mean"] for k, r in metrics.items() if r.get("reward_mean") is not None}
    times = [r["time_step"] for r in metrics.values() if r.get("time_step") is not None]
    last = [rewards[k] for k in sorted(rewards)[-max(1, len(rewards) // 4) :]]
    # the whole run's peak: each step logs its process's peak so far, which covers the earlier pieces
    # of a run resumed from a checkpoint written before the summary counted them
    peaks = [x for x in [s.get("peak_mem_mb")] + [r.get("peak_mem_mb") for r in metrics.values()] if x]
    return RunResult(
        run.preset,
        run.seed,
        "finished",
        accuracy=after.get("accuracy"),
        sampled_accuracy=(read_json(run.dir / "sampled.json") or {}).get("accuracy"),
        greedy=read_scores(run.dir / "eval_after.jsonl"),
        sampled=read_scores(run.dir / "eval_sampled.jsonl"),
        format_error_rate=after.get("format_error_rate"),
        completion_len=after.get("completion_len"),
        kl=(read_json(run.dir / "kl.json") or {}).get("kl_k3"),
        step_time=statistics.median(times) if times else None,
        peak_mem_mb=max(peaks, default=None),
        train_time_s=s.get("train_time_s"),
        final_reward=statistics.fmean(last) if last else None,
        reward_curve=rewards,
        eval_curve=dict(sorted(evals.items())),
        greedy_at={h: read_scores(run.dir / "heldout" / f"step-{h}" / "eval_samples.jsonl") for h in early},
        sampled_at={h: read_scores(run.dir / "heldout" / f"step-{h}" / "eval_sampled.jsonl") for h in early},
    )


def values(results: list[RunResult], attr: str) -> list[float]:
    return [getattr(r, attr) for r in results if getattr(r, attr) is not None]


def mean_std(xs: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    """'12.0 +- 1.4' (sample std over seeds), '12.0' for one seed, '-' for none."""
    if not xs:
        return "-"
    m = f"{scale * statistics.fmean(xs):{fmt}}"
    return f"{m} ± {scale * statistics.stdev(xs):{fmt.lstrip('+')}}" if len(xs) > 1 else m


# ---------------------------------------------------------------------------------------------------
# The verdicts: paired differences with 95% intervals (verdicts.py).

METRIC_WORDS = {
    "sampled_accuracy": "sampled accuracy",
    "greedy_accuracy": "greedy accuracy",
    "peak_mem_mb": "peak memory",
    "step_time_s": "median step time",
    "kl_to_base": "KL to the base model",
}
TARGET_HALF_WIDTH = 5.0  # points: the widest deciding interval (half-width) the default ladder aims at
CLAIM_WORDS = {
    "better": "it is supported when the interval's low end is above 0 and contradicted when its high "
    "end is below 0",
    "droppable": f"it is supported when the interval's low end is above -{100 * MARGIN:g} points (a "
    "non-inferiority margin: dropping it costs less than that) and contradicted when its high end is "
    "below 0",
}


def deciding_metric(plan: Plan) -> str:
    """The metric the verdicts use: sampled accuracy when the budget samples, else greedy accuracy."""
    return "sampled_accuracy" if plan.budget.eval_samples else "greedy_accuracy"


def comparison_text(c: Comparison) -> str:
    """'sft -> reinforce: +3.1 points [-0.4, +6.6] (3 seeds x 100 problems): **undecided**'."""
    if c.verdict == "not measured":
        return f"{c.a} -> {c.b}: not measured ({c.a} or {c.b} has no finished, evaluated run)"
    if c.metric in ("sampled_accuracy", "greedy_accuracy"):
        scale, spec, unit = 100, "+.1f", " points"
    elif c.metric == "peak_mem_mb":
        scale, spec, unit = 1 / 1024, "+.2f", " GiB"
    elif c.metric == "step_time_s":
        scale, spec, unit = 1, "+.2f", " s"
    else:
        scale, spec, unit = 1, "+.4f", ""
    lo, hi = c.ci95
    n = f"{c.seeds} seed{'s' if c.seeds > 1 else ''}" + (f" x {c.problems} problems" if c.problems else "")
    plain = (
        f"{c.a} -> {c.b}: {scale * c.diff:{spec}}{unit} [{scale * lo:{spec}}, {scale * hi:{spec}}] ({n}): "
    )
    # the interval that decides: a deciding pair's family-wise one (the plain one beside it)
    ci, verdict = c.ci_family or c.ci95, c.verdict_family or c.verdict
    if c.ci_family is None:
        text = f"{plain}**{verdict}**"
    else:
        family = f"family-wise ({c.family} deciding pairs) [{scale * ci[0]:{spec}}, {scale * ci[1]:{spec}}]"
        text = f"{plain}{c.verdict}; {family}: **{verdict}**"
    # an undecided accuracy verdict is still an answer: no difference beyond the interval's ends
    if verdict == "undecided" and c.problems:
        text += f": no difference larger than {scale * max(abs(ci[0]), abs(ci[1])):.1f}{unit}"
    return text


def verdict_lines(comps: list[Comparison]) -> list[str]:
    """At one horizon: a paragraph per claim (its deciding pairs, then the evidence), then the
    variants, base -> grpo and what dropping KL costs."""
    out = [
        "",
        "How a verdict is read: for a claim that B beats A (claims 1 and 2, base -> grpo) "
        f"{CLAIM_WORDS['better']}; for a claim that a part can be dropped (claims 3 and 4) "
        f"{CLAIM_WORDS['droppable']}; otherwise undecided. A deciding pair is read from its family-wise "
        "interval (the level at which all the claims' deciding pairs hold together; the plain 95% one "
        "stands beside it). A claim with two deciding pairs is supported when both are and contradicted "
        "when one is.",
    ]
    greedy = {(c.a, c.b): c for c in comps if c.role == "other metric"}
    for i, claim in enumerate(CLAIMS, 1):
        deciding = [c for c in comps if c.role == f"claim {i}"]
        out += ["", f"**{i}. {claim.title}: {claim_verdict(deciding)}**", ""]
        for c in deciding:
            out.append(f"- deciding, {c.what}, {METRIC_WORDS[c.metric]}: {comparison_text(c)}")
            if (c.a, c.b) in greedy:
                out.append(f"  - on greedy accuracy (not deciding): {comparison_text(greedy[c.a, c.b])}")
        evidence = {(a, b) for a, b, _, _ in claim.evidence}
        for c in comps:
            if c.role == "evidence" and (c.a, c.b) in evidence:
                out.append(f"- evidence, {c.what}: {comparison_text(c)}")
    variants = [c for c in comps if c.role == "variant"]
    if variants:
        out += ["", "**The other variants against GRPO** (supported = they differ from GRPO)", ""]
        out += [f"- {c.what}: {comparison_text(c)}" for c in variants]
    out += ["", "**GRPO against the base model**", ""]
    for c in comps:
        if c.role == "base -> grpo" or (c.role == "other metric" and c.a == "base"):
            out.append(f"- {METRIC_WORDS[c.metric]}: {comparison_text(c)}")
    return out


def finding_lines(comps: list[Comparison]) -> list[str]:
    """The findings (`verdicts.findings`): how many, and which claims rest on the same runs."""
    found = findings(comps)
    if not found:
        return [
            "No claim's verdict is a finding: none holds family-wise at the last horizon without "
            "reversing or fading before it."
        ]
    lines = [f"Findings: {len(found)}, counting claims that rest on the same runs once."]
    for f in found:
        claims = " and ".join(f"claim {i} {f['verdicts'][i]}" for i in f["claims"])
        shared = f" (they share the runs of {', '.join(f['shared'])})" if f["shared"] else ""
        lines.append(f"- {claims}{shared}")
    return lines


def variance_lines(by_preset: dict, seeds: list[int]) -> list[str]:
    """How alike the presets vary from run to run at the end (`verdicts.variance_check`)."""
    v = variance_check(by_preset, seeds)
    if v is None:
        return []
    sds = ", ".join(f"{p} {sd:.1f}" for p, sd in sorted(v["sd_points"].items(), key=lambda kv: kv[1]))
    return [
        f"Run-to-run SD of sampled accuracy over seeds, points: {sds}; the largest is {v['sd_ratio']:.1f}x "
        f"the smallest (Bartlett's test of one shared variance: p = {v['bartlett_p']:.3f}). The intervals "
        "take each preset's own variance, which needs no such assumption.",
        "",
    ]


def costs_section(plan: Plan, comps: list[Comparison]) -> list[str]:
    """What dropping KL saves: the cost runs alone (`costs.cost_lines`), and KL to the base model in
    the ladder's runs."""
    lines = cost_lines(plan) or ["The cost runs (grpo and no_kl alone, `ladder.costs`) have not run."]
    kl = [c for c in comps if c.role == "cost"]
    lines += [f"- {METRIC_WORDS[c.metric]}, in the ladder's runs: {comparison_text(c)}" for c in kl]
    return ["## What the reference model costs", "", *lines, ""]


def horizon_lines(comps: list[Comparison], horizons: list[int]) -> list[str]:
    """The verdict of each claim, base -> grpo and the A/A pair at every horizon, and how it behaves
    over them (`horizon_label`); the deciding intervals' half-widths at the end."""
    head = "| | " + " | ".join(f"step {h}" for h in horizons) + " | over the horizons |"
    lines = [head, "|" + "---|" * (len(horizons) + 2)]
    for i, claim in enumerate(CLAIMS, 1):
        vs = [
            claim_verdict([c for c in comps if c.role == f"claim {i}" and c.horizon == h]) for h in horizons
        ]
        lines.append(f"| {i}. {claim.title} | " + " | ".join(vs) + f" | {horizon_label(vs, horizons)} |")
    for role in ("base -> grpo", "A/A"):
        cs = [next((c for c in comps if c.role == role and c.horizon == h), None) for h in horizons]
        if any(c is None for c in cs):
            continue
        cells = [
            f"{c.verdict}, {100 * c.diff:+.1f} [{100 * c.ci95[0]:+.1f}, {100 * c.ci95[1]:+.1f}]"
            if c.ci95
            else c.verdict
            for c in cs
        ]
        label = horizon_label([c.verdict for c in cs], horizons)
        lines.append(f"| {role}: {cs[0].a} -> {cs[0].b} | " + " | ".join(cells) + f" | {label} |")
    deciding = [
        c
        for c in comps
        if c.horizon == horizons[-1] and c.ci95 and (c.role.startswith("claim ") or c.role == "base -> grpo")
    ]
    if deciding:
        halves = [(100 * (c.ci95[1] - c.ci95[0]) / 2, c) for c in deciding]
        wide = [(h, c) for h, c in halves if h > TARGET_HALF_WIDTH]
        lines += [
            "",
            f"Deciding intervals at step {horizons[-1]}: half-widths {min(h for h, _ in halves):.1f} to "
            f"{max(h for h, _ in halves):.1f} points (target: at most {TARGET_HALF_WIDTH:g}).",
        ]
        for h, c in wide:
            part = "run-to-run" if (c.se_run or 0) >= (c.se_problem or 0) else "problem-to-problem"
            lines.append(
                f"- {c.a} -> {c.b}: {h:.1f} points; its larger term is {part} variation (standard error "
                f"{100 * (c.se_run or 0):.1f} from the runs, {100 * (c.se_problem or 0):.1f} from the problems): "
                + (
                    "more seeds narrow it"
                    if part == "run-to-run"
                    else "more held-out problems, or more samples a problem, narrow it"
                )
            )
    return lines


def aa_greedy(comps: list[Comparison]) -> str:
    """' On greedy accuracy (not deciding): ...' when the A/A pair was also compared on greedy."""
    c = next((c for c in comps if c.role == "other metric" and (c.a, c.b) == AA), None)
    return f" On greedy accuracy (not deciding): {comparison_text(c)}." if c else ""


def ranking_line(by_preset: dict[str, list[RunResult]], attr: str = "accuracy") -> str:
    """Presets by the mean of `attr` over seeds (the intervals are in the table)."""
    means = {p: statistics.fmean(values(rs, attr)) for p, rs in by_preset.items() if values(rs, attr)}
    if not means:
        return "No run finished."
    order = sorted(means, key=means.get, reverse=True)
    return "By mean: " + ", ".join(f"{p} {100 * means[p]:.1f}%" for p in order) + "."


# ---------------------------------------------------------------------------------------------------
# The report.


def machine_info() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, IndexError, ValueError):
        pass
    gpu = "no GPU"
    if shutil.which("nvidia-smi"):
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        )
        gpu = q.stdout.strip().replace("\n", ", ") or gpu
    versions = []
    for pkg in ("torch", "transformers"):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores{mem}; {gpu}; load average {load} (1, 5, 15 min) when "
        "this report was written (other work on the machine slows every timing below)",
        f"- Python {platform.python_version()}, {', '.join(versions)}, "
        f"{platform.system()} {platform.release()}",
    ]


def plot_curves(plan: Plan, by_preset: dict[str, list[RunResult]], path: Path) -> int:
    """Reward and validation accuracy per step, one line per preset (mean over seeds) with the seeds'
    min-max band. Rungs solid, variants dashed. Returns the running-mean window of the reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(1, plan.steps // 10)
    horizons = len(plan.horizons) > 1
    fig, axes = plt.subplots(1, 3 if horizons else 2, figsize=(21 if horizons else 15, 5.5))
    ax_r, ax_a = axes[0], axes[1]
    ax_h = axes[2] if horizons else None
    colors = plt.get_cmap("tab20").colors
    key = "sampled" if plan.budget.eval_samples else "greedy"
    base = by_preset.get("base", [])[:1]
    base_score = statistics.fmean(base[0].scores(key).values()) if base and base[0].scores(key) else None
    for i, p in enumerate(plan.presets):
        rs = [r for r in by_preset.get(p, []) if r.status == "finished"]
        style = dict(
            color=colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20], ls="-" if p in RUNGS else "--"
        )
        panels = [(ax_r, [r.reward_curve for r in rs], window), (ax_a, [r.eval_curve for r in rs], 1)]
        if ax_h is not None:  # held-out accuracy at each horizon, from the base model at step 0
            held = [
                {
                    h: statistics.fmean(v.values())
                    for h in plan.horizons
                    if (v := r.scores(key, None if h == plan.steps else h))
                }
                for r in rs
            ]
            panels.append((ax_h, [{0: base_score, **c} if base_score is not None else c for c in held], 1))
        for ax, curves, smooth in panels:
            steps, mean, lo, hi = seed_band(curves, smooth)
            if not steps:
                continue
            scale = 1 if ax is ax_r else 100  # accuracy in %
            mean, lo, hi = ([scale * v for v in xs] for xs in (mean, lo, hi))
            ax.plot(steps, mean, label=p, marker="o" if len(steps) < 12 else None, ms=3, **style)
            if len(curves) > 1:
                ax.fill_between(steps, lo, hi, color=style["color"], alpha=0.12, lw=0)
    smoothing = f", running mean over {window} steps" if window > 1 else ""
    ax_r.set_title(f"training reward\n(mean over seeds{smoothing}; band: min-max over seeds)")
    ax_a.set_title("validation accuracy, greedy\n(step 0: the base model)")
    ax_r.set_ylabel("reward")
    ax_a.set_ylabel("accuracy (%)")
    if ax_h is not None:
        ax_h.set_title(f"held-out accuracy, {key}\n(step 0: the base model)")
        ax_h.set_ylabel("accuracy (%)")
    for ax in [ax for ax in (ax_r, ax_a, ax_h) if ax is not None]:
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if ax_h is not None:
        ax_h.set_xticks([0, *plan.horizons])
    (ax_h or ax_a).legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return window


def plot_final(plan: Plan, by_preset: dict[str, list[RunResult]], attr: str, path: Path) -> None:
    """Final held-out accuracy (`attr`) per preset: a bar at the mean, a dot per seed, the base
    model's line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(plan.presets) + 1.2))
    for y, p in enumerate(plan.presets):
        xs = [100 * x for x in values(by_preset.get(p, []), attr)]
        if xs:
            ax.barh(y, statistics.fmean(xs), color="tab:blue" if p in RUNGS else "tab:orange", alpha=0.5)
            ax.plot(xs, [y] * len(xs), "k.", ms=6)
        else:
            ax.text(0, y, " no finished run", va="center", fontsize=8, color="gray")
    base = values(by_preset.get("base", [])[:1], attr)
    if base:
        ax.axvline(100 * base[0], color="k", ls="--", lw=1, label=f"base model {100 * base[0]:.1f}%")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(range(len(plan.presets)), plan.presets)
    ax.invert_yaxis()
    what = "sampled" if attr == "sampled_accuracy" else "greedy"
    ax.set_xlabel(f"held-out {what} accuracy after training (%): bar = mean, dots = seeds")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


TABLE_HEADER = (
    "| preset | what it is | seeds | sampled accuracy % | greedy accuracy % | format errors % "
    "| KL to base | completion length | train reward, last quarter | step time s | peak memory GiB |"
)


def table_lines(plan: Plan, by_preset: dict[str, list[RunResult]]) -> list[str]:
    """A row per preset: mean [95% interval over seeds] where it has one, else the mean."""
    lines = [TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"]
    base = by_preset.get("base", [])[:1]
    if base:
        b = base[0]
        lines.append(
            f"| base model | no training | - | {fmt(b.sampled_accuracy, 100)} | {fmt(b.accuracy, 100)} | "
            f"{fmt(b.format_error_rate, 100)} | 0 | {fmt(b.completion_len)} | - | - | - |"
        )
    for p in plan.presets:
        rs = [r for r in by_preset.get(p, []) if r.status == "finished"]
        lines.append(
            "| "
            + " | ".join(
                [
                    p,
                    DESCRIPTIONS.get(p, ""),
                    f"{len(rs)}/{plan.seed_count(p)}",
                    table_interval(values(rs, "sampled_accuracy"), 100),
                    table_interval(values(rs, "accuracy"), 100),
                    mean_std(values(rs, "format_error_rate"), 100),
                    table_interval(values(rs, "kl"), 1, ".4f"),
                    mean_std(values(rs, "completion_len")),
                    mean_std(values(rs, "final_reward"), 1, ".2f"),
                    table_interval(values(rs, "step_time"), 1, ".1f"),
                    table_interval(values(rs, "peak_mem_mb"), 1 / 1024, ".2f"),
                ]
            )
            + " |"
        )
    return lines


def load_all(plan: Plan, failed: dict | None = None) -> dict[str, list[RunResult]]:
    """preset -> its RunResults (one per seed), "base" first when the base model was evaluated."""
    base = load_base(plan)
    base_acc = base[0].accuracy if base else None
    by_preset: dict[str, list[RunResult]] = {"base": base} if base else {}
    for r in plan.runs:
        by_preset.setdefault(r.preset, []).append(load_result(r, failed or {}, base_acc, plan.horizons[:-1]))
    return by_preset


def write_report(plan: Plan, failed: dict | None = None) -> Path:
    """REPORT.md, results.json, curves.png and final.png in plan.out, from the files the runs left."""
    by_preset = load_all(plan, failed)
    results = [r for p in plan.presets for r in by_preset[p]]
    results.sort(key=lambda r: (r.seed, plan.presets.index(r.preset)))
    metric = deciding_metric(plan)
    comps = []
    for h in plan.horizons:  # the last horizon is the end of training: the runs' final scores
        for c in comparisons(by_preset, metric, None if h == plan.steps else h):
            c.horizon = h
            comps.append(c)
    for c in cost_comparisons(by_preset):
        c.horizon = plan.steps
        comps.append(c)
    end = [c for c in comps if c.horizon == plan.steps]
    _, aa_line = aa_status(end)
    costs = read_json(plan.out / "costs" / "costs.json")
    write_results(plan.out / "results.json", results_json(plan, by_preset, comps, metric, costs))
    window = plot_curves(plan, by_preset, plan.out / "curves.png")
    attr = "sampled_accuracy" if metric == "sampled_accuracy" else "accuracy"
    plot_final(plan, by_preset, attr, plan.out / "final.png")
    n_done = sum(r.status == "finished" for r in results)
    missing = f"; {len(results) - n_done} missing, so some rows and verdicts are incomplete"
    smoothing = f", running mean over {window} steps" if window > 1 else ""
    k = plan.budget.eval_samples
    decides = (
        f"sampled accuracy (the share of {k} samples per held-out problem at the training temperature "
        "that are right)"
        if metric == "sampled_accuracy"
        else "greedy accuracy (one greedy answer per held-out problem)"
    )
    lines = [
        f"# sft2grpo ladder: {plan.runs[0].cfg.task.name} on {plan.runs[0].cfg.model.name}",
        "",
        aa_line,
        "",
        f"{n_done} of {len(results)} runs finished{missing if n_done < len(results) else ''}. "
        f"Verdicts at 95%, decided by {decides}; results.json holds every number below.",
        "",
        *command_lines(plan),
        *budget_lines(plan),
        "## Machine",
        "",
        *machine_info(),
        *time_lines(plan),
        "",
        "## Curves",
        "",
        "![reward and validation accuracy per step](curves.png)",
        "",
        f"Left: training reward per step (mean over seeds{smoothing}; band: min to max over seeds). "
        f"{'Middle' if len(plan.horizons) > 1 else 'Right'}: greedy accuracy on the validation split, "
        "which runs are evaluated on while they train; step 0 is the base model."
        + (
            " Right: held-out accuracy at each horizon, the numbers the verdicts are computed from."
            if len(plan.horizons) > 1
            else " The held-out problems of the table are scored after training only."
        )
        + " Rungs solid, variants dashed.",
        "",
        "![final held-out accuracy per preset](final.png)",
        "",
        "## Results",
        "",
        "Mean over seeds [95% t interval over seeds] where an interval is given, else the mean (± sample "
        "std). Held-out columns are after training; KL is k3 per token (see Budget); train reward is "
        "the mean over the last quarter of the steps; step time is the median; peak memory is the run "
        "process's peak resident memory.",
        "",
        *table_lines(plan, by_preset),
        "",
        ranking_line(by_preset, attr),
        "",
        *(
            []
            if len(plan.horizons) < 2
            else ["## Held-out accuracy over the horizons", "", *horizon_table(plan, by_preset, attr), ""]
        ),
        "## Verdict on the seed's claims",
        "",
        "The seed: the negative gradient and reward normalisation with clipping matter most; importance "
        "sampling and the KL penalty can be varied or dropped. Each comparison is B - A with a 95% "
        "interval, paired by seed and by held-out problem: "
        f"{STATS_METHOD} Only what this budget ({plan.steps} steps, {len(plan.seeds)} seeds) shows.",
        "",
        *(
            []
            if len(plan.horizons) < 2
            else [
                f"Each verdict at each horizon (the runs scored on the held-out problems at steps "
                f"{', '.join(map(str, plan.horizons))}; measurements only, nothing was chosen by them). "
                "A verdict that flips or fades with the horizon is not a finding.",
                "",
                *horizon_lines(comps, plan.horizons),
                "",
                f"### At the end (step {plan.steps})",
                "",
            ]
        ),
        *finding_lines(comps),
        "",
        *variance_lines(by_preset, plan.seeds),
        aa_line + aa_greedy(end),
        *verdict_lines(end),
        "",
        *(costs_section(plan, end) if all(p in plan.presets for p in IN_PLAN) else []),
        "## Runs",
        "",
        "| preset | seed | status | sampled accuracy % | greedy accuracy % | train time s |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r.preset} | {r.seed} | {r.status} | {fmt(r.sampled_accuracy, 100)} | {fmt(r.accuracy, 100)} | "
            f"{fmt(r.train_time_s, spec='.0f')} |"
            for r in results
        ],
        "",
    ]
    path = plan.out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


STATS_METHOD = (
    "the interval is a paired t interval whose variance adds the run-to-run term (v_A / S + v_B / S, "
    "each preset's own variance over its seeds: presets need not vary alike) and the problem term "
    "(the variance over problems of the per-problem mean difference, / P), widened by t at S - 1 and "
    "at P - 1 degrees of freedom (`ladder.stats.welch_interval`). The deciding pairs of all claims at "
    "one horizon form one family, read at level 1 - 0.05 / (family size) (Bonferroni), the plain 95% "
    "interval beside it. On synthetic ladders with no effect and run-to-run SDs up to 10x apart, the "
    "A/A pair was called different in at most 5% and some null deciding pair in at most 5% of ladders "
    "family-wise (tests/test_ladder_stats.py). How the horizons are read, fixed before reading them: a "
    "claim's verdict is a finding when it holds family-wise at the last horizon and does not reverse "
    "or fade at an earlier one; claims whose deciding pairs share a preset's runs count as one "
    "finding. With one seed only the problem term is left and run-to-run variation is not in the "
    "interval. KL pairs by seed alone."
)


def horizon_table(plan: Plan, by_preset: dict[str, list[RunResult]], attr: str) -> list[str]:
    """Held-out accuracy (`attr`, mean [95% interval over seeds]) of each preset at each horizon."""
    key = "sampled" if attr == "sampled_accuracy" else "greedy"
    head = "| preset | " + " | ".join(f"step {h}" for h in plan.horizons) + " |"
    lines = [
        f"{'Sampled' if key == 'sampled' else 'Greedy'} accuracy % on the held-out problems, mean [95% "
        "interval over seeds]; the base model is step 0 of every row.",
        "",
        head,
        "|" + "---|" * (len(plan.horizons) + 1),
    ]
    base = by_preset.get("base", [])[:1]
    if base:
        lines.append(
            "| base model | "
            + " | ".join(
                [fmt(statistics.fmean(base[0].scores(key).values()) if base[0].scores(key) else None, 100)]
                * len(plan.horizons)
            )
            + " |"
        )
    for p in plan.presets:
        rs = [r for r in by_preset.get(p, []) if r.status == "finished"]
        cells = []
        for h in plan.horizons:
            xs = [
                statistics.fmean(v.values())
                for r in rs
                if (v := r.scores(key, None if h == plan.steps else h))
            ]
            cells.append(table_interval(xs, 100))
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return lines


def write_results(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def fmt(x: float | None, scale: float = 1.0, spec: str = ".1f") -> str:
    return "-" if x is None else f"{scale * x:{spec}}"


def command_lines(plan: Plan) -> list[str]:
    run = plan.runs[0]
    one = shlex.join(["sft2grpo", "train", "--config", run.config, *run.overrides])
    return [
        *["## Command", "", "```bash", plan.command, "```", ""],
        *["Each run is its own process, e.g.", "", "```bash", one, "```", ""],
    ]


def budget_lines(plan: Plan) -> list[str]:
    cfg, b = plan.runs[0].cfg, plan.budget
    size = min(cfg.eval.size or cfg.task.eval_size, cfg.task.eval_size)
    every = cfg.eval.every
    when = (f"every {every} steps and " if 1 < every < plan.steps else "") + (
        "after every step" if every == 1 else "at the end"
    )
    return [
        "## Budget",
        "",
        f"- budget `{plan.budget_name}`: {plan.steps} steps x {cfg.train.prompts_per_step} prompts x "
        f"{cfg.rollout.group_size} completions x at most {cfg.rollout.max_new_tokens} new tokens, for "
        f"every preset; seeds {', '.join(map(str, plan.seeds))} (`train.seed`, which also orders the "
        "prompts)" + seed_counts(plan),
        f"- lr {cfg.train.lr:g}, autocast {cfg.train.autocast}; train.mu and the objective as each preset "
        "defines them",
        f"- held-out: {size} problems of `{cfg.task.name}`, the same for every run, scored after training "
        "and for the base model once: greedy (one answer each)"
        + (
            f" and sampled ({b.eval_samples} answers each at the rollout temperature "
            f"{cfg.rollout.temperature:g}, seeded by the run's seed; sampled accuracy is the mean share right)"
            if b.eval_samples
            else ""
        ),
        *(
            [
                f"- horizons: the held-out problems are scored the same way at steps "
                f"{', '.join(map(str, plan.horizons[:-1]))} in each run's own process (`eval.heldout_at`), "
                "so that each verdict is read at every horizon"
            ]
            if len(plan.horizons) > 1
            else []
        ),
        f"- validation: {cfg.task.val_size} other problems, greedy, evaluated at step 0 and {when}",
        f"- KL to the base model: {b.kl_prompts} held-out prompts x {b.kl_samples} completions sampled "
        "from the trained policy, mean per-token k3 = exp(d) - d - 1 with d = log pi_base - log pi "
        "(`ladder.measure.kl_to_base`)",
        f"- overrides shared by every run: `{' '.join(plan.shared)}`",
        "",
    ]


def seed_counts(plan: Plan) -> str:
    """'; 5 seeds for grpo, ...; 3 for the others' when presets have different numbers of seeds."""
    n = {p: plan.seed_count(p) for p in plan.presets}
    if len(set(n.values())) < 2:
        return ""
    most = max(n.values())
    return (
        f"; {most} seeds for the presets that decide a claim and the A/A pair "
        f"({', '.join(p for p in plan.presets if n[p] == most)}), "
        + ", ".join(
            f"{k} for {', '.join(p for p in plan.presets if n[p] == k)}"
            for k in sorted(set(n.values()) - {most})
        )
    )


def time_lines(plan: Plan) -> list[str]:
    walls = [(read_json(r.dir / "ladder.json") or {}).get("wall_s", 0.0) for r in plan.runs]
    measure_s = (read_json(plan.out / "base" / "time.json") or {}).get("wall_s", 0.0)
    train_s = (read_json(plan.out / "time.json") or {}).get("train_wall_s")
    lines = [
        f"- compute time: {sum(walls) / 60:.1f} min in the training processes (model loading and "
        f"evaluation included), {measure_s / 60:.1f} min measuring (base evaluation, KL, sampled accuracy)"
    ]
    if train_s:
        lines.append(
            f"- wall time: {(train_s + measure_s) / 60:.1f} min, {train_s / 60:.1f} of it training "
            "(summed over the pieces of a resumed ladder)"
        )
    if plan.jobs > 1:
        lines.append(
            f"- {plan.jobs} runs trained at a time (`--jobs {plan.jobs}`), each with its share of the CPU "
            "cores: step times include the slowdown of sharing the machine, alike for every preset"
        )
    return lines
