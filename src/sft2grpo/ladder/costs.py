"""What the reference model costs: grpo against no_kl, each trained alone on the same batches.

The ladder's own runs share the cores two at a time, so their step times carry whatever the other run
was doing, and two of them are a noisy measure of a quantity that is nearly deterministic. Here each
of the two presets trains `COST_STEPS` steps from the same seed (the same prompts; the same first
batch, since both start from the same model and sampler) in a process of its own that has every core,
one process at a time, in the order grpo, no_kl, grpo, no_kl: a drift of the machine's speed lands on
both. What dropping KL changes is the reference model (a second copy of the weights, one forward pass
per step) and the rows that reach the update: without KL a group with no reward spread has advantage
0 everywhere and skips it, with KL it still carries the KL gradient.

    <out>/costs/costs.json: {"grpo": {"peak_mem_mb": [..], "step_time_s": [..]}, "no_kl": {..}, ...}
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .plan import Plan, read_json

PAIR = ("grpo", "no_kl")
# the presets of the ladder the cost runs stand for: GRPO without KL is rung 4 there
IN_PLAN = ("grpo", "importance")
COST_STEPS = 3
REPEATS = 2  # A B A B


def cost_argv(plan: Plan, preset: str, folder: Path) -> list[str]:
    """The command of one cost run: the ladder's shared settings, COST_STEPS steps, no evaluation,
    no checkpoint, seed 0."""
    return [
        sys.executable,
        "-m",
        "sft2grpo",
        "train",
        "--config",
        preset,
        *plan.shared,
        f"train.steps={COST_STEPS}",
        "train.seed=0",
        "eval.before=false",
        "eval.after=false",
        "eval.every=0",
        "checkpoint.every=0",
        "log.plots=false",
        "log.progress=false",
        f"log.output_dir={folder}",
    ]


def measure_costs(plan: Plan) -> str | None:
    """Run the cost pairs that are missing (each alone, in order) and write costs.json; returns what
    went wrong, or None. A finished costs.json is kept: rerunning the ladder does not redo it. Nothing
    to do when the plan lacks grpo or rung 4 (importance, GRPO without KL)."""
    out = plan.out / "costs"
    if not all(p in plan.presets for p in IN_PLAN) or done(plan):
        return None
    out.mkdir(parents=True, exist_ok=True)
    order = [(p, i) for i in range(REPEATS) for p in PAIR]
    print(f"measuring the reference model's cost: {' '.join(p for p, _ in order)}, each alone", flush=True)
    for preset, i in order:
        folder = out / f"{preset}-r{i}"
        if (read_json(folder / "summary.json") or {}).get("steps") == COST_STEPS:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        log = out / f"{preset}-r{i}.log"
        t0 = time.time()
        with open(log, "w", encoding="utf-8") as f:
            code = subprocess.run(
                cost_argv(plan, preset, folder), stdout=f, stderr=subprocess.STDOUT
            ).returncode
        if code != 0:
            return f"the cost run {preset} #{i} failed (log: {log})"
        shutil.rmtree(folder / "model", ignore_errors=True)  # only its numbers are needed
        print(f"  {preset} #{i}: {time.time() - t0:.0f} s", flush=True)
    data: dict[str, Any] = {"steps": COST_STEPS, "repeats": REPEATS, "seed": 0}
    for preset in PAIR:
        runs = [read_costs(out / f"{preset}-r{i}") for i in range(REPEATS)]
        data[preset] = {k: [r[k] for r in runs] for k in ("peak_mem_mb", "step_time_s", "step_times_s")}
    tmp = out / "costs.json.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(out / "costs.json")
    return None


def done(plan: Plan) -> bool:
    """Whether costs.json holds this version's cost runs."""
    return (read_json(plan.out / "costs" / "costs.json") or {}).get("steps") == COST_STEPS


def read_costs(folder: Path) -> dict[str, Any]:
    """A cost run's peak memory (MB, the process's peak RSS) and step times (metrics.jsonl's
    time_step; step_time_s is their median)."""
    s = read_json(folder / "summary.json") or {}
    times = []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("time_step") is not None:
            times.append(row["time_step"])
    return {
        "peak_mem_mb": s.get("peak_mem_mb"),
        "step_time_s": statistics.median(times),
        "step_times_s": times,
    }


def cost_lines(plan: Plan) -> list[str]:
    """The report's lines on the reference model's cost, from costs.json ([] when it is missing)."""
    data = read_json(plan.out / "costs" / "costs.json")
    if not data or not all(p in data for p in PAIR):
        return []
    a, b = (data[p] for p in PAIR)

    def span(key: str, scale: float, unit: str, spec: str) -> str:
        xa, xb = (statistics.fmean(x[key]) for x in (a, b))
        each = ", ".join(f"{scale * (y - x):+{spec}}" for x, y in zip(a[key], b[key], strict=True))
        return (
            f"{scale * xa:{spec}}{unit} with KL, {scale * xb:{spec}}{unit} without: "
            f"{scale * (xb - xa):+{spec}}{unit} ({xb / xa:.2f}x; per repetition {each})"
        )

    return [
        f"Measured alone ({data['repeats']} repetitions of grpo then no_kl, {data['steps']} steps each "
        "from seed 0, one process at a time with every core; `ladder.costs`):",
        "",
        f"- peak memory: {span('peak_mem_mb', 1 / 1024, ' GiB', '.2f')}",
        f"- median step time: {span('step_time_s', 1, ' s', '.1f')}",
    ]
