"""Run management around the training step: folders, logs, signals, checkpoints, evaluation, summary.

    trainer = Trainer(cfg, make_run_dir(cfg))
    state = start(trainer, resume_from=None)   # a RunState: fresh, or a checkpoint's
    summary = fit(trainer, state)              # what `trainer.fit()` and `sft2grpo train` call

The loop owns the run's state (`RunState`: step, data order and position, RNG states, counters,
carried scores, timings) and hands it to `trainer.train_step(state)`. A run survives: every
`checkpoint.every` steps, on SIGINT/SIGTERM and when bad steps stop it, that state with the model,
optimizer and scheduler goes to an atomic checkpoint (`save_checkpoint`, `checkpoint.py`), and
`start(trainer, resume_from=...)` continues from it bit for bit on CPU. Only rank 0 writes logs,
plots and models; every process takes part in the collectives.

Nothing here knows what a step computes: `fit` calls `trainer.train_step(state)` and logs the row
it returns.
"""

from __future__ import annotations

import json
import random
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint, distributed
from .config import Config, dump_yaml, to_dict
from .difficulty import DifficultySampler
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


# -- the run's state, and checkpoints ------------------------------------------------------------


@dataclass
class RunState:
    """Where a run stands: what an exact resume needs besides the model, optimizer and scheduler.
    The loop (`fit`) owns it and hands it to each `trainer.train_step(state)`, which moves the data
    position and the counters; a checkpoint is this, plus the model, optimizer and scheduler."""

    data_rng: np.random.Generator  # draws each epoch's order of the training examples
    difficulty: DifficultySampler | None = None  # task.difficulty.mode=adaptive: draws from buckets
    step: int = 0
    order: list[int] = field(default_factory=list)  # this epoch's permutation of the training examples
    pos: int = 0  # the next index into `order`
    drawn: int = 0  # prompts drawn so far (all processes together); numbers each prompt's seed
    bad_steps: int = 0  # NaN/inf steps in a row (train.max_bad_steps of them stop the run)
    skipped_steps: int = 0  # NaN/inf steps in all, never applied
    before: dict[str, float] | None = None  # the held-out evaluation before training
    before_sampled: dict[str, float] | None = None  # and its sampled accuracy (eval.draws)
    # the validation score at step 0 is already in evals.jsonl (a pipeline's RL stage: the same
    # model as the SFT stage's last validation row), so it is not scored again
    val_start_known: bool = False
    train_time: float = 0.0  # seconds spent in steps, over every piece of the run
    # the pieces of the run before this process (a resume): wall seconds, peak memory MiB
    earlier: dict[str, float] = field(default_factory=lambda: {"wall_time_s": 0.0, "peak_mem_mb": 0.0})
    piece_start: float = field(default_factory=time.time)  # when this process's piece started
    resumed_from: Path | None = None  # the checkpoint this piece started from (not saved)

    def so_far(self) -> dict[str, float]:
        """The run's wall seconds and peak memory (MiB) up to now, over every piece of it."""
        return {
            "wall_time_s": self.earlier["wall_time_s"] + time.time() - self.piece_start,
            "peak_mem_mb": max(self.earlier["peak_mem_mb"], peak_memory_mb()),
        }

    def state_dict(self) -> dict[str, Any]:
        """The state, with every global RNG's, as trainer_state.pt keeps it."""
        return {
            "step": self.step,
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "data": {
                "rng": self.data_rng.bit_generator.state,
                "order": self.order,
                "pos": self.pos,
                "drawn": self.drawn,
            },
            "counters": {"bad_steps": self.bad_steps, "skipped_steps": self.skipped_steps},
            "before": self.before,
            "before_sampled": self.before_sampled,
            "train_time": self.train_time,
            "earlier": self.so_far(),
            "difficulty": None if self.difficulty is None else self.difficulty.state_dict(),
        }

    def load_state_dict(self, st: dict[str, Any], path: Path | str = "checkpoint") -> None:
        """Restore `state_dict()`'s output (and the global RNGs); `path` names it in errors."""
        rng = st["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.data_rng.bit_generator.state = st["data"]["rng"]
        self.order, self.pos, self.drawn = st["data"]["order"], st["data"]["pos"], st["data"]["drawn"]
        if self.difficulty is not None:
            if st.get("difficulty") is None:
                raise checkpoint.CheckpointError(
                    f"{path}: no difficulty-filter state; was task.difficulty.mode changed since it was saved?"
                )
            try:
                self.difficulty.load_state_dict(st["difficulty"])
            except ValueError as e:
                raise checkpoint.CheckpointError(
                    f"{path}: {e}; were task.difficulty.buckets changed?"
                ) from None
        self.bad_steps = st["counters"]["bad_steps"]
        self.skipped_steps = st["counters"]["skipped_steps"]
        self.before, self.train_time = st["before"], st["train_time"]
        self.before_sampled = st.get("before_sampled")  # checkpoints before 2026-12-07 lack it
        self.earlier = st.get("earlier", self.earlier)  # checkpoints before 2026-11-30 lack it
        self.step = st["step"]


def start(tr, resume_from: Path | None = None) -> RunState:
    """The state a run starts from: fresh (the data order seeded by train.seed), or the checkpoint
    folder `resume_from`'s, whose weights, optimizer and scheduler go into `tr` as well."""
    cfg = tr.cfg
    d = cfg.task.difficulty
    sizes = [len(b) for b in tr.task.buckets]
    state = RunState(
        data_rng=np.random.default_rng(cfg.train.seed),
        difficulty=DifficultySampler(sizes, cfg.train.seed, d.ema, d.prior, d.floor) if sizes else None,
    )
    if resume_from is not None:
        load_checkpoint(tr, state, Path(resume_from))
    return state


def save_checkpoint(tr, state: RunState) -> Path:
    """Every process calls this. A checkpoint is the state, the optimizer and scheduler
    (trainer_state.pt) and the model. Without FSDP2 the weights are the same everywhere and rank 0
    writes them as an HF folder (LoRA: the adapter alone); with FSDP2 each process writes its
    shards of weights and optimizer with torch.distributed.checkpoint."""

    def write_model(folder: Path) -> None:
        tr.model.save_pretrained(folder)
        tr.tokenizer.save_pretrained(folder)

    everything = {
        **state.state_dict(),
        "optimizer": None if tr.sharded else tr.optimizer.state_dict(),
        "scheduler": tr.scheduler.state_dict(),
    }
    return checkpoint.save(
        tr.run_dir,
        state.step,
        None if tr.sharded else write_model,
        everything,
        tr.cfg.checkpoint.keep,
        summary={"skipped_steps": state.skipped_steps, "preset": tr.cfg.preset},
        ctx=tr.ctx,
        write_shards=(lambda f: checkpoint.save_sharded(tr.model, tr.optimizer, f)) if tr.sharded else None,
    )


def load_checkpoint(tr, state: RunState, path: Path) -> None:
    """`save_checkpoint`'s inverse: the model, optimizer and scheduler into `tr`, the rest into `state`."""
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
    state.load_state_dict(st, path)
    state.resumed_from = path


# -- the run ----------------------------------------------------------------------------------------


def fit(tr, state: RunState) -> dict[str, Any]:
    """Run `tr` from `state` to train.steps (or to a stop signal), evaluating and checkpointing on
    the way; then save the model, evaluate it and write summary.json. Returns the summary.

    From `tr` this reads only its parts (cfg, run_dir, ctx, model, tokenizer, optimizer, scheduler,
    task, reward_fn, eval_engine) and calls `tr.train_step(state)`. Writes into the run folder only
    from here on (a failed start leaves it untouched). A resumed run first cuts its logs back to the
    checkpoint's step, so each step is logged once.
    """
    cfg, run_dir, ctx = tr.cfg, tr.run_dir, tr.ctx
    main = ctx.main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if state.resumed_from is not None:
            for name in LOGS:
                truncate_jsonl(run_dir / name, state.step)
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
            resume_step=state.step,
        )
    samples_file = open(run_dir / "samples.jsonl", "a", encoding="utf-8") if main else None  # noqa: SIM115
    state.piece_start = time.time()
    summary: dict[str, Any] = {"preset": cfg.preset, "run_dir": str(run_dir)}
    if state.resumed_from is not None:
        summary["resumed_from"] = str(state.resumed_from)
    if cfg.eval.before and state.before is None:
        state.before = run_eval(tr, state, "before")
    if cfg.eval.before and cfg.eval.draws and state.before_sampled is None:
        state.before_sampled = run_eval(tr, state, "before_sampled", draws=cfg.eval.draws)
    if state.before is not None:
        summary["before"] = state.before
    if state.before_sampled is not None:
        summary["before_sampled"] = state.before_sampled
    if cfg.eval.every and state.step == 0 and not state.val_start_known:  # the curve starts at the base model
        val_eval(tr, state)

    signalled = [False]

    def request_stop(signum, frame):  # finish the step in flight, then checkpoint, save and plot
        signalled[0] = True

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, request_stop)
    bar = Progress(cfg.train.steps, state.step, enabled=cfg.log.progress and main)
    every = cfg.checkpoint.every
    saved_step, stop = (state.step if state.resumed_from is not None else -1), False
    try:
        while state.step < cfg.train.steps and not stop:
            t0 = time.perf_counter()
            try:
                row, batch = tr.train_step(state)
            except TrainingError:
                # too many bad steps: the weights are still the last good ones (bad steps never
                # reach them), so keep them, with the optimizer, for a resume with other settings
                save_checkpoint(tr, state)
                raise
            state.step += 1
            state.train_time += time.perf_counter() - t0
            tracker.log(state.step, row)
            if samples_file is not None and batch is not None:  # supervised steps sample nothing
                write_samples(
                    samples_file, state.step, batch, cfg.rollout.group_size, cfg.log.samples_per_step
                )
            bar.update(**{k: row[key] for k, key in PROGRESS.items() if key in row})
            if cfg.eval.every and (state.step % cfg.eval.every == 0 or state.step == cfg.train.steps):
                val_eval(tr, state)
            if state.step in cfg.eval.heldout_at:
                score_heldout_at(tr, state)
            if every and (state.step % every == 0 or state.step == cfg.train.steps):
                save_checkpoint(tr, state)
                saved_step = state.step
            # every process stops after the same step, whichever of them got the signal
            stop = distributed.any_rank(signalled[0], ctx)
        if stop and saved_step != state.step:
            save_checkpoint(tr, state)
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
    summary["steps"] = state.step
    summary["interrupted"] = stop
    summary["train_time_s"] = state.train_time  # the steps alone, without evaluation
    from .models import save_model

    weights = distributed.full_state_dict(tr.model, ctx) if tr.sharded else None  # collective
    if main:
        save_model(tr.model, tr.tokenizer, run_dir / "model", state_dict=weights)
    distributed.barrier(ctx)
    summary["model_dir"] = str(run_dir / "model")
    if cfg.eval.after and not stop:
        summary["after"] = run_eval(tr, state, "after")
        if cfg.eval.draws:
            summary["after_sampled"] = run_eval(tr, state, "after_sampled", draws=cfg.eval.draws)
    if main:
        summary.update(eval_summary(run_dir))
    summary.update(state.so_far())  # a resumed run's whole wall time, its peak over every piece
    summary["skipped_steps"] = state.skipped_steps
    summary["autocast"] = "bf16" if tr.bf16 else "off"
    summary["processes"] = ctx.world
    if main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_eval(
    tr, state: RunState, tag: str, samples: bool = True, split: str = "heldout", draws: int = 0
) -> dict[str, float]:
    """Evaluation at the current step on the held-out split (before and after training) or the
    validation split (tag "val", every eval.every steps), greedy or, with `draws`, that many
    answers a held-out problem (sampled accuracy): a row in evals.jsonl and, with `samples`, every
    completion in eval_<tag>.jsonl."""
    res = scored(tr, state.step, split, sampled=draws)
    if tr.ctx.main:
        if samples:
            write_jsonl(tr.run_dir / f"eval_{tag}.jsonl", res.samples)
        log_eval(tr.run_dir, state.step, tag, res.metrics)
    return res.metrics


