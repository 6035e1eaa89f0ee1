"""SFT, RL and the two together, in two regimes of demonstrations, at equal minutes (issue 35).

    python benchmarks/regimes.py --regime scarce --demos 64 --seeds 0,1,2      # train what is missing
    python benchmarks/regimes.py --regime all --budget long --arms sft_only,sft_grpo  # 4x the steps
    python benchmarks/regimes.py --collect                                      # -> docs/sft_to_grpo/regimes.json
    python benchmarks/regimes.py --table --regime all --against sft_only         # arm - SFT alone, by seed
    python benchmarks/regimes.py --plot --regime all --budget long               # curves, where they cross

Each (regime, budget, arm, seed) is one `sft2grpo` run in its own process and folder under
`--runs` (default runs/regimes/), two at a time with one thread each, as docs/sft_to_grpo.md ran
its arms. A run whose summary.json says it finished is skipped, one with a checkpoint is resumed,
so rerunning the same command continues an interrupted set. Every run scores the same 200
held-out problems, greedy and sampled (`eval.draws=4`, 4 answers a problem at the rollout
temperature), before and after.

The arms at make run's budget (about 4-5 minutes of training on 2 shared cores; `--budget long`
gives every stage 4x its steps, about 20 minutes):
- `sft_only`: rung 0, 30 steps of 16 demonstrations;
- `sft_grpo`: configs/pipeline.yaml (SFT 15 steps, then GRPO 20), make run's recipe (its RL batch
  4 prompts x 8 until issue 35's choice, 2 x 16 since; each row's `rl_batch` says which);
- `sft_grpo_demo` (scarce only): the same, half of each RL step's prompts drawn from the
  demonstrated problems (`task.demo_share=0.5`), the control for the next two;
- `sft_guided`: that, with the reference answer joining each group that has no right one
  (`objective.guide=no_right`);
- `sft_mixed`: that, with the RL stage's loss (1 - w) GRPO + w SFT, w 0.5 falling to 0
  (`objective.sft_weight=0.5`, linear);
- `grpo_only` (scarce only): configs/run.yaml, 40 GRPO steps, no demonstration at all.
In the regime `all` every prompt has a demonstration and demo_share changes nothing. The
`_anydraw` arms (not run by default) are guided and mixed with RL prompts drawn from all problems,
the first scarce runs: a demonstration met 3% of the prompts.

The regime `all` gives every training problem its worked solution; `scarce` only the first
`--demos` (`task.demos`). `--collect` reads every finished run and writes one object per run to
docs/sft_to_grpo/regimes.json: regime, demos, demo_share, budget, arm, rl, rl_batch (the RL stage's prompts
x answers a step), seed, train_s, greedy, sampled, pass (pass@4 from the sampled answers) and, where
it scored validation, curve (validation greedy and sampled against training minutes).
Rows already there stay, and their runs are not trained again, so the set resumes on another
machine from the committed file.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "sft_to_grpo" / "regimes.json"
# a checkpoint every 10 steps (the newest kept), so a stopped set loses little when resumed
COMMON = ["model.threads=1", "log.progress=false", "eval.draws=4", "checkpoint.every=10", "checkpoint.keep=1"]

# arm -> (the sft2grpo command and its arguments, whether it has an RL stage)
PIPELINE = ["train", "--config", "pipeline"]
GUIDE = ["objective.guide=no_right"]
MIXED = ["objective.sft_weight=0.5", "objective.sft_weight_schedule=linear"]
SHARE = ["task.demo_share=0.5"]  # half of each RL step's prompts have a demonstration (scarce regime)
ARMS: dict[str, tuple[list[str], bool]] = {
    "sft_only": (["sft", "--config", "sft0", "train.steps=30", "eval.every=10"], False),
    "sft_grpo": (PIPELINE, True),
    "sft_grpo_demo": ([*PIPELINE, *SHARE], True),
    "sft_guided": ([*PIPELINE, *GUIDE, *SHARE], True),
    "sft_mixed": ([*PIPELINE, *MIXED, *SHARE], True),
    "grpo_only": (["train", "--config", "run"], True),
    # the first scarce runs drew RL prompts from all problems, so guides and the mixed loss met a
    # demonstration in 3% of them (docs/sft_to_grpo.md); kept in regimes.json, not run by default
    "sft_guided_anydraw": ([*PIPELINE, *GUIDE], True),
    "sft_mixed_anydraw": ([*PIPELINE, *MIXED], True),
}
SCARCE_ONLY = ("grpo_only", "sft_grpo_demo", "sft_guided_anydraw", "sft_mixed_anydraw")
# budget -> the steps of each kind of arm (appended to its arguments, so they override the arm's):
# make run's is the arms as written; `long` has 4x the steps of each stage (about 20 minutes of
# training) and scores validation every 20 steps, greedy and sampled (4 answers a problem): the
# curves in which to see whether SFT alone and SFT then RL cross
LONG_VAL = ["eval.every=20", "eval.val_draws=4"]
BUDGETS: dict[str, dict[str, list[str]]] = {
    "make_run": {"sft": [], "pipeline": [], "run": []},
    "long": {
        "sft": ["train.steps=120", *LONG_VAL],
        "pipeline": ["sft_stage.steps=60", "train.steps=80", *LONG_VAL],
        "run": ["train.steps=160", *LONG_VAL],
    },
}


def kind(arm: str) -> str:
    """ "sft" (rung 0 alone), "pipeline" (SFT then RL) or "run" (RL alone): what BUDGETS scales."""
    args = ARMS[arm][0]
    return "sft" if args[0] == "sft" else "pipeline" if "pipeline" in args else "run"


DEFAULT_ARMS = [a for a in ARMS if not a.endswith("_anydraw")]


def run_name(regime: str, budget: str, arm: str, seed: int) -> str:
    return f"{regime}-{budget}-{arm}-s{seed}"


def command(
    arm: str, regime: str, demos: int | None, seed: int, folder: Path, budget: str = "make_run"
) -> list[str]:
    """The `sft2grpo` argv of one run (fresh)."""
    args, _ = ARMS[arm]
    demo = [f"task.demos={demos}"] if regime == "scarce" and demos is not None else []
    steps = BUDGETS[budget][kind(arm)]
    return [*args, *steps, f"train.seed={seed}", *COMMON, *demo, f"log.output_dir={folder}"]


def finished(folder: Path) -> bool:
    """pipeline.finished's test, kept here so this parent process never imports torch."""
    path = folder / "summary.json"
    return path.is_file() and not json.loads(path.read_text()).get("interrupted")


