"""What `sft2grpo ladder` runs: the presets, the budgets, and the plan of (preset, seed) runs.

Both the ladder (run.py, which runs the plan) and its report (report.py, which reads what
the runs left) start from here; neither imports the other's module for it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# The rungs in the seed's order, then the variants; `--presets` picks a subset. GRPO without KL is
# rung 4 itself (configs/no_kl.yaml has importance's objective), so the ladder trains it once, as
# `importance`; the A/A twin trains it again from another sampling stream.
PRESETS = (
    "onpolicy_sft",
    "reinforce",
    "reward_norm",
    "importance",
    "grpo",
    "no_is",
    "no_is_mu1",
    "no_is_prox",
    "grpo_no_neg",
    "grpo_no_norm",
    "importance_twin",
    "sft_o1",
    "dr_grpo",
    "dapo",
    "gspo",
    "rloo",
)
RUNGS = PRESETS[:5]
DESCRIPTIONS = {
    "onpolicy_sft": "rung 1: on-policy SFT, A = ReLU(r)",
    "reinforce": "rung 2: + negative gradient, A = r",
    "reward_norm": "rung 3: + normalised, clipped A",
    "importance": "rung 4: + importance sampling (mu 2) = GRPO without KL",
    "grpo": "rung 5: + KL penalty = GRPO",
    "sft_o1": "sft-o1: no negative gradient, 4 passes",
    "no_is": "GRPO without IS, answers reused unguarded (mu 2)",
    "no_is_mu1": "GRPO without IS, on-policy (mu 1)",
    "no_is_prox": "GRPO without IS, reused with a KL to pi_old",
    "grpo_no_neg": "GRPO without negative gradient, A = ReLU(norm)",
    "grpo_no_norm": "GRPO without normalisation or clip, A = r",
    "importance_twin": "rung 4 again, another sampling stream (A/A)",
    "dr_grpo": "Dr. GRPO: A = r - mean, token sums",
    "dapo": "DAPO: clip-higher, dynamic sampling",
    "gspo": "GSPO: one ratio per sequence",
    "rloo": "RLOO: leave-one-out baseline",
}
# Every preset samples from stream 0 (rollout.seed 0): seed s of two presets draws the same prompts
# in the same order and the same random numbers, so a pair differs by its objective alone. The A/A
# pair is one configuration under two names: the twin samples its answers from stream 1, with the
# same prompts in the same order (fp32 training on a CPU is deterministic, so with one stream the
# pair would be one run twice and test nothing). It only serves the A/A check.
AA = ("importance", "importance_twin")
TWINS = {"importance_twin": "importance"}  # ladder name -> the preset it trains
AA_STREAM = "rollout.seed=1"
# names the ladder reads as another preset: GRPO without KL is rung 4
SAME_AS = {"no_kl": "importance"}
# the presets of the claims' deciding pairs (ladder.verdicts.CLAIMS) and the A/A pair: they decide the
# verdicts, so they get Budget.deciding_seeds seeds; the others (evidence only) Budget.seeds
DECIDING = ("importance", "grpo", "no_is_mu1", "no_is_prox", "grpo_no_neg", "grpo_no_norm", "importance_twin")


@dataclass(frozen=True)
class Budget:
    steps: int
    seeds: int
    settings: tuple[str, ...]  # config overrides given to every run and to the base evaluation
    kl_prompts: int  # held-out prompts for KL(trained || base)
    kl_samples: int  # completions sampled from the trained policy per prompt
    # sampled accuracy: completions per held-out problem (eval.size problems) at the rollout
    # temperature, for every run and the base model; its mean over the k has less variance than one
    # greedy answer, and it decides the verdicts. 0: greedy accuracy only (then greedy decides)
    eval_samples: int = 8
    # steps before the last at which every run scores the held-out split too (greedy and sampled,
    # in the run's own process: eval.heldout_at), so that each verdict is given at every horizon
    horizons: tuple[int, ...] = ()
    # seeds of the DECIDING presets, when more than `seeds` (`--seeds` sets every preset's)
    deciding_seeds: int = 0


# The default ladder: the seed's 5 rungs, then GRPO without each of its four tricks in turn (IS three
# ways: no_is, no_is_mu1, no_is_prox; KL: rung 4; grpo_no_neg, grpo_no_norm: the leave-one-out
# ablations), and the A/A twin; `--presets all` adds the other 5.
# Runs trained at once by default: on 2 CPU cores two runs of one thread each did 1.5x the steps per
# minute of one run with both threads (docs/ladder/README.md); each has its own process and memory.
DEFAULT_JOBS = 2
DEFAULT_PRESETS = PRESETS[:11]

# "default" trains with the GRPO-only recipe of configs/run.yaml (make run's RL stage starts from
# SFT instead): the same work per step (4 prompts x 8 completions x at most 64 tokens, sampled with
# the int8 copy of the weights), lr 2e-5 with a cosine schedule to 0 and 3 warm-up steps, beta2 0.999,
# temperature 0.7, bf16 where it is native; each preset keeps its own objective and mu. 40 steps: where
# that recipe's validation curve has flattened (docs/learning.md); the held-out split is scored at
# steps 10, 20 and 40, greedy and with 4 samples a problem, so that each verdict is read at three
# horizons. A checkpoint every 10 steps (the last one kept, 1.6 GB) loses at most 10 steps of a run
# that is killed; Ctrl-C checkpoints at once. docs/ladder/README.md has the measured cost.
# "small" is a smoke check (one early horizon, at step 1).
BUDGETS = {
    "small": Budget(
        steps=2,
        seeds=1,
        settings=(
            "train.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=32",
            "rollout.temperature=0.7",
            "train.lr=2e-5",
            "train.autocast=auto",
            "eval.size=16",
            "task.val_size=16",
            "eval.every=1",
            "checkpoint.every=0",
            "log.plots=false",
        ),
        kl_prompts=4,
        kl_samples=2,
        eval_samples=4,
        horizons=(1,),
    ),
    "default": Budget(
        steps=40,
        seeds=3,
        settings=(
            "train.prompts_per_step=4",
            "rollout.group_size=8",
            "rollout.max_new_tokens=64",
            "rollout.temperature=0.7",
            "rollout.dtype=int8",
            "train.lr=2e-5",
            "train.schedule=cosine",
            "train.warmup_steps=3",
            "train.adam_beta2=0.999",
            "train.autocast=auto",
            "eval.size=100",
            "task.val_size=50",
            "eval.every=10",
            "checkpoint.every=10",
            "checkpoint.keep=1",
        ),
        kl_prompts=8,
        kl_samples=2,
        eval_samples=4,
        horizons=(10, 20),
        deciding_seeds=5,
    ),
}


@dataclass
class Run:
    preset: str
    seed: int
    dir: Path
    overrides: list[str]  # everything after `sft2grpo train --config PRESET`
    cfg: Any  # the resolved Config (validated before anything runs)

    @property
    def config(self) -> str:
        """The preset file this run trains (the A/A twin trains rung 4's)."""
        return TWINS.get(self.preset, self.preset)


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
    horizons: list[int]  # the steps each run is scored at on the held-out split, the last = steps
    keep_models: bool = False
    jobs: int = DEFAULT_JOBS  # runs trained at once (`--jobs`)

    def seed_count(self, preset: str) -> int:
        """How many seeds the plan trains `preset` for (Budget.deciding_seeds gives some more)."""
        return sum(r.preset == preset for r in self.runs)


# ---------------------------------------------------------------------------------------------------
# The plan.


def parse_presets(text: str | None) -> list[str]:
    """'onpolicy_sft,grpo' -> ['onpolicy_sft', 'grpo'] (duplicates dropped, old names read as their
    new ones); None -> the seed's rungs and variants (DEFAULT_PRESETS); 'all' -> every preset of the
    ladder (PRESETS)."""
    from ..config import current_preset, list_presets

    available = [*list_presets(), *TWINS]
    if not text or text.strip() == "all":
        return [p for p in (PRESETS if text else DEFAULT_PRESETS) if p in available]
    names = [current_preset(n.strip()) for n in text.split(",") if n.strip()]
    names = list(dict.fromkeys(SAME_AS.get(n, n) for n in names))
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
    eval_samples: int | None = None,
    jobs: int = DEFAULT_JOBS,
) -> Plan:
    """Every run's overrides and resolved config; a bad preset, budget or key stops here, before any
    training, with one line naming it."""
    from ..config import load_config

    if budget not in BUDGETS:
        raise ValueError(f"--budget: unknown budget '{budget}'; available: {', '.join(BUDGETS)}")
    b = BUDGETS[budget]
    steps = b.steps if steps is None else steps
    n_seeds = b.seeds if seeds is None else seeds
    # the presets that decide a claim get more seeds than the evidence-only ones, unless --seeds says
    n_deciding = max(n_seeds, b.deciding_seeds) if seeds is None else n_seeds
    if steps < 1:
        raise ValueError(f"--steps {steps}: must be >= 1")
    if n_seeds < 1:
        raise ValueError(f"--seeds {n_seeds}: must be >= 1")
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: must be >= 1")
    if eval_samples is not None:
        if eval_samples < 0 or eval_samples == 1:
            raise ValueError(f"--eval-samples {eval_samples}: must be 0 (greedy accuracy only) or >= 2")
        b = replace(b, eval_samples=eval_samples)
    names = parse_presets(presets)
    out = Path(output)
    shared = list(b.settings)
    shared += [f"model.name={model}"] if model else []
    shared += [f"task.name={task}"] if task else []
    shared += list(overrides or [])
    shared.append(f"train.steps={steps}")
    # the earlier horizons, scored in the run's process (held-out: measurements, never a choice)
    early = [h for h in b.horizons if h < steps]
    scored_at = (
        [f"eval.heldout_at=[{','.join(map(str, early))}]", f"eval.heldout_at_draws={b.eval_samples}"]
        if early
        else []
    )
    runs = []
    # seed-major: every preset gets seed 0 before any gets seed 1, so a ladder stopped half-way
    # still compares every preset
    for s in range(max(n_seeds, n_deciding)):
        for p in names:
            if s >= (n_deciding if p in DECIDING else n_seeds):
                continue
            d = out / "runs" / f"{p}-s{s}"
            # the ladder's own keys come last: one base evaluation for all, the same seeds for all
            ov = shared + [
                "eval.before=false",
                "eval.after=true",
                "log.progress=false",
                f"train.seed={s}",
                f"log.output_dir={d}",
            ]
            ov += [AA_STREAM] if p in TWINS else []  # the A/A twin: its own sampling stream
            ov += scored_at
            runs.append(Run(p, s, d, ov, load_config(TWINS.get(p, p), ov)))  # Run.config
    argv = ["sft2grpo", "ladder"]
    argv += ["--task", task] if task else []
    argv += ["--model", model] if model else []
    argv += ["--budget", budget] if budget != "default" else []
    argv += ["--steps", str(steps)] if steps != b.steps else []
    argv += ["--seeds", str(n_seeds)] if n_seeds != b.seeds else []
    argv += ["--presets", ",".join(names)] if presets else []
    argv += ["--output", str(output)] if str(output) != "ladder" else []
    argv += ["--eval-samples", str(b.eval_samples)] if b.eval_samples != BUDGETS[budget].eval_samples else []
    argv += ["--keep-models"] if keep_models else []
    argv += ["--jobs", str(jobs)] if jobs != DEFAULT_JOBS else []
    argv += list(overrides or [])
    return Plan(
        out=out,
        presets=names,
        seeds=list(range(max(n_seeds, n_deciding))),
        steps=steps,
        budget_name=budget,
        budget=b,
        shared=shared,
        runs=runs,
        horizons=[*early, steps],
        command=" ".join(shlex.quote(a) for a in argv),
        keep_models=keep_models,
        jobs=jobs,
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


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)  # atomic: a reader sees the old file or the whole new one