def val_eval(tr, state: RunState) -> None:
    """The validation split at this step: greedy (tag "val") and, with eval.val_draws = k, sampled
    accuracy from k answers a problem (tag "val_sampled"), what a setting is chosen on."""
    run_eval(tr, state, "val", samples=False, split="val")
    if tr.cfg.eval.val_draws:
        run_eval(tr, state, "val_sampled", samples=False, split="val", draws=tr.cfg.eval.val_draws)


def score_heldout_at(tr, state: RunState) -> None:
    """The held-out split scored at this step of training (a step of eval.heldout_at), as after it:
    greedy into heldout/step-N/eval.json and eval_samples.jsonl and, with eval.heldout_at_draws = k, k
    samples a problem into sampled.json and eval_sampled.jsonl (the file names the ladder's base/
    folder uses); a row of each in evals.jsonl, tagged "heldout" and "heldout_sampled"."""
    step = state.step
    folder = tr.run_dir / "heldout" / f"step-{step}"
    for tag, name, k in (
        ("heldout", "eval", 0),
        ("heldout_sampled", "sampled", tr.cfg.eval.heldout_at_draws),
    ):
        if tag == "heldout_sampled" and not k:
            continue
        res = scored(tr, step, "heldout", sampled=k)
        if tr.ctx.main:
            folder.mkdir(parents=True, exist_ok=True)
            write_jsonl(folder / ("eval_sampled.jsonl" if k else "eval_samples.jsonl"), res.samples)
            (folder / f"{name}.json").write_text(json.dumps({**res.metrics, "step": step}, indent=2))
            log_eval(tr.run_dir, step, tag, res.metrics)


