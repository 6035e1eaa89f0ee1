"""The road from SFT to GRPO in one run folder: base -> SFT (<run>/sft) -> RL (<run>/rl).

A `train` config with `sft_stage.steps > 0` runs two stages, each a whole run of its own (its
config.yaml, logs, checkpoints, model) driven by the one `Trainer`:

    sft2grpo train --config configs/pipeline.yaml     # make run's recipe

1. the supervised stage, rung 0 (`sft.supervised_config`), whose train keys come from the
   `sft_stage` section;
2. the RL stage, which starts from the first stage's model and scores "before" with the first
   stage's "after" (the same model, so it is not evaluated twice).

Then the stage table: held-out accuracy of the base, SFT and final models, each change with its
paired interval. `--resume <run>` continues whichever stage was running; a stage that finished is
not run again.
"""

from __future__ import annotations

import copy
import gc
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from . import checkpoint, run
from .config import Config, dump_yaml
from .evaluate import heldout_change, problem_scores
from .sft import fit_supervised, supervised_config
from .tracking import plot_metrics, read_metrics
from .trainer import Trainer

__all__ = ["format_pipeline", "run_pipeline", "stage_configs"]


def stage_configs(cfg: Config, run_dir: Path) -> tuple[Config, Config]:
    """The two stages of a pipeline run (cfg.sft_stage.steps > 0): the supervised stage, rung 0
    with its train keys from the sft_stage section, and the RL stage, which starts from the first
    stage's model and scores "before" with the first stage's "after" (the same model, so not
    evaluated twice)."""
    s, st = copy.deepcopy(cfg), cfg.sft_stage
    s.train.steps, s.train.lr, s.train.prompts_per_step = st.steps, st.lr, st.batch_size
    s.train.schedule, s.train.warmup_steps, s.train.mu = st.schedule, st.warmup_steps, 1
    s.sft_stage.steps = 0  # its config.yaml is rung 0 alone
    s.log.output_dir = str(run_dir / "sft")
    r = copy.deepcopy(cfg)
    r.sft_stage.steps = 0  # its config.yaml is the RL stage alone, from the first stage's model
    r.model.name = str(run_dir / "sft" / "model")
    r.eval.before = False
    r.log.output_dir = str(run_dir / "rl")
    return supervised_config(s), r