def resumable(pipeline: bool, folder: Path) -> bool:
    """Whether `--resume` continues the run: a pipeline once it wrote its config (it resumes or
    restarts each stage itself), a single run with a complete checkpoint."""
    if pipeline:
        return (folder / "config.yaml").is_file()
    return any(folder.glob("checkpoints/step-*/state.json"))


def committed() -> set[str]:
    """The runs regimes.json already holds (a later session's machine may not have their folders)."""
    if not OUT.is_file():
        return set()
    return {
        run_name(r["regime"], r["budget"], r["arm"], r["seed"]) for r in json.loads(OUT.read_text())["runs"]
    }


def train(
    runs: Path,
    regime: str,
    demos: int | None,
    seeds: list[int],
    arms: list[str],
    jobs: int,
    budget: str = "make_run",
) -> None:
    todo, done = [], committed()
    for seed in seeds:
        for arm in arms:
            if arm in SCARCE_ONLY and regime != "scarce":
                continue
            folder = runs / run_name(regime, budget, arm, seed)
            if finished(folder) or folder.name in done:
                continue
            fresh = command(arm, regime, demos, seed, folder, budget)
            todo.append((folder, argv_of(folder, kind(arm) == "pipeline", fresh)))
    run_jobs(todo, runs, jobs)


def argv_of(folder: Path, pipeline: bool, fresh: list[str]) -> list[str]:
    """The argv that continues `folder` (`--resume` when it can) or starts it afresh."""
    if resumable(pipeline, folder):
        return [fresh[0], "--resume", str(folder)]
    shutil.rmtree(folder, ignore_errors=True)  # a start that died before its first checkpoint
    return fresh