def scored(tr, step: int, split: str, sampled: int = 0) -> EvalResult:
    """`evaluate_heldout` of `split` at training step `step` (or, with sampled = k,
    `evaluate_sampled` of that split), every process scoring every world-th problem, the
    counts combined; metrics["time_s"] is the wall time it took."""
    t0 = time.perf_counter()
    ctx, cfg = tr.ctx, tr.cfg
    parts = (tr.eval_engine, tr.tokenizer, tr.task, tr.reward_fn, cfg)
    shard = (ctx.rank, ctx.world)
    with distributed.unsharded(tr.model):
        if sampled:
            res = evaluate_sampled(*parts, sampled, cfg.train.seed, shard=shard, step=step, split=split)
        else:
            progress = cfg.log.progress and ctx.main
            res = evaluate_heldout(*parts, shard=shard, progress=progress, split=split, step=step)
    res = merge_evals(distributed.gather(res, ctx))
    res.metrics["time_s"] = time.perf_counter() - t0
    return res


def log_eval(run_dir: Path, step: int, tag: str, metrics: dict[str, float]) -> None:
    with open(run_dir / "evals.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "tag": tag, **metrics}) + "\n")


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
    minus before with its 95% interval (eval_before/after.jsonl, paired by problem), the same of
    sampled accuracy as "change_sampled" (eval.draws), and "val",
    the validation curve's best and final points (evals.jsonl), which show a collapse."""
    out: dict[str, Any] = {}
    for key, suffix in (("change", ""), ("change_sampled", "_sampled")):
        before, after = run_dir / f"eval_before{suffix}.jsonl", run_dir / f"eval_after{suffix}.jsonl"
        if before.is_file() and after.is_file():
            out[key] = heldout_change(read_metrics(before), read_metrics(after))
    val = {r["step"]: r["accuracy"] for r in read_metrics(run_dir / "evals.jsonl") if r.get("tag") == "val"}
    if val:
        best = max(val, key=lambda k: (val[k], -k))  # the earliest of equally good steps
        last = max(val)
        out["val"] = {"best": val[best], "best_step": best, "final": val[last], "final_step": last}
    return out
