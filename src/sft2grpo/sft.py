"""Rung 0: supervised fine-tuning on reference completions, and the SFT -> RL pipeline.

The seed's road starts from the SFT loss, cross-entropy on given answers y_i:

    L = -1/N sum_i sum_t log pi(y_it | x_i, y_i<t)        N = completion tokens in the batch

That is the ladder's one loss (`objective.policy_loss`) with advantage A = 1 on every reference
completion, no ratio (pi / sg(pi): value 1, gradient of log pi), no clip, no KL and token-mean
aggregation (TRL's SFTTrainer averages over completion tokens alike). Rung 1 (on-policy SFT) is
the same loss on the model's own right answers; rung 0 takes the answers from the data instead.
So `SFTTrainer` is the RL `Trainer` with the rollout replaced by the task's completions: the model,
optimizer, schedule, data order, micro-batching, packing, checkpoints and evaluations are the
Trainer's and run.py's, unchanged.

    sft2grpo sft model.name=tiny task.name=rows.jsonl train.steps=3 log.output_dir=out
    sft2grpo train --config configs/run.yaml sft.steps=15     # base -> SFT (<run>/sft) -> RL (<run>/rl)

Loss on completion tokens only: the prompt (its chat template and the assistant header) is context,
never a target. Each completion ends with the tokenizer's eos token, so the model learns to stop.
"""

from __future__ import annotations

import copy
import gc
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from . import checkpoint, run
from .config import Config, ObjectiveConfig, dump_yaml
from .evaluate import heldout_change, problem_scores
from .models import chat_prompt_ids
from .rollout.batch import Batch
from .tracking import plot_metrics, read_metrics
from .trainer import Trainer, timed

__all__ = ["SFTTrainer", "reference_batch", "run_pipeline", "supervised_config", "stage_configs"]


def supervised_config(cfg: Config) -> Config:
    """cfg as rung 0 runs it: the objective's switches are A = 1's (no ratio, clip or KL, token
    mean), log-probs at temperature 1 (the model itself, not a sampling temperature), and no
    low-precision sampling copy. config.yaml records these, so the folder says what was trained."""
    c = copy.deepcopy(cfg)
    c.objective = ObjectiveConfig(
        advantage="raw", ratio="none", clip=False, beta=0.0, aggregation="token_mean"
    )
    c.rollout.temperature = 1.0
    c.rollout.dtype = "model"
    if c.task.difficulty.mode != "off":
        raise ValueError(
            "task.difficulty.mode: supervised fine-tuning reads the training rows in order; use off"
        )
    return c


def reference_batch(tokenizer, examples: list, system_prompt: str | None) -> Batch:
    """The examples' prompts and reference completions as a Batch the RL update takes: one row per
    example (its own prompt), completion tokens right-padded, mask 1 on each completion and its eos.
    Rewards are 1 (the answers are given as right); there are no engine log-probs (zeros)."""
    prompts = chat_prompt_ids(tokenizer, [e.chat for e in examples], system_prompt)  # [B] token lists
    eos = tokenizer.eos_token_id
    ids = [tokenizer(e.completion, add_special_tokens=False)["input_ids"] + [eos] for e in examples]
    B, T = len(ids), max(map(len, ids))
    completion_ids = torch.full((B, T), eos, dtype=torch.long)  # [B, T]
    mask = torch.zeros(B, T)  # [B, T]
    for i, row in enumerate(ids):
        completion_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1.0
    ones = torch.ones(B)
    return Batch(
        prompts=prompts,
        row_prompt=torch.arange(B),
        completion_ids=completion_ids,
        mask=mask,
        engine_logprobs=torch.zeros(B, T),
        rewards=ones,
        correct=ones.bool(),
        format_error=torch.zeros(B, dtype=torch.bool),
        texts=[e.completion for e in examples],
        examples=list(examples),
        extras=[{} for _ in examples],
    )


