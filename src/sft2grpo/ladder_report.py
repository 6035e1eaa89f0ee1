"""The report of `sft2grpo ladder`: REPORT.md, curves.png and final.png from the files its runs left.

Per preset, mean +- std over seeds of the held-out accuracy after training, format errors, KL to the
base model, completion length, training reward, step time and peak memory; and a verdict on each of
the seed's claims, from the numbers: a mean difference between two presets "exceeds the spread" when
it is larger than how far the seeds of either preset landed apart (`compare`).

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

from .ladder_plan import DESCRIPTIONS, RUNGS, Plan, Run, is_finished, read_json


@dataclass
class RunResult:
    """What the report needs from one finished run; None where a file was missing."""

    preset: str
    seed: int
    status: str  # "finished", "failed: ...", "not run"
    accuracy: float | None = None
    format_error_rate: float | None = None
    completion_len: float | None = None
    kl: float | None = None
    step_time: float | None = None
    peak_mem_mb: float | None = None
    train_time_s: float | None = None
    final_reward: float | None = None  # mean training reward over the last steps
    reward_curve: dict[int, float] = field(default_factory=dict)
    eval_curve: dict[int, float] = field(default_factory=dict)


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


def load_result(run: Run, failed: dict, base_acc: float | None) -> RunResult:
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
    return RunResult(
        run.preset,
        run.seed,
        "finished",
        accuracy=after.get("accuracy"),
        format_error_rate=after.get("format_error_rate"),
        completion_len=after.get("completion_len"),
        kl=(read_json(run.dir / "kl.json") or {}).get("kl_k3"),
        step_time=statistics.median(times) if times else None,
        peak_mem_mb=s.get("peak_mem_mb"),
        train_time_s=s.get("train_time_s"),
        final_reward=statistics.fmean(last) if last else None,
        reward_curve=rewards,
        eval_curve=dict(sorted(evals.items())),
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
# The verdict: differences against the seed-to-seed spread.


def compare(a: list[float], b: list[float]) -> tuple[float, float | None, str]:
    """(mean(b) - mean(a), spread, words) for one metric of presets A and B over their seeds.

    The spread is the larger of the two presets' seed ranges (max - min over seeds): how far two
    runs that differ only in their seed already landed apart. A mean difference larger than that
    "exceeds the spread"; one at most that large is "within the spread". With one seed the spread
    is unknown. E.g. A = [10, 12], B = [15, 16]: difference +4.5, spread 2, exceeds the spread.
    """
    if not a or not b:
        raise ValueError("compare needs at least one value on each side")
    d = statistics.fmean(b) - statistics.fmean(a)
    if min(len(a), len(b)) < 2:
        return d, None, "spread unknown (1 seed)"
    spread = max(max(a) - min(a), max(b) - min(b))
    return d, spread, "exceeds the spread" if abs(d) > spread else "within the spread"


# Each claim: its title, what the seed says, its kind, and comparisons (A, B, what changes from A to
# B). The first comparison decides the claim; the others are listed as further evidence.
CLAIMS = [
    (
        "The negative gradient matters most",
        "matters",
        [
            ("sft", "reinforce", "add the negative gradient (rung 1 -> 2)"),
            ("sft", "sft_o1", "no negative gradient, 4 passes per batch instead (sft-o1)"),
            ("sft_o1", "reinforce", "the negative gradient vs sft-o1's extra passes"),
        ],
    ),
    (
        "Reward normalisation and clipping matter most",
        "matters",
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
            ("reward_norm", "importance", "add it, with a second pass per batch (rung 3 -> 4)"),
            ("grpo", "gspo", "vary it: one clipped ratio per sequence (GSPO)"),
        ],
    ),
    (
        "The KL penalty can be varied or dropped",
        "droppable",
        [
            ("grpo", "no_kl", "drop it from GRPO (no_kl; the same objective as rung 4, importance)"),
        ],
    ),
    (
        "What the other variants show (against GRPO)",
        "variant",
        [("grpo", v, DESCRIPTIONS[v]) for v in ("dr_grpo", "dapo", "rloo")],
    ),
]


def claim_words(kind: str, d: float, words: str) -> str:
    """The verdict on a claim from its deciding comparison (difference d of B - A, in points)."""
    if words.startswith("spread unknown"):
        return "undecided: with one seed the seed-to-seed spread is unknown"
    beyond = words == "exceeds the spread"
    if kind == "matters":
        if not beyond:
            return "not shown at this budget: the difference is within the seed-to-seed spread"
        return "supported at this budget" if d > 0 else "contradicted at this budget: the step hurt"
    if beyond and d < 0:
        return "contradicted at this budget: dropping it cost more than the seed-to-seed spread"
    return "consistent at this budget: dropping it " + ("helped" if beyond else "changed little")


def verdict_lines(by_preset: dict[str, list[RunResult]]) -> list[str]:
    out = []
    for i, (title, kind, comparisons) in enumerate(CLAIMS, 1):
        lines, decided = [], None
        for a, b, what in comparisons:
            xa, xb = values(by_preset.get(a, []), "accuracy"), values(by_preset.get(b, []), "accuracy")
            if not xa or not xb:
                lines.append(f"- {what}: not measured ({a} or {b} has no finished run)")
                continue
            d, spread, words = compare(xa, xb)
            sp = f"seed spread {100 * spread:.1f}" if spread is not None else "seed spread unknown"
            lines.append(
                f"- {what}: {a} {100 * statistics.fmean(xa):.1f}% -> {b} {100 * statistics.fmean(xb):.1f}%, "
                f"{100 * d:+.1f} points ({sp}): **{words}**"
            )
            if decided is None and (a, b) == comparisons[0][:2]:
                decided = claim_words(kind, d, words)
        if kind == "droppable" and comparisons[0][:2] == ("grpo", "no_kl"):
            lines += kl_extra_lines(by_preset)
        head = f"**{i}. {title}**" if kind != "variant" else f"**{title}**"
        if kind != "variant":
            head += f": {decided or 'not measured'}."
        out += [head, "", *lines, ""]
    return out


def kl_extra_lines(by_preset: dict[str, list[RunResult]]) -> list[str]:
    """What dropping KL buys and costs besides accuracy: memory (no reference model) and drift."""
    g, n = by_preset.get("grpo", []), by_preset.get("no_kl", [])
    lines = []
    for attr, what, scale, unit in (
        ("peak_mem_mb", "peak memory", 1 / 1024, " GiB"),
        ("kl", "KL to the base model (k3 per token)", 1.0, ""),
        ("step_time", "median step time", 1.0, " s"),
    ):
        xg, xn = values(g, attr), values(n, attr)
        if not xg or not xn:
            continue
        d, spread, words = compare(xg, xn)
        fmt = ".4f" if attr == "kl" else ".2f"
        rel = f", {100 * d / statistics.fmean(xg):+.0f}%" if statistics.fmean(xg) else ""
        lines.append(
            f"- {what}: grpo {scale * statistics.fmean(xg):{fmt}}{unit} -> no_kl "
            f"{scale * statistics.fmean(xn):{fmt}}{unit} ({scale * d:+{fmt}}{unit}{rel}): **{words}**"
        )
    return lines


def ranking_line(by_preset: dict[str, list[RunResult]]) -> str:
    """Presets by mean held-out accuracy, and which are within the best one's seed spread."""
    means = {
        p: statistics.fmean(values(rs, "accuracy")) for p, rs in by_preset.items() if values(rs, "accuracy")
    }
    if not means:
        return "No run finished."
    order = sorted(means, key=means.get, reverse=True)
    best = order[0]
    words = {
        p: compare(values(by_preset[best], "accuracy"), values(by_preset[p], "accuracy"))[2] for p in order
    }
    close = [p for p in order[1:] if words[p] == "within the spread"]
    ranked = ", ".join(f"{p} {100 * means[p]:.1f}%" for p in order)
    tail = ""
    if len(order) > 1 and not words[order[1]].startswith("spread unknown"):
        tail = f"; within the seed spread of {best}: {', '.join(close) or 'none'}"
    return f"By mean held-out accuracy: {ranked}{tail}."


