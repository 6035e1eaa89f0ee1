"""The trainer end to end on the tiny random model: every preset runs, the update has the right
sign, beta = 0 builds no reference model, and the saved model reloads with transformers."""

import json
import math
from pathlib import Path

import pytest
import torch

from sft2grpo.config import list_presets, load_config
from sft2grpo.trainer import Trainer, lr_lambda

TOY = Path(__file__).parent / "toy_reward.py"


def tiny_cfg(tmp_path, preset="grpo", *extra):
    return load_config(
        preset,
        [
            "model.name=tiny",
            "task.size=16",
            "task.eval_size=4",
            "rollout.group_size=4",
            "rollout.max_new_tokens=8",
            "train.prompts_per_step=2",
            "train.micro_batch_size=3",  # 8 rows -> micro-batches of 3, 3, 2: accumulation is exercised
            "train.steps=2",
            "eval.before=false",
            "eval.after=false",
            "log.progress=false",
            "log.plots=false",
            f"reward.functions=['{TOY}:lowercase_share']",
            f"log.output_dir={tmp_path / 'run'}",
            *extra,
        ],
    )


@pytest.mark.parametrize("preset", list_presets() + ["grpo+bf16"])
def test_every_preset_trains(tmp_path, preset):
    extra = ["train.autocast=bf16"] if preset.endswith("+bf16") else []
    cfg = tiny_cfg(tmp_path, preset.split("+")[0], "train.lr=1e-3", *extra)
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run")
    assert (trainer.reference is None) == (cfg.objective.beta == 0)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["loss"] is not None and math.isfinite(r["loss"])
        assert r["skipped_steps"] == 0
        # the engine's log-probs and the trainer's agree (same model; fp32, or bf16 autocast)
        assert r["logprob_gap_max"] < (0.5 if extra else 1e-3)
    changed = any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    assert changed, f"{preset}: no parameter moved"


def test_autocast_auto_is_bf16_only_where_it_is_native(tmp_path, monkeypatch):
    from sft2grpo import models

    for native in (False, True):
        monkeypatch.setattr(models, "has_fast_bf16", lambda device, native=native: native)
        trainer = Trainer(tiny_cfg(tmp_path, "grpo", "train.autocast=auto"), tmp_path / "run")
        assert trainer.bf16 == native
        assert trainer.cfg.train.autocast == "auto"  # a resumed run decides again, on its machine
    assert not Trainer(tiny_cfg(tmp_path, "grpo", "train.autocast=off"), tmp_path / "run").bf16
    # asked for explicitly where it is emulated: it runs, with a warning that says why it is slow
    monkeypatch.setattr(models, "has_fast_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="train.autocast=bf16 on cpu without native bfloat16"):
        Trainer(tiny_cfg(tmp_path, "grpo", "train.autocast=bf16"), tmp_path / "run")


def test_rewards_rise_on_a_learnable_toy_task(tmp_path):
    """Reward = share of lowercase letters. With the right sign the policy writes more of them within a few
    dozen steps; with the wrong sign (or no learning) the share stays near chance."""
    cfg = tiny_cfg(
        tmp_path,
        "no_kl",
        "train.steps=25",
        "train.lr=3e-3",
        "train.prompts_per_step=4",
        "rollout.group_size=8",
        "train.micro_batch_size=32",
    )
    (tmp_path / "run").mkdir()
    Trainer(cfg, tmp_path / "run").fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["reward_mean"] for r in rows[:5]) / 5
    last = sum(r["reward_mean"] for r in rows[-5:]) / 5
    assert last > first + 0.15, (first, last)


