"""What `sft2grpo ladder` runs: the presets, the budgets, and the plan of (preset, seed) runs.

Both the ladder (ladder.py, which runs the plan) and its report (ladder_report.py, which reads what
the runs left) start from here; neither imports the other's module for it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The rungs in the seed's order, then the variants; `--presets` picks a subset.
PRESETS = (
    "sft",
    "reinforce",
    "reward_norm",
    "importance",
    "grpo",
    "sft_o1",
    "no_is",
    "no_kl",
    "dr_grpo",
    "dapo",
    "gspo",
    "rloo",
)
RUNGS = PRESETS[:5]
DESCRIPTIONS = {
    "sft": "rung 1: on-policy SFT, A = ReLU(r)",
    "reinforce": "rung 2: + negative gradient, A = r",
    "reward_norm": "rung 3: + normalised, clipped A",
    "importance": "rung 4: + importance sampling (mu 2)",
    "grpo": "rung 5: + KL penalty = GRPO",
    "sft_o1": "sft-o1: no negative gradient, 4 passes",
    "no_is": "GRPO without importance sampling",
    "no_kl": "GRPO without KL (no reference model)",
    "dr_grpo": "Dr. GRPO: A = r - mean, token sums",
    "dapo": "DAPO: clip-higher, dynamic sampling",
    "gspo": "GSPO: one ratio per sequence",
    "rloo": "RLOO: leave-one-out baseline",
}


@dataclass(frozen=True)
class Budget:
    steps: int
    seeds: int
    settings: tuple[str, ...]  # config overrides given to every run and to the base evaluation
    kl_prompts: int  # held-out prompts for KL(trained || base)
    kl_samples: int  # completions sampled from the trained policy per prompt


# Both keep the earlier `make run` settings (lr 3e-5; bf16 autocast where native), task and rewards, and write no periodic
# checkpoint: a 135M checkpoint is 1.6 GB and a default run a few minutes, so a crashed run restarts,
# while Ctrl-C still checkpoints the run it stops (pass checkpoint.every=N for more). "default" is
# sized by `estimate_run_s` to about 50 minutes for 12 presets x 2 seeds on 2 quiet CPU cores (a
# step of every preset for both seeds costs about 8 minutes, so there is room for 5 steps).
BUDGETS = {
    "small": Budget(
        steps=2,
        seeds=1,
        settings=(
            "train.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=32",
            "train.lr=3e-5",
            "train.autocast=auto",
            "eval.size=16",
            "task.val_size=16",
            "eval.every=1",
            "checkpoint.every=0",
            "log.plots=false",
        ),
        kl_prompts=4,
        kl_samples=2,
    ),
    "default": Budget(
        steps=5,
        seeds=2,
        settings=(
            "train.prompts_per_step=2",
            "rollout.group_size=8",
            "rollout.max_new_tokens=48",
            "train.lr=3e-5",
            "train.autocast=auto",
            "eval.size=100",
            "task.val_size=100",
            "eval.every=3",
            "checkpoint.every=0",
        ),
        kl_prompts=8,
        kl_samples=2,
    ),
}


@dataclass
class Run:
    preset: str
    seed: int
    dir: Path
    overrides: list[str]  # everything after `sft2grpo train --config PRESET`
    cfg: Any  # the resolved Config (validated before anything runs)


@dataclass
class Plan:
    out: Path
    presets: list[str]
    seeds: list[int]
    steps: int
    budget_name: str
    budget: Budget
    shared: list[str]  # overrides every run and the base evaluation share
    runs: list[Run]
    command: str
    keep_models: bool = False


# ---------------------------------------------------------------------------------------------------
# The plan.


def parse_presets(text: str | None) -> list[str]:
    """'sft,grpo' -> ['sft', 'grpo'] (duplicates dropped); None -> every preset of the ladder."""
    from .config import list_presets

    available = list_presets()
    if not text:
        return [p for p in PRESETS if p in available]
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for n in names:
        if n not in available:
            raise ValueError(f"--presets: unknown preset '{n}'; available: {', '.join(available)}")
    if not names:
        raise ValueError("--presets: no preset named")
    return names


def make_plan(
    *,
    budget: str = "default",
    steps: int | None = None,
    seeds: int | None = None,
    presets: str | None = None,
    task: str | None = None,
    model: str | None = None,
    output: str | Path = "ladder",
    overrides: list[str] | None = None,
    keep_models: bool = False,
) -> Plan:
    """Every run's overrides and resolved config; a bad preset, budget or key stops here, before any
    training, with one line naming it."""
    from .config import load_config

    if budget not in BUDGETS:
        raise ValueError(f"--budget: unknown budget '{budget}'; available: {', '.join(BUDGETS)}")
    b = BUDGETS[budget]
    steps = b.steps if steps is None else steps
    n_seeds = b.seeds if seeds is None else seeds
    if steps < 1:
        raise ValueError(f"--steps {steps}: must be >= 1")
    if n_seeds < 1:
        raise ValueError(f"--seeds {n_seeds}: must be >= 1")
    names = parse_presets(presets)
    out = Path(output)
    shared = list(b.settings)
    shared += [f"model.name={model}"] if model else []
    shared += [f"task.name={task}"] if task else []
    shared += list(overrides or [])
    shared.append(f"train.steps={steps}")
    runs = []
    # seed-major: every preset gets seed 0 before any gets seed 1, so a ladder stopped half-way
    # still compares every preset
    for s in range(n_seeds):
        for p in names:
            d = out / "runs" / f"{p}-s{s}"
            # the ladder's own keys come last: one base evaluation for all, the same seeds for all
            ov = shared + [
                "eval.before=false",
                "eval.after=true",
                "log.progress=false",
                f"train.seed={s}",
                f"log.output_dir={d}",
            ]
            runs.append(Run(p, s, d, ov, load_config(p, ov)))
    argv = ["sft2grpo", "ladder"]
    argv += ["--task", task] if task else []
    argv += ["--model", model] if model else []
    argv += ["--budget", budget] if budget != "default" else []
    argv += ["--steps", str(steps)] if steps != b.steps else []
    argv += ["--seeds", str(n_seeds)] if n_seeds != b.seeds else []
    argv += ["--presets", ",".join(names)] if presets else []
    argv += ["--output", str(output)] if str(output) != "ladder" else []
    argv += ["--keep-models"] if keep_models else []
    argv += list(overrides or [])
    return Plan(
        out=out,
        presets=names,
        seeds=list(range(n_seeds)),
        steps=steps,
        budget_name=budget,
        budget=b,
        shared=shared,
        runs=runs,
        command=" ".join(shlex.quote(a) for a in argv),
        keep_models=keep_models,
    )


# ---------------------------------------------------------------------------------------------------
# What a run left.


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_finished(run: Run) -> bool:
    s = read_json(run.dir / "summary.json")
    return bool(s) and not s.get("interrupted") and s.get("steps") == run.cfg.train.steps