def same_config_lines(plan: Plan, by_preset: dict[str, list[RunResult]]) -> list[str]:
    """Presets that train the very same configuration (importance and no_kl: rung 4 is GRPO without
    KL) are a control: with the same seeds, whatever separates them is run-to-run nondeterminism."""
    from .config import to_dict

    groups: dict[str, list[str]] = {}
    for r in plan.runs:
        if r.seed == plan.seeds[0]:
            d = {k: v for k, v in to_dict(r.cfg).items() if k not in ("preset", "log")}
            groups.setdefault(json.dumps(d, sort_keys=True), []).append(r.preset)
    lines = []
    for names in (g for g in groups.values() if len(g) > 1):
        by_seed: dict[int, list[float]] = {}  # seed -> the group's accuracies with that seed
        for p in names:
            for r in by_preset.get(p, []):
                if r.accuracy is not None:
                    by_seed.setdefault(r.seed, []).append(r.accuracy)
        gaps = [max(xs) - min(xs) for xs in by_seed.values() if len(xs) == len(names)]
        if not gaps:
            continue
        gap = max(gaps)
        lines.append(
            f"{' and '.join(names)} train the same configuration: with the same seeds their held-out "
            f"accuracy differs by up to {100 * gap:.1f} points, which is run-to-run nondeterminism alone."
        )
    return lines


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
    fig, (ax_r, ax_a) = plt.subplots(1, 2, figsize=(15, 5.5))
    colors = plt.get_cmap("tab20").colors
    for i, p in enumerate(plan.presets):
        rs = [r for r in by_preset.get(p, []) if r.status == "finished"]
        style = dict(
            color=colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20], ls="-" if p in RUNGS else "--"
        )
        for ax, curves, smooth in (
            (ax_r, [r.reward_curve for r in rs], window),
            (ax_a, [r.eval_curve for r in rs], 1),
        ):
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if not steps:
                continue
            ys = [running_mean([c[s] for s in steps], smooth) for c in curves]  # seeds x steps
            scale = 100 if ax is ax_a else 1
            mean = [scale * statistics.fmean(col) for col in zip(*ys)]
            ax.plot(steps, mean, label=p, marker="o" if len(steps) < 12 else None, ms=3, **style)
            if len(ys) > 1:
                lo, hi = [scale * min(col) for col in zip(*ys)], [scale * max(col) for col in zip(*ys)]
                ax.fill_between(steps, lo, hi, color=style["color"], alpha=0.12, lw=0)
    smoothing = f", running mean over {window} steps" if window > 1 else ""
    ax_r.set_title(f"training reward (mean over seeds{smoothing}; band: min-max over seeds)")
    ax_a.set_title("validation accuracy, greedy (step 0: the base model)")
    ax_r.set_ylabel("reward")
    ax_a.set_ylabel("accuracy (%)")
    for ax in (ax_r, ax_a):
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_a.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return window


