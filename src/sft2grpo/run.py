"""Run management around the training step: folders, logs, signals, checkpoints, evaluation, summary.

    trainer = Trainer(cfg, make_run_dir(cfg))
    summary = fit(trainer)          # what `trainer.fit()` and `sft2grpo train` call

A run survives: every `checkpoint.every` steps, on SIGINT/SIGTERM and when bad steps stop it, the
model, optimizer, scheduler, data position and every RNG state go to an atomic checkpoint
(`checkpoint.py`); `Trainer(cfg, run_dir, resume_from=...)` continues bit for bit on CPU. Only rank 0
writes logs, plots and models; every process takes part in the collectives.

Nothing here knows what a step computes: `fit` calls `trainer.train_step()` and logs the row it returns.
"""

from __future__ import annotations

import json
import random
import resource
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint, distributed
from .config import Config, dump_yaml, to_dict
from .evaluate import EvalResult, evaluate_heldout, evaluate_sampled, heldout_change, merge_evals, write_jsonl
from .tracking import Progress, Tracker, make_tracker, plot_metrics, read_metrics, truncate_jsonl

LOGS = ("metrics.jsonl", "samples.jsonl", "evals.jsonl")  # one row per step (or evaluation) each
PROGRESS = {"reward": "reward_mean", "acc": "accuracy", "loss": "loss"}  # the bar's fields, where logged


class TrainingError(RuntimeError):
    """A run that cannot go on (too many bad steps, out of memory); the message says what to change."""


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory, in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# -- run folders ------------------------------------------------------------------------------------


def make_run_dir(cfg: Config) -> Path:
    """Fill {preset} and {time} in log.output_dir; refuse a folder that holds a run. The folder is
    created by `fit`, so a start that fails (bad model, bad data) leaves nothing behind."""
    name = cfg.log.output_dir.format(preset=cfg.preset, time=time.strftime("%Y%m%d-%H%M%S"))
    path = Path(name)
    if (path / "metrics.jsonl").exists() or (path / "summary.json").exists():
        raise TrainingError(
            f"log.output_dir={path} already holds a run; choose another folder, or continue it "
            f"with --resume {path}"
        )
    return path


def find_resumable(cfg: Config) -> Path | None:
    """For `--resume auto`: the newest run folder matching log.output_dir ({time} as a wildcard)
    that has a complete checkpoint, or None."""
    pattern = cfg.log.output_dir.format(preset=cfg.preset, time="*")
    parent, glob = Path(pattern).parent, Path(pattern).name
    if not parent.is_dir():
        return None
    runs = [p for p in parent.glob(glob) if p.is_dir() and checkpoint.latest(p) is not None]
    return max(runs, key=lambda p: checkpoint.latest(p).stat().st_mtime) if runs else None


# -- checkpoints ------------------------------------------------------------------------------------


def checkpoint_state(tr) -> dict[str, Any]:
    """Everything but the weights (and, with FSDP2, the sharded optimizer) an exact resume needs."""
    return {
        "step": tr.step,
        "optimizer": None if tr.sharded else tr.optimizer.state_dict(),
        "scheduler": tr.scheduler.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        "data": {"rng": tr.data_rng.bit_generator.state, "order": tr.order, "pos": tr.pos, "drawn": tr.drawn},
        "counters": {"bad_steps": tr.bad_steps, "skipped_steps": tr.skipped_steps},
        "before": tr.before,
        "train_time": tr.train_time,
        "earlier": so_far(tr),
        "difficulty": None if tr.sampler is None else tr.sampler.state_dict(),
    }


def so_far(tr) -> dict[str, float]:
    """The run's wall seconds and peak memory (MiB) up to now, over every piece of a resumed run."""
    return {
        "wall_time_s": tr.earlier["wall_time_s"] + time.time() - tr.piece_start,
        "peak_mem_mb": max(tr.earlier["peak_mem_mb"], peak_memory_mb()),
    }


def save_checkpoint(tr) -> Path:
    """Every process calls this. Without FSDP2 the weights are the same everywhere and rank 0
    writes them as an HF folder (LoRA: the adapter alone); with FSDP2 each process writes its
    shards of weights and optimizer with torch.distributed.checkpoint."""

    def write_model(folder: Path) -> None:
        tr.model.save_pretrained(folder)
        tr.tokenizer.save_pretrained(folder)

    path = checkpoint.save(
        tr.run_dir,
        tr.step,
        None if tr.sharded else write_model,
        checkpoint_state(tr),
        tr.cfg.checkpoint.keep,
        summary={"skipped_steps": tr.skipped_steps, "preset": tr.cfg.preset},
        ctx=tr.ctx,
        write_shards=(lambda f: checkpoint.save_sharded(tr.model, tr.optimizer, f)) if tr.sharded else None,
    )
    tr.saved_step = tr.step
    return path