def run_jobs(todo: list[tuple[Path, list[str]]], runs: Path, jobs: int) -> None:
    """Run each (folder, sft2grpo argv) in its own process, `jobs` at a time with one thread each,
    logging to runs/logs/<folder>.log; a finished run's checkpoints are deleted."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    running: list[tuple[Path, subprocess.Popen, float]] = []
    logs = runs / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    todo = list(todo)
    while todo or running:
        while todo and len(running) < jobs:
            folder, argv = todo.pop(0)
            cmd = [sys.executable, "-m", "sft2grpo", *argv]
            log = open(logs / f"{folder.name}.log", "a", encoding="utf-8")  # noqa: SIM115 (the child keeps it)
            log.write(f"\n$ {shlex.join(cmd)}\n")
            log.flush()
            running.append(
                (folder, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.time())
            )
            print(f"start {folder.name}", flush=True)
        time.sleep(5)
        for item in list(running):
            folder, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                state = "finished" if proc.returncode == 0 else f"failed ({proc.returncode})"
                print(f"{state} {folder.name} in {(time.time() - t0) / 60:.1f} min", flush=True)
                if finished(folder):  # checkpoints only served resuming (1.6 GB each for 135M)
                    for ckpt in [
                        folder / "checkpoints",
                        folder / "sft" / "checkpoints",
                        folder / "rl" / "checkpoints",
                    ]:
                        shutil.rmtree(ckpt, ignore_errors=True)


def scores(summary: dict) -> tuple[float | None, float | None]:
    """(greedy, sampled) held-out accuracy after the run, from a run's or a pipeline's summary."""
    if "accuracy" in summary:  # a pipeline: its final stage
        return summary["accuracy"].get("rl"), (summary.get("sampled_accuracy") or {}).get("rl")
    after, sampled = summary.get("after") or {}, summary.get("after_sampled") or {}
    return after.get("accuracy"), sampled.get("accuracy")


def stage_dirs(folder: Path) -> list[Path]:
    """A run's stage folders in training order: a pipeline's sft/ and rl/, or the run's own."""
    return [folder / "sft", folder / "rl"] if (folder / "rl").is_dir() else [folder]


def stage_logs(folder: Path) -> list[tuple[list[dict], list[dict]]]:
    """Each stage's (metrics.jsonl rows, evals.jsonl rows), in training order, each file read once."""
    return [(read_jsonl(d / "metrics.jsonl"), read_jsonl(d / "evals.jsonl")) for d in stage_dirs(folder)]


def final_pass(folder: Path) -> float | None:
    """pass@k of the final model from its k sampled answers a held-out problem (eval.draws): the
    share of problems with a right one among them; None without the file."""
    rows = read_jsonl(stage_dirs(folder)[-1] / "eval_after_sampled.jsonl")
    return sum(any(r["correct"]) for r in rows) / len(rows) if rows else None


def train_seconds(summary: dict) -> float:
    if "accuracy" in summary:
        return sum((summary.get(k) or {}).get("train_time_s", 0.0) for k in ("sft", "rl"))
    return summary.get("train_time_s", 0.0)


def read_jsonl(path: Path) -> list[dict]:
    """A JSONL log's rows; [] when the file is missing."""
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except OSError:
        return []


def rl_stage(summary: dict, metrics: list[dict]) -> dict:
    """A pipeline's RL stage, from its summary and its metrics.jsonl rows: its own change (SFT -> RL,
    greedy and sampled, with intervals), the share of its groups with a reward spread, and (guides)
    the share of groups a guide joined; {} for a single run."""
    if "accuracy" not in summary:
        return {}
    return {
        "rl_change_greedy": (summary.get("changes") or {}).get("sft->rl"),
        "rl_change_sampled": (summary.get("sampled_changes") or {}).get("sft->rl"),
        **group_shares(metrics),
    }