def running_mean(xs: list[float], window: int) -> list[float]:
    """Mean of each value and up to window - 1 before it (the first values average fewer)."""
    return [statistics.fmean(xs[max(0, i - window + 1) : i + 1]) for i in range(len(xs))]


def plot_final(plan: Plan, by_preset: dict[str, list[RunResult]], base_acc: float | None, path: Path) -> None:
    """Final held-out accuracy per preset: a bar at the mean, a dot per seed, the base model's line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(plan.presets) + 1.2))
    for y, p in enumerate(plan.presets):
        xs = [100 * x for x in values(by_preset.get(p, []), "accuracy")]
        if xs:
            ax.barh(y, statistics.fmean(xs), color="tab:blue" if p in RUNGS else "tab:orange", alpha=0.5)
            ax.plot(xs, [y] * len(xs), "k.", ms=6)
        else:
            ax.text(0, y, " no finished run", va="center", fontsize=8, color="gray")
    if base_acc is not None:
        ax.axvline(100 * base_acc, color="k", ls="--", lw=1, label=f"base model {100 * base_acc:.1f}%")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(range(len(plan.presets)), plan.presets)
    ax.invert_yaxis()
    ax.set_xlabel("held-out accuracy after training (%): bar = mean, dots = seeds")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


TABLE_HEADER = (
    "| preset | what it is | seeds | held-out accuracy % | change, points | format errors % "
    "| KL to base | completion length | train reward, last quarter | step time s | peak memory GiB |"
)


def table_lines(plan: Plan, by_preset: dict[str, list[RunResult]], base: dict | None) -> list[str]:
    lines = [TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"]
    base_acc = base.get("accuracy") if base else None
    if base:
        lines.append(
            f"| base model | no training | - | {100 * base['accuracy']:.1f} | - | "
            f"{100 * base['format_error_rate']:.1f} | 0 | {base['completion_len']:.1f} | - | - | - |"
        )
    for p in plan.presets:
        rs = [r for r in by_preset.get(p, []) if r.status == "finished"]
        acc = values(rs, "accuracy")
        change = [x - base_acc for x in acc] if base_acc is not None else []
        lines.append(
            "| "
            + " | ".join(
                [
                    p,
                    DESCRIPTIONS.get(p, ""),
                    f"{len(rs)}/{len(plan.seeds)}",
                    mean_std(acc, 100),
                    mean_std(change, 100, "+.1f"),
                    mean_std(values(rs, "format_error_rate"), 100),
                    mean_std(values(rs, "kl"), 1, ".4f"),
                    mean_std(values(rs, "completion_len")),
                    mean_std(values(rs, "final_reward"), 1, ".2f"),
                    mean_std(values(rs, "step_time")),
                    mean_std(values(rs, "peak_mem_mb"), 1 / 1024, ".2f"),
                ]
            )
            + " |"
        )
    return lines


def write_report(plan: Plan, failed: dict | None = None) -> Path:
    """REPORT.md, curves.png and final.png in plan.out, from the files the runs left."""
    failed = failed or {}
    base = read_json(plan.out / "base" / "eval.json")
    base_acc = base.get("accuracy") if base else None
    results = [load_result(r, failed, base_acc) for r in plan.runs]
    by_preset: dict[str, list[RunResult]] = {}
    for r in results:
        by_preset.setdefault(r.preset, []).append(r)
    window = plot_curves(plan, by_preset, plan.out / "curves.png")
    plot_final(plan, by_preset, base_acc, plan.out / "final.png")
    n_done = sum(r.status == "finished" for r in results)
    missing = f"; {len(results) - n_done} missing, so some rows and verdicts are incomplete"
    smoothing = f", running mean over {window} steps" if window > 1 else ""
    seeds = f"{len(plan.seeds)} seed{'s' if len(plan.seeds) > 1 else ''}"
    lines = [
        f"# sft2grpo ladder: {plan.runs[0].cfg.task.name} on {plan.runs[0].cfg.model.name}",
        "",
        f"{n_done} of {len(results)} runs finished{missing if n_done < len(results) else ''}.",
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
        "Right: accuracy on the validation split, which runs are evaluated on while they train (the "
        "held-out problems of the table are scored only after training); step 0 is the base model. "
        "Rungs solid, variants dashed.",
        "",
        "![final held-out accuracy per preset](final.png)",
        "",
        "## Results",
        "",
        "Mean ± sample std over seeds. Held-out columns are after training; KL is k3 per token (see "
        "Budget); train reward is the mean over the last quarter of the steps; step time is the median; "
        "peak memory is the run process's peak resident memory.",
        "",
        *table_lines(plan, by_preset, base),
        "",
        "## Verdict on the seed's claims",
        "",
        "The seed: the negative gradient and reward normalisation with clipping matter most; importance "
        "sampling and the KL penalty can be varied or dropped. Each comparison below is of held-out "
        "accuracy after training, A -> B; a mean difference larger than the seed-to-seed spread (the "
        "larger of the two presets' max - min over seeds) **exceeds the spread**, otherwise it is "
        "**within the spread**. The first comparison of each claim decides its verdict. Only what this "
        f"budget ({plan.steps} steps, {seeds}) shows.",
        "",
        *verdict_lines(by_preset),
        ranking_line(by_preset),
        "",
        *same_config_lines(plan, by_preset),
        "",
        "## Runs",
        "",
        "| preset | seed | status | held-out accuracy % | train time s |",
        "|---|---|---|---|---|",
        *[
            f"| {r.preset} | {r.seed} | {r.status} | {fmt(r.accuracy, 100)} | "
            f"{fmt(r.train_time_s, spec='.0f')} |"
            for r in results
        ],
        "",
    ]
    path = plan.out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def fmt(x: float | None, scale: float = 1.0, spec: str = ".1f") -> str:
    return "-" if x is None else f"{scale * x:{spec}}"


def command_lines(plan: Plan) -> list[str]:
    run = plan.runs[0]
    one = shlex.join(["sft2grpo", "train", "--config", run.preset, *run.overrides])
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
        "prompts)",
        f"- lr {cfg.train.lr:g}, autocast {cfg.train.autocast}; train.mu and the objective as each preset "
        "defines them",
        f"- held-out: {size} problems of `{cfg.task.name}`, greedy, evaluated after training; the base "
        "model once",
        f"- validation: {cfg.task.val_size} other problems, greedy, evaluated at step 0 and {when}",
        f"- KL to the base model: {b.kl_prompts} held-out prompts x {b.kl_samples} completions sampled "
        "from the trained policy, mean per-token k3 = exp(d) - d - 1 with d = log pi_base - log pi "
        "(`ladder.kl_to_base`)",
        f"- overrides shared by every run: `{' '.join(plan.shared)}`",
        "",
    ]


def time_lines(plan: Plan) -> list[str]:
    walls = [(read_json(r.dir / "ladder.json") or {}).get("wall_s", 0.0) for r in plan.runs]
    measure_s = (read_json(plan.out / "base" / "time.json") or {}).get("wall_s", 0.0)
    return [
        f"- compute time: {sum(walls) / 60:.1f} min in the training processes (model loading and "
        f"evaluation included), {measure_s / 60:.1f} min measuring (base evaluation, KL)"
    ]
