"""The training step, written as the data flow, so it can be read top to bottom once:

    examples -> prompts -> engine.generate -> completions -> reward_fn -> rewards
      -> pi_ref log-probs -> advantages -> mu passes of policy_loss (pi_old from pass 0) -> optimizer

`Trainer.train_step` is that chain with one visible call per arrow; `sample` is its first half
(one round of rollouts), `update` its last (the optimisation passes). The seed's ladder is the same
loop with other switches: which advantage, ratio, clip and KL the loss uses is data (a preset in
configs/, turned into `policy_loss`'s keyword scalars by `config.loss_switches`), not code here.

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
from .difficulty import DifficultySampler
from .models import chat_prompt_ids, completion_logprobs, has_fast_bf16, make_reference, unwrap
from .rollout.base import decode_completions, unpadded_ids
from .rollout.batch import Batch, dynamic_sampling
from .run import TrainingError

__all__ = ["Trainer", "TrainingError", "lr_lambda", "prompt_generator"]


class Trainer:
    """One run: the model, the optimizer and the data position. `train_step()` is one step; `fit()`
    runs them all (run.py)."""

    supervised = False  # SFTTrainer (sft.py, rung 0) trains on the task's reference completions

    def __init__(self, cfg: Config, run_dir: Path, resume_from: Path | None = None):
        """Builds everything a run needs; writes nothing. With `resume_from` (a checkpoint folder),
        the weights, optimizer, scheduler, data position and RNG states continue from there."""
        self.cfg, self.run_dir = cfg, run_dir
        self.ctx = ctx = distributed.setup()  # world size 1 without torchrun
        if cfg.train.prompts_per_step % ctx.world:
            raise ValueError(
                f"train.prompts_per_step={cfg.train.prompts_per_step} must be a multiple of the "
                f"number of processes ({ctx.world}): each process takes whole groups"
            )
        if ctx.enabled and cfg.train.parallel == "fsdp2" and cfg.model.lora.enabled:
            raise ValueError("train.parallel=fsdp2 with model.lora.enabled=true is not supported; use ddp")
        seed_everything(cfg.train.seed)
        parts = build_components(cfg, supervised=self.supervised)
        self.model, self.tokenizer, self.task = parts.model, parts.tokenizer, parts.task
        self.reward_fn, self.engine, self.eval_engine = parts.reward_fn, parts.engine, parts.eval_engine
        self.device = next(self.model.parameters()).device
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
        # Where the run stands; run.checkpoint_state saves all of it.
        self.step = 0
        self.data_rng = np.random.default_rng(cfg.train.seed)
        self.order: list[int] = []  # this epoch's permutation of the training examples
        self.pos = 0  # the next index into `order`
        self.drawn = 0  # prompts drawn so far (all processes together); numbers each prompt's seed
        # task.difficulty.mode=adaptive: prompts come from the task's buckets instead of `order`
        d = cfg.task.difficulty
        self.sampler = (
            DifficultySampler([len(b) for b in self.task.buckets], cfg.train.seed, d.ema, d.prior, d.floor)
            if self.task.buckets
            else None
        )
        self.bucket_counts = np.zeros((2, len(self.task.buckets)))  # this step's [right, answers] per bucket
        self.bad_steps = self.skipped_steps = 0
        self.before: dict[str, float] | None = None  # the held-out evaluation before training
        # the validation score at step 0 is already in evals.jsonl (a pipeline's RL stage: the same
        # model as the SFT stage's last validation row), so it is not scored again
        self.val_start_known = False
        self.train_time = 0.0  # seconds spent in steps, over every resumed piece of the run
        # the pieces of the run before this process (a resume): wall seconds, peak memory MiB
        self.earlier = {"wall_time_s": 0.0, "peak_mem_mb": 0.0}
        self.piece_start = time.time()  # fit() sets it when this piece starts
        self.resumed_from, self.saved_step, self.stop_requested = resume_from, -1, False
        self.times: dict[str, float] = {}  # this step's seconds per phase
        self.reward_faults = 0  # this step's completions whose reward call failed
        if resume_from is not None:
            run.load_checkpoint(self, Path(resume_from))

    def fit(self) -> dict[str, Any]:
        """Run to `train.steps` (or to a stop signal); returns the summary (`run.fit`)."""
        return run.fit(self)

    # -- the step, in the order the data flows ----------------------------------------------------

    def draw(self) -> tuple[list, list[torch.Generator], list[int] | None]:
        """This process's share of the next `train.prompts_per_step` examples, one sampling
        generator per prompt, and each prompt's difficulty bucket (None without the filter). Every
        process walks the same data order (or makes the same draws from the buckets) and takes its
        own slice, and a prompt's generator is seeded by (train.seed, its number in the run), so a
        prompt gets the same samples whatever the number of processes (and on resume)."""
        p, ctx = self.cfg.train.prompts_per_step, self.ctx
        k = p // ctx.world
        first = self.drawn + ctx.rank * k
        examples, buckets = [], None
        if self.sampler is not None:
            picks = self.sampler.draw(p)  # [(bucket, index)] * p
            examples = [self.task.buckets[b][i] for b, i in picks]
            buckets = [b for b, _ in picks][ctx.rank * k : (ctx.rank + 1) * k]
        else:
            while len(examples) < p:  # a fresh permutation each epoch
                if self.pos >= len(self.order):
                    self.order, self.pos = self.data_rng.permutation(len(self.task.train)).tolist(), 0
                examples.append(self.task.train[self.order[self.pos]])
                self.pos += 1
        self.drawn += p
        seed, stream = self.cfg.train.seed, self.cfg.rollout.seed
        generators = [prompt_generator(seed, first + i, stream) for i in range(k)]
        return examples[ctx.rank * k : (ctx.rank + 1) * k], generators, buckets

    def sample(self) -> Batch:
        """One round of rollouts: the next examples, `group_size` completions each, their rewards."""
        cfg, r, g = self.cfg, self.cfg.rollout, self.cfg.rollout.group_size
        examples, generators, buckets = self.draw()
        prompts = chat_prompt_ids(self.tokenizer, [e.chat for e in examples], cfg.model.system_prompt)
        with timed(self.times, "rollout"), distributed.unsharded(self.model):
            ro = self.engine.generate(
                prompts,
                n=g,
                max_new_tokens=r.max_new_tokens,
                temperature=r.temperature,
                top_p=r.top_p,
                top_k=r.top_k,
                stop=r.stop or None,
                generator=generators,
            )  # rows prompt-major: p0s0 .. p0s(g-1), p1s0, ...
        completions = decode_completions(self.tokenizer, ro.completion_ids, ro.mask)  # [B] texts
        rows = [e for e in examples for _ in range(g)]  # [B] the example of each completion
        with timed(self.times, "reward"):
            ids = unpadded_ids(ro.completion_ids, ro.mask)  # [B] token lists, as TRL passes them
            res = self.reward_fn(completions, rows, completion_ids=ids, step=self.step)
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

    def collect(self) -> tuple[Batch, int]:
        """One step's batch, and the extra sampling rounds spent on it: with dynamic sampling (DAPO)
        groups without reward spread are replaced by new ones (rollout/batch.py)."""
        r = self.cfg.rollout
        if not r.dynamic_sampling:
            return self.sample(), 0
        groups = self.cfg.train.prompts_per_step // self.ctx.world  # this process's share
        any_short = lambda short: distributed.any_rank(short, self.ctx)  # noqa: E731
        return dynamic_sampling(self.sample, groups, r.group_size, r.max_resample_rounds, any_short)

    def train_step(self) -> tuple[dict[str, Any], Batch]:
        """One step. Returns its metrics row (the same on every process) and this process's batch."""
        cfg, o = self.cfg, self.cfg.objective
        self.times, self.reward_faults = {}, 0
        self.bucket_counts[:] = 0
        t0 = time.perf_counter()
        # examples -> prompts -> engine.generate -> completions -> reward_fn, in `sample`
        batch, rounds = self.collect()
        failure = self.reward_fn.end_step()  # a reward function that failed on everything for too long
        if distributed.any_rank(failure is not None, self.ctx):
            raise TrainingError(failure or "a reward function failed on every completion on another process")
        with timed(self.times, "update"):
            # pi_ref once, for the KL wherever it goes; beta = 0 has no reference model at all
            ref = None
            if self.reference is not None:
                ref = self.no_grad_logprobs(self.reference, batch, self.micro_batches(batch))
            rewards = batch.rewards  # [B]
            if ref is not None and o.kl_in == "reward":  # r_i - beta * KL_i, as in PPO-RLHF
                rewards = objective.kl_in_reward(
                    rewards, batch.engine_logprobs, ref, batch.mask, o.beta, o.kl_estimator
                )
            adv, zero_std = objective.compute_advantages(
                rewards, cfg.rollout.group_size, o.advantage, o.std_ddof, o.std_eps
            )  # [B], [groups]
            # rows that add nothing to the gradient skip the optimisation passes
            sums, maxima = self.update(
                batch, adv, ref, self.micro_batches(batch, self.rows_with_gradient(adv))
            )
        self.times["step"] = time.perf_counter() - t0
        row = self.metrics(batch, adv, zero_std, rounds, sums, maxima)
        row.update(self.reward_fn.drain_metrics(reserved=row))  # reward functions' log_metric means
        if self.sampler is not None:
            row.update(self.update_difficulty())
        return row, batch

    def update_difficulty(self) -> dict[str, float]:
        """The filter learns this step's accuracy per bucket (every process's answers, so all
        processes keep one estimate). Returns, per bucket b, the share of draws it had this step
        (`b{b}_w`), the prompts it gave (`b{b}_n`, every rollout round) and its new estimate (`b{b}_p`)."""
        k, g = self.bucket_counts.shape[1], self.cfg.rollout.group_size
        counts = distributed.all_sum(self.bucket_counts.ravel().tolist(), self.ctx)  # [2 * K]
        right, answers = np.reshape(counts, (2, k))  # [K], [K]
        w = self.sampler.weights()  # [K] what drew this step's prompts
        self.sampler.update(right, answers)
        out: dict[str, float] = {}
        for b in range(k):
            out |= {
                f"b{b}_w": float(w[b]),
                f"b{b}_n": int(answers[b]) // g,
                f"b{b}_p": float(self.sampler.p[b]),
            }
        return out

    def update(
        self, batch: Batch, advantages: torch.Tensor, ref: torch.Tensor | None, mbs: list[list[int]]
    ) -> tuple[dict[str, float], dict[str, float]]:
        """mu passes over the batch, one optimizer step each. Returns this process's share of the
        loss and of `policy_loss`'s token means (sums weighted to the whole step), and maxima."""
        cfg, o, dev, ctx, mu = self.cfg, self.cfg.objective, self.device, self.ctx, self.cfg.train.mu
        # The loss is normalised by the counts of the whole step (every process), and DDP / FSDP2
        # average gradients over processes, hence the factor `world`: the sum is the full gradient.
        total_seqs, total_tokens = (
            int(x) for x in distributed.all_sum([len(batch.texts), batch.mask.sum().item()], ctx)
        )
        # pi_old, kept from pass 0 when a later pass reads it (see the module docstring)
        needs_old = mu > 1 and (o.ratio != "none" or o.tis_cap is not None)
        old = torch.zeros_like(batch.mask) if needs_old else None  # [B, T]
        sums: dict[str, float] = {
            "loss": 0.0,
            "update_rows": float(sum(map(len, mbs))),
            "logprob_gap_mean": 0.0,
        }
        # token means over the rows that go through the passes (all of them, unless rows without a
        # gradient are skipped: then over the groups with a reward spread)
        used_tokens = max(1.0, distributed.all_sum([sum(batch.mask[r].sum().item() for r in mbs)], ctx)[0])
        maxima = {"logprob_gap_max": 0.0, "grad_norm": 0.0}
        self.model.train()
        for epoch in range(mu):
            self.optimizer.zero_grad(set_to_none=True)
            for i, rows in enumerate(mbs):
                try:
                    with distributed.sync_gradients(self.policy_logprobs, i == len(mbs) - 1):
                        logp = self.logprobs(None, batch, rows)  # [b, t], with grad
                        t = logp.shape[1]
                        mask = batch.mask[rows, :t].to(dev)  # [b, t]
                        loss, m = objective.policy_loss(
                            logp,
                            mask,
                            advantages[rows].to(dev),  # [b]
                            # pass 0: None means sg(pi_theta), which is pi_old exactly
                            None if epoch == 0 or old is None else old[rows, :t].to(dev),
                            None if ref is None else ref[rows, :t].to(dev),
                            total_seqs=total_seqs,
                            total_tokens=total_tokens,
                            behavior_logp=batch.engine_logprobs[rows, :t].to(dev),
                            **self.switches,
                        )
                        (loss * ctx.world).backward()
                except RuntimeError as e:
                    self.raise_if_out_of_memory(e, batch, rows)
                    raise
                if epoch == 0:
                    lp = logp.detach().float().cpu()  # [b, t]
                    if old is not None:
                        old[rows, :t] = lp
                    # the engine's numbers vs ours, on the tokens both computed: largest and mean
                    gap = (lp - batch.engine_logprobs[rows, :t]).abs() * mask.cpu()  # [b, t]
                    maxima["logprob_gap_max"] = max(maxima["logprob_gap_max"], gap.max().item())
                    sums["logprob_gap_mean"] += gap.sum().item() / used_tokens
                # token means of this micro-batch, weighted by its share of the step's tokens,
                # add up to the step's token means
                w = mask.sum().item() / used_tokens
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + v.float().item() * w / mu
                sums["loss"] += loss.detach().float().item() / mu
            with_grad = [p for p in self.model.parameters() if p.grad is not None]
            max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
            maxima["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            loss_so_far = distributed.all_sum([sums["loss"]], ctx)[0]  # every process decides alike
            if not math.isfinite(maxima["grad_norm"]) or not math.isfinite(loss_so_far):
                # A NaN/inf step never reaches the parameters; it is counted and the run goes on.
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1
                self.bad_steps += 1
                if self.bad_steps >= cfg.train.max_bad_steps:
                    raise TrainingError(
                        f"{self.bad_steps} steps in a row had a NaN/inf loss or gradient "
                        f"(step {self.step + 1}); lower train.lr or check the reward function"
                    )
                break
            self.bad_steps = 0
            self.optimizer.step()
            self.scheduler.step()
        return sums, maxima

    def metrics(self, batch, adv, zero_std, rounds, sums, maxima) -> dict[str, Any]:
        """The step's metrics row over every process's rows, with one reduction: counts and sums
        are added up (then divided), maxima and times take the maximum."""
        r, a = batch.rewards.double(), adv.double()  # [B]
        local = {
            "rows": r.numel(),
            "reward": r.sum().item(),
            "reward_sq": (r * r).sum().item(),
            "adv": a.sum().item(),
            "adv_sq": (a * a).sum().item(),
            "correct": batch.correct.sum().item(),
            "format_error": batch.format_error.sum().item(),
            "groups": zero_std.numel(),
            "zero_std": zero_std.sum().item(),
            "tokens": batch.mask.sum().item(),
            "nll": -(batch.engine_logprobs * batch.mask).sum().item(),  # summed -log pi
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
            "skipped_steps": self.skipped_steps,
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

    def micro_batches(self, batch: Batch, rows: list[int] | None = None) -> list[list[int]]:
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

    def logprobs(self, model, batch: Batch, rows: list[int]) -> torch.Tensor:
        """[len(rows), t] log-probs of the rows' completion tokens under `model` (None: the policy,
        with gradient), t = their longest completion. Each distinct prompt among the rows goes
        through the model once."""
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
            if model is None:
                return self.policy_logprobs(*args)
            return completion_logprobs(model, *args, self.cfg.rollout.temperature, self.cfg.train.packing)

    @torch.no_grad()
    def no_grad_logprobs(self, model, batch: Batch, mbs: list[list[int]]) -> torch.Tensor:
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

    def raise_if_out_of_memory(self, e: RuntimeError, batch: Batch, rows: list[int]) -> None:
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
