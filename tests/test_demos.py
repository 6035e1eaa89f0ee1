"""Demonstrations inside RL: guide rows that join their group, SFT and RL in one loss, and
demonstrations that run out (task.demos). The defaults change nothing (tests/test_golden.py)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_trainer import TOY, full_batch_logprobs, spy_step, tiny_cfg

from sft2grpo import objective
from sft2grpo.config import ConfigError, TaskConfig, load_config, loss_switches
from sft2grpo.run import start
from sft2grpo.tasks import TaskError, epoch_order, load_task
from sft2grpo.trainer import Trainer

# -- guided groups: advantages by hand ----------------------------------------------------------------


def test_guide_row_gets_the_seeds_early_advantage():
    """One group of 4 sampled answers, none right: rewards -1, -1, -1, -2. Alone: mean -1.25, std
    sqrt(0.1875) = 0.433, so A = 0.577 for the -1s and -1.732 for the -2. With the reference answer
    (reward 1) as a fifth row: mean -0.8, deviations -0.2 x3, -1.2, 1.8, variance 4.8 / 5 = 0.96,
    std 0.980: A = -0.204 for the -1s, -1.225 for the -2 and +1.837 for the guide. The other
    group (right, wrong) is not guided and keeps its +1 / -1."""
    r = torch.tensor([-1.0, -1.0, -1.0, -2.0, 1.0, -1.0, 1.0, -1.0])
    alone, _ = objective.compute_advantages(r[:4], 4, "group_norm")
    torch.testing.assert_close(alone, torch.tensor([0.5774, 0.5774, 0.5774, -1.7321]), atol=1e-4, rtol=0)
    adv, guide, same = objective.guided_advantages(r, 4, torch.tensor([0]), torch.tensor([1.0]), "group_norm")
    torch.testing.assert_close(adv[:4], torch.tensor([-0.2041, -0.2041, -0.2041, -1.2247]), atol=1e-4, rtol=0)
    torch.testing.assert_close(guide, torch.tensor([1.8371]), atol=1e-4, rtol=0)
    assert adv[4:].tolist() == pytest.approx([1.0, -1.0, 1.0, -1.0], abs=1e-5) and same.tolist() == [
        False,
        False,
    ]
    # a group whose rewards are all equal has no signal alone; its guide gives it one
    flat = torch.tensor([-1.0] * 4)
    assert objective.compute_advantages(flat, 4, "group_norm")[0].abs().sum() == 0
    adv, guide, same = objective.guided_advantages(
        flat, 4, torch.tensor([0]), torch.tensor([1.0]), "group_norm"
    )
    assert guide.item() == pytest.approx(2.0, rel=1e-5) and adv.tolist() == pytest.approx(
        [-0.5] * 4, rel=1e-5
    )
    assert not same[0]
    # no guided group: exactly compute_advantages
    adv, guide, _ = objective.guided_advantages(r, 4, torch.zeros(0, dtype=torch.long), r[:0], "group_norm")
    assert torch.equal(adv, objective.compute_advantages(r, 4, "group_norm")[0]) and guide.numel() == 0


def test_guide_row_gradient_is_autograd_of_the_whole_group(tmp_path, monkeypatch):
    """objective.guide=always on the tiny model: every group of 4 sampled rows gets its worked
    solution as a fifth row, reward 1, on-policy ratio pi / sg(pi). The gradient the trainer
    accumulated over micro-batches equals autograd of one policy_loss over all 10 rows (8 sampled,
    2 guides, each with the advantage of its 5-row group), from a plain forward of the model as it
    was before the step."""
    cfg = tiny_cfg(
        tmp_path,
        "grpo",
        "objective.guide=always",
        "train.mu=1",
        "train.max_grad_norm=0",
        f"reward.functions=['{TOY}:distinct']",  # the 8 sampled rows get rewards 0..7
    )
    trainer = Trainer(cfg, tmp_path / "run")
    seen = spy_step(trainer, monkeypatch)
    batch, model = seen["batch"], seen["before"]
    assert len(batch.texts) == 10 and batch.given.tolist() == [False] * 8 + [True] * 2
    assert batch.row_prompt.tolist()[8:] == [0, 1] and batch.rewards[8:].tolist() == [1.0, 1.0]
    adv, guide, _ = objective.guided_advantages(
        batch.rewards[:8], 4, torch.tensor([0, 1]), batch.rewards[8:], "group_norm"
    )
    torch.testing.assert_close(seen["adv"], torch.cat([adv, guide]))
    assert seen["row"]["guided_frac"] == 1.0 and seen["row"]["guide_adv_mean"] == pytest.approx(
        guide.mean().item()
    )
    model.train()
    with torch.no_grad():
        ref = full_batch_logprobs(trainer.reference, batch)
    logp = full_batch_logprobs(model, batch)  # [10, T] with grad
    switches = loss_switches(cfg.objective, cfg.rollout.max_new_tokens)
    loss, _ = objective.policy_loss(logp, batch.mask, seen["adv"], None, ref, **switches)
    loss.backward()
    grads = dict(trainer.model.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    # the sampled rows' metrics leave the guides out: 8 rows, rewards 0..7 (with the guides: 3.0)
    assert seen["row"]["reward_mean"] == pytest.approx(3.5)


def test_no_right_guides_only_groups_without_a_right_answer(tmp_path):
    """The toy reward is never 'right' (chain_sum's verifier marks the tiny model's text wrong), so
    no_right guides every group; with a reward that marks answers right, none is guided."""
    cfg = tiny_cfg(tmp_path, "no_kl", "objective.guide=no_right", "train.mu=1")
    trainer = Trainer(cfg, tmp_path / "run")
    state = start(trainer)
    batch, _ = trainer.collect(state)
    assert not batch.correct.any()
    guided, groups = trainer.guide(batch)
    assert groups.tolist() == [0, 1] and guided.num_sampled == 8 and len(guided.texts) == 10
    batch.correct[:] = True
    unchanged, groups = trainer.guide(batch)
    assert unchanged is batch and groups.numel() == 0


# -- SFT and RL in one loss ----------------------------------------------------------------------


def grads_after(trainer, state, batch, given, w):
    adv = torch.tensor([1.0, -0.5, 0.5, -1.0, 0.25, 0.0, -0.25, 0.0])
    trainer.update(state, batch, adv, None, list(range(8)), given, w)
    return [p.grad.clone() for p in trainer.model.parameters()]


def test_sft_weight_ends_are_rl_alone_and_rung_0(tmp_path):
    """L = (1 - w) * surrogate + w * cross-entropy. w = 0 with the demonstrations present is the RL
    update alone (the golden presets' gradient); w = 1 with the sampled rows present is the
    cross-entropy alone, rung 0's gradient (the sft0 preset's update); 0.25 is the mix of the two."""
    cfg = tiny_cfg(tmp_path, "no_kl", "train.mu=1", "train.max_grad_norm=0")

    def fresh():  # the same seed: the same weights, the same first batch
        tr = Trainer(cfg, tmp_path / "run")
        state = start(tr)
        batch, _ = tr.collect(state)
        return tr, state, batch, tr.demonstrations_of(batch)[0]

    tr, state, batch, given = fresh()
    assert given is not None and len(given.texts) == 2  # both prompts have a worked solution
    rl = grads_after(tr, state, batch, None, 0.0)
    tr, state, batch, given = fresh()
    w0 = grads_after(tr, state, batch, given, 0.0)
    tr, state, batch, given = fresh()
    sums, _ = tr.update(state, None, None, None, None, given)
    ce = [p.grad.clone() for p in tr.model.parameters()]
    tr, state, batch, given = fresh()
    w1 = grads_after(tr, state, batch, given, 1.0)
    tr, state, batch, given = fresh()
    mixed = grads_after(tr, state, batch, given, 0.25)
    for a, b, c, d, m in zip(rl, w0, ce, w1, mixed):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(d, c, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(m, 0.75 * a + 0.25 * c, rtol=1e-4, atol=1e-6)
    assert sums["sft_loss"] > 0 and "rl_loss" not in sums


def test_sft_weight_schedule_falls_to_zero():
    fake = SimpleNamespace(cfg=load_config("no_kl", ["objective.sft_weight=0.5", "train.steps=10"]))
    assert [Trainer.sft_weight(fake, s) for s in (0, 5, 10)] == [0.5, 0.5, 0.5]
    fake.cfg.objective.sft_weight_schedule = "linear"
    assert [Trainer.sft_weight(fake, s) for s in (0, 5, 10)] == [0.5, 0.25, 0.0]


def test_mixed_run_logs_both_losses(tmp_path):
    cfg = tiny_cfg(tmp_path, "no_kl", "objective.sft_weight=0.5", f"reward.functions=['{TOY}:distinct']")
    trainer = Trainer(cfg, tmp_path / "run")
    row, _ = trainer.train_step(start(trainer))
    assert row["loss"] == pytest.approx(0.5 * row["rl_loss"] + 0.5 * row["sft_loss"], rel=1e-5)
    assert row["sft_loss"] > 1.0  # a random model's cross-entropy on worked solutions


# -- demonstrations that run out ------------------------------------------------------------------


def test_demos_keep_the_first_n_completions_and_the_same_heldout(tmp_path):
    every = load_task(TaskConfig(size=40, eval_size=10, val_size=5))
    few = load_task(TaskConfig(size=40, eval_size=10, val_size=5, demos=8))
    assert [e.prompt for e in few.train] == [e.prompt for e in every.train]  # RL draws from all 40
    assert all(e.completion for e in few.train[:8]) and not any(e.completion for e in few.train[8:])
    assert [e.completion for e in few.train[:8]] == [e.completion for e in every.train[:8]]
    assert few.eval == every.eval and few.val == every.val and few.stats["demos"] == 8
    sft = load_task(TaskConfig(size=40, eval_size=10, val_size=5, demos=8), supervised=True)
    assert [e.prompt for e in sft.train] == [e.prompt for e in every.train[:8]]  # rung 0: those 8 only
    assert sft.eval == every.eval


def test_demo_settings_are_checked():
    with pytest.raises(ConfigError, match="objective.sft_weight=1.5: must be in"):
        load_config("no_kl", ["objective.sft_weight=1.5"])
    with pytest.raises(ConfigError, match="objective.guide='always': guide rows have no engine log-probs"):
        load_config("no_kl", ["objective.guide=always", "objective.tis_cap=2"])
    with pytest.raises(ConfigError, match="task.demos=-1"):
        load_config("no_kl", ["task.demos=-1"])
    with pytest.raises(ConfigError, match="objective.sft_weight=0.5: mixes the cross-entropy into RL"):
        load_config("sft0", ["objective.sft_weight=0.5"])
    with pytest.raises(ConfigError, match="task.demo_share=1.5: must be in"):
        load_config("no_kl", ["task.demo_share=1.5"])
    with pytest.raises(ConfigError, match="task.demo_share=0.5: the difficulty filter picks"):
        load_config("no_kl", ["task.demo_share=0.5", "task.difficulty.mode=adaptive"])


def test_epoch_order_puts_a_share_of_demonstrated_problems_in_every_step():
    """20 problems, the first 3 with a demonstration, 4 prompts a step, share 0.5: k = 2 slots a
    step for the 3 demonstrated, 2 for the 17 others. The epoch is ceil(17 / 2) = 9 steps: every
    other problem once, one of them twice (its second permutation starts), the 3 demonstrated 18
    times in all, 6 each (whole permutations)."""
    demonstrated = [i < 3 for i in range(20)]
    order = epoch_order(np.random.default_rng(0), demonstrated, 4, 0.5)
    assert len(order) == 36
    for s in range(9):
        assert sum(i < 3 for i in order[4 * s : 4 * s + 4]) == 2
    counts = np.bincount(order, minlength=20)
    assert counts[:3].tolist() == [6, 6, 6]
    assert sorted(counts[3:].tolist()) == [1] * 16 + [2]
    # share 0 is the plain permutation, the stream a run without demo_share always drew
    assert epoch_order(np.random.default_rng(7), demonstrated, 4, 0.0) == (
        np.random.default_rng(7).permutation(20).tolist()
    )
    # every prompt demonstrated: 4 a step from the 3, an epoch of ceil(3 / 4) = 1 step
    ones = epoch_order(np.random.default_rng(0), demonstrated, 4, 1.0)
    assert len(ones) == 4 and all(i < 3 for i in ones)
    # a small share still gets one slot a step
    small = epoch_order(np.random.default_rng(1), demonstrated, 4, 0.1)
    assert [sum(i < 3 for i in small[4 * s : 4 * s + 4]) for s in range(len(small) // 4)] == [1] * 6
    with pytest.raises(TaskError, match="task.demo_share=0.5: no training problem has a demonstration"):
        epoch_order(np.random.default_rng(0), [False] * 5, 4, 0.5)


def test_demo_share_draws_demonstrated_prompts_each_step(tmp_path):
    """task.demos=4 of the tiny task's problems, demo_share 0.5, 2 prompts a step: every step's
    draw has exactly one demonstrated prompt, so guide rows and the mixed loss meet one each step."""
    cfg = tiny_cfg(tmp_path, "grpo", "task.demos=4", "task.demo_share=0.5", "train.prompts_per_step=2")
    tr = Trainer(cfg, tmp_path / "run")
    state = start(tr, None)
    for _ in range(6):
        examples = tr.draw(state)[0]
        assert sum(e.completion is not None for e in examples) == 1
