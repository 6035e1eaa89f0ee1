"""Atomic checkpoints of a run, and finding the newest complete one to resume from.

A checkpoint is a folder `<run_dir>/checkpoints/step-000120/` holding
- `model/`: the policy as an HF folder (`save_pretrained`; with LoRA, the adapter only), which
  transformers and vLLM load as they are; with FSDP2, `shards/` instead: each process's shards of
  the weights and the optimizer state (torch.distributed.checkpoint), written in parallel;
- `trainer_state.pt`: optimizer, LR scheduler, every RNG state (python, numpy, torch, CUDA, the
  data order's generator), the data position, the prompt counter that seeds each prompt's sampling
  generator, and the counters;
- `state.json`: the step and a human-readable summary, written last.

It is written into `checkpoints/.tmp-step-000120/`, every file fsynced, then renamed into place
(a rename within one folder is atomic), so a folder named `step-*` is always complete; a crash while
writing leaves only a `.tmp-*` folder, which `latest` ignores and the next save removes. Older
checkpoints beyond `keep` are deleted only after the new one is in place. With several processes,
rank 0 does the renaming after every process has written its part (the run folder must be on a
file system they share).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.pt"
META_FILE = "state.json"
PREFIX = "step-"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the folder and the cause."""


def folder(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def complete(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (by step)."""
    root = folder(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if (
            p.is_dir()
            and p.name.startswith(PREFIX)
            and (p / META_FILE).is_file()
            and (p / STATE_FILE).is_file()
        ):
            try:
                found.append((int(p.name[len(PREFIX) :]), p))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = complete(run_dir)
    return found[-1] if found else None


def _fsync_tree(path: Path) -> None:
    """fsync every file under `path`, then the folders, so the data is on disk before the rename."""
    for root, _dirs, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(
    run_dir: str | Path,
    step: int,
    write_model,
    state: dict[str, Any],
    keep: int,
    summary: dict[str, Any] | None = None,
    ctx=None,
    write_shards=None,
) -> Path:
    """Write checkpoint `step` atomically and keep the newest `keep`. Returns its folder.

    `write_model(folder)` writes the model (and tokenizer) into a folder (rank 0 only);
    `write_shards(folder)`, when given, is called on every process (FSDP2's sharded state); `state`
    is everything else, saved by rank 0 with torch.save. Any OSError (disk full, permission) removes
    the partial folder, leaves the earlier checkpoints as they were and raises CheckpointError.
    """
    from . import distributed

    ctx = ctx or distributed.Context()
    root = folder(run_dir)
    final = root / name(step)
    tmp = root / f".tmp-{name(step)}"
    try:
        if ctx.main:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".tmp-*"):  # left by a crash during an earlier save
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        distributed.barrier(ctx)
        if write_shards is not None:
            write_shards(tmp / "shards")
        distributed.barrier(ctx)
        if not ctx.main:
            distributed.barrier(ctx)  # until rank 0 has renamed the folder
            return final
        if write_model is not None:
            write_model(tmp / "model")
        torch.save(state, tmp / STATE_FILE)
        meta = {"step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **(summary or {})}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        _fsync_tree(tmp)
        if final.exists():  # the same step saved again (e.g. interrupted right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync_dir(root)
    except OSError as e:
        if ctx.main:
            shutil.rmtree(tmp, ignore_errors=True)
        prev = latest(run_dir)
        kept = f"; the previous checkpoint {prev} is intact" if prev else ""
        raise CheckpointError(f"cannot write checkpoint {final}: {e.strerror or e}{kept}") from None
    for old in complete(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier(ctx)
    return final


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """FSDP2: every process writes its shards of the weights and the optimizer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    """FSDP2: read this process's shards back into the sharded model and optimizer (in place)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    src = Path(path) / "shards"
    if not src.is_dir():
        raise CheckpointError(f"{path}: no shards/ (was the run trained with train.parallel=fsdp2?)")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(src))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def load_state(path: str | Path) -> dict[str, Any]:
    """The `state` dict a checkpoint was saved with (on CPU)."""
    f = Path(path) / STATE_FILE
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"cannot read checkpoint {f}: {e}") from None


def load_model_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Copy the weights saved in checkpoint `path` into `model` (in place, bit for bit).

    The full model's `model/*.safetensors` (tied weights, such as SmolLM2's lm_head, are saved once)
    or, with LoRA, the adapter's weights.
    """
    from safetensors.torch import load_file

    from .models import is_peft, tied_names

    src = Path(path) / "model"
    if is_peft(model):
        from peft import set_peft_model_state_dict

        f = src / "adapter_model.safetensors"
        if not f.is_file():
            raise CheckpointError(f"{src}: no adapter_model.safetensors (was the run trained with LoRA?)")
        set_peft_model_state_dict(model, load_file(f))
        return
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{src}: no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(f))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = tied_names(model)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{src}: weights do not fit the model ({what}); was the config changed?")