def load_checkpoint(tr, path: Path) -> None:
    st = checkpoint.load_state(path)
    if tr.sharded:
        checkpoint.load_sharded(tr.model, tr.optimizer, path)
    else:
        checkpoint.load_model_weights(tr.model, path)
        try:
            tr.optimizer.load_state_dict(st["optimizer"])
        except (ValueError, KeyError, TypeError) as e:
            raise checkpoint.CheckpointError(
                f"{path}: optimizer state does not fit the model ({e}); was model.lora or "
                "train.parallel changed?"
            ) from None
    tr.scheduler.load_state_dict(st["scheduler"])
    rng = st["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    tr.data_rng.bit_generator.state = st["data"]["rng"]
    tr.order, tr.pos, tr.drawn = st["data"]["order"], st["data"]["pos"], st["data"]["drawn"]
    if tr.sampler is not None:
        if st.get("difficulty") is None:
            raise checkpoint.CheckpointError(
                f"{path}: no difficulty-filter state; was task.difficulty.mode changed since it was saved?"
            )
        try:
            tr.sampler.load_state_dict(st["difficulty"])
        except ValueError as e:
            raise checkpoint.CheckpointError(f"{path}: {e}; were task.difficulty.buckets changed?") from None
    tr.bad_steps = st["counters"]["bad_steps"]
    tr.skipped_steps = st["counters"]["skipped_steps"]
    tr.before, tr.train_time = st["before"], st["train_time"]
    tr.earlier = st.get("earlier", tr.earlier)  # checkpoints before 2026-11-30 lack it
    tr.step = tr.saved_step = st["step"]


# -- the run ----------------------------------------------------------------------------------------


def fit(tr) -> dict[str, Any]:
    """Run `tr` to train.steps (or to a stop signal), evaluating and checkpointing on the way; then
    save the model, evaluate it and write summary.json. Returns the summary.

    Writes into the run folder only from here on (a failed start leaves it untouched). A resumed
    run first cuts its logs back to the checkpoint's step, so each step is logged once.
    """
    cfg, run_dir, ctx = tr.cfg, tr.run_dir, tr.ctx
    main = ctx.main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if tr.resumed_from is not None:
            for name in LOGS:
                truncate_jsonl(run_dir / name, tr.step)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    distributed.barrier(ctx)
    tracker = Tracker([])  # the null tracker: the loop below has no "if main" around logging
    if main:
        tracker = make_tracker(
            run_dir,
            tensorboard=cfg.log.tensorboard,
            wandb=cfg.log.wandb,
            project=cfg.log.wandb_project,
            config=to_dict(cfg),
            resume_step=tr.step,
        )
    samples_file = open(run_dir / "samples.jsonl", "a", encoding="utf-8") if main else None  # noqa: SIM115
    tr.piece_start = time.time()
    summary: dict[str, Any] = {"preset": cfg.preset, "run_dir": str(run_dir)}
    if tr.resumed_from is not None:
        summary["resumed_from"] = str(tr.resumed_from)
    if cfg.eval.before and tr.before is None:
        tr.before = run_eval(tr, "before")
    if tr.before is not None:
        summary["before"] = tr.before
    if cfg.eval.every and tr.step == 0 and not tr.val_start_known:  # the curve starts at the base model
        run_eval(tr, "val", samples=False, split="val")

    signalled = [False]

    def request_stop(signum, frame):  # finish the step in flight, then checkpoint, save and plot
        signalled[0] = True

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, request_stop)
    bar = Progress(cfg.train.steps, tr.step, enabled=cfg.log.progress and main)
    every = cfg.checkpoint.every
    try:
        while tr.step < cfg.train.steps and not tr.stop_requested:
            t0 = time.perf_counter()
            try:
                row, batch = tr.train_step()
            except TrainingError:
                # too many bad steps: the weights are still the last good ones (bad steps never
                # reach them), so keep them, with the optimizer, for a resume with other settings
                save_checkpoint(tr)
                raise
            tr.step += 1
            tr.train_time += time.perf_counter() - t0
            tracker.log(tr.step, row)
            if samples_file is not None and batch is not None:  # supervised steps sample nothing
                write_samples(samples_file, tr.step, batch, cfg.rollout.group_size, cfg.log.samples_per_step)
            bar.update(**{k: row[key] for k, key in PROGRESS.items() if key in row})
            if cfg.eval.every and (tr.step % cfg.eval.every == 0 or tr.step == cfg.train.steps):
                run_eval(tr, "val", samples=False, split="val")
            if tr.step in cfg.eval.heldout_at:
                score_heldout_at(tr)
            if every and (tr.step % every == 0 or tr.step == cfg.train.steps):
                save_checkpoint(tr)
            # every process stops after the same step, whichever of them got the signal
            tr.stop_requested = distributed.any_rank(signalled[0], ctx)
        if tr.stop_requested and tr.saved_step != tr.step:
            save_checkpoint(tr)
    finally:
        bar.close()
        for s, h in previous.items():
            signal.signal(s, h)
        if samples_file is not None:
            samples_file.close()
        tracker.close()
        if cfg.log.plots and main:
            plot = plot_metrics(run_dir)
            if plot:
                summary["plot"] = str(plot)
    summary["steps"] = tr.step
    summary["interrupted"] = tr.stop_requested
    summary["train_time_s"] = tr.train_time  # the steps alone, without evaluation
    from .models import save_model

    weights = distributed.full_state_dict(tr.model, ctx) if tr.sharded else None  # collective
    if main:
        save_model(tr.model, tr.tokenizer, run_dir / "model", state_dict=weights)
    distributed.barrier(ctx)
    summary["model_dir"] = str(run_dir / "model")
    if cfg.eval.after and not tr.stop_requested:
        summary["after"] = run_eval(tr, "after")
    if main:
        summary.update(eval_summary(run_dir))
    summary.update(so_far(tr))  # a resumed run's whole wall time, its peak over every piece
    summary["skipped_steps"] = tr.skipped_steps
    summary["autocast"] = "bf16" if tr.bf16 else "off"
    summary["processes"] = ctx.world
    if main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_eval(tr, tag: str, samples: bool = True, split: str = "heldout") -> dict[str, float]:
    """Evaluation at the current step on the held-out split (before and after training) or the
    validation split (tag "val", every eval.every steps): a row in evals.jsonl and, with
    `samples`, every completion in eval_<tag>.jsonl."""
    res = scored(tr, split)
    if tr.ctx.main:
        if samples:
            write_jsonl(tr.run_dir / f"eval_{tag}.jsonl", res.samples)
        log_eval(tr, tag, res.metrics)
    return res.metrics