def group_shares(metrics: list[dict]) -> dict:
    """From a stage's metrics.jsonl rows, means over its steps: the share of groups with a reward
    spread ("spread_share") and, with guides, the share a guide joined ("guided_share"); {} without
    steps."""
    rows = [r for r in metrics if "zero_std_frac" in r]
    if not rows:
        return {}
    out = {"spread_share": 1 - sum(r["zero_std_frac"] for r in rows) / len(rows)}
    if any("guided_frac" in r for r in rows):
        out["guided_share"] = sum(r.get("guided_frac", 0.0) for r in rows) / len(rows)
    return out


def validation_curve(logs: list[tuple[list[dict], list[dict]]]) -> list[dict]:
    """A run's validation scores against its training minutes, from its stage_logs: one {"minutes",
    "greedy", "sampled"} per validation point (sampled None when not scored), minutes counting the
    steps alone (a pipeline's RL stage after all of its SFT stage's). The RL stage's step 0 scores
    the SFT stage's last model again and is left out; [] without validation rows."""
    points, offset = [], 0.0
    for metrics, evals in logs:
        step_s = {r["step"]: r["time_step"] for r in metrics if "time_step" in r}
        scores: dict[int, dict[str, float]] = {}
        for r in evals:
            if r.get("tag") in ("val", "val_sampled"):
                scores.setdefault(r["step"], {})[r["tag"]] = r["accuracy"]
        for step in sorted(scores):
            if step == 0 and points:
                continue
            seconds = offset + sum(t for s, t in step_s.items() if s <= step)
            points.append(
                {
                    "minutes": round(seconds / 60, 2),
                    "greedy": scores[step].get("val"),
                    "sampled": scores[step].get("val_sampled"),
                }
            )
        offset += sum(step_s.values())
    return points


def mean_curve(curves: list[list[dict]], metric: str) -> list[tuple[float, float]]:
    """The seeds' curves of one arm averaged point by point (its runs score validation at the same
    steps): (mean minutes, mean score), as long as the shortest curve; points without `metric` left
    out."""
    n = min((len(c) for c in curves), default=0)
    out = []
    for i in range(n):
        ys = [c[i][metric] for c in curves]
        if all(y is not None for y in ys):
            out.append((statistics.fmean(c[i]["minutes"] for c in curves), statistics.fmean(ys)))
    return out


