"""The parts every command needs, wired in one place: model + tokenizer, task, reward, rollout engine.

    parts = build_components(cfg)        # cfg: a Config
    ro = parts.engine.generate(...)      # the engine samples from parts.model, the live policy
    res = evaluate_heldout(parts.eval_engine, ...)   # scored with the policy's own weights

`sft2grpo train` (the Trainer), `sft2grpo eval` and the ladder's measurements all start here, so a
model, a task and a reward mean the same thing in each of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import models, rewards, rollout, tasks
from .config import Config


@dataclass
class Components:
    model: Any  # the policy (a transformers model, LoRA-wrapped when model.lora.enabled)
    tokenizer: Any
    task: tasks.Task
    reward_fn: rewards.RewardFn
    engine: rollout.Engine  # training rollouts: samples from `model` (or its rollout.dtype copy)
    eval_engine: rollout.Engine  # evaluation: always the policy's own weights, what is saved


def build_components(cfg: Config, task: tasks.Task | None = None, supervised: bool = False) -> Components:
    """Load cfg.model, cfg.task (unless `task` is given: one task for many models) and cfg.reward,
    and put cfg.rollout.engine around the model. A bad name or file stops here, before any work.
    `supervised`: the task's training examples must carry reference completions (rung 0)."""
    model, tokenizer = models.load_policy(cfg.model)
    task = task if task is not None else tasks.load_task(cfg.task, supervised)
    reward_fn = rewards.build_reward(cfg.reward, task, max_steps=cfg.train.steps)
    r = cfg.rollout
    engine = rollout.make_engine(r.engine, model, tokenizer, prepack=cfg.tuning.prepack)
    train_engine = engine
    if r.dtype != "model":
        train_engine = rollout.make_engine(r.engine, model, tokenizer, r.dtype, cfg.tuning.prepack)
    return Components(model, tokenizer, task, reward_fn, train_engine, engine)
