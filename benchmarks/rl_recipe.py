"""The RL stage after SFT, chosen on validation (issue 35, item 4).

    python benchmarks/rl_recipe.py --seeds 0          # train what is missing, 2 at a time
    python benchmarks/rl_recipe.py --collect          # -> docs/sft_to_grpo/rl_recipe.json

Each arm is make run's road (`sft2grpo train --config pipeline`: SFT 15 steps, then 20 RL steps)
with the RL stage's prompts and answers a step set and one other setting changed (make run now
trains the chosen arm, `group16_p2`), every training problem with its worked solution. The RL stage
scores the validation split every 10 steps, greedy and sampled (`eval.val_draws=4`, 4 answers a
problem at the rollout temperature): the arms are compared on validation only, and the held-out
scores each run also writes are not read here. Each run's RL stage also logs the share
of its groups with a reward spread (1 - zero_std_frac), the only groups GRPO learns from (with
dynamic sampling, the share in the kept batch; `extra_rounds` counts the rounds it drew again).

Arms (what the RL stage changes; answers per step in brackets):
- `recipe`: make run's until this choice (4 prompts x 8 answers, T 1.0) [32];
- `group16`: groups of 16 (4 x 16) [64];
- `group16_p2`: groups of 16 at make run's answers per step (2 x 16) [32];
- `prompts8`: 8 prompts a step (8 x 8) [64];
- `dynamic`: dynamic sampling, groups without spread replaced by new prompts (DAPO) [32+];
- `t1.2`: temperature 1.2 [32].
The choice is the arm with the best sampled validation accuracy at the last step, greedy as the
tie-break, mean over seeds, among the arms run on the most seeds (screen on seed 0, then run the
leaders and `recipe` on more); the collected file says which, and by how much over `recipe`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from regimes import (
    COMMON,
    argv_of,
    finished,
    group_shares,
    read_jsonl,
    run_jobs,
)  # the script's folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "sft_to_grpo" / "rl_recipe.json"
VALIDATION = ["eval.every=10", "eval.val_draws=4"]

# every arm names its prompts and group size, so it stays the run it was when configs/pipeline.yaml
# changes (it took group16_p2's 2 x 16 from these runs)
RECIPE = ["train.prompts_per_step=4", "rollout.group_size=8"]
ARMS: dict[str, list[str]] = {
    "recipe": RECIPE,
    "group16": ["train.prompts_per_step=4", "rollout.group_size=16"],
    "group16_p2": ["train.prompts_per_step=2", "rollout.group_size=16"],
    "prompts8": ["train.prompts_per_step=8", "rollout.group_size=8"],
    "dynamic": [*RECIPE, "rollout.dynamic_sampling=true"],
    "t1.2": [*RECIPE, "rollout.temperature=1.2"],
}


def command(arm: str, seed: int, folder: Path) -> list[str]:
    """The `sft2grpo` argv of one arm (fresh); the RL stage's settings apply to the RL stage only."""
    return [
        "train",
        "--config",
        "pipeline",
        *ARMS[arm],
        *VALIDATION,
        f"train.seed={seed}",
        *COMMON,
        f"log.output_dir={folder}",
    ]


def collect_run(folder: Path) -> dict | None:
    """One finished arm: its RL stage's validation curves (greedy and sampled, by step), its share of
    groups with a reward spread, extra sampling rounds, and training seconds."""
    if not finished(folder):
        return None
    rl = folder / "rl"
    evals = read_jsonl(rl / "evals.jsonl")
    metrics = read_jsonl(rl / "metrics.jsonl")
    summary = json.loads((folder / "summary.json").read_text())
    arm, seed = folder.name.rsplit("-s", 1)
    return {
        "arm": arm,
        "seed": int(seed),
        "val_greedy": {r["step"]: r["accuracy"] for r in evals if r.get("tag") == "val"},
        "val_sampled": {r["step"]: r["accuracy"] for r in evals if r.get("tag") == "val_sampled"},
        "spread_share": group_shares(metrics).get("spread_share"),
        "extra_rounds": sum(r.get("resample_rounds", 0) for r in metrics),
        "rl_train_s": round((summary.get("rl") or {}).get("train_time_s", 0.0), 1),
    }


def choose(rows: list[dict]) -> dict:
    """The arm with the best mean sampled validation accuracy at its last step (greedy breaks a tie),
    among the arms run on the most seeds, over those seeds: an arm screened on seed 0 alone is not
    weighed against one confirmed on three. Each arm's means, and which arms could be chosen."""
    by_arm: dict[str, list[dict]] = {}
    for r in rows:
        by_arm.setdefault(r["arm"], []).append(r)

    def final(rs: list[dict], key: str) -> float:
        return statistics.fmean(r[key][max(r[key], key=int)] for r in rs if r[key])

    seeds = {a: sorted(r["seed"] for r in rs) for a, rs in by_arm.items()}
    most = max(seeds.values(), key=len)
    finalists = [a for a in by_arm if seeds[a] == most]
    scores = {a: (final(rs, "val_sampled"), final(rs, "val_greedy")) for a, rs in by_arm.items()}
    best = max(finalists, key=lambda a: scores[a])
    out = {
        "chosen": best,
        "seeds": most,
        "finalists": finalists,
        "final_val": {a: {"sampled": s, "greedy": g, "seeds": seeds[a]} for a, (s, g) in scores.items()},
    }
    if "recipe" in finalists:
        out["over_recipe"] = {
            "sampled": scores[best][0] - scores["recipe"][0],
            "greedy": scores[best][1] - scores["recipe"][1],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "rl_recipe")
    ap.add_argument("--collect", action="store_true", help=f"only write {OUT.relative_to(ROOT)}")
    args = ap.parse_args()
    arms = args.arms.split(",")
    for a in arms:
        if a not in ARMS:
            ap.error(f"--arms: unknown arm '{a}'; available: {', '.join(ARMS)}")
    if not args.collect:
        todo = []
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in arms:
                folder = args.runs / f"{arm}-s{seed}"
                if not finished(folder):
                    todo.append((folder, argv_of(folder, True, command(arm, seed, folder))))
        run_jobs(todo, args.runs, args.jobs)
    rows = [r for f in sorted(args.runs.glob("*-s*")) if (r := collect_run(f)) is not None]
    if not rows:
        sys.exit(f"{args.runs}: no finished arm to collect")
    data = {"runs": rows, **choose(rows)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{OUT.relative_to(ROOT)}: {len(rows)} runs; chosen on validation: {data['chosen']}")


if __name__ == "__main__":
    main()
