"""Rung 0: supervised fine-tuning on reference completions (given rows).

The seed's road starts from the SFT loss, cross-entropy on given answers y_i:

    L = -1/N sum_i sum_t log pi(y_it | x_i, y_i<t)        N = completion tokens in the batch

That is the ladder's one loss (`objective.policy_loss`) with advantage A = 1 on every reference
completion, no ratio (pi / sg(pi): value 1, gradient of log pi), no clip, no KL and token-mean
aggregation (TRL's SFTTrainer averages over completion tokens alike), in all but its value;
`objective.sft_loss` computes it as the cross-entropy itself. Rung 1 (on-policy SFT) is the same
gradient on the model's own right answers; rung 0 takes the answers from the data instead.

A rung-0 run is the one `Trainer` with `train.rows: given`: each step's rows are the task's
reference completions (`rollout.batch.Given`) and its update is the same call as RL's
(`Trainer.update`), so model, optimizer, schedule, data order, micro-batching, packing,
checkpoints and evaluations are shared. This module holds what is rung 0's own: the config it
runs with and the held-out loss of a file without answers.

    sft2grpo sft model.name=tiny task.name=rows.jsonl train.steps=3 log.output_dir=out

Loss on completion tokens only: the prompt (its chat template and the assistant header) is context,
never a target. Each completion ends with the tokenizer's eos token, so the model learns to stop.
The base -> SFT -> RL road is pipeline.py; offline rejection sampling is sample.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from . import run
from .config import Config, ObjectiveConfig
from .trainer import Trainer

__all__ = ["fit_supervised", "heldout_loss", "supervised_config"]


def supervised_config(cfg: Config) -> Config:
    """cfg as rung 0 runs it: given rows (`train.rows: given`); the objective section records the
    switches whose gradient the cross-entropy has (A = 1, no ratio, clip or KL, token mean);
    log-probs at temperature 1 (the model itself, not a sampling temperature); no low-precision
    sampling copy. config.yaml records these, so the folder says what was trained."""
    c = copy.deepcopy(cfg)
    c.train.rows = "given"
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


def fit_supervised(tr: Trainer, state: run.RunState) -> dict[str, Any]:
    """`run.fit` of a rung-0 trainer, plus the held-out completions' loss before and after (when
    they have completions): the number a file without answers is judged by."""
    with_completions = [e for e in tr.task.eval if e.completion]
    before = None
    if with_completions and state.step == 0:
        before = heldout_loss(tr, with_completions)
    summary = run.fit(tr, state)
    if with_completions and not summary.get("interrupted"):
        summary["heldout_loss"] = {"before": before, "after": heldout_loss(tr, with_completions)}
        if tr.ctx.main:
            (tr.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def heldout_loss(tr: Trainer, examples: list) -> float:
    """Mean -log pi per completion token of `examples`' reference completions under the policy."""
    tr.model.eval()
    given = tr.given_of(examples)
    lp = tr.no_grad_logprobs(tr.model, given, tr.micro_batches(given))  # [B, T], zero-padded
    return -(lp * given.mask).sum().item() / max(given.mask.sum().item(), 1.0)
