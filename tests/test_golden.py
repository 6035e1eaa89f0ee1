"""Golden numbers: every preset's loss and gradient on one fixed batch, pinned before the code moves.

A restructuring must move no number. This test builds the tiny random model, hands every preset
(configs/*.yaml, rung 0 included) the same batch, built here and not sampled (token ids, mask,
rewards and engine log-probs from a seeded torch generator, so it is the same on every CPU), runs
one full step on it (reference log-probs, advantages, mu optimisation passes with their optimizer
steps) and compares with tests/golden_presets.json:
- `loss`: the step's logged loss;
- `grad_dot`, `grad_sq`: the last pass's (clipped) gradient, dotted with fixed random weights and
  squared, summed over parameters (0 where the last of mu passes is clipped on every token: gspo,
  sft_o1; their earlier passes show in `param_dot`);
- `param_dot`: the parameters after the step, dotted with the same weights.

On the kind of CPU that wrote the file (torch's cpu capability) the numbers must be equal to the
bit; elsewhere matmuls round differently, so they must agree to 1e-4 relative.

    SFT2GRPO_WRITE_GOLDEN=1 pytest tests/test_golden.py     # write the file anew (never to make a change pass)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from sft2grpo.config import list_presets
from sft2grpo.models import completion_logprobs
from sft2grpo.rollout.batch import Batch

GOLDEN = Path(__file__).parent / "golden_presets.json"
GROUPS, G, T = 2, 4, 8  # 2 prompts x 4 completions of up to 8 tokens


def golden_cfg(tmp_path, preset):
    """test_trainer's tiny config (micro-batches of 3, 3, 2 over 8 rows), one step, fp32 on every CPU."""
    from test_trainer import tiny_cfg

    return tiny_cfg(
        tmp_path, preset, "train.steps=1", "train.lr=1e-3", "train.autocast=off", "sft_stage.steps=0"
    )


def fixed_rows(tr) -> dict:
    """The fixed batch's tensors: prompts of the task's first two problems, random completions."""
    g = torch.Generator().manual_seed(1234)
    vocab = tr.model.config.vocab_size
    examples = tr.task.train[:GROUPS]
    from sft2grpo.models import chat_prompt_ids

    prompts = chat_prompt_ids(tr.tokenizer, [e.chat for e in examples], None)
    B = GROUPS * G
    ids = torch.randint(3, vocab, (B, T), generator=g)  # [B, T]
    lengths = torch.tensor([8, 3, 5, 8, 1, 6, 8, 2])  # [B]
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()  # [B, T]
    rewards = torch.tensor([1.0, -1.0, 0.5, -1.0, 0.0, 0.25, 1.0, -2.0])  # [B]
    row_prompt = torch.arange(GROUPS).repeat_interleave(G)  # [B]
    with torch.no_grad():  # the engine's log-probs: the policy's own, nudged (a sampler's rounding)
        lp = completion_logprobs(tr.model, prompts, row_prompt, ids, mask, 1.0, True)
    engine = (lp + 0.01 * torch.randn(B, T, generator=g)) * mask
    return {
        "prompts": prompts,
        "row_prompt": row_prompt,
        "ids": ids,
        "mask": mask,
        "rewards": rewards,
        "engine": engine,
        "examples": [e for e in examples for _ in range(G)],
    }


def sampled_batch(rows: dict) -> Batch:
    B = rows["ids"].shape[0]
    return Batch(
        prompts=rows["prompts"],
        row_prompt=rows["row_prompt"],
        completion_ids=rows["ids"],
        mask=rows["mask"],
        engine_logprobs=rows["engine"],
        rewards=rows["rewards"],
        correct=rows["rewards"] > 0,
        format_error=torch.zeros(B, dtype=torch.bool),
        texts=["x"] * B,
        examples=rows["examples"],
        extras=[{} for _ in range(B)],
    )


def one_step(tmp_path, preset, monkeypatch) -> dict:
    """One step of `preset` on the fixed batch; the numbers this file pins."""
    from sft2grpo import run
    from sft2grpo.rollout.batch import Given
    from sft2grpo.sft import supervised_config
    from sft2grpo.trainer import Trainer

    cfg = golden_cfg(tmp_path, preset)
    supervised = cfg.train.rows == "given"
    (tmp_path / "run").mkdir()
    if supervised:
        cfg.train.prompts_per_step = GROUPS * G
        cfg = supervised_config(cfg)
    tr = Trainer(cfg, tmp_path / "run")
    state = run.start(tr)
    rows = fixed_rows(tr)
    batch = sampled_batch(rows)
    if supervised:  # the given rows: the same completions, as demonstrations of their own prompts
        given = Given(
            prompts=[rows["prompts"][i] for i in rows["row_prompt"].tolist()],
            row_prompt=torch.arange(GROUPS * G),
            completion_ids=rows["ids"],
            mask=rows["mask"],
            texts=["x"] * (GROUPS * G),
            examples=rows["examples"],
        )
        monkeypatch.setattr(tr, "demonstrations", lambda state: given)
    else:

        def collect(state):
            tr.times["rollout"] = 0.0
            return batch, 0

        monkeypatch.setattr(tr, "collect", collect)
    start = [p.detach().clone() for p in tr.model.parameters()]
    row, _ = tr.train_step(state)
    moved = any(not torch.equal(a, p) for a, p in zip(start, tr.model.parameters()))
    assert moved, f"{preset}: the step moved no parameter"
    g = torch.Generator().manual_seed(99)
    grad_dot = grad_sq = param_dot = 0.0
    for _, p in sorted(tr.model.named_parameters()):
        w = torch.randn(p.shape, generator=g, dtype=torch.float64)
        param_dot += float((p.detach().double() * w).sum())
        if p.grad is not None:
            grad_dot += float((p.grad.double() * w).sum())
            grad_sq += float((p.grad.double() ** 2).sum())
    return {"loss": float(row["loss"]), "grad_dot": grad_dot, "grad_sq": grad_sq, "param_dot": param_dot}


PRESETS = list_presets()


def _load() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_loss_and_gradient_match_the_golden_numbers(tmp_path, preset, monkeypatch):
    torch.manual_seed(0)
    got = one_step(tmp_path, preset, monkeypatch)
    cpu = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("SFT2GRPO_WRITE_GOLDEN"):
        data = _load()
        data.setdefault("cpu", cpu)
        data.setdefault("presets", {})[preset] = got
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return
    data = _load()
    assert preset in data.get("presets", {}), f"{preset}: no golden numbers; a new preset needs them written"
    want = data["presets"][preset]
    for key, value in want.items():
        if key == "loss" and preset == "sft0":
            # rung 0's logged loss was read off the update's log-prob gap to zero engine log-probs;
            # it is now the cross-entropy itself (objective.sft_loss), summed in another order
            assert got[key] == pytest.approx(value, rel=1e-6), f"{preset} {key}"
        elif cpu == data["cpu"]:
            assert got[key] == value, f"{preset} {key}: {got[key]!r} != golden {value!r}"
        else:
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{preset} {key}"