# ---------------------------------------------------------------------------------------------------
# A run folder holds the planned settings, or the ladder refuses it.


def check_same_settings(run: Run) -> None:
    """A run folder trained with other settings would mix budgets in one table: refuse it."""
    import yaml

    from ..config import Config, rename_old_keys, to_dict

    saved = read_yaml(run.dir / "config.yaml", yaml)
    if saved is None:
        return
    saved = rename_old_keys(saved, str(run.dir / "config.yaml"), warn=False)  # a run from before a rename
    planned, defaults = to_dict(run.cfg), to_dict(Config())
    for section, values in planned.items():
        if section in ("log", "checkpoint"):  # where and how often to write: not the experiment
            continue
        diff = first_difference(values, saved.get(section, {}), section, defaults.get(section))
        if diff:
            raise ValueError(
                f"{run.dir} holds a run with other settings ({diff}); rerun the same command, "
                "choose another --output, or delete that folder"
            )


def read_yaml(path: Path, yaml) -> dict | None:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def first_difference(a: Any, b: Any, key: str, default: Any = None) -> str | None:
    """'train.steps: 20 planned, 3 saved' for the first leaf where a and b differ, else None. A key
    the saved config lacks came with a newer sft2grpo: the run had its default (from `default`, the
    same place in a default config), and it differs only if the plan sets another value."""
    if isinstance(a, dict) and isinstance(b, dict):
        default = default if isinstance(default, dict) else {}
        for k in a:
            if k in b:
                d = first_difference(a[k], b[k], f"{key}.{k}", default.get(k))
            elif k in default:
                d = first_difference(a[k], default[k], f"{key}.{k}", default[k])
                d = d and f"{d} (the saved config lacks the key: a run from before it, at the default)"
            else:
                d = None
            if d:
                return d
        return None
    if a != b and not (isinstance(a, list | tuple) and isinstance(b, list | tuple) and list(a) == list(b)):
        return f"{key}: {a!r} planned, {b!r} saved"
    return None
