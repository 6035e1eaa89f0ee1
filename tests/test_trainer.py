"""The trainer end to end on the tiny random model: every preset runs, the update has the right
sign, beta = 0 builds no reference model, and the saved model reloads with transformers."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sft2grpo.config import SUPERVISED_PRESETS, list_presets, load_config
from sft2grpo.models import unwrap
from sft2grpo.run import fit, start
from sft2grpo.trainer import Trainer, lr_lambda, prompt_generator

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


@pytest.mark.parametrize("preset", [p for p in list_presets() if p not in SUPERVISED_PRESETS] + ["grpo+bf16"])
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
        # the engine's log-probs and the trainer's agree (same model, fp32); a preset whose sampler
        # decodes with a low-precision copy (run: int8), or bf16 autocast in the trainer (asked for,
        # or `auto` on a CPU with native bf16, as run_filter's), is further apart
        copy, bf16 = cfg.rollout.dtype != "model", trainer.bf16
        assert bf16 == bool(extra) or cfg.train.autocast == "auto"
        assert r["logprob_gap_max"] < (0.5 if bf16 or copy else 1e-3)
        assert (r["logprob_gap_mean"] > 1e-3) == (copy or bf16)
    changed = any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    assert changed, f"{preset}: no parameter moved"


def test_autocast_auto_is_bf16_only_where_it_is_native(tmp_path, monkeypatch):
    from sft2grpo import trainer as trainer_module

    for native in (False, True):
        monkeypatch.setattr(trainer_module, "has_fast_bf16", lambda device, native=native: native)
        trainer = Trainer(tiny_cfg(tmp_path, "grpo", "train.autocast=auto"), tmp_path / "run")
        assert trainer.bf16 == native
        assert trainer.cfg.train.autocast == "auto"  # a resumed run decides again, on its machine
    assert not Trainer(tiny_cfg(tmp_path, "grpo", "train.autocast=off"), tmp_path / "run").bf16
    # asked for explicitly where it is emulated: it runs, with a warning that says why it is slow
    monkeypatch.setattr(trainer_module, "has_fast_bf16", lambda device: False)
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


def test_rollout_seed_draws_other_answers_to_the_same_prompts(tmp_path):
    def draws(seed, index, stream=0):
        return torch.rand(4, generator=prompt_generator(seed, index, stream)).tolist()

    # stream 0 is the generator of runs made before rollout.seed existed: (seed, index) alone
    state = np.random.SeedSequence([3, 5]).generate_state(2, np.uint32)
    old = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    assert draws(3, 5) == torch.rand(4, generator=old).tolist()
    assert draws(3, 5, 1) == draws(3, 5, 1) != draws(3, 5)
    assert draws(3, 5, 1) != draws(3, 5, 2) and draws(3, 5, 1) != draws(3, 6, 1)

    # in a run: the same prompts in the same order, other completions
    a = Trainer(tiny_cfg(tmp_path / "a"), tmp_path / "a" / "run")
    b = Trainer(tiny_cfg(tmp_path / "b", "grpo", "rollout.seed=1"), tmp_path / "b" / "run")
    batch_a, batch_b = a.sample(start(a)), b.sample(start(b))
    assert batch_a.prompts == batch_b.prompts
    assert not torch.equal(batch_a.completion_ids, batch_b.completion_ids)


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
    state = start(trainer)
    batch, spent = trainer.collect(state)
    # all-equal rewards: both extra rounds are spent and the batch is topped up to its size;
    # rewards with spread in every group: the first round suffices
    assert spent == rounds
    assert len(batch.texts) == 2 * 4 and batch.row_prompt.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert state.pos == 2 * (1 + rounds)  # prompts consumed: one round of 2, plus each extra round


def test_rows_without_advantage_skip_the_update_and_change_no_gradient(tmp_path, monkeypatch):
    """no_kl: a row with advantage 0 adds nothing to the loss, so leaving it out of the forward/
    backward gives the same loss and gradient (up to float summation order)."""
    cfg = tiny_cfg(tmp_path, "no_kl", "train.mu=1")
    (tmp_path / "run").mkdir()
    skip, full = Trainer(cfg, tmp_path / "run"), Trainer(cfg, tmp_path / "run")  # same seed: same weights
    batch, _ = skip.collect(start(skip))
    adv = torch.tensor([1.0, -0.5, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0])  # group 1 has no reward spread
    seen: list[int] = []
    real = Trainer.logprobs

    def spy(self, model, batch, rows, temperature=None):
        if self is skip:
            seen.extend(rows)
        return real(self, model, batch, rows)

    monkeypatch.setattr(Trainer, "logprobs", spy)
    monkeypatch.setattr(full, "rows_with_gradient", lambda a: list(range(a.shape[0])))
    m_skip, _ = skip.update(start(skip), batch, adv, None, skip.rows_with_gradient(adv))
    m_full, _ = full.update(start(full), batch, adv, None, full.rows_with_gradient(adv))
    assert sorted(seen) == [0, 1, 2, 3]  # group 1 never went through the model
    assert m_skip["update_rows"] == 4 and m_full["update_rows"] == 8
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
    state = start(trainer)
    with pytest.raises(TrainingError, match="3 steps in a row had a NaN/inf loss"):
        fit(trainer, state)
    assert state.skipped_steps == 3
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [1, 2]  # the third bad step raises before logging


# -- the step against hand derivations ------------------------------------------------------------


def spy_step(trainer, monkeypatch, state=None):
    """Run one train_step (from `state`, default a fresh one) and record what flowed through it: the
    batch, advantages, pi_ref and micro-batches `update` got, every `policy_loss` call's arguments,
    every no-grad forward, and a copy of the policy as it was before the step."""
    from sft2grpo import objective

    seen = {"calls": [], "no_grad": [], "before": copy.deepcopy(trainer.model)}
    real_update, real_loss, real_nograd = trainer.update, objective.policy_loss, trainer.no_grad_logprobs

    def update(state, batch, adv, ref, with_gradient, given=None, sft_weight=1.0):
        seen.update(batch=batch, adv=adv, ref=ref, mbs=trainer.micro_batches(batch, with_gradient))
        return real_update(state, batch, adv, ref, with_gradient, given, sft_weight)

    def loss(logp, mask, adv, old=None, ref=None, **kw):
        seen["calls"].append({"old": None if old is None else old.clone(), "rows": logp.shape[0], **kw})
        return real_loss(logp, mask, adv, old, ref, **kw)

    def no_grad(model, *a, **k):
        seen["no_grad"].append(model)
        return real_nograd(model, *a, **k)

    monkeypatch.setattr(trainer, "update", update)
    monkeypatch.setattr(objective, "policy_loss", loss)
    monkeypatch.setattr(trainer, "no_grad_logprobs", no_grad)
    seen["row"], _ = trainer.train_step(state or start(trainer))
    return seen


def full_batch_logprobs(model, batch, temperature=1.0):
    """[B, T] log-probs of the batch's completions from one plain forward over whole rows (the
    oracle: no prompt sharing, no packing, no micro-batches)."""
    from oracles import token_logprobs

    from sft2grpo.models import left_pad

    pid, patt = left_pad([batch.prompts[i] for i in batch.row_prompt.tolist()], 0)
    ids = torch.cat([pid, batch.completion_ids], 1)
    att = torch.cat([patt, batch.mask.long()], 1)
    return token_logprobs(model, ids, att, batch.completion_ids.shape[1], temperature)


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_accumulated_gradient_is_the_full_batch_gradient(tmp_path, monkeypatch, aggregation):
    """8 rows in micro-batches of 3, 3, 2. policy_loss divides every micro-batch's sum by the whole
    batch's counts (sequences, or tokens for token_mean; max_len for Dr. GRPO), so the three losses
    add up to the full-batch loss, L = L1 + L2 + L3, and so do their gradients. Hence the gradient
    the trainer accumulated equals autograd of ONE policy_loss call on all 8 rows (GRPO's KL term
    included), computed here from a plain forward of the model as it was before the step."""
    from sft2grpo.config import loss_switches
    from sft2grpo.objective import policy_loss

    cfg = tiny_cfg(
        tmp_path,
        "grpo",
        f"objective.aggregation={aggregation}",
        "train.mu=1",
        "train.max_grad_norm=0",  # no clipping: compare the raw gradients
        f"reward.functions=['{TOY}:distinct']",  # every group has spread, so A != 0
    )
    trainer = Trainer(cfg, tmp_path / "run")
    seen = spy_step(trainer, monkeypatch)
    assert [c["rows"] for c in seen["calls"]] == [3, 3, 2]
    batch, model = seen["batch"], seen["before"]
    model.train()
    with torch.no_grad():
        ref = full_batch_logprobs(trainer.reference, batch)
    logp = full_batch_logprobs(model, batch)  # with grad
    switches = loss_switches(cfg.objective, cfg.rollout.max_new_tokens)
    loss, _ = policy_loss(logp, batch.mask, seen["adv"], None, ref, **switches)
    loss.backward()
    assert seen["row"]["loss"] == pytest.approx(loss.item(), rel=1e-4, abs=1e-6)
    grads = dict(trainer.model.named_parameters())
    worst = 0.0
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
        worst = max(worst, p.grad.abs().max().item())
    assert worst > 1e-4  # a real gradient, not two zeros


def test_pi_old_is_pass_zeros_forward_bit_for_bit(tmp_path, monkeypatch):
    """mu = 2: pass 1 needs pi_old, the policy before this step's first optimizer step. Pass 0 ran
    on exactly those weights, so its detached log-probs are pi_old; no extra forward is spent, and
    in fp32 on CPU they equal the no-grad forward of the pre-step model bit for bit."""
    cfg = tiny_cfg(tmp_path, "no_kl", "train.mu=2")  # ratio=token, beta=0: no reference model
    trainer = Trainer(cfg, tmp_path / "run")
    seen = spy_step(trainer, monkeypatch)
    assert seen["no_grad"] == []  # neither pi_old nor pi_ref cost a forward pass
    pass0, pass1 = seen["calls"][:3], seen["calls"][3:]
    assert all(c["old"] is None for c in pass0)  # pass 0: sg(pi_theta) is pi_old
    batch, mbs = seen["batch"], seen["mbs"]
    expected = trainer.no_grad_logprobs(seen["before"], batch, mbs)  # [B, T]
    for rows, c in zip(mbs, pass1, strict=True):
        t = c["old"].shape[1]
        assert torch.equal(c["old"], expected[rows, :t])


def test_ratio_none_without_tis_keeps_no_pi_old(tmp_path, monkeypatch):
    """ratio=none reads pi_old nowhere (pi / sg(pi)), and without TIS nothing else does: even with
    mu = 2 no pass gets one. With tis_cap set, pass 1 gets pass 0's log-probs for the TIS weight."""
    # rewards 0..3 in every group of 4: no advantage is 0, so no row skips the passes (beta = 0)
    spread = f"reward.functions=['{TOY}:distinct']"
    cfg = tiny_cfg(tmp_path, "no_is", "train.mu=2", "objective.beta=0", spread)
    seen = spy_step(Trainer(cfg, tmp_path / "run"), monkeypatch)
    assert len(seen["calls"]) == 6 and all(c["old"] is None for c in seen["calls"])
    cfg = tiny_cfg(tmp_path, "no_is", "train.mu=2", "objective.beta=0", "objective.tis_cap=2.0", spread)
    seen = spy_step(Trainer(cfg, tmp_path / "run2"), monkeypatch)
    assert [c["old"] is None for c in seen["calls"]] == [True] * 3 + [False] * 3