class SFTTrainer(Trainer):
    """Rung 0. `train.prompts_per_step` reference completions a step, `train.mu` passes over them
    (1 by default), everything else as `Trainer`."""

    supervised = True  # the task must give every training example a completion

    def __init__(self, cfg: Config, run_dir: Path, resume_from: Path | None = None):
        super().__init__(supervised_config(cfg), run_dir, resume_from)
        # a file of prompts and completions without answers: nothing to score accuracy against,
        # so the held-out and validation numbers are the completions' loss instead
        if not all(e.answer for e in self.task.eval + self.task.val):
            e = self.cfg.eval
            if e.before or e.after or e.every:
                warnings.warn(
                    f"task {self.cfg.task.name}: held-out rows without an answer; reporting the "
                    "held-out loss instead of accuracy",
                    stacklevel=2,
                )
            e.before = e.after = False
            e.every = 0

    def train_step(self) -> tuple[dict[str, Any], None]:
        """One step: the next reference completions, one update with A = 1 on each."""
        self.times = {}
        with timed(self.times, "step"):
            examples, _, _ = self.draw()
            batch = reference_batch(self.tokenizer, examples, self.cfg.model.system_prompt)
            with timed(self.times, "update"):
                sums, maxima = self.update(batch, batch.rewards, None, self.micro_batches(batch))
        tokens = batch.mask.sum().item()
        row = {
            # the cross-entropy, mean -log pi per completion token. The update's own loss value is the
            # surrogate's, -1 (ratio pi / sg(pi) = 1 times A = 1), with the cross-entropy's gradient;
            # the batch's "engine" log-probs are zeros, so the update's measured gap |log pi - 0| is it
            "loss": sums["logprob_gap_mean"],
            "completion_len": tokens / len(examples),
            "tokens_per_s": tokens / max(self.times["update"], 1e-9),  # trained tokens
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": maxima["grad_norm"],
            "skipped_steps": self.skipped_steps,
            "peak_mem_mb": run.peak_memory_mb(),
            **{f"time_{k}": v for k, v in self.times.items()},
        }
        return row, None

    def fit(self) -> dict[str, Any]:
        """`run.fit`, plus the held-out completions' loss before and after (when they have
        completions): the number a file without answers is judged by."""
        with_completions = [e for e in self.task.eval if e.completion]
        before = None
        if with_completions and self.step == 0:
            before = heldout_loss(self, with_completions)
        summary = run.fit(self)
        if with_completions and not summary.get("interrupted"):
            summary["heldout_loss"] = {"before": before, "after": heldout_loss(self, with_completions)}
            if self.ctx.main:
                (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def heldout_loss(tr: SFTTrainer, examples: list) -> float:
    """Mean -log pi per completion token of `examples`' reference completions under the policy."""
    tr.model.eval()
    batch = reference_batch(tr.tokenizer, examples, tr.cfg.model.system_prompt)
    lp = tr.no_grad_logprobs(tr.model, batch, tr.micro_batches(batch))  # [B, T], zero-padded
    return -(lp * batch.mask).sum().item() / max(batch.mask.sum().item(), 1.0)


# -- the pipeline: base -> SFT -> RL --------------------------------------------------------------


def stage_configs(cfg: Config, run_dir: Path) -> tuple[Config, Config]:
    """The two stages of a pipeline run (cfg.sft.steps > 0): the supervised stage, whose train keys
    come from the sft section, and the RL stage, which starts from the first stage's model and
    scores "before" with the first stage's "after" (the same model, so not evaluated twice)."""
    s = copy.deepcopy(cfg)
    s.train.steps, s.train.lr, s.train.prompts_per_step = cfg.sft.steps, cfg.sft.lr, cfg.sft.batch_size
    s.train.schedule, s.train.warmup_steps, s.train.mu = cfg.sft.schedule, cfg.sft.warmup_steps, 1
    s.log.output_dir = str(run_dir / "sft")
    r = copy.deepcopy(cfg)
    r.sft.steps = 0  # its config.yaml is the RL stage alone, from the first stage's model
    r.model.name = str(run_dir / "sft" / "model")
    r.eval.before = False
    r.log.output_dir = str(run_dir / "rl")
    return s, r


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
        print(f"# stage 1/2: supervised fine-tuning, {cfg.sft.steps} steps -> {sft_dir}", file=sys.stderr)
        if run_stage(SFTTrainer, sft_cfg, sft_dir, started=started).get("interrupted"):
            return {"run_dir": str(run_dir), "interrupted": True, "stage": "sft"}
        gc.collect()  # the first stage's trainer (hooks make reference cycles) before the second's
    if not finished(rl_dir):
        print(f"# stage 2/2: {cfg.preset}, {cfg.train.steps} steps -> {rl_dir}", file=sys.stderr)
        if run_stage(Trainer, rl_cfg, rl_dir, carry_from=sft_dir).get("interrupted"):
            return {"run_dir": str(run_dir), "interrupted": True, "stage": "rl"}
    summary = pipeline_summary(run_dir)
    if cfg.log.plots:
        plot = plot_metrics(run_dir)  # both stages on one axis, the boundary marked
        if plot:
            summary["plot"] = str(plot)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_stage(
    cls, cfg: Config, stage_dir: Path, carry_from: Path | None = None, started=None
) -> dict[str, Any]:
    """Build, run and drop one stage's trainer (so the first stage's model and optimizer are freed
    before the second's are built). `carry_from`: the previous stage's folder, whose held-out
    evaluation "after" is this stage's "before" (the same model), unless this stage resumes.
    `started()` is called once the trainer is built: bad input has stopped the run before it."""
    ckpt = fresh_or_checkpoint(stage_dir)
    tr = cls(cfg, stage_dir, resume_from=ckpt)
    if started is not None:
        started()
    if ckpt is None and carry_from is not None:
        carry_scores(carry_from, stage_dir, tr)
    return tr.fit()


def carry_scores(earlier: Path, stage_dir: Path, tr: Trainer) -> None:
    """The earlier stage's final model is this stage's start, so its scores carry over instead of
    being computed again: its held-out "after" becomes this stage's "before" (eval_before.jsonl),
    and its last validation row this stage's step-0 row of evals.jsonl."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    after = json.loads((earlier / "summary.json").read_text()).get("after")
    if after is not None:
        tr.before = after
        shutil.copyfile(earlier / "eval_after.jsonl", stage_dir / "eval_before.jsonl")
    val = [r for r in read_metrics(earlier / "evals.jsonl") if r.get("tag") == "val"]
    if val and tr.cfg.eval.every:
        last = max(val, key=lambda r: r["step"])
        with open(stage_dir / "evals.jsonl", "w", encoding="utf-8") as f:
            f.write(json.dumps({**last, "step": 0}) + "\n")
        tr.val_start_known = True


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
    problems), from the stages' evaluation files."""
    files = {
        "base": run_dir / "sft" / "eval_before.jsonl",
        "sft": run_dir / "sft" / "eval_after.jsonl",
        "rl": run_dir / "rl" / "eval_after.jsonl",
    }
    scores = {k: read_metrics(p) for k, p in files.items() if p.is_file()}
    out: dict[str, Any] = {"run_dir": str(run_dir), "model_dir": str(run_dir / "rl" / "model")}
    per_problem = {k: problem_scores(v) for k, v in scores.items()}
    out["accuracy"] = {k: sum(v.values()) / max(1, len(v)) for k, v in per_problem.items()}
    out["changes"] = {
        f"{a}->{b}": heldout_change(scores[a], scores[b])
        for a, b in (("base", "sft"), ("sft", "rl"), ("base", "rl"))
        if a in scores and b in scores
    }
    for stage in ("sft", "rl"):
        s = run_dir / stage / "summary.json"
        if s.is_file():
            out[stage] = json.loads(s.read_text())
    return out


def format_pipeline(s: dict[str, Any]) -> str:
    """The stage-by-stage table `sft2grpo train` prints at the end of a pipeline run."""
    names = {"base": "base model", "sft": "after SFT", "rl": "after RL"}
    lines = [f"run: {s['run_dir']}", "held-out accuracy (greedy):"]
    for k, v in s["accuracy"].items():
        lines.append(f"  {names[k]:20s} {100 * v:7.1f}%")
    for key, c in s["changes"].items():
        a, b = key.split("->")
        lo, hi = (100 * x for x in c["ci95"])
        lines.append(
            f"  {names[a]} -> {names[b]}: {100 * c['diff']:+.1f} points [{lo:+.1f}, {hi:+.1f}] "
            f"({c['problems']} problems)"
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


# -- reference completions for tasks that cannot write them: rejection sampling, offline ----------


def sample_completions(cfg: Config, output: Path, n: int = 8, keep: int = 1, problems: int = 0) -> dict:
    """Draw `n` completions of each training problem from cfg.model (rollout.temperature, top_p,
    top_k, max_new_tokens), keep up to `keep` distinct ones the reward marks right, and write them
    as prompt / completion / answer rows to `output` (JSONL), with the task's held-out problems
    (prompt and answer, no completion) in its `.eval.jsonl` sibling, so that `sft2grpo sft
    task.name=<output>` trains on the kept answers and is scored on the task's own held-out split.
    `problems` > 0 takes only the first that many training problems. Returns counts."""
    from .components import build_components
    from .rollout.base import decode_completions, unpadded_ids
    from .tasks import eval_sibling
    from .tracking import Progress
    from .trainer import prompt_generator, seed_everything

    seed_everything(cfg.train.seed)
    parts = build_components(cfg)
    examples = parts.task.train[:problems] if problems > 0 else parts.task.train
    r, per_call = cfg.rollout, max(1, cfg.eval.batch_size // n)  # rows per generate call near batch_size
    rows, solved = [], 0
    bar = Progress(len(examples), enabled=cfg.log.progress, desc="sample")
    for start in range(0, len(examples), per_call):
        chunk = examples[start : start + per_call]
        prompts = chat_prompt_ids(parts.tokenizer, [e.chat for e in chunk], cfg.model.system_prompt)
        ro = parts.eval_engine.generate(
            prompts,
            n=n,
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            stop=r.stop or None,
            generator=[prompt_generator(cfg.train.seed, start + i) for i in range(len(chunk))],
        )  # rows prompt-major: chunk[0] x n, chunk[1] x n, ...
        texts = decode_completions(parts.tokenizer, ro.completion_ids, ro.mask)
        owners = [e for e in chunk for _ in range(n)]
        res = parts.reward_fn(texts, owners, completion_ids=unpadded_ids(ro.completion_ids, ro.mask))
        for i, e in enumerate(chunk):
            right = [texts[i * n + j] for j in range(n) if bool(res.correct[i * n + j])]
            kept = list(dict.fromkeys(t.strip() for t in right if t.strip()))[:keep]
            solved += bool(kept)
            rows += [{"prompt": e.chat, "completion": t, "answer": e.answer} for t in kept]
            bar.update(kept=len(rows))
    bar.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    held = [{"prompt": e.chat, "answer": e.answer} for e in parts.task.eval]
    for path, data in ((output, rows), (eval_sibling(output), held)):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(x) + "\n" for x in data), encoding="utf-8")
        tmp.replace(path)  # whole or not at all
    return {"problems": len(examples), "solved": solved, "rows": len(rows), "heldout": len(held)}