def score_heldout_at(tr) -> None:
    """The held-out split scored at this step of training (a step of eval.heldout_at), as after it:
    greedy into heldout/step-N/eval.json and eval_samples.jsonl and, with eval.sampled = k, k
    samples a problem into sampled.json and eval_sampled.jsonl (the file names the ladder's base/
    folder uses); a row of each in evals.jsonl, tagged "heldout" and "heldout_sampled"."""
    folder = tr.run_dir / "heldout" / f"step-{tr.step}"
    for tag, name, k in (("heldout", "eval", 0), ("heldout_sampled", "sampled", tr.cfg.eval.sampled)):
        if tag == "heldout_sampled" and not k:
            continue
        res = scored(tr, "heldout", sampled=k)
        if tr.ctx.main:
            folder.mkdir(parents=True, exist_ok=True)
            write_jsonl(folder / ("eval_sampled.jsonl" if k else "eval_samples.jsonl"), res.samples)
            (folder / f"{name}.json").write_text(json.dumps({**res.metrics, "step": tr.step}, indent=2))
            log_eval(tr, tag, res.metrics)


def scored(tr, split: str, sampled: int = 0) -> EvalResult:
    """`evaluate_heldout` of `split` at the current step (or, with sampled = k, `evaluate_sampled`
    of the held-out split), every process scoring every world-th problem, the counts combined;
    metrics["time_s"] is the wall time it took."""
    t0 = time.perf_counter()
    ctx, cfg = tr.ctx, tr.cfg
    parts = (tr.eval_engine, tr.tokenizer, tr.task, tr.reward_fn, cfg)
    shard = (ctx.rank, ctx.world)
    with distributed.unsharded(tr.model):
        if sampled:
            res = evaluate_sampled(*parts, sampled, cfg.train.seed, shard=shard, step=tr.step)
        else:
            progress = cfg.log.progress and ctx.main
            res = evaluate_heldout(*parts, shard=shard, progress=progress, split=split, step=tr.step)
    res = merge_evals(distributed.gather(res, ctx))
    res.metrics["time_s"] = time.perf_counter() - t0
    return res


def log_eval(tr, tag: str, metrics: dict[str, float]) -> None:
    with open(tr.run_dir / "evals.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": tr.step, "tag": tag, **metrics}) + "\n")


def write_samples(f, step: int, batch, g: int, k: int) -> None:
    """The first completion of each of the first k groups, as JSON lines."""
    for i in range(min(k, len(batch.texts) // g)):
        j = i * g
        sample = {
            "step": step,
            "prompt": batch.examples[j].prompt,
            "answer": batch.examples[j].answer,
            "completion": batch.texts[j],
            "reward": batch.rewards[j].item(),
            **batch.extras[j],  # columns reward functions gave log_extra
        }
        f.write(json.dumps(sample) + "\n")
    f.flush()


def eval_summary(run_dir: Path) -> dict[str, Any]:
    """What the run's evaluation files say, for summary.json: "change", the held-out accuracy after
    minus before with its 95% interval (eval_before/after.jsonl, paired by problem), and "val",
    the validation curve's best and final points (evals.jsonl), which show a collapse."""
    out: dict[str, Any] = {}
    before, after = run_dir / "eval_before.jsonl", run_dir / "eval_after.jsonl"
    if before.is_file() and after.is_file():
        out["change"] = heldout_change(read_metrics(before), read_metrics(after))
    val = {r["step"]: r["accuracy"] for r in read_metrics(run_dir / "evals.jsonl") if r.get("tag") == "val"}
    if val:
        best = max(val, key=lambda k: (val[k], -k))  # the earliest of equally good steps
        last = max(val)
        out["val"] = {"best": val[best], "best_step": best, "final": val[last], "final_step": last}
    return out
