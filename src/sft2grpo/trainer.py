"""The training loop: rollout -> reward -> advantages -> mu optimisation passes -> log.

One step, in the seed's words: for each of `train.prompts_per_step` questions q the policy samples a
group G of `rollout.group_size` answers; the verifier scores them; the rewards become advantages
(`objective.compute_advantages`); then `train.mu` passes over the batch minimise the rung's loss
(`objective.policy_loss`) in micro-batches with gradient accumulation, one optimizer step per pass.

What is computed, and when (each is skipped when the rung does not need it):
- old log-probs pi_old: only when mu > 1. With mu = 1 the batch is fresh, pi_old == pi_theta, and the
  detached current log-probs are exact, so no extra forward pass is spent.
- reference log-probs pi_ref: only when beta > 0. With beta = 0 no reference model exists at all.
- the engine-vs-trainer log-prob gap: free, from the first pass's forward, logged every step.

A run survives: every `checkpoint.every` steps, on SIGINT/SIGTERM and when bad steps stop it, the
model, optimizer, scheduler, data position and every RNG state go to an atomic checkpoint
(`checkpoint.py`); `Trainer(cfg, run_dir, resume_from=...)` continues bit for bit on CPU.
"""

from __future__ import annotations

import json
import math
import random
import resource
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint, distributed, objective
from .config import Config, dump_yaml, to_dict
from .evaluate import evaluate_heldout, heldout_change, sample_and_score, write_jsonl
from .tracking import Progress, Tracker, make_tracker, plot_metrics, read_metrics, truncate_jsonl

LOGS = ("metrics.jsonl", "samples.jsonl", "evals.jsonl")  # one row per step (or evaluation) each


class TrainingError(RuntimeError):
    """A run that cannot go on (too many bad steps, out of memory); the message says what to change."""


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory, in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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


@dataclass
class Batch:
    """One step's rollouts, ready for the loss. B = prompts * group_size rows, prompt-major."""

    prompts: list[list[int]]  # one token list per group
    row_prompt: torch.Tensor  # (B,) long: the group (prompt) of each row
    completion_ids: torch.Tensor  # (B, T) long
    mask: torch.Tensor  # (B, T) float, 1 on generated tokens
    engine_logprobs: torch.Tensor  # (B, T) the rollout engine's log pi of each sampled token
    rewards: torch.Tensor  # (B,)
    correct: torch.Tensor  # (B,) bool
    format_error: torch.Tensor  # (B,) bool
    texts: list[str]
    examples: list
    extras: list[dict[str, Any]]  # per row: the columns reward functions gave log_extra