def test_kl_in_reward_moves_the_rewards_and_computes_pi_ref_once(tmp_path, monkeypatch):
    """kl_in=reward: r_i <- r_i - beta * sum_t k3_it with k3 = exp(d) - d - 1, d = log pi_ref - log pi
    at the sampled tokens (pi from the engine, the sampler). The advantages then come from those
    rewards: group_norm of r - beta * KL. pi_ref is one no-grad forward for the whole step, shared
    with the loss's logged KL."""
    from sft2grpo.objective import compute_advantages

    beta = 0.5
    cfg = tiny_cfg(
        tmp_path,
        "grpo",
        "objective.kl_in=reward",
        f"objective.beta={beta}",
        "train.lr=1e-2",
        f"reward.functions=['{TOY}:distinct']",  # spread in every group: the first step moves the policy
    )
    trainer = Trainer(cfg, tmp_path / "run")
    state = start(trainer)
    trainer.train_step(state)  # one update, so the policy and the reference differ
    seen = spy_step(trainer, monkeypatch, state)
    assert seen["no_grad"] == [trainer.reference]
    batch = seen["batch"]
    with torch.no_grad():
        ref = full_batch_logprobs(trainer.reference, batch)  # [B, T]
    d = (ref - batch.engine_logprobs) * batch.mask
    kl = ((torch.exp(d) - d - 1) * batch.mask).sum(1)  # [B] per completion
    assert kl.min() > 0  # the penalty is real on every completion
    rewards = batch.rewards - beta * kl
    adv, _ = compute_advantages(rewards, cfg.rollout.group_size, "group_norm")
    torch.testing.assert_close(seen["adv"], adv, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(adv, compute_advantages(batch.rewards, cfg.rollout.group_size, "group_norm")[0])


def test_tis_weights_the_loss_by_the_capped_engine_ratio(tmp_path):
    """TIS weights each token by min(pi_old / pi_engine, tis_cap). Here the engine reports log-probs
    shifted by a constant c from its true (fp32, equal to the trainer's up to ~1e-5) ones, as an
    engine with other numerics would: the ratio is then e^-c on every token. c = -log 4: ratio 4,
    capped at 2, so every weight is exactly 2 and the loss (REINFORCE, beta = 0: all of it is the
    weighted term -A log pi, and A = r != 0) and its gradient double. c = log 2: ratio 1/2, under
    the cap: both halve. The three runs sample the same completions from the same seed."""
    rows = {}
    for name, shift, cap in (("plain", 0.0, None), ("capped", -math.log(4), 2.0), ("half", math.log(2), 2.0)):
        extra = [] if cap is None else [f"objective.tis_cap={cap}"]
        cfg = tiny_cfg(
            tmp_path,
            "reinforce",
            "objective.beta=0",
            "train.max_grad_norm=0",
            f"reward.functions=['{TOY}:distinct']",
            *extra,
        )
        trainer = Trainer(cfg, tmp_path / name)
        generate = trainer.engine.generate

        def shifted(*a, shift=shift, generate=generate, **k):
            ro = generate(*a, **k)
            ro.logprobs = (ro.logprobs + shift) * ro.mask
            return ro

        trainer.engine.generate = shifted
        rows[name], _ = trainer.train_step(start(trainer))
    plain, capped, half = rows["plain"], rows["capped"], rows["half"]
    assert plain["grad_norm"] > 0 and "tis_weight_mean" not in plain
    assert capped["reward_mean"] == half["reward_mean"] == plain["reward_mean"]
    assert capped["tis_weight_mean"] == pytest.approx(2.0) and capped["tis_capped_frac"] == 1.0
    assert capped["loss"] == pytest.approx(2 * plain["loss"], rel=1e-6)
    assert capped["grad_norm"] == pytest.approx(2 * plain["grad_norm"], rel=1e-5)
    assert half["tis_weight_mean"] == pytest.approx(0.5, rel=1e-4) and half["tis_capped_frac"] == 0.0
    assert half["loss"] == pytest.approx(0.5 * plain["loss"], rel=1e-3)
    assert half["grad_norm"] == pytest.approx(0.5 * plain["grad_norm"], rel=1e-3)


def test_step_metrics_are_the_whole_batchs(tmp_path, monkeypatch):
    """adv_mean / adv_std are the mean and (population) std of the step's full advantage vector,
    not a mix of micro-batch statistics; with group_norm every group has mean 0 and std 1 (or is
    all 0), so by hand: mean 0, and std sqrt(share of groups with spread)."""
    cfg = tiny_cfg(tmp_path, "no_kl")
    seen = spy_step(Trainer(cfg, tmp_path / "run"), monkeypatch)
    adv, row = seen["adv"].double(), seen["row"]
    assert row["adv_mean"] == pytest.approx(adv.mean().item(), abs=1e-9)
    assert row["adv_std"] == pytest.approx(adv.std(unbiased=False).item(), rel=1e-6)
    assert row["adv_mean"] == pytest.approx(0.0, abs=1e-6)
    assert row["adv_std"] == pytest.approx(math.sqrt(1 - row["zero_std_frac"]), rel=1e-4)
    assert row["time_step"] >= row["time_rollout"] + row["time_reward"] + row["time_update"] - 1e-3


@pytest.mark.parametrize("packing", [True, False])
def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_gradient(tmp_path, packing):
    """train.gradient_checkpointing: each decoder layer runs forward twice per micro-batch (again in
    backward), the gradient is the one without it, and the reference model is not affected."""
    grads, calls = [], []
    for on in (False, True):
        cfg = tiny_cfg(tmp_path, "grpo", "train.mu=1", f"train.packing={packing}")
        cfg.train.gradient_checkpointing = on
        (tmp_path / "run").mkdir(exist_ok=True)
        tr = Trainer(cfg, tmp_path / "run")  # same seed: same weights
        if not on:
            batch, _ = tr.collect(start(tr))
            ref = tr.no_grad_logprobs(tr.reference, batch, tr.micro_batches(batch))
        adv = torch.tensor([1.0, -0.5, 0.5, -1.0, 0.25, 0.0, -0.25, 0.0])
        mlp = unwrap(tr.model).model.layers[0].mlp  # inside the layer's checkpointed forward
        n, forward = [0], mlp.forward  # counted in forward itself: torch runs no hooks in a recompute

        def counted(*a, forward=forward, n=n, **k):
            n[0] += 1
            return forward(*a, **k)

        mlp.forward = counted
        tr.update(start(tr), batch, adv, ref, list(range(8)))
        calls.append(n[0])
        grads.append([p.grad.clone() for p in tr.model.parameters()])
        assert not unwrap(tr.reference).model.layers[0].gradient_checkpointing
        assert unwrap(tr.model).model.layers[0].gradient_checkpointing == on
    # 8 rows in micro-batches of 3, 3, 2: one forward each when packed, two unpacked (the prompts,
    # then the completions on their cache); checkpointed, one forward over whole rows, recomputed
    assert calls == [3, 6] if packing else calls == [6, 6]
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(*grads))
    assert any(g.abs().max() > 0 for g in grads[1])