def run_pipeline(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Run (or resume) both stages in run_dir/sft and run_dir/rl, then write run_dir/summary.json
    with held-out accuracy at each stage and each change with its interval. A stage that finished
    (summary.json, not interrupted) is not run again; one with a checkpoint continues from it."""
    sft_cfg, rl_cfg = stage_configs(cfg, run_dir)
    sft_dir, rl_dir = run_dir / "sft", run_dir / "rl"

    def started() -> None:  # the pipeline's own config, once the first stage has loaded its input
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))

    if not finished(sft_dir):
        steps = cfg.sft_stage.steps
        print(f"# stage 1/2: supervised fine-tuning, {steps} steps -> {sft_dir}", file=sys.stderr)
        if run_stage(sft_cfg, sft_dir, started=started).get("interrupted"):
            return {"run_dir": str(run_dir), "interrupted": True, "stage": "sft"}
        gc.collect()  # the first stage's trainer (hooks make reference cycles) before the second's
    if not finished(rl_dir):
        print(f"# stage 2/2: {cfg.preset}, {cfg.train.steps} steps -> {rl_dir}", file=sys.stderr)
        if run_stage(rl_cfg, rl_dir, carry_from=sft_dir).get("interrupted"):
            return {"run_dir": str(run_dir), "interrupted": True, "stage": "rl"}
    summary = pipeline_summary(run_dir)
    if cfg.log.plots:
        plot = plot_metrics(run_dir)  # both stages on one axis, the boundary marked
        if plot:
            summary["plot"] = str(plot)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_stage(cfg: Config, stage_dir: Path, carry_from: Path | None = None, started=None) -> dict[str, Any]:
    """Build, run and drop one stage's trainer (so the first stage's model and optimizer are freed
    before the second's are built). `carry_from`: the previous stage's folder, whose held-out
    evaluation "after" is this stage's "before" (the same model), unless this stage resumes.
    `started()` is called once the trainer and its state are built: bad input has stopped the run
    before it."""
    ckpt = fresh_or_checkpoint(stage_dir)
    tr = Trainer(cfg, stage_dir)
    state = run.start(tr, ckpt)
    if started is not None:
        started()
    if ckpt is None and carry_from is not None:
        carry_scores(carry_from, stage_dir, state, cfg.eval.every)
    return (fit_supervised if cfg.train.rows == "given" else run.fit)(tr, state)


def carry_scores(earlier: Path, stage_dir: Path, state: run.RunState, val_every: int) -> None:
    """The earlier stage's final model is this stage's start, so its scores carry over instead of
    being computed again: its held-out "after" becomes this stage's "before" (eval_before.jsonl),
    and its last validation rows (greedy and sampled) this stage's step-0 rows of evals.jsonl."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    summary = json.loads((earlier / "summary.json").read_text())
    if summary.get("after") is not None:
        state.before = summary["after"]
        shutil.copyfile(earlier / "eval_after.jsonl", stage_dir / "eval_before.jsonl")
    if summary.get("after_sampled") is not None:  # eval.draws: sampled accuracy, carried alike
        state.before_sampled = summary["after_sampled"]
        shutil.copyfile(earlier / "eval_after_sampled.jsonl", stage_dir / "eval_before_sampled.jsonl")
    rows = read_metrics(earlier / "evals.jsonl")
    if any(r.get("tag") == "val" for r in rows) and val_every:
        with open(stage_dir / "evals.jsonl", "w", encoding="utf-8") as f:
            for tag in ("val", "val_sampled"):  # greedy, and sampled with eval.val_draws
                tagged = [r for r in rows if r.get("tag") == tag]
                if tagged:
                    f.write(json.dumps({**max(tagged, key=lambda r: r["step"]), "step": 0}) + "\n")
        state.val_start_known = True


def finished(stage_dir: Path) -> bool:
    """Whether a stage ran to its end (an interrupted run writes summary.json too, marked so)."""
    path = stage_dir / "summary.json"
    return path.is_file() and not json.loads(path.read_text()).get("interrupted")


def fresh_or_checkpoint(stage_dir: Path) -> Path | None:
    """A stage's newest complete checkpoint to resume from; without one, the logs of a start that
    died before its first checkpoint are removed, so the stage starts clean (nothing can resume them)."""
    ckpt = checkpoint.latest(stage_dir)
    if ckpt is None and stage_dir.is_dir():
        shutil.rmtree(stage_dir)
    return ckpt


def pipeline_summary(run_dir: Path) -> dict[str, Any]:
    """Held-out accuracy of the base, SFT and final models and each change (paired bootstrap over
    problems), from the stages' evaluation files: greedy ("accuracy", "changes") and, with
    eval.draws = k, sampled ("sampled_accuracy", "sampled_changes") and pass@k from the same k
    answers ("sampled_pass": the share of problems with a right answer among them, the headroom
    that sampled accuracy can climb to)."""
    out: dict[str, Any] = {"run_dir": str(run_dir), "model_dir": str(run_dir / "rl" / "model")}
    for metric, suffix in (("", ""), ("sampled_", "_sampled")):
        files = {
            "base": run_dir / "sft" / f"eval_before{suffix}.jsonl",
            "sft": run_dir / "sft" / f"eval_after{suffix}.jsonl",
            "rl": run_dir / "rl" / f"eval_after{suffix}.jsonl",
        }
        scores = {k: read_metrics(p) for k, p in files.items() if p.is_file()}
        if not scores:
            continue
        per_problem = {k: problem_scores(v) for k, v in scores.items()}
        out[f"{metric}accuracy"] = {k: sum(v.values()) / max(1, len(v)) for k, v in per_problem.items()}
        if metric:
            out["sampled_pass"] = {k: stage_pass(v) for k, v in scores.items()}
        out[f"{metric}changes"] = {
            f"{a}->{b}": heldout_change(scores[a], scores[b])
            for a, b in (("base", "sft"), ("sft", "rl"), ("base", "rl"))
            if a in scores and b in scores
        }
    for stage in ("sft", "rl"):
        s = run_dir / stage / "summary.json"
        if s.is_file():
            out[stage] = json.loads(s.read_text())
    return out


def stage_pass(rows: list[dict[str, Any]]) -> float:
    """pass@k of one evaluation file's rows, k = the answers each problem has: the share of
    problems with at least one right answer."""
    return sum(any(r["correct"]) for r in rows) / max(1, len(rows))


def format_pipeline(s: dict[str, Any]) -> str:
    """The stage-by-stage table `sft2grpo train` prints at the end of a pipeline run."""
    names = {"base": "base model", "sft": "after SFT", "rl": "after RL"}
    sampled, passed = s.get("sampled_accuracy") or {}, s.get("sampled_pass") or {}
    draws = ((s.get("rl") or {}).get("after_sampled") or {}).get("samples_per_problem", "k")
    head = f"  {'':20s} {'greedy':>8s}" + (f" {'sampled':>8s} {f'pass@{draws}':>8s}" if sampled else "")
    lines = [
        f"run: {s['run_dir']}",
        "held-out accuracy" + (f" (sampled: {draws} answers a problem):" if sampled else ":"),
        head,
    ]
    for k, v in s["accuracy"].items():
        extra = f" {100 * sampled[k]:7.1f}% {100 * passed[k]:7.1f}%" if k in sampled else ""
        lines.append(f"  {names[k]:20s} {100 * v:7.1f}%{extra}")
    for metric in ("", "sampled_"):
        for key, c in (s.get(f"{metric}changes") or {}).items():
            a, b = key.split("->")
            lo, hi = (100 * x for x in c["ci95"])
            lines.append(
                f"  {names[a]} -> {names[b]} ({metric.rstrip('_') or 'greedy'}): {100 * c['diff']:+.1f} points "
                f"[{lo:+.1f}, {hi:+.1f}] ({c['problems']} problems)"
            )
    val = (s.get("rl") or {}).get("val")
    if val:
        lines.append(
            f"validation accuracy (RL stage): best {100 * val['best']:.1f}% at step {val['best_step']}, "
            f"final {100 * val['final']:.1f}% at step {val['final_step']}"
        )
    wall = sum((s.get(k) or {}).get("wall_time_s", 0.0) for k in ("sft", "rl"))
    lines.append(f"wall time: {wall:.0f} s (both stages)")
    if s.get("plot"):
        lines.append(f"plots: {s['plot']}")
    lines.append(f"model: {s['model_dir']}")
    return "\n".join(lines)