class Trainer:
    """Holds the model, optimizer and data position of one run; `fit()` runs it to the end."""

    def __init__(self, cfg: Config, run_dir: Path, resume_from: Path | None = None):
        """Builds everything a run needs; writes nothing. With `resume_from` (a checkpoint folder),
        the weights, optimizer, scheduler, data position and RNG states continue from there."""
        from . import models, rewards, rollout, tasks

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
        self.model, self.tokenizer = models.load_policy(cfg.model)
        self.device = next(self.model.parameters()).device
        # "auto" stays in the config (a resumed run resolves it again, on its own machine);
        # summary.json records what this run used
        native = models.has_fast_bf16(self.device)
        self.bf16 = cfg.train.autocast == "bf16" or (cfg.train.autocast == "auto" and native)
        if cfg.train.autocast == "bf16" and not native:
            warnings.warn(
                f"train.autocast=bf16 on {self.device.type} without native bfloat16 (AMX/AVX512-BF16 "
                "or a bf16 GPU) is emulated and several times slower than off; use auto or off",
                stacklevel=2,
            )
        o = cfg.objective
        # beta = 0: the KL term is gone, and so is the second model (the seed's last variant).
        self.reference = models.make_reference(self.model, cfg.model) if o.beta > 0 else None
        self.task = tasks.load_task(cfg.task)
        if cfg.eval.every and not self.task.val:
            raise ValueError(
                f"eval.every={cfg.eval.every} evaluates on the validation split, but task "
                f"{cfg.task.name} has none; set task.val_size to hold out that many training rows"
            )
        self.reward_fn = rewards.build_reward(cfg.reward, self.task, max_steps=cfg.train.steps)
        self.engine = rollout.make_engine(cfg.rollout.engine, self.model, self.tokenizer)
        # The policy's log-probs with gradient go through `scorer`: DDP-wrapped, or over FSDP2 shards.
        self.scorer = distributed.parallelize(
            self.model, cfg.train.parallel, cfg.rollout.temperature, ctx, cfg.train.packing
        )
        self.sharded = distributed.is_fsdp(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params,
            lr=cfg.train.lr,
            betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
            weight_decay=cfg.train.weight_decay,
            # one fused kernel for all parameters: 0.08 s instead of 0.59 s a step for the 135M model
            # on 2 CPU cores (benchmarks/profile_step.py); FSDP2's sharded parameters use the default
            fused=not self.sharded and self.device.type in ("cpu", "cuda"),
        )
        total_updates = cfg.train.steps * cfg.train.mu
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.train.schedule, cfg.train.warmup_steps, total_updates)
        )
        self.switches = objective.loss_switches(o, cfg.rollout.max_new_tokens)
        self.step = 0
        self.data_rng = np.random.default_rng(cfg.train.seed)
        self.order: list[int] = []
        self.pos = 0
        self.bad_steps = 0
        self.skipped_steps = 0
        self.reward_faults = 0
        self.drawn = 0  # prompts drawn so far (all processes together); numbers each prompt's seed
        self.stop_requested = False
        self.before: dict[str, float] | None = None  # the held-out evaluation before training
        self.train_time = 0.0  # seconds spent in steps, over every resumed piece of the run
        self.resumed_from = resume_from
        self.saved_step = -1  # the step of the newest checkpoint this process wrote or read
        if resume_from is not None:
            self.load_checkpoint(Path(resume_from))

    # -- checkpoints ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything but the weights (and, with FSDP2, the sharded optimizer) that an exact resume
        needs."""
        return {
            "step": self.step,
            "optimizer": None if self.sharded else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
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
            "train_time": self.train_time,
        }

    def save_checkpoint(self) -> Path:
        """Every process calls this. Without FSDP2 the weights are the same everywhere and rank 0
        writes them as an HF folder (LoRA: the adapter alone); with FSDP2 each process writes its
        shards of weights and optimizer with torch.distributed.checkpoint."""

        def write_model(folder: Path) -> None:
            self.model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)

        path = checkpoint.save(
            self.run_dir,
            self.step,
            None if self.sharded else write_model,
            self.state(),
            self.cfg.checkpoint.keep,
            summary={"skipped_steps": self.skipped_steps, "preset": self.cfg.preset},
            ctx=self.ctx,
            write_shards=(lambda f: checkpoint.save_sharded(self.model, self.optimizer, f))
            if self.sharded
            else None,
        )
        self.saved_step = self.step
        return path

    def load_checkpoint(self, path: Path) -> None:
        st = checkpoint.load_state(path)
        if self.sharded:
            checkpoint.load_sharded(self.model, self.optimizer, path)
        else:
            checkpoint.load_model_weights(self.model, path)
            try:
                self.optimizer.load_state_dict(st["optimizer"])
            except (ValueError, KeyError, TypeError) as e:
                raise checkpoint.CheckpointError(
                    f"{path}: optimizer state does not fit the model ({e}); was model.lora or "
                    "train.parallel changed?"
                ) from None
        self.scheduler.load_state_dict(st["scheduler"])
        rng = st["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.data_rng.bit_generator.state = st["data"]["rng"]
        self.order, self.pos, self.drawn = st["data"]["order"], st["data"]["pos"], st["data"]["drawn"]
        self.bad_steps = st["counters"]["bad_steps"]
        self.skipped_steps = st["counters"]["skipped_steps"]
        self.before, self.train_time = st["before"], st["train_time"]
        self.step = self.saved_step = st["step"]

    # -- data -------------------------------------------------------------------------------------

    def next_examples(self, k: int) -> list:
        """k training examples, walking a fresh permutation each epoch."""
        out = []
        while len(out) < k:
            if self.pos >= len(self.order):
                self.order = self.data_rng.permutation(len(self.task.train)).tolist()
                self.pos = 0
            out.append(self.task.train[self.order[self.pos]])
            self.pos += 1
        return out

    def draw(self) -> tuple[list, list[torch.Generator]]:
        """This process's share of the next `train.prompts_per_step` prompts, and one sampling
        generator per prompt. Every process walks the same data order and takes its own slice, and
        a prompt's generator is seeded by (train.seed, its number in the run), so a prompt gets
        the same samples whatever the number of processes (and on resume)."""
        p, ctx = self.cfg.train.prompts_per_step, self.ctx
        k = p // ctx.world
        first = self.drawn + ctx.rank * k
        examples = self.next_examples(p)[ctx.rank * k : (ctx.rank + 1) * k]
        self.drawn += p
        return examples, [prompt_generator(self.cfg.train.seed, first + i) for i in range(k)]

    # -- one step's parts -------------------------------------------------------------------------

    def rollout(self, examples: list, generators: list[torch.Generator]) -> Batch:
        r, g = self.cfg.rollout, self.cfg.rollout.group_size
        with distributed.unsharded(self.model):
            ids, ro, texts, res = sample_and_score(
                self.engine,
                self.tokenizer,
                examples,
                self.reward_fn,
                g,
                self.cfg.model.system_prompt,
                max_new_tokens=r.max_new_tokens,
                temperature=r.temperature,
                top_p=r.top_p,
                top_k=r.top_k,
                stop=r.stop or None,
                generator=generators,
                step=self.step,
            )
        self.reward_faults += res.faults
        return Batch(
            prompts=ids,
            row_prompt=torch.arange(len(ids)).repeat_interleave(g),
            completion_ids=ro.completion_ids,
            mask=ro.mask.float(),
            engine_logprobs=ro.logprobs,
            rewards=res.rewards.float(),
            correct=res.correct,
            format_error=res.format_error,
            texts=texts,
            examples=[e for e in examples for _ in range(g)],  # prompt-major: groups are contiguous
            extras=res.extras,
        )

    def collect(self) -> tuple[Batch, int]:
        """One step's batch. With dynamic sampling (DAPO), groups whose rewards are all equal carry
        no signal; more prompts are sampled, up to max_resample_rounds extra rounds, and kept
        groups replace them. Returns the batch and the number of extra rounds spent.

        With several processes each fills its own share; all run the same number of rounds (and
        sample in each: FSDP2's gather of the weights is collective), so they stay at one data
        position."""
        g = self.cfg.rollout.group_size
        p = self.cfg.train.prompts_per_step // self.ctx.world  # this process's groups
        batch = self.rollout(*self.draw())
        if not self.cfg.rollout.dynamic_sampling:
            return batch, 0
        rounds = 0
        keep = self._informative(batch)
        while rounds < self.cfg.rollout.max_resample_rounds and distributed.any_rank(len(keep) < p, self.ctx):
            rounds += 1
            batch = cat_batches(batch, self.rollout(*self.draw()))
            keep = self._informative(batch)
        if len(keep) < p:  # cap reached: top up with uninformative groups to keep the batch size
            rest = [i for i in range(len(batch.examples) // g) if i not in keep]
            keep = keep + rest[: p - len(keep)]
        return select_groups(batch, keep[:p], g), rounds

    def _informative(self, batch: Batch) -> list[int]:
        g = self.cfg.rollout.group_size
        same = objective.all_equal(batch.rewards.view(-1, g))  # [groups] the zero-spread ones
        return torch.nonzero(~same).flatten().tolist()

    def logprobs(self, model, batch: Batch, rows: list[int]) -> torch.Tensor:
        """(len(rows), t) log-probs of the rows' completion tokens under `model` (None: the policy,
        with gradient, through `scorer`), t = their longest completion. Each distinct prompt among
        the rows goes through the model once."""
        from .models import completion_logprobs

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
                return self.scorer(*args)
            return completion_logprobs(model, *args, self.cfg.rollout.temperature, self.cfg.train.packing)

    def micro_batches(self, batch: Batch, rows: list[int] | None = None) -> list[list[int]]:
        """Rows sorted by completion length, so that without `train.packing` each micro-batch pads to
        a similar length (long and short completions together would pad every row to the longest);
        packed, a micro-batch has no padding and the order only decides which rows share a pack.
        Either way a micro-batch runs each of its distinct prompts once. The loss is normalised by
        whole-batch counts, so any partition gives the same gradient."""
        lengths = batch.mask.sum(1)
        order = torch.argsort(lengths, descending=True, stable=True).tolist()
        if rows is not None:
            keep = set(rows)
            order = [r for r in order if r in keep]
        mb = self.cfg.train.micro_batch_size
        return [order[i : i + mb] for i in range(0, len(order), mb)]

    @torch.no_grad()
    def no_grad_logprobs(self, model, batch: Batch, mbs: list[list[int]]) -> torch.Tensor:
        """(B, T) log-probs of every completion under `model` (pi_old or pi_ref), zero-padded."""
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
        if not is_out_of_memory(e):
            return
        t = int(batch.mask[rows].sum(1).max().item())
        p = max(len(batch.prompts[i]) for i in batch.row_prompt[rows].tolist())
        raise TrainingError(
            f"out of memory in a micro-batch of {len(rows)} sequences x {t} completion tokens "
            f"(prompts up to {p} tokens); lower train.micro_batch_size "
            f"(now {self.cfg.train.micro_batch_size}) or rollout.max_new_tokens "
            f"(now {self.cfg.rollout.max_new_tokens})"
        ) from e

    def rows_with_gradient(self, advantages: torch.Tensor) -> list[int]:
        """The rows the update's forward/backward must see. Without a KL term in the loss, a row
        whose advantage is 0 (every row of a group with no reward spread) adds exactly nothing to
        the loss or the gradient, while the loss's normalisation counts it all the same, so it is
        left out: most groups of a hard task have no spread, so this is most of the update's work.
        Several processes keep every row: DDP needs as many backward passes on each."""
        if self.reference is None and self.ctx.world == 1:
            return torch.nonzero(advantages != 0).flatten().tolist()
        return list(range(advantages.shape[0]))

    def update(self, batch: Batch, advantages: torch.Tensor) -> dict[str, float]:
        """mu passes over the batch, one optimizer step each. Returns step metrics (python floats),
        averaged over every process's rows that went through the update."""
        cfg, dev, ctx = self.cfg, self.device, self.ctx
        # The loss is normalised by the counts of the whole step (every process), and DDP / FSDP2
        # average gradients over processes, hence the factor `world`: the sum is the full gradient.
        total_seqs, total_tokens = (
            int(x) for x in distributed.all_sum([len(batch.texts), batch.mask.sum().item()], ctx)
        )
        rows_used = self.rows_with_gradient(advantages)
        mbs = self.micro_batches(batch, rows_used)
        used_seqs, used_tokens = (
            (total_seqs, total_tokens)
            if len(rows_used) == len(batch.texts)
            else (max(1, len(rows_used)), max(1.0, batch.mask[rows_used].sum().item()))
        )

        # pi_old is only needed when the batch is reused (mu > 1); with mu = 1 it equals pi_theta.
        old = self.no_grad_logprobs(self.model, batch, mbs) if cfg.train.mu > 1 else None
        ref = self.no_grad_logprobs(self.reference, batch, mbs) if self.reference is not None else None

        sums: dict[str, float] = {"loss": 0.0}  # stays 0 when no row carries a gradient
        gap = 0.0
        grad_norm = 0.0
        self.model.train()
        for epoch in range(cfg.train.mu):
            self.optimizer.zero_grad(set_to_none=True)
            for i, rows in enumerate(mbs):
                try:
                    with distributed.sync_gradients(self.scorer, i == len(mbs) - 1):
                        logp = self.logprobs(None, batch, rows)  # (b, t)
                        t = logp.shape[1]
                        mask = batch.mask[rows, :t].to(dev)
                        loss, m = objective.policy_loss(
                            logp,
                            mask,
                            advantages[rows].to(dev),
                            None if old is None else old[rows, :t].to(dev),
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
                # metrics are micro-batch means over its completions or its tokens: weighted by the
                # micro-batch's share of each, they sum to the whole step's means
                w_seq, w_tok = len(rows) / used_seqs, mask.sum().item() / used_tokens
                for k, v in m.items():
                    w = w_seq if k in objective.PER_SEQUENCE_METRICS else w_tok
                    sums[k] = sums.get(k, 0.0) + v.detach().float().item() * w / cfg.train.mu
                sums["loss"] = sums.get("loss", 0.0) + loss.detach().float().item() / cfg.train.mu
                if epoch == 0:  # engine numbers vs ours, on the tokens both computed
                    diff = (logp.detach().cpu() - batch.engine_logprobs[rows, :t]).abs() * mask.cpu()
                    gap = max(gap, diff.max().item())
            with_grad = [p for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(
                with_grad, cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else float("inf")
            )
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP2: DTensor
            loss_so_far = distributed.all_sum([sums["loss"]], ctx)[0]  # every process decides alike
            if not math.isfinite(grad_norm) or not math.isfinite(loss_so_far):
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
        keys = sorted(sums)
        out = dict(zip(keys, distributed.all_sum([sums[k] for k in keys], ctx)))
        out["grad_norm"] = grad_norm
        out["logprob_gap_max"] = gap
        out["update_rows_frac"] = len(rows_used) / max(1, len(batch.texts))  # this process's share
        return out

    def train_step(self) -> tuple[dict[str, Any], Batch]:
        """One step: rollout -> rewards -> advantages -> update. Returns its metrics row and batch."""
        cfg, g = self.cfg, self.cfg.rollout.group_size
        t0 = time.perf_counter()
        self.reward_faults = 0
        batch, rounds = self.collect()
        failure = self.reward_fn.end_step()  # a reward function that failed on everything for too long
        if distributed.any_rank(failure is not None, self.ctx):
            raise TrainingError(failure or "a reward function failed on every completion on another process")
        t1 = time.perf_counter()
        rewards = batch.rewards
        if self.reference is not None and cfg.objective.kl_in == "reward":
            ref = self.no_grad_logprobs(self.reference, batch, self.micro_batches(batch))
            rewards = objective.kl_in_reward(
                rewards,
                batch.engine_logprobs,
                ref,
                batch.mask,
                cfg.objective.beta,
                cfg.objective.kl_estimator,
            )
        adv, zero_std = objective.compute_advantages(
            rewards, g, cfg.objective.advantage, cfg.objective.std_ddof, cfg.objective.std_eps
        )
        t2 = time.perf_counter()
        m = self.update(batch, adv)
        t3 = time.perf_counter()
        lengths = batch.mask.sum(1)
        tokens = float(lengths.sum())
        r = batch.rewards.double()
        # over every process's rows: count, sum, sum of squares; summed -log pi and token count
        n, s1, s2, nll, all_tokens = distributed.all_sum(
            [
                r.numel(),
                r.sum().item(),
                (r * r).sum().item(),
                -(batch.engine_logprobs * batch.mask).sum().item(),
                tokens,
            ],
            self.ctx,
        )
        row = {
            "reward_mean": s1 / n,
            "reward_std": math.sqrt(max(0.0, s2 / n - (s1 / n) ** 2)),
            "accuracy": batch.correct.float().mean().item(),
            "format_error_rate": batch.format_error.float().mean().item(),
            "zero_std_frac": zero_std.float().mean().item(),
            "completion_len": lengths.mean().item(),
            # mean -log pi of sampled tokens: an unbiased estimate of the policy's entropy
            "entropy": nll / max(all_tokens, 1),
            "lr": self.scheduler.get_last_lr()[0],
            "time_rollout": t1 - t0,
            "time_reward_adv": t2 - t1,
            "time_update": t3 - t2,
            "time_step": t3 - t0,
            "tokens_per_s": tokens / max(t1 - t0, 1e-9),
            "resample_rounds": rounds,
            "reward_faults": self.reward_faults,
            "skipped_steps": self.skipped_steps,
            "peak_mem_mb": peak_memory_mb(),
            **m,
        }
        row.update(self.reward_fn.drain_metrics(reserved=row))  # what reward functions gave log_metric
        return row, batch

    def fit(self) -> dict[str, Any]:
        """Run to `train.steps` (or to a stop signal), evaluating and checkpointing on the way.

        Writes into the run folder only from here on (a failed start leaves it untouched). A resumed
        run first cuts its logs back to the checkpoint's step, so each step is logged once.
        """
        cfg, run_dir, ctx = self.cfg, self.run_dir, self.ctx
        main = ctx.main  # with several processes, rank 0 alone writes logs, plots and models
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if self.resumed_from is not None:
                for name in LOGS:
                    truncate_jsonl(run_dir / name, self.step)
            (run_dir / "config.yaml").write_text(dump_yaml(cfg))
        distributed.barrier(ctx)
        tracker = (
            make_tracker(
                run_dir,
                tensorboard=cfg.log.tensorboard,
                wandb=cfg.log.wandb,
                project=cfg.log.wandb_project,
                config=to_dict(cfg),
                resume_step=self.step,
            )
            if main
            else Tracker([])
        )
        samples_file = open(run_dir / "samples.jsonl", "a", encoding="utf-8") if main else None  # noqa: SIM115
        t_start = time.time()
        summary: dict[str, Any] = {"preset": cfg.preset, "run_dir": str(run_dir)}
        if self.resumed_from is not None:
            summary["resumed_from"] = str(self.resumed_from)
        if cfg.eval.before and self.before is None:
            self.before = self.run_eval("before")
        if cfg.eval.every and self.step == 0:  # the validation curve starts at the base model
            self.run_eval("val", samples=False, split="val")
        if self.before is not None:
            summary["before"] = self.before
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        signalled = [False]

        def request_stop(signum, frame):  # finish the current step, then checkpoint, save and plot
            signalled[0] = True

        for s in previous:
            signal.signal(s, request_stop)
        bar = Progress(cfg.train.steps, self.step, enabled=cfg.log.progress and main)
        g, every = cfg.rollout.group_size, cfg.checkpoint.every
        try:
            while self.step < cfg.train.steps and not self.stop_requested:
                t0 = time.perf_counter()
                try:
                    row, batch = self.train_step()
                except TrainingError:
                    # too many bad steps: the weights are still the last good ones (bad steps never
                    # reach them), so keep them, with the optimizer, for a resume with other settings
                    self.save_checkpoint()
                    raise
                self.step += 1
                self.train_time += time.perf_counter() - t0
                row = merge_rows(distributed.gather(row, ctx))
                tracker.log(self.step, row)
                if samples_file is not None:
                    write_samples(samples_file, self.step, batch, g, cfg.log.samples_per_step)
                bar.update(reward=row["reward_mean"], acc=row["accuracy"])
                if cfg.eval.every and (self.step % cfg.eval.every == 0 or self.step == cfg.train.steps):
                    self.run_eval("val", samples=False, split="val")
                if every and (self.step % every == 0 or self.step == cfg.train.steps):
                    self.save_checkpoint()
                # every process stops after the same step, whichever of them got the signal
                self.stop_requested = distributed.any_rank(signalled[0], ctx)
            if self.stop_requested and self.saved_step != self.step:
                self.save_checkpoint()
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
        summary["steps"] = self.step
        summary["interrupted"] = self.stop_requested
        summary["train_time_s"] = self.train_time  # the steps alone, without evaluation
        from .models import save_model

        weights = distributed.full_state_dict(self.model, ctx) if self.sharded else None  # collective
        if main:
            save_model(self.model, self.tokenizer, run_dir / "model", state_dict=weights)
        distributed.barrier(ctx)
        summary["model_dir"] = str(run_dir / "model")
        if cfg.eval.after and not self.stop_requested:
            summary["after"] = self.run_eval("after")
        if main:
            summary.update(eval_summary(run_dir))
        summary["wall_time_s"] = time.time() - t_start
        summary["peak_mem_mb"] = peak_memory_mb()
        summary["skipped_steps"] = self.skipped_steps
        summary["autocast"] = "bf16" if self.bf16 else "off"
        summary["processes"] = ctx.world
        if main:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def run_eval(self, tag: str, samples: bool = True, split: str = "heldout") -> dict[str, float]:
        """Evaluation at the current step on the held-out split (before and after training) or the
        validation split (tag "val", every eval.every steps): a row in evals.jsonl and, with
        `samples`, every completion in eval_<tag>.jsonl. With several processes each evaluates
        every world-th problem and the counts are combined."""
        from .evaluate import merge_evals

        t0 = time.perf_counter()
        ctx = self.ctx
        with distributed.unsharded(self.model):
            res = evaluate_heldout(
                self.engine,
                self.tokenizer,
                self.task,
                self.reward_fn,
                self.cfg,
                shard=(ctx.rank, ctx.world),
                progress=self.cfg.log.progress and ctx.main,
                split=split,
                step=self.step,
            )
        res = merge_evals(distributed.gather(res, ctx))
        res.metrics["time_s"] = time.perf_counter() - t0
        if ctx.main:
            if samples:
                write_jsonl(self.run_dir / f"eval_{tag}.jsonl", res.samples)
            with open(self.run_dir / "evals.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.step, "tag": tag, **res.metrics}) + "\n")
        return res.metrics


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


def prompt_generator(seed: int, index: int) -> torch.Generator:
    """The sampling generator of the run's index-th prompt: a function of (seed, index) alone."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def merge_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One metrics row from every process's: times and memory take the maximum, counts and
    throughput the sum, everything else the mean (each process holds the same number of rows)."""
    if len(rows) == 1:
        return rows[0]
    out = {}
    for k in dict.fromkeys(k for r in rows for k in r):  # a reward's log_metric may come from some only
        vals = [r[k] for r in rows if k in r]
        if k.startswith("time_") or k == "peak_mem_mb":
            out[k] = max(vals)
        elif k in ("tokens_per_s", "reward_faults"):
            out[k] = sum(vals)
        else:
            out[k] = sum(vals) / len(vals)
    return out


def write_samples(f, step: int, batch: Batch, g: int, k: int) -> None:
    """The first completion of each of the first k groups, as JSON lines."""
    for i in range(min(k, len(batch.texts) // g)):
        j = i * g
        sample = {
            "step": step,
            "prompt": batch.examples[j].prompt,
            "answer": batch.examples[j].answer,
            "completion": batch.texts[j],
            "reward": batch.rewards[j].item(),
            **batch.extras[j],
        }
        f.write(json.dumps(sample) + "\n")
    f.flush()


def cat_batches(a: Batch, b: Batch) -> Batch:
    t = max(a.mask.shape[1], b.mask.shape[1])

    def pad(x: torch.Tensor, value=0) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, t - x.shape[1]), value=value)

    return Batch(
        prompts=a.prompts + b.prompts,
        row_prompt=torch.cat([a.row_prompt, b.row_prompt + len(a.prompts)]),
        completion_ids=torch.cat([pad(a.completion_ids), pad(b.completion_ids)]),
        mask=torch.cat([pad(a.mask), pad(b.mask)]),
        engine_logprobs=torch.cat([pad(a.engine_logprobs), pad(b.engine_logprobs)]),
        rewards=torch.cat([a.rewards, b.rewards]),
        correct=torch.cat([a.correct, b.correct]),
        format_error=torch.cat([a.format_error, b.format_error]),
        texts=a.texts + b.texts,
        examples=a.examples + b.examples,
        extras=a.extras + b.extras,
    )


def select_groups(batch: Batch, groups: list[int], g: int) -> Batch:
    rows = [gi * g + j for gi in groups for j in range(g)]
    return Batch(
        prompts=[batch.prompts[gi] for gi in groups],
        row_prompt=torch.arange(len(groups)).repeat_interleave(g),
        completion_ids=batch.completion_ids[rows],
        mask=batch.mask[rows],
        engine_logprobs=batch.engine_logprobs[rows],
        rewards=batch.rewards[rows],
        correct=batch.correct[rows],
        format_error=batch.format_error[rows],
        texts=[batch.texts[i] for i in rows],
        examples=[batch.examples[i] for i in rows],
        extras=[batch.extras[i] for i in rows],
    )


def make_run_dir(cfg: Config) -> Path:
    """Fill {preset} and {time} in log.output_dir; refuse a folder that holds a run. The folder is
    created by `Trainer.fit`, so a start that fails (bad model, bad data) leaves nothing behind."""
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


def train(cfg: Config) -> dict[str, Any]:
    run_dir = make_run_dir(cfg)
    return Trainer(cfg, run_dir).fit()