def test_final_model_reloads_with_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_cfg(tmp_path, "no_kl", "train.steps=1", "eval.after=true", "eval.size=4")
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run")
    summary = trainer.fit()
    model_dir = Path(summary["model_dir"])
    reloaded = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = torch.tensor([tok.encode("12 + 3")])
    with torch.no_grad():
        a = reloaded(ids).logits
        b = trainer.model(ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert set(summary["after"]) >= {"accuracy", "format_error_rate", "completion_len"}
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["steps"] == 1


def test_lr_schedule_warmup_then_cosine():
    f = lr_lambda("cosine", warmup=2, total=6)
    # warmup 1/2, 2/2, then cosine over the 4 remaining updates: 1, cos(pi/4)-ish, 0.5, ...
    assert [round(f(s), 4) for s in range(6)] == [0.5, 1.0, 1.0, 0.8536, 0.5, 0.1464]
    assert lr_lambda("constant", 0, 10)(7) == 1.0


def test_lora_trains_only_the_adapter_and_uses_the_disabled_adapter_as_reference(tmp_path):
    cfg = tiny_cfg(
        tmp_path,
        "grpo",
        "model.lora.enabled=true",
        "model.lora.r=4",
        "train.lr=1e-2",
        "train.mu=1",
        "train.steps=3",
    )
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run")
    assert sum(p.numel() for p in trainer.reference.parameters()) == 0  # no second copy
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    trainer.fit()
    for n, p in trainer.model.named_parameters():
        if n in base:
            assert torch.equal(base[n], p), f"frozen base weight {n} moved"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # step 1 is scored before any update, when the adapter (B = 0) is a no-op: policy == reference
    assert rows[0]["kl"] < 1e-6
    # after the first update with a gradient (a step whose groups all have zero spread has none),
    # at lr 1e-2, they differ
    first = next(i for i, r in enumerate(rows) if r["grad_norm"] > 0)
    assert first < 2 and all(r["kl"] > 0 for r in rows[first + 1 :])
    assert all(math.isfinite(r["loss"]) for r in rows)


@pytest.mark.parametrize("fn,rounds", [("constant", 2), ("distinct", 0)])
def test_dynamic_sampling_resamples_only_groups_without_spread(tmp_path, fn, rounds):
    cfg = tiny_cfg(
        tmp_path,
        "dapo",
        f"reward.functions=['{TOY}:{fn}']",
        "rollout.max_resample_rounds=2",
    )
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run")
    batch, spent = trainer.collect()
    # all-equal rewards: both extra rounds are spent and the batch is topped up to its size;
    # rewards with spread in every group: the first round suffices
    assert spent == rounds
    assert len(batch.texts) == 2 * 4 and batch.row_prompt.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert trainer.pos == 2 * (1 + rounds)  # prompts consumed: one round of 2, plus each extra round


def test_rows_without_advantage_skip_the_update_and_change_no_gradient(tmp_path, monkeypatch):
    """no_kl: a row with advantage 0 adds nothing to the loss, so leaving it out of the forward/
    backward gives the same loss and gradient (up to float summation order)."""
    cfg = tiny_cfg(tmp_path, "no_kl", "train.mu=1")
    (tmp_path / "run").mkdir()
    skip, full = Trainer(cfg, tmp_path / "run"), Trainer(cfg, tmp_path / "run")  # same seed: same weights
    batch, _ = skip.collect()
    adv = torch.tensor([1.0, -0.5, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0])  # group 1 has no reward spread
    seen: list[int] = []
    real = Trainer.logprobs

    def spy(self, model, batch, rows):
        if self is skip:
            seen.extend(rows)
        return real(self, model, batch, rows)

    monkeypatch.setattr(Trainer, "logprobs", spy)
    monkeypatch.setattr(full, "rows_with_gradient", lambda a: list(range(a.shape[0])))
    m_skip, m_full = skip.update(batch, adv), full.update(batch, adv)
    assert sorted(seen) == [0, 1, 2, 3]  # group 1 never went through the model
    assert m_skip["update_rows_frac"] == 0.5 and m_full["update_rows_frac"] == 1.0
    # on-policy the ratio is 1: each row's token mean is -A_i, and the mean over all 8 rows (the
    # skipped ones still count) is -(1 - 0.5 + 0.5 + 0.25) / 8
    assert m_skip["loss"] == pytest.approx(-1.25 / 8, rel=1e-6)
    assert m_full["loss"] == pytest.approx(-1.25 / 8, rel=1e-6)
    grads = [(a.grad, b.grad) for a, b in zip(skip.model.parameters(), full.model.parameters())]
    assert all(ga is not None and torch.allclose(ga, gb, rtol=1e-4, atol=1e-8) for ga, gb in grads)
    assert any(ga.abs().max() > 0 for ga, _ in grads)
    # with a KL term every row has a gradient (pulled toward the reference): none is skipped
    kl = Trainer(tiny_cfg(tmp_path, "grpo", "train.mu=1"), tmp_path / "run")
    assert kl.rows_with_gradient(adv) == list(range(8))


def test_nan_steps_are_skipped_then_the_run_stops(tmp_path, monkeypatch):
    """A NaN loss never reaches the parameters; max_bad_steps of them in a row stop the run."""
    from sft2grpo import objective
    from sft2grpo.trainer import TrainingError

    real = objective.policy_loss

    def nan_loss(*args, **kwargs):
        loss, m = real(*args, **kwargs)
        return loss * float("nan"), m

    # grpo: with a KL term every row goes through the loss, so every step meets the NaN (no_kl skips
    # the forward of a step whose groups all lack a reward spread, and such a step is not bad)
    cfg = tiny_cfg(tmp_path, "grpo", "train.steps=5", "train.max_bad_steps=3", "train.mu=1")
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    monkeypatch.setattr(objective, "policy_loss", nan_loss)
    with pytest.raises(TrainingError, match="3 steps in a row had a NaN/inf loss"):
        trainer.fit()
    assert trainer.skipped_steps == 3
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [1, 2]  # the third bad step raises before logging
