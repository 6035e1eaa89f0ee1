"""Data parallelism with PyTorch's own engines, started by torchrun.

    torchrun --nproc-per-node 8 -m sft2grpo train --config grpo train.parallel=fsdp2

Each rank (process) samples, scores and trains on its share of the step's prompts; whole groups
stay on one rank, so group statistics (the advantages) are exact without any communication. The
only collectives are the gradient reduction (DDP's all-reduce, or FSDP2's reduce-scatter), a few
scalars per step (loss normalisers, NaN checks, stop requests, metrics) and the evaluation counts.

- `ddp`: every rank holds the whole model; `DistributedDataParallel` all-reduces gradients.
- `fsdp2`: `fully_shard` on each decoder layer and on the root; parameters, gradients and
  optimizer state are sharded. Rollouts and evaluation run on the gathered weights (`unsharded`).

Launched without torchrun (no WORLD_SIZE in the environment), everything here is a no-op for one
process, so the single-process code path is the same code.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes logs, plots, summaries and model folders."""
        return self.rank == 0


def setup() -> Context:
    """Join the process group torchrun describes in the environment (idempotent); one process
    without torchrun gets a Context of world size 1 and no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local)  # "cuda" now means this rank's GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Context(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)


def shutdown() -> None:
    """Leave the process group once every process is done with it (a process that leaves while
    another still talks to it can abort the other's communication threads)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_sum(values: list[float], ctx: Context) -> list[float]:
    """Element-wise sum of `values` over ranks (float64)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def reduce_metrics(
    sums: dict[str, float], maxima: dict[str, float], ctx: Context
) -> tuple[dict[str, float], dict[str, float]]:
    """A step's metrics over every process: `sums` added up, `maxima` reduced with max (one
    collective each). The caller divides sums by summed counts afterwards, so a mean is the whole
    step's mean, never a mean of per-process means."""
    keys, mkeys = sorted(sums), sorted(maxima)
    if not ctx.enabled:
        return dict(sums), dict(maxima)
    added = all_sum([float(sums[k]) for k in keys], ctx)
    t = torch.tensor([float(maxima[k]) for k in mkeys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return dict(zip(keys, added)), dict(zip(mkeys, t.cpu().tolist()))


def any_rank(flag: bool, ctx: Context) -> bool:
    """True on every rank if it is True on any rank (stop requests, "needs more groups")."""
    return all_sum([float(flag)], ctx)[0] > 0


def broadcast(obj: Any, ctx: Context) -> Any:
    """Rank 0's `obj` on every rank (e.g. a run folder name with the time in it)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, ctx: Context) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()


class PolicyLogprobs(nn.Module):
    """The policy's log-prob computation as one module, so DDP sees one forward per micro-batch
    (its gradient hooks are armed by `forward`; `group_logprobs` calls the model twice)."""

    def __init__(self, model: nn.Module, temperature: float, packing: bool = True):
        super().__init__()
        self.policy, self.temperature, self.packing = model, temperature, packing

    def forward(self, prompts, row_prompt, completion_ids, mask, temperature=None) -> torch.Tensor:
        """Log-probs at the sampling temperature, or at `temperature` (given rows' cross-entropy: 1)."""
        from .models import completion_logprobs

        t = self.temperature if temperature is None else temperature
        return completion_logprobs(self.policy, prompts, row_prompt, completion_ids, mask, t, self.packing)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    from .models import unwrap

    inner = getattr(unwrap(model), "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError("train.parallel=fsdp2 needs a model with model.layers (llama, qwen, mistral)")
    return list(layers)


def parallelize(
    model: nn.Module, strategy: str, temperature: float, ctx: Context, packing: bool = True
) -> nn.Module:
    """The callable the update uses for the policy's log-probs: `PolicyLogprobs(model)`, wrapped in DDP,
    or over a model whose layers `fully_shard` has sharded (in place). Call before building the
    optimizer: FSDP2 replaces the parameters with sharded ones."""
    scorer = PolicyLogprobs(model, temperature, packing)
    if not ctx.enabled:
        return scorer
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [ctx.local_rank] if torch.cuda.is_available() else None
        return DDP(scorer, device_ids=ids)
    if strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(model)
        return scorer
    raise ValueError(f"train.parallel={strategy!r}: expected ddp or fsdp2")


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


@contextlib.contextmanager
def unsharded(model: nn.Module):
    """Inside, every FSDP2-sharded module holds its full parameters as plain tensors, so the
    rollout engines and the evaluation can run the model's submodules directly with no collective.
    Nothing happens for an unsharded model."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.unshard()
    try:
        yield model
    finally:
        for m in sharded:
            m.reshard()


def sync_gradients(module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Gradient accumulation: reduce only on the last micro-batch (DDP `no_sync`, FSDP2
    `set_requires_gradient_sync`)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if isinstance(module, DDP):
        return contextlib.nullcontext() if enabled else module.no_sync()
    inner = module.policy if isinstance(module, PolicyLogprobs) else module
    if is_fsdp(inner):
        inner.set_requires_gradient_sync(enabled)  # stays set until the next call
    return contextlib.nullcontext()


def full_state_dict(model: nn.Module, ctx: Context) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on CPU, gathered from FSDP2 shards (a collective: every rank calls
    it); None on ranks other than 0. For an unsharded model, its own state dict."""
    if not is_fsdp(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if ctx.main else None
