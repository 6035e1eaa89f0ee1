"""The training step, written as the data flow, so it can be read top to bottom once:

    examples -> prompts -> engine.generate -> completions -> reward_fn -> rewards
      -> pi_ref log-probs -> advantages -> mu passes of policy_loss (pi_old from pass 0) -> optimizer

`Trainer.train_step(state)` is that chain with one visible call per arrow; `sample` is its first
half (one round of rollouts), `update` its last (the optimisation passes). The seed's ladder is the
same loop with other switches: which advantage, ratio, clip and KL the loss uses is data (a preset
in configs/, turned into `policy_loss`'s keyword scalars by `config.loss_switches`), not code here.

SFT and RL are one objective here as in the seed. A step's rows are of two kinds (rollout/batch.py):
sampled rows (`Batch`: the policy's answers, their rewards, their group) go through the ladder's
surrogate, `objective.policy_loss`; given rows (`Given`: reference completions, with no reward and
no engine log-probs) through their cross-entropy, `objective.sft_loss`. `update` takes either kind
or both. Rung 0 (`train.rows: given`, `supervised_step`) is a step whose rows are all given.

What this loop keeps from GRPO (DeepSeekMath) and the seed document:
- a group of `rollout.group_size` sampled answers per question, scored by a verifier (rewards.py),
  with the group as the baseline (no value model);
- `train.mu` passes over each batch of rollouts, one optimizer step per pass, with gradients
  accumulated over micro-batches; the loss is normalised by the whole batch's counts, so the
  micro-batch size never changes the gradient (tests/test_trainer.py checks this against autograd);
- the KL to a frozen reference, in the loss or in the reward, when beta > 0.

What it leaves out, on purpose:
- no second copy of the policy for pi_old. Pass 0 runs before any optimizer step of this batch, so
  the log-probs its forward computes *are* pi_old; they are kept (detached) for passes 1..mu-1. With
  mu = 1, or a ratio that ignores pi_old (`none`) and no TIS, nothing is kept at all;
- no reference model when beta = 0 (the seed's last variant), and no copy with LoRA: the reference
  is the policy with its adapter switched off. pi_ref is computed once per step;
- the engine's own log-probs are never used as pi_old (vLLM and bf16 decoding round differently);
  they enter only through `objective.tis_cap` and the logged `logprob_gap_max` / `_mean`;
- no asynchronous rollouts and no replay buffer: a batch is sampled, used for mu passes, dropped.

Around the step: rollout bookkeeping and dynamic sampling (DAPO) are in rollout/batch.py; the
online difficulty filter that picks which problems a step draws (`task.difficulty`) in
difficulty.py; run management (folders, logs, signals, checkpoints, evaluation, the final save) in
run.py.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed, objective, run
from .components import build_components
from .config import Config, loss_switches
from .models import chat_prompt_ids, completion_logprobs, has_fast_bf16, make_reference, unwrap
from .rollout.base import SamplingParams, decode_completions, unpadded_ids
from .rollout.batch import Batch, Given, dynamic_sampling, given_rows, with_guides
from .run import RunState, TrainingError
from .tasks import epoch_order

__all__ = ["Trainer", "TrainingError", "lr_lambda", "prompt_generator"]


class Trainer:
    """One run's parts: the model, the optimizer, the data and how a step uses them.
    `train_step(state)` is one step; `fit()` runs them all (run.py, which owns the `RunState`)."""

    def __init__(self, cfg: Config, run_dir: Path):
        """Builds everything a run needs; writes nothing. Where the run stands (its step, data
        position, RNG states) is not here: `run.start` makes or loads that `RunState`."""
        self.cfg, self.run_dir = cfg, run_dir
        # which rows a step trains on: the policy's own answers (RL, rungs 1-5) or the task's
        # reference completions (rung 0, SFT); the update takes either kind (`update`)
        self.given_only = cfg.train.rows == "given"
        self.ctx = ctx = distributed.setup()  # world size 1 without torchrun
        if cfg.train.prompts_per_step % ctx.world:
            raise ValueError(
                f"train.prompts_per_step={cfg.train.prompts_per_step} must be a multiple of the "
                f"number of processes ({ctx.world}): each process takes whole groups"
            )
        if ctx.enabled and cfg.train.parallel == "fsdp2" and cfg.model.lora.enabled:
            raise ValueError("train.parallel=fsdp2 with model.lora.enabled=true is not supported; use ddp")
        seed_everything(cfg.train.seed)
        parts = build_components(cfg, supervised=self.given_only)
        self.model, self.tokenizer, self.task = parts.model, parts.tokenizer, parts.task
        self.reward_fn, self.engine, self.eval_engine = parts.reward_fn, parts.engine, parts.eval_engine
        self.device = next(self.model.parameters()).device
        if self.given_only and not all(e.answer for e in self.task.eval + self.task.val):
            # a file of prompts and completions without answers: nothing to score accuracy
            # against, so the held-out number is the completions' loss instead (sft.heldout_loss)
            e = cfg.eval
            if e.before or e.after or e.every:
                warnings.warn(
                    f"task {cfg.task.name}: held-out rows without an answer; reporting the "
                    "held-out loss instead of accuracy",
                    stacklevel=2,
                )
            e.before = e.after = False
            e.every = 0
        if cfg.eval.every and not self.task.val:
            raise ValueError(
                f"eval.every={cfg.eval.every} evaluates on the validation split, but task "
                f"{cfg.task.name} has none; set task.val_size to hold out that many training rows"
            )
        # "auto" stays in the config (a resumed run resolves it again, on its own machine);
        # summary.json records what this run used
        native = has_fast_bf16(self.device)
        self.bf16 = cfg.train.autocast == "bf16" or (cfg.train.autocast == "auto" and native)
        if cfg.train.autocast == "bf16" and not native:
            warnings.warn(
                f"train.autocast=bf16 on {self.device.type} without native bfloat16 (AMX/AVX512-BF16 "
                "or a bf16 GPU) is emulated and several times slower than off; use auto or off",
                stacklevel=2,
            )
        self.reference = make_reference(self.model) if cfg.objective.beta > 0 else None
        if cfg.train.gradient_checkpointing:  # after the reference copy, which never goes backward
            m = unwrap(self.model)  # newer transformers name it activation checkpointing
            enable = getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        # The policy's log-probs with gradient go through this module: DDP-wrapped, or over FSDP2 shards.
        self.policy_logprobs = distributed.parallelize(
            self.model, cfg.train.parallel, cfg.rollout.temperature, ctx, cfg.train.packing
        )
        self.sharded = distributed.is_fsdp(self.model)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=cfg.train.lr,
            betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
            weight_decay=cfg.train.weight_decay,
            # one kernel for all parameters instead of one per tensor (docs/benchmarks.md);
            # FSDP2's sharded parameters need the default
            fused=not self.sharded and self.device.type in ("cpu", "cuda"),
        )
        if cfg.rollout.dtype != "model":  # the sampler's low-precision copy follows every update
            self.optimizer.register_step_post_hook(lambda *_: self.engine.weights_changed())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_lambda(cfg.train.schedule, cfg.train.warmup_steps, cfg.train.steps * cfg.train.mu),
        )
        self.switches = loss_switches(cfg.objective, cfg.rollout.max_new_tokens)
        self.sampling = SamplingParams.of(cfg.rollout, n=cfg.rollout.group_size)  # a group per prompt
        # this step's scratch, reset by train_step: seconds per phase, completions whose reward
        # call failed, and [right, answers] per difficulty bucket
        self.times: dict[str, float] = {}
        self.reward_faults = 0
        self.bucket_counts = np.zeros((2, len(self.task.buckets)))

    def fit(self, resume_from: Path | None = None) -> dict[str, Any]:
        """Run to `train.steps` (or to a stop signal) from the start or from the checkpoint folder
        `resume_from`; returns the summary (`run.start`, `run.fit`)."""
        return run.fit(self, run.start(self, resume_from))

    # -- the step, in the order the data flows ----------------------------------------------------

    def draw(self, state: RunState) -> tuple[list, list[torch.Generator], list[int] | None]:
        """This process's share of the next `train.prompts_per_step` examples, one sampling
        generator per prompt, and each prompt's difficulty bucket (None without the filter). Every
        process walks the same data order (or makes the same draws from the buckets) and takes its
        own slice, and a prompt's generator is seeded by (train.seed, its number in the run), so a
        prompt gets the same samples whatever the number of processes (and on resume). Moves the
        data position in `state`."""
        p, ctx = self.cfg.train.prompts_per_step, self.ctx
        k = p // ctx.world
        first = state.drawn + ctx.rank * k
        examples, buckets = [], None
        if state.difficulty is not None:
            picks = state.difficulty.draw(p)  # [(bucket, index)] * p
            examples = [self.task.buckets[b][i] for b, i in picks]
            buckets = [b for b, _ in picks][ctx.rank * k : (ctx.rank + 1) * k]
        else:
            while len(examples) < p:  # a fresh permutation each epoch
                if state.pos >= len(state.order):
                    state.order, state.pos = self.epoch_order(state.data_rng), 0
                examples.append(self.task.train[state.order[state.pos]])
                state.pos += 1
        state.drawn += p
        seed, stream = self.cfg.train.seed, self.cfg.rollout.seed
        generators = [prompt_generator(seed, first + i, stream) for i in range(k)]
        return examples[ctx.rank * k : (ctx.rank + 1) * k], generators, buckets

    def epoch_order(self, rng: np.random.Generator) -> list[int]:
        """The next epoch's order of the training examples (tasks.epoch_order: with task.demo_share,
        that share of each step's prompts comes from the problems with a demonstration)."""
        demonstrated = [e.completion is not None for e in self.task.train]
        return epoch_order(rng, demonstrated, self.cfg.train.prompts_per_step, self.cfg.task.demo_share)

    def sample(self, state: RunState) -> Batch:
        """One round of rollouts: the next examples, `group_size` completions each, their rewards."""
        cfg, g = self.cfg, self.cfg.rollout.group_size
        examples, generators, buckets = self.draw(state)
        prompts = chat_prompt_ids(self.tokenizer, [e.chat for e in examples], cfg.model.system_prompt)
        with timed(self.times, "rollout"), distributed.unsharded(self.model):
            # rows prompt-major: p0s0 .. p0s(g-1), p1s0, ...
            ro = self.engine.generate(prompts, self.sampling, generators)
        completions = decode_completions(self.tokenizer, ro.completion_ids, ro.mask)  # [B] texts
        rows = [e for e in examples for _ in range(g)]  # [B] the example of each completion
        with timed(self.times, "reward"):
            ids = unpadded_ids(ro.completion_ids, ro.mask)  # [B] token lists, as TRL passes them
            res = self.reward_fn(completions, rows, completion_ids=ids, step=state.step)
        self.reward_faults += res.faults
        if buckets is not None:  # every round counts, also the groups dynamic sampling drops
            right = res.correct.view(len(buckets), g).sum(1).double().numpy()  # [groups]
            np.add.at(self.bucket_counts[0], buckets, right)
            np.add.at(self.bucket_counts[1], buckets, g)
        return Batch(
            prompts=prompts,
            row_prompt=torch.arange(len(prompts)).repeat_interleave(g),
            completion_ids=ro.completion_ids,
            mask=ro.mask.float(),
            engine_logprobs=ro.logprobs,
            rewards=res.rewards.float(),
            correct=res.correct,
            format_error=res.format_error,
            texts=completions,
            examples=rows,
            extras=res.extras,
        )

    def collect(self, state: RunState) -> tuple[Batch, int]:
        """One step's sampled rows, and the extra sampling rounds spent on them: with dynamic
        sampling (DAPO) groups without reward spread are replaced by new ones (rollout/batch.py)."""
        r = self.cfg.rollout
        if not r.dynamic_sampling:
            return self.sample(state), 0
        groups = self.cfg.train.prompts_per_step // self.ctx.world  # this process's share
        any_short = lambda short: distributed.any_rank(short, self.ctx)  # noqa: E731
        sample = lambda: self.sample(state)  # noqa: E731
        return dynamic_sampling(sample, groups, r.group_size, r.max_resample_rounds, any_short)

    def demonstrations(self, state: RunState) -> Given:
        """One step's given rows: the next examples' reference completions (rung 0)."""
        return self.given_of(self.draw(state)[0])

    def given_of(self, examples: list) -> Given:
        """`examples`' reference completions as given rows, each with its own chat prompt."""
        prompts = chat_prompt_ids(self.tokenizer, [e.chat for e in examples], self.cfg.model.system_prompt)
        return given_rows(self.tokenizer, examples, prompts)

    def demonstrations_of(self, batch: Batch, keep=lambda group: True) -> tuple[Given | None, list[int]]:
        """Given rows beside a step's sampled ones: the reference completion of each of its groups'
        prompts that has one (task.demos) and passes `keep(group)`. Returns them (None when there
        are none) and their groups, ascending."""
        g = self.cfg.rollout.group_size
        groups = [i for i in range(batch.num_groups) if batch.examples[i * g].completion and keep(i)]
        if not groups:
            return None, []
        examples = [batch.examples[i * g] for i in groups]
        return given_rows(self.tokenizer, examples, [batch.prompts[i] for i in groups]), groups

    def guide(self, batch: Batch) -> tuple[Batch, torch.Tensor]:
        """objective.guide: the reference completion of a group's prompt (task.demos) joins the group
        as one more row, right (reward.correct), in every group ("always") or in those with no right
        answer ("no_right"). Returns the batch with the guide rows after the sampled ones, and the
        guided groups [k] (ascending)."""
        mode, g = self.cfg.objective.guide, self.cfg.rollout.group_size
        guides, groups = None, []
        if mode != "off":
            right = batch.correct.view(-1, g).any(dim=1)  # [groups]
            guides, groups = self.demonstrations_of(batch, lambda i: mode == "always" or not right[i])
        if guides is None:
            return batch, torch.zeros(0, dtype=torch.long)
        return with_guides(batch, guides, groups, self.cfg.reward.correct), torch.tensor(groups)

    def sft_weight(self, step: int) -> float:
        """objective.sft_weight at `step` (0-based): constant, or falling linearly to 0 at train.steps."""
        o = self.cfg.objective
        if o.sft_weight_schedule == "linear":
            return o.sft_weight * max(0.0, 1.0 - step / max(1, self.cfg.train.steps))
        return o.sft_weight

    def train_step(self, state: RunState) -> tuple[dict[str, Any], Batch | None]:
        """One step: its rows (sampled and scored, or given), then one update over them. Returns the
        step's metrics row (the same on every process) and this process's sampled rows, if any."""
        if self.given_only:
            return self.supervised_step(state)
        cfg, o = self.cfg, self.cfg.objective
        self.times, self.reward_faults = {}, 0
        self.bucket_counts[:] = 0
        t0 = time.perf_counter()
        # examples -> prompts -> engine.generate -> completions -> reward_fn, in `sample`
        batch, rounds = self.collect(state)
        failure = self.reward_fn.end_step()  # a reward function that failed on everything for too long
        if distributed.any_rank(failure is not None, self.ctx):
            raise TrainingError(failure or "a reward function failed on every completion on another process")
        batch, guided = self.guide(batch)
        n = batch.num_sampled  # guide rows (objective.guide) come after the sampled ones
        with timed(self.times, "update"):
            # pi_ref once, for the KL wherever it goes; beta = 0 has no reference model at all
            ref = None
            if self.reference is not None:
                ref = self.no_grad_logprobs(self.reference, batch, self.micro_batches(batch))
            rewards = batch.rewards  # [B]
            if ref is not None and o.kl_in == "reward":  # r_i - beta * KL_i, as in PPO-RLHF
                # on the sampled rows: a guide row has no sampler's log-probs, its reward is given
                sampled = objective.kl_in_reward(
                    rewards[:n], batch.engine_logprobs[:n], ref[:n], batch.mask[:n], o.beta, o.kl_estimator
                )
                rewards = torch.cat([sampled, rewards[n:]])
            g = cfg.rollout.group_size
            adv, guide_adv, zero_std = objective.guided_advantages(
                rewards[:n], g, guided, rewards[n:], o.advantage, o.std_ddof, o.std_eps
            )  # [B], [k], [groups]
            adv = torch.cat([adv, guide_adv])  # [B + k]
            # SFT beside RL (CHORD): the cross-entropy of the step's demonstrations, weight w
            w = self.sft_weight(state.step)
            given = self.demonstrations_of(batch)[0] if w > 0 else None
            # rows that add nothing to the gradient skip the optimisation passes
            sums, maxima = self.update(state, batch, adv, ref, self.rows_with_gradient(adv), given, w)
        self.times["step"] = time.perf_counter() - t0
        row = self.metrics(state, batch, adv, zero_std, rounds, sums, maxima)
        if o.guide != "off":  # the share of groups a guide row joined, and the guides' advantage
            k, total, groups = distributed.all_sum(
                [float(guided.numel()), guide_adv.sum().item(), float(batch.num_groups)], self.ctx
            )
            row |= {"guided_frac": k / max(groups, 1.0), "guide_adv_mean": total / max(k, 1.0)}
        row.update(self.reward_fn.drain_metrics(reserved=row))  # reward functions' log_metric means
        if state.difficulty is not None:
            row.update(self.update_difficulty(state))
        return row, batch

    def supervised_step(self, state: RunState) -> tuple[dict[str, Any], None]:
        """Rung 0's step: the next reference completions, one update over them as given rows."""
        self.times = {}
        with timed(self.times, "step"):
            given = self.demonstrations(state)
            with timed(self.times, "update"):
                sums, maxima = self.update(state, None, None, None, None, given)
        tokens = given.mask.sum().item()
        row = {
            "loss": sums["loss"],
            "sft_loss": sums["sft_loss"],  # mean -log pi per completion token
            "completion_len": tokens / len(given.texts),
            "tokens_per_s": tokens / max(self.times["update"], 1e-9),  # trained tokens
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": maxima["grad_norm"],
            "skipped_steps": state.skipped_steps,
            "peak_mem_mb": run.peak_memory_mb(),
            **{f"time_{k}": v for k, v in self.times.items()},
        }
        return row, None

    def update_difficulty(self, state: RunState) -> dict[str, float]:
        """The filter learns this step's accuracy per bucket (every process's answers, so all
        processes keep one estimate). Returns, per bucket b, the share of draws it had this step
        (`b{b}_w`), the prompts it gave (`b{b}_n`, every rollout round) and its new estimate (`b{b}_p`)."""
        k, g, f = self.bucket_counts.shape[1], self.cfg.rollout.group_size, state.difficulty
        counts = distributed.all_sum(self.bucket_counts.ravel().tolist(), self.ctx)  # [2 * K]
        right, answers = np.reshape(counts, (2, k))  # [K], [K]
        w = f.weights()  # [K] what drew this step's prompts
        f.update(right, answers)
        out: dict[str, float] = {}
        for b in range(k):
            out |= {f"b{b}_w": float(w[b]), f"b{b}_n": int(answers[b]) // g, f"b{b}_p": float(f.p[b])}
        return out

    def update(
        self,
        state: RunState,
        sampled: Batch | None,
        advantages: torch.Tensor | None,
        ref: torch.Tensor | None,
        with_gradient: list[int] | None,
        given: Given | None = None,
        sft_weight: float = 1.0,
    ) -> tuple[dict[str, float], dict[str, float]]:
        """The one update of every rung: mu passes over the step's rows, one optimizer step each.

        Sampled rows (`sampled`, their `advantages` [B], `ref` log-probs [B, T] when beta > 0; only
        the rows `with_gradient` go through the passes) add the ladder's surrogate,
        `objective.policy_loss`; given rows (`given`) add the cross-entropy of their completions,
        `objective.sft_loss`. With both kinds the loss is (1 - sft_weight) * surrogate + sft_weight
        * cross-entropy; with one kind, that kind's loss. Returns this process's share of the losses
        ("loss", the weighted sum, and "rl_loss" / "sft_loss" unweighted for each kind present) and
        of `policy_loss`'s token means (sums weighted to the whole step), and maxima. A NaN/inf pass
        is skipped and counted in `state`."""
        cfg, o, dev, ctx, mu = self.cfg, self.cfg.objective, self.device, self.ctx, self.cfg.train.mu
        mbs: list[tuple[Batch | Given, list[int]]] = []  # (the rows' kind, their indices) per micro-batch
        sums: dict[str, float] = {"loss": 0.0}
        old = None
        if sampled is not None:
            mbs += [(sampled, rows) for rows in self.micro_batches(sampled, with_gradient)]
            # The loss is normalised by the counts of the whole step (every process), and DDP /
            # FSDP2 average gradients over processes, hence the factor `world`: the sum is the
            # full gradient.
            total_seqs, total_tokens = (
                int(x) for x in distributed.all_sum([len(sampled.texts), sampled.mask.sum().item()], ctx)
            )
            # pi_old, kept from pass 0 when a later pass reads it (see the module docstring)
            needs_old = mu > 1 and (o.ratio != "none" or o.tis_cap is not None or o.beta_old > 0)
            old = torch.zeros_like(sampled.mask) if needs_old else None  # [B, T]
            sums |= {
                "update_rows": float(sum(len(r) for _, r in mbs)),
                "logprob_gap_mean": 0.0,
                "rl_loss": 0.0,
            }
            # token means over the rows that go through the passes (all of them, unless rows without
            # a gradient are skipped: then over the groups with a reward spread)
            used = sum(sampled.mask[r].sum().item() for _, r in mbs)
            used_tokens = max(1.0, distributed.all_sum([used], ctx)[0])
        if given is not None:
            given_mbs = [(given, rows) for rows in self.micro_batches(given)]
            mbs += given_mbs
            given_tokens = int(distributed.all_sum([given.mask.sum().item()], ctx)[0])
            sums["sft_loss"] = 0.0
        maxima = {"grad_norm": 0.0} | ({"logprob_gap_max": 0.0} if sampled is not None else {})
        both = sampled is not None and given is not None
        scale = {"rl_loss": 1.0 - sft_weight, "sft_loss": sft_weight} if both else None
        self.model.train()
        for epoch in range(mu):
            self.optimizer.zero_grad(set_to_none=True)
            for i, (rows_of, rows) in enumerate(mbs):
                try:
                    with distributed.sync_gradients(self.policy_logprobs, i == len(mbs) - 1):
                        # a cross-entropy is of the model itself (T = 1), a surrogate at the sampling T
                        temperature = 1.0 if rows_of is given else None
                        logp = self.logprobs(None, rows_of, rows, temperature)  # [b, t], with grad
                        t = logp.shape[1]
                        mask = rows_of.mask[rows, :t].to(dev)  # [b, t]
                        if rows_of is given:
                            loss, m, kind = objective.sft_loss(logp, mask, given_tokens), {}, "sft_loss"
                        else:
                            loss, m = objective.policy_loss(
                                logp,
                                mask,
                                advantages[rows].to(dev),  # [b]
                                # pass 0: None means sg(pi_theta), which is pi_old exactly
                                None if epoch == 0 or old is None else old[rows, :t].to(dev),
                                None if ref is None else ref[rows, :t].to(dev),
                                total_seqs=total_seqs,
                                total_tokens=total_tokens,
                                behavior_logp=sampled.engine_logprobs[rows, :t].to(dev),
                                **self.switches,
                            )
                            kind = "rl_loss"
                        raw = loss.detach().float().item() / mu  # this kind's own loss
                        if scale is not None:
                            loss = loss * scale[kind]
                        (loss * ctx.world).backward()
                except RuntimeError as e:
                    self.raise_if_out_of_memory(e, rows_of, rows)
                    raise
                if epoch == 0 and rows_of is sampled:
                    lp = logp.detach().float().cpu()  # [b, t]
                    if old is not None:
                        old[rows, :t] = lp
                    # the engine's numbers vs ours, on the tokens both computed (not guide rows'):
                    # largest and mean
                    gap = (lp - sampled.engine_logprobs[rows, :t]).abs() * mask.cpu()  # [b, t]
                    if sampled.given is not None:
                        gap = gap * ~sampled.given[rows, None]
                    maxima["logprob_gap_max"] = max(maxima["logprob_gap_max"], gap.max().item())
                    sums["logprob_gap_mean"] += gap.sum().item() / used_tokens
                if rows_of is sampled:
                    # token means of this micro-batch, weighted by its share of the step's tokens,
                    # add up to the step's token means
                    w = mask.sum().item() / used_tokens
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v.float().item() * w / mu
                sums["loss"] += raw if scale is None else loss.detach().float().item() / mu
                sums[kind] += raw
            with_grad = [p for p in self.model.parameters() if p.grad is not None]
            max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
            maxima["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            loss_so_far = distributed.all_sum([sums["loss"]], ctx)[0]  # every process decides alike
            if not math.isfinite(maxima["grad_norm"]) or not math.isfinite(loss_so_far):
                # A NaN/inf step never reaches the parameters; it is counted and the run goes on.
                self.optimizer.zero_grad(set_to_none=True)
                state.skipped_steps += 1
                state.bad_steps += 1
                if state.bad_steps >= cfg.train.max_bad_steps:
                    raise TrainingError(
                        f"{state.bad_steps} steps in a row had a NaN/inf loss or gradient "
                        f"(step {state.step + 1}); lower train.lr or check the reward function"
                    )
                break
            state.bad_steps = 0
            self.optimizer.step()
            self.scheduler.step()
        return sums, maxima

    def metrics(self, state, batch, adv, zero_std, rounds, sums, maxima) -> dict[str, Any]:
        """The step's metrics row over every process's sampled rows (guide rows are not the policy's
        answers), with one reduction: counts and sums are added up (then divided), maxima and times
        take the maximum."""
        b = batch.num_sampled
        r, a, mask = batch.rewards[:b].double(), adv[:b].double(), batch.mask[:b]  # [B], [B], [B, T]
        local = {
            "rows": r.numel(),
            "reward": r.sum().item(),
            "reward_sq": (r * r).sum().item(),
            "adv": a.sum().item(),
            "adv_sq": (a * a).sum().item(),
            "correct": batch.correct[:b].sum().item(),
            "format_error": batch.format_error[:b].sum().item(),
            "groups": zero_std.numel(),
            "zero_std": zero_std.sum().item(),
            "tokens": mask.sum().item(),
            "nll": -(batch.engine_logprobs[:b] * mask).sum().item(),  # summed -log pi
            "reward_faults": self.reward_faults,
            **sums,
        }
        top = {
            **maxima,
            **{f"time_{k}": v for k, v in self.times.items()},
            "peak_mem_mb": run.peak_memory_mb(),
        }
        s, top = distributed.reduce_metrics(local, top, self.ctx)
        n, tokens = s["rows"], s["tokens"]
        return {
            "reward_mean": s["reward"] / n,
            "reward_std": math.sqrt(max(0.0, s["reward_sq"] / n - (s["reward"] / n) ** 2)),
            "accuracy": s["correct"] / n,
            "format_error_rate": s["format_error"] / n,
            "zero_std_frac": s["zero_std"] / s["groups"],
            "completion_len": tokens / n,
            # mean -log pi of the sampled tokens: an unbiased estimate of the policy's entropy
            "entropy": s["nll"] / max(tokens, 1),
            "adv_mean": s["adv"] / n,
            "adv_std": math.sqrt(max(0.0, s["adv_sq"] / n - (s["adv"] / n) ** 2)),
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": tokens / max(top["time_rollout"], 1e-9),
            "resample_rounds": rounds,
            "reward_faults": int(s["reward_faults"]),
            "skipped_steps": state.skipped_steps,
            **top,
            **{k: s[k] for k in sums if k != "update_rows"},
            "update_rows_frac": s["update_rows"] / n,  # rows through the forward/backward passes
        }

    # -- log-probabilities ------------------------------------------------------------------------

    def rows_with_gradient(self, advantages: torch.Tensor) -> list[int]:
        """The rows the optimisation passes must see. Without a KL term in the loss, a row whose
        advantage is 0 (every row of a group with no reward spread) adds exactly nothing to the
        loss or the gradient, while the loss's normalisation counts it all the same, so it is left
        out: most groups of a hard task have no spread, so this is most of the update's work.
        Several processes keep every row: DDP needs as many backward passes on each."""
        if self.reference is None and self.ctx.world == 1:
            return torch.nonzero(advantages != 0).flatten().tolist()
        return list(range(advantages.shape[0]))

    def micro_batches(self, batch: Batch | Given, rows: list[int] | None = None) -> list[list[int]]:
        """Rows sorted by completion length, so that without `train.packing` each micro-batch pads to
        a similar length (long and short completions together would pad every row to the longest);
        packed, a micro-batch has no padding and the order only decides which rows share a pack.
        The loss is normalised by whole-batch counts, so any partition gives the same gradient."""
        order = torch.argsort(batch.mask.sum(1), descending=True, stable=True).tolist()
        if rows is not None:  # only these rows, in the same order
            keep = set(rows)
            order = [r for r in order if r in keep]
        mb = self.cfg.train.micro_batch_size
        return [order[i : i + mb] for i in range(0, len(order), mb)]

    def logprobs(
        self, model, batch: Batch | Given, rows: list[int], temperature: float | None = None
    ) -> torch.Tensor:
        """[len(rows), t] log-probs of the rows' completion tokens under `model` (None: the policy,
        with gradient), t = their longest completion, at the rollout temperature or `temperature`.
        Each distinct prompt among the rows goes through the model once."""
        dev = self.device
        groups, local = torch.unique(batch.row_prompt[rows], return_inverse=True)  # prompts of these rows
        t = max(1, int(batch.mask[rows].sum(1).max().item()))
        args = (
            [batch.prompts[i] for i in groups.tolist()],
            local.to(dev),
            batch.completion_ids[rows, :t].to(dev),
            batch.mask[rows, :t].to(dev),
        )
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            t = self.cfg.rollout.temperature if temperature is None else temperature
            if model is None:
                return self.policy_logprobs(*args, temperature=t)
            return completion_logprobs(model, *args, t, self.cfg.train.packing)

    @torch.no_grad()
    def no_grad_logprobs(self, model, batch: Batch | Given, mbs: list[list[int]]) -> torch.Tensor:
        """[B, T] log-probs of every completion under `model` (the reference), zero-padded."""
        out = torch.zeros_like(batch.mask)
        for rows in mbs:
            try:
                lp = self.logprobs(model, batch, rows).float().cpu()
            except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError too
                self.raise_if_out_of_memory(e, batch, rows)
                raise
            out[rows, : lp.shape[1]] = lp
        return out

    def raise_if_out_of_memory(self, e: RuntimeError, batch: Batch | Given, rows: list[int]) -> None:
        """Out of memory becomes a TrainingError naming the micro-batch's sizes and the settings to
        lower; any other error is left to the caller to re-raise."""
        text = str(e)
        oom = (
            isinstance(e, torch.OutOfMemoryError)
            or "can't allocate memory" in text
            or "out of memory" in text
        )
        if not oom:
            return
        t = int(batch.mask[rows].sum(1).max().item())
        p = max(len(batch.prompts[i]) for i in batch.row_prompt[rows].tolist())
        raise TrainingError(
            f"out of memory in a micro-batch of {len(rows)} sequences x {t} completion tokens "
            f"(prompts up to {p} tokens); lower train.micro_batch_size "
            f"(now {self.cfg.train.micro_batch_size}) or rollout.max_new_tokens "
            f"(now {self.cfg.rollout.max_new_tokens})"
        ) from e


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the base LR at optimizer step s: linear warmup, then constant or cosine to 0."""

    def f(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if schedule == "cosine":
            progress = (s - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return f


def prompt_generator(seed: int, index: int, stream: int = 0) -> torch.Generator:
    """The sampling generator of the run's index-th prompt: a function of (seed, index) alone, and of
    `stream` (rollout.seed) when it is not 0: another draw of the answers to the same prompts."""
    entropy = [seed, index] + ([stream] if stream else [])
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


@contextlib.contextmanager
def timed(times: dict[str, float], key: str):
    """Adds the seconds the block takes to times[key] (dynamic sampling enters `sample` many times)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        times[key] = times.get(key, 0.0) + time.perf_counter() - t0