def crossings(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[float]:
    """Where curve a - curve b changes sign: the x of each crossing, both curves (x, y) sorted by x
    and linear between their points, read on the x range they share."""
    lo, hi = max(a[0][0], b[0][0]), min(a[-1][0], b[-1][0])
    xs = sorted({x for x, _ in a + b if lo <= x <= hi})

    def at(curve: list[tuple[float, float]], x: float) -> float:
        for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
            if x0 <= x <= x1:
                return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        return curve[-1][1] if x >= curve[-1][0] else curve[0][1]

    signed = [(x, at(a, x) - at(b, x)) for x in xs]
    signed = [(x, d) for x, d in signed if d != 0]
    return [
        x0 + (x1 - x0) * d0 / (d0 - d1)
        for (x0, d0), (x1, d1) in zip(signed, signed[1:])
        if (d0 > 0) != (d1 > 0)
    ]


def plot(rows: list[dict], regime: str, budget: str, out: Path, arms: list[str] | None = None) -> list[str]:
    """The validation curves of one regime and budget against training minutes, greedy and sampled:
    each arm's mean over seeds (thick) and each seed (thin), into `out`; returns one line per pair of
    arms and metric saying where their mean curves cross. `arms`: only those (default all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_arm = {}
    for arm in arms or ARMS:
        curves = [r.get("curve") for r in arm_rows(rows, regime, budget, arm)]
        if any(curves):
            by_arm[arm] = [c for c in curves if c]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    lines = []
    for ax, metric in zip(axes, ("greedy", "sampled")):
        means = {}
        for i, (arm, curves) in enumerate(by_arm.items()):
            color = f"C{i}"
            for c in curves:
                pts = [(p["minutes"], 100 * p[metric]) for p in c if p[metric] is not None]
                if pts:
                    ax.plot(*zip(*pts), color=color, lw=0.6, alpha=0.4)
            means[arm] = [(x, 100 * y) for x, y in mean_curve(curves, metric)]
            if means[arm]:
                ax.plot(
                    *zip(*means[arm]),
                    color=color,
                    lw=2,
                    marker="o",
                    label=f"{arm} ({len(curves)} seed{'s' if len(curves) > 1 else ''})",
                )
        names = [a for a in means if means[a]]
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                xs = crossings(means[a], means[b])
                where = "cross at " + ", ".join(f"{x:.1f} min" for x in xs) if xs else "do not cross"
                lines.append(f"{metric}: {a} and {b} {where}")
        ax.set_title(f"validation, {metric} (%)", fontsize=10)
        ax.set_xlabel("training minutes (steps alone)")
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not scored in these runs", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"regime {regime}, budget {budget}: mean over seeds (thick), each seed (thin)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return lines


def collect(runs: Path) -> list[dict]:
    """One object per finished run folder under `runs`, as regimes.json holds them."""
    rows = []
    for folder in sorted(p for p in runs.iterdir() if p.is_dir() and p.name != "logs"):
        if not finished(folder):
            continue
        regime, budget, rest = folder.name.split("-", 2)
        arm, seed = rest.rsplit("-s", 1)
        cfg = folder / "config.yaml"
        demos, share, batch = None, 0.0, None
        if cfg.is_file():
            import yaml

            doc = yaml.safe_load(cfg.read_text())
            task = doc.get("task") or {}
            demos, share = task.get("demos"), task.get("demo_share", 0.0)
            if ARMS[arm][1]:  # the RL stage's prompts x answers a step, as the run had them
                batch = f"{doc['train']['prompts_per_step']}x{doc['rollout']['group_size']}"
        summary = json.loads((folder / "summary.json").read_text())
        greedy, sampled = scores(summary)
        logs = stage_logs(folder)
        rows.append(
            {
                "regime": regime,
                "demos": demos,
                "demo_share": share,
                "budget": budget,
                "arm": arm,
                "rl": ARMS[arm][1],
                "rl_batch": batch,
                "seed": int(seed),
                "train_s": round(train_seconds(summary), 1),
                "greedy": greedy,
                "sampled": sampled,
                "pass": final_pass(folder),
                **rl_stage(summary, logs[-1][0]),
            }
        )
        curve = validation_curve(logs)
        if curve:
            rows[-1]["curve"] = curve
    return rows


def arm_rows(rows: list[dict], regime: str, budget: str, arm: str) -> list[dict]:
    """The rows of one arm in one regime and budget, by seed."""
    return sorted(
        (r for r in rows if (r["regime"], r["budget"], r["arm"]) == (regime, budget, arm)),
        key=lambda r: r["seed"],
    )


def table(rows: list[dict], regime: str, budget: str = "make_run") -> list[str]:
    """The markdown table of one regime and budget: per arm the seeds, held-out greedy and sampled
    accuracy after the run (mean, SD over seeds, each seed), pass@4 from the sampled answers (mean
    and SD), and the RL stage's own change."""

    def cell(xs: list[float], each: bool = True) -> str:
        if not xs:
            return "-"
        sd = f" ± {100 * statistics.stdev(xs):.1f}" if len(xs) > 1 else ""
        seeds = f" ({', '.join(f'{100 * x:.1f}' for x in xs)})" if each else ""
        return f"{100 * statistics.fmean(xs):.1f}{sd}{seeds}"

    out = [
        "| arm | seeds | greedy % | sampled % | pass@4 % | RL stage's own change, sampled (greedy) | guided groups |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        rs = arm_rows(rows, regime, budget, arm)
        if not rs:
            continue
        change = "-"
        if rs[0].get("rl_change_sampled"):
            change = ", ".join(
                f"{100 * r['rl_change_sampled']['diff']:+.1f} ({100 * r['rl_change_greedy']['diff']:+.1f})"
                for r in rs
            )
        guided = ", ".join(f"{100 * r['guided_share']:.1f}%" for r in rs if "guided_share" in r) or "-"
        out.append(
            f"| `{arm}` | {len(rs)} | {cell([r['greedy'] for r in rs])} | {cell([r['sampled'] for r in rs])} "
            f"| {cell([r['pass'] for r in rs if r.get('pass') is not None], each=False)} | {change} | {guided} |"
        )
    return out


def paired(rows: list[dict], regime: str, budget: str, base: str) -> list[str]:
    """The markdown table of each arm against `base` in one regime and budget, paired by seed: per
    metric the mean of (arm - base) over the seeds both ran, its 95% t interval over those seeds and
    each seed's difference, in points."""
    from sft2grpo.ladder.stats import mean_interval  # numpy only, no torch

    def cell(diffs: list[float]) -> str:
        each = ", ".join(f"{100 * d:+.1f}" for d in diffs)
        if len(diffs) < 2:
            return f"{100 * diffs[0]:+.1f} ({each})"
        ci = mean_interval(diffs)
        lo, hi = (100 * x for x in ci["ci95"])
        return f"{100 * ci['diff']:+.1f} [{lo:+.1f}, {hi:+.1f}] ({each})"

    def by_seed(arm: str) -> dict[int, dict]:
        return {r["seed"]: r for r in arm_rows(rows, regime, budget, arm)}

    ref = by_seed(base)
    out = [
        f"| arm - `{base}` | seeds | greedy, points [95%] (each seed) | sampled, points [95%] (each seed) |",
        "|---|---|---|---|",
    ]
    for arm in ARMS:
        runs = by_seed(arm)
        seeds = sorted(set(runs) & set(ref))
        if arm == base or not seeds:
            continue
        greedy = [runs[s]["greedy"] - ref[s]["greedy"] for s in seeds]
        sampled = [runs[s]["sampled"] - ref[s]["sampled"] for s in seeds]
        out.append(f"| `{arm}` | {len(seeds)} | {cell(greedy)} | {cell(sampled)} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regime", choices=["all", "scarce"], default="scarce")
    ap.add_argument("--demos", type=int, default=64, help="demonstrations in the scarce regime (task.demos)")
    ap.add_argument(
        "--budget", choices=list(BUDGETS), default="make_run", help="make_run's steps, or 4x (long)"
    )
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "regimes")
    ap.add_argument("--collect", action="store_true", help=f"only write {OUT.relative_to(ROOT)}")
    ap.add_argument("--table", action="store_true", help=f"only print {OUT.name}'s table for --regime")
    ap.add_argument(
        "--against",
        choices=list(ARMS),
        help="with --table: each arm minus this one, paired by seed, with t intervals",
    )
    ap.add_argument(
        "--plot",
        action="store_true",
        help="only draw --regime and --budget's validation curves from regimes.json, and say where they cross",
    )
    args = ap.parse_args()
    if args.table:
        rows = json.loads(OUT.read_text())["runs"]
        lines = (
            paired(rows, args.regime, args.budget, args.against)
            if args.against
            else table(rows, args.regime, args.budget)
        )
        print("\n".join(lines))
        return
    if args.plot:
        png = OUT.parent / f"{args.regime}_{args.budget}.png"
        rows = json.loads(OUT.read_text())["runs"]
        print("\n".join(plot(rows, args.regime, args.budget, png, args.arms.split(","))))
        print(f"wrote {png.relative_to(ROOT)}")
        return
    if not args.collect:
        seeds = [int(s) for s in args.seeds.split(",")]
        train(args.runs, args.regime, args.demos, seeds, args.arms.split(","), args.jobs, args.budget)
    rows = collect(args.runs)
    if OUT.is_file():  # rows of runs whose folders are gone (another machine) stay
        here = {run_name(r["regime"], r["budget"], r["arm"], r["seed"]) for r in rows}
        old = json.loads(OUT.read_text())["runs"]
        rows += [r for r in old if run_name(r["regime"], r["budget"], r["arm"], r["seed"]) not in here]
    rows.sort(key=lambda r: (r["regime"], r["budget"], r["arm"], r["seed"]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"runs": rows}, indent=1) + "\n")
    print(f"{OUT.relative_to(ROOT)}: {len(rows)} runs")


if __name__ == "__main__":
    main()
