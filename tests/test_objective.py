"""Tests of objective.py: every expected value is derived by hand in a comment or computed by an
independent formula (numpy, F.cross_entropy, a slow per-token loop kept here and only here)."""

from __future__ import annotations

import inspect
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from sft2grpo.config import configs_dir, list_presets, load_config, loss_switches
from sft2grpo.objective import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    RATIOS,
    advantages_for_counts,
    compute_advantages,
    kl_in_reward,
    kl_penalty,
    policy_loss,
)

F64 = torch.float64
E = math.e

# the default switches of a test call; each test overrides what it is about
BASE = dict(
    ratio="token",
    clip=True,
    eps_low=0.2,
    eps_high=0.2,
    dual_clip=None,
    beta=0.0,
    kl_estimator="k3",
    kl_in="loss",
    aggregation="seq_mean_token_mean",
    max_len=None,
)


def sw(**kw) -> dict:
    return {**BASE, **kw}


def ragged_mask(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # [B, T] bool


def grad_of(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(loss, x)[0]


# ---------------------------------------------------------------------------------------------------
# The rungs


def test_rung1_sft_has_the_gradient_of_cross_entropy_on_the_right_answers_only():
    # 4 answers, rewards right / wrong / right / format error; relu keeps weight 1 on the right ones.
    # Seed eq. sft_loss: L = 1/|G| sum_{i right} CE_i, with CE_i the mean token cross-entropy of
    # answer i, i.e. |right|/|G| * (mean over right answers of CE_i) = 2/4 * mean(CE_0, CE_2).
    torch.manual_seed(0)
    b, t, v = 4, 5, 7
    logits = torch.randn(b, t, v, dtype=F64, requires_grad=True)
    targets = torch.randint(v, (b, t))
    lengths = [5, 3, 4, 2]
    mask = ragged_mask(lengths, t)
    rewards = torch.tensor([1.0, -1.0, 1.0, -2.0])
    cfg = load_config("onpolicy_sft")
    adv, _ = compute_advantages(rewards, 4, cfg.objective.advantage)
    logp = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)  # [B, T]
    loss, _ = policy_loss(logp, mask, adv, **loss_switches(cfg.objective, t))

    right = [0, 2]
    ce = torch.stack([F.cross_entropy(logits[i, : lengths[i]], targets[i, : lengths[i]]) for i in right])
    expected = len(right) / b * ce.mean()
    # ratio 'none' is pi/sg(pi): its value is 1, so the loss value is -mean(A) = -2/4, a constant;
    # its gradient is that of the cross-entropy, which is what trains the model
    torch.testing.assert_close(loss, torch.tensor(-0.5, dtype=F64))
    g = grad_of(loss, logits)
    torch.testing.assert_close(g, grad_of(expected, logits))
    assert torch.all(g[[1, 3]] == 0)  # wrong answers: exactly no gradient, not just a small one


def test_rung2_reinforce_gradient_is_reward_weighted_grad_log_pi():
    # L = -1/|G| sum_i r_i/|o_i| sum_t log pi_it, so dL/dlogp_it = -r_i / (|G| |o_i|) on valid tokens.
    cfg = load_config("reinforce")
    logp = -torch.rand(3, 4, dtype=F64).requires_grad_()
    mask = ragged_mask([4, 2, 1], 4)
    r = torch.tensor([1.0, -1.0, -2.0], dtype=F64)
    adv, _ = compute_advantages(r, 3, cfg.objective.advantage)
    loss, m = policy_loss(logp, mask, adv, **loss_switches(cfg.objective, 4))
    lengths = torch.tensor([4.0, 2.0, 1.0], dtype=F64)
    expected = -(r / (3 * lengths))[:, None] * mask
    torch.testing.assert_close(grad_of(loss, logp), expected)
    # and the value is the literal formula (ratio 'none' has value 1, so only its gradient is log pi's)
    torch.testing.assert_close(loss, -(r / 3).sum())
    assert m["ratio_mean"] == 1


def test_literal_rung3_clip_of_log_pi_drops_the_negative_gradient():
    # Why ratio='none' reads the seed's f_clip(log pi, A) as f_clip(pi/sg(pi), A): log pi <= 0, so
    # clip(log pi, 0.8, 1.2) = 0.8 always, and min(A log pi, 0.8 A) is 0.8 A (a constant) for A < 0.
    logp = torch.tensor([-0.5, -3.0], dtype=F64, requires_grad=True)
    a = torch.tensor([-1.0, -1.0], dtype=F64)
    literal = -torch.minimum(logp * a, logp.clamp(0.8, 1.2) * a).sum()
    assert torch.all(grad_of(literal, logp) == 0)
    ours, _ = policy_loss(logp[:, None], torch.ones(2, 1), a, **sw(ratio="none"))
    torch.testing.assert_close(grad_of(ours, logp), torch.tensor([0.5, 0.5], dtype=F64))  # -A/|G|


def test_ratio_none_is_one_with_the_gradient_of_log_pi_even_on_reused_data():
    logp = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    old = torch.tensor([[-3.0, -0.5]], dtype=F64)  # ignored: no importance sampling
    a = torch.tensor([2.0], dtype=F64)
    loss, m = policy_loss(logp, torch.ones(1, 2), a, old, **sw(ratio="none"))
    # value -A * 1 = -2; gradient -A/|o| = -1 per token, whatever pi_old was
    torch.testing.assert_close(loss, torch.tensor(-2.0, dtype=F64))
    torch.testing.assert_close(grad_of(loss, logp), torch.tensor([[-1.0, -1.0]], dtype=F64))
    assert m["ratio_mean"] == 1 and m["clip_frac_low"] == 0 and m["clip_frac_high"] == 0


def test_beta_old_penalises_the_ratio_instead_of_weighting_by_it():
    """objective.beta_old (the seed's "drop IS, read the ratio as a regulariser"): ratio none, A = 1,
    pi = (0.5, 0.25), pi_old = (0.4, 0.25), beta_old 2. k3 of token 0: 0.8 - log 0.8 - 1 = 0.02314,
    token 1: 0; loss -A + 2 * mean k3 = -1 + 0.02314. Gradient per token: -A/2 + 2/2 * (1 - pi_old /
    pi) = -0.5 + 0.2 for token 0 (pulled back toward pi_old), -0.5 for token 1. On pass 0 (old None:
    pi_old = sg(pi)) the penalty and its gradient are 0."""
    logp = torch.log(torch.tensor([[0.5, 0.25]], dtype=F64)).requires_grad_()
    old = torch.log(torch.tensor([[0.4, 0.25]], dtype=F64))
    a = torch.tensor([1.0], dtype=F64)
    loss, m = policy_loss(logp, torch.ones(1, 2), a, old, **sw(ratio="none", beta_old=2.0))
    torch.testing.assert_close(loss, torch.tensor(-1 + 0.0231436, dtype=F64), atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_of(loss, logp), torch.tensor([[-0.3, -0.5]], dtype=F64))
    assert m["kl_old"].item() == pytest.approx(0.0231436 / 2, abs=1e-6)
    loss, _ = policy_loss(logp, torch.ones(1, 2), a, None, **sw(ratio="none", beta_old=2.0))
    torch.testing.assert_close(grad_of(loss, logp), torch.tensor([[-0.5, -0.5]], dtype=F64))


def test_on_policy_token_ratio_equals_ratio_none():
    # With mu = 1 the trainer passes old_logp=None, so rung 4 coincides with rung 3 (value and grad).
    torch.manual_seed(1)
    logp = -torch.rand(4, 3, dtype=F64).requires_grad_()
    mask, a = ragged_mask([3, 1, 2, 3], 3), torch.randn(4, dtype=F64)
    l_tok, _ = policy_loss(logp, mask, a, **sw(ratio="token"))
    l_none, _ = policy_loss(logp, mask, a, **sw(ratio="none"))
    torch.testing.assert_close(l_tok, l_none)
    torch.testing.assert_close(grad_of(l_tok, logp), grad_of(l_none, logp))


# ---------------------------------------------------------------------------------------------------
# Advantages


def numpy_group_norm(counts: tuple[int, ...], values=(1.0, -1.0, -2.0), ddof=0) -> np.ndarray:
    r = np.repeat(values, counts)
    return (np.array(values) - r.mean()) / r.std(ddof=ddof)


SEED_TABLE = {  # counts of right / wrong / format error out of 1024 -> the seed's printed row
    (1, 127, 896): (8.41, 2.56, -0.37),
    (384, 512, 128): (1.43, -0.45, -1.38),
    (896, 127, 1): (0.38, -2.63, -4.14),
}


@pytest.mark.parametrize("counts", list(SEED_TABLE))
def test_group_norm_on_the_seed_groups_matches_numpy(counts):
    r = torch.tensor(np.repeat([1.0, -1.0, -2.0], counts), dtype=F64)
    adv, same = compute_advantages(r, 1024, "group_norm")
    first = np.cumsum(counts) - np.array(counts)  # index of each value's first copy
    np.testing.assert_allclose(adv[first].numpy(), numpy_group_norm(counts), rtol=1e-5)
    np.testing.assert_allclose(
        advantages_for_counts([1, -1, -2], list(counts)), numpy_group_norm(counts), rtol=1e-5
    )
    assert not same.any()


def test_seed_table_rows_checked():
    # Rows 1 and 3 follow from their counts with the population std (ddof=0) to 2 decimals; ddof=1
    # would print 2.55 (not 2.56) in row 1 and -4.13 (not -4.14) in row 3, so the seed used ddof=0.
    for counts in [(1, 127, 896), (896, 127, 1)]:
        assert np.round(advantages_for_counts([1, -1, -2], list(counts)), 2).tolist() == list(
            SEED_TABLE[counts]
        )
        assert np.round(advantages_for_counts([1, -1, -2], list(counts), ddof=1), 2).tolist() != list(
            SEED_TABLE[counts]
        )
    # Row 2 does not: 384/512/128 gives mean -0.375, std sqrt(1.234375) = 1.111 -> 1.24, -0.56, -1.46 (either ddof).
    np.testing.assert_allclose(
        advantages_for_counts([1, -1, -2], [384, 512, 128]), [1.2376, -0.5625, -1.4626], atol=1e-4
    )
    # The printed 1.43 / -0.45 / -1.38 is what about 314 / 569 / 141 out of 1024 gives.
    assert np.round(advantages_for_counts([1, -1, -2], [314, 569, 141]), 2).tolist() == [1.43, -0.45, -1.38]


def loop_advantages(r: list[float], n: int, estimator: str, ddof: int, eps: float) -> list[float]:
    """Slow reference: one group at a time, plain Python."""
    out = []
    for k in range(0, len(r), n):
        g = r[k : k + n]
        mean = sum(g) / n
        same = all(x == g[0] for x in g)
        std = math.sqrt(sum((x - mean) ** 2 for x in g) / max(n - ddof, 1))
        for i, x in enumerate(g):
            if estimator == "raw":
                out.append(x)
            elif estimator == "relu":
                out.append(max(x, 0.0))
            elif same:
                out.append(0.0)
            elif estimator == "group_norm":
                out.append((x - mean) / (std + eps))
            elif estimator == "group_norm_relu":
                out.append(max((x - mean) / (std + eps), 0.0))
            elif estimator == "group_mean":
                out.append(x - mean)
            elif estimator == "rloo":
                out.append(x - (sum(g) - g[i]) / (n - 1))
    return out


@pytest.mark.parametrize("estimator", list(ADVANTAGE_ESTIMATORS))
@pytest.mark.parametrize("ddof", [0, 1])
def test_advantages_match_the_loop_reference(estimator, ddof):
    r = [1.0, -1.0, -2.0, 1.0, 0.5, 0.5, 0.5, 0.5, -1.0, 0.0, 3.0, -1.0]  # 3 groups of 4, one constant
    adv, same = compute_advantages(torch.tensor(r, dtype=F64), 4, estimator, ddof)
    np.testing.assert_allclose(adv.numpy(), loop_advantages(r, 4, estimator, ddof, 1e-6), rtol=1e-12)
    assert same.tolist() == [False, True, False]


def test_rloo_and_group_mean_by_hand():
    # group [1, -1, -2]: mean -2/3; group_mean: [5/3, -1/3, -4/3];
    # rloo: 1 - (-3/2) = 2.5, -1 - (-1/2) = -0.5, -2 - 0 = -2 (= n/(n-1) * group_mean)
    r = torch.tensor([1.0, -1.0, -2.0], dtype=F64)
    torch.testing.assert_close(
        compute_advantages(r, 3, "group_mean")[0], torch.tensor([5, -1, -4], dtype=F64) / 3
    )
    torch.testing.assert_close(
        compute_advantages(r, 3, "rloo")[0], torch.tensor([2.5, -0.5, -2.0], dtype=F64)
    )


def test_group_norm_relu_by_hand():
    # GRPO without the negative gradient (grpo_no_neg). Group [1, -1, -1, 1]: mean 0, population
    # std 1, so group_norm is [1, -1, -1, 1] and ReLU keeps [1, 0, 0, 1].
    # Unequal counts, [1, -1, -1, -1]: mean -1/2, std sqrt(3)/2; group_norm [sqrt 3, -1/sqrt 3 (x3)]
    # -> [sqrt 3, 0, 0, 0]. A constant group [1, 1, 1, 1] stays 0 (no signal, as in group_norm).
    r = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0], dtype=F64)
    adv, same = compute_advantages(r, 4, "group_norm_relu", eps=0.0)
    s3 = math.sqrt(3)
    expected = [1.0, 0.0, 0.0, 1.0, s3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=F64))
    assert same.tolist() == [False, False, True]
    # it is group_norm through ReLU, with the default eps too
    torch.testing.assert_close(adv, compute_advantages(r, 4, "group_norm", eps=0.0)[0].clamp_min(0.0))
    torch.testing.assert_close(
        compute_advantages(r, 4, "group_norm_relu")[0],
        compute_advantages(r, 4, "group_norm")[0].clamp_min(0.0),
    )


def test_zero_std_groups_give_zero_advantage_and_a_finite_loss():
    # 0.1 is not exact in binary, so mean([0.1]*3) - 0.1 need not be 0; the answer must still be 0.
    r = torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0])
    for est in ("group_norm", "group_mean", "rloo"):
        adv, same = compute_advantages(r, 3, est, std_ddof=1)
        assert torch.all(adv[:6] == 0) and torch.all(adv[6:] != 0)
        assert same.tolist() == [True, True, False]
        logp = -torch.rand(9, 4, requires_grad=True)
        loss, m = policy_loss(logp, torch.ones(9, 4), adv, **sw())
        g = grad_of(loss, logp)
        assert torch.isfinite(loss) and torch.isfinite(g).all() and torch.all(g[:6] == 0)
    # a group of one is always "all equal": zero, not NaN, even with ddof=1
    adv, same = compute_advantages(torch.tensor([2.0, -1.0]), 1, "group_norm", std_ddof=1)
    assert adv.tolist() == [0.0, 0.0] and same.all()


# ---------------------------------------------------------------------------------------------------
# Clipping


def one_token(log_ratio: list[float], adv: list[float]):
    """B sequences of one token each, pi_old = 1 (log 0), so ratio_i = exp(log_ratio_i)."""
    logp = torch.tensor(log_ratio, dtype=F64)[:, None].requires_grad_()
    return logp, torch.ones_like(logp), torch.tensor(adv, dtype=F64), torch.zeros_like(logp)


def test_clip_zeroes_the_gradient_exactly_where_the_clipped_branch_wins():
    # ratios e, e, 1/e, 1/e with A = +1, -1, +1, -1, eps_low 0.2, eps_high 0.28:
    #  0: A>0, ratio e > 1.28: min(e, 1.28) = 1.28, clipped, gradient 0       (clip_frac_high)
    #  1: A<0, ratio e:        min(-e, -1.28) = -e, unclipped, d(-obj)/dlogp = e
    #  2: A>0, ratio 1/e:      min(1/e, 0.8) = 1/e, unclipped, d(-obj)/dlogp = -1/e
    #  3: A<0, ratio 1/e < 0.8: min(-1/e, -0.8) = -0.8, clipped, gradient 0   (clip_frac_low)
    logp, mask, a, old = one_token([1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0])
    loss, m = policy_loss(logp, mask, a, old, **sw(eps_high=0.28))
    torch.testing.assert_close(loss, torch.tensor((-1.28 + E - 1 / E + 0.8) / 4, dtype=F64))
    expected = torch.tensor([[0.0], [E / 4], [-1 / E / 4], [0.0]], dtype=F64)
    torch.testing.assert_close(grad_of(loss, logp), expected)
    assert m["clip_frac_high"] == 0.25 and m["clip_frac_low"] == 0.25
    torch.testing.assert_close(m["ratio_mean"], torch.tensor((2 * E + 2 / E) / 4, dtype=F64))

    # clip off: plain importance-weighted loss, every token has gradient -A * ratio / 4
    loss, m = policy_loss(logp, mask, a, old, **sw(clip=False))
    torch.testing.assert_close(grad_of(loss, logp), (-a * torch.exp(logp.detach()[:, 0]) / 4)[:, None])
    assert m["clip_frac_high"] == 0 and m["clip_frac_low"] == 0


def test_dual_clip_caps_the_loss_of_negative_advantages():
    # c = 3, A = -1:
    #  0: ratio e^2 = 7.39: PPO loss -min(-7.39, -1.2) = 7.39 > 3, so the loss is 3, gradient 0
    #  1: ratio e = 2.72 < 3: loss stays e, gradient e/3
    #  2: A = +1, ratio e^2: the upper clip gives loss -1.2, gradient 0; dual clip ignores A > 0
    logp, mask, a, old = one_token([2.0, 1.0, 2.0], [-1.0, -1.0, 1.0])
    loss, m = policy_loss(logp, mask, a, old, **sw(dual_clip=3.0))
    torch.testing.assert_close(loss, torch.tensor((3 + E - 1.2) / 3, dtype=F64))
    torch.testing.assert_close(grad_of(loss, logp), torch.tensor([[0.0], [E / 3], [0.0]], dtype=F64))
    torch.testing.assert_close(m["clip_frac_dual"], torch.tensor(1 / 3, dtype=F64))


# ---------------------------------------------------------------------------------------------------
# KL


def test_kl_estimators_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -0.7]], dtype=F64)
    ref = torch.tensor([[-2.0, -1.0, -0.7]], dtype=F64)
    # d = logp - ref = 1, -1, 0
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([[1.0, -1.0, 0.0]], dtype=F64))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([[0.5, 0.5, 0.0]], dtype=F64))
    # k3 = exp(ref - logp) - (ref - logp) - 1: e^-1 + 1 - 1 = 1/e; e - (-1)... = e + 1 - 1 - ... = e - 2
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.tensor([[1 / E, E - 2, 0.0]], dtype=F64))


def test_k3_is_nonnegative_zero_at_equality_and_unbiased():
    torch.manual_seed(2)
    logp, ref = -5 * torch.rand(50, 8, dtype=F64), -5 * torch.rand(50, 8, dtype=F64)
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, logp, "k3") == 0).all()
    # unbiased: the exact expectation over tokens x ~ p of k1 and k3 is KL(p || q) = sum p log(p/q)
    p = torch.softmax(torch.randn(6, dtype=F64), 0)
    q = torch.softmax(torch.randn(6, dtype=F64), 0)
    kl = (p * (p / q).log()).sum()
    for est in ("k1", "k3"):
        torch.testing.assert_close((p * kl_penalty(p.log()[None], q.log()[None], est)[0]).sum(), kl)


def test_kl_in_the_loss_is_beta_times_mean_k3():
    # A = 0 makes the policy term 0, so loss = beta * 1/|o| sum_t k3 = 0.04 * (1/e + e - 2) / 2
    logp = torch.tensor([[-1.0, -2.0, 0.0]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-2.0, -1.0, 5.0]], dtype=F64)  # the third token is padding
    mask = ragged_mask([2], 3)
    loss, m = policy_loss(logp, mask, torch.zeros(1, dtype=F64), None, ref, **sw(beta=0.04))
    torch.testing.assert_close(loss, torch.tensor(0.04 * (1 / E + E - 2) / 2, dtype=F64))
    torch.testing.assert_close(m["kl"], torch.tensor((1 / E + E - 2) / 2, dtype=F64))
    # d k3 / d logp = 1 - exp(ref - logp): 1 - 1/e and 1 - e; padding gets nothing
    expected = 0.04 / 2 * torch.tensor([[1 - 1 / E, 1 - E, 0.0]], dtype=F64)
    torch.testing.assert_close(grad_of(loss, logp), expected)
    # kl_in='reward': no KL in the loss, and no reference needed
    loss, m = policy_loss(logp, mask, torch.zeros(1, dtype=F64), **sw(beta=0.04, kl_in="reward"))
    assert loss == 0 and "kl" not in m


def test_kl_in_reward_subtracts_beta_times_summed_kl():
    # k1 per token = logp_old - ref: row 0: 1 + 0.5 (third token padding), row 1: -1
    rewards = torch.tensor([1.0, -1.0], dtype=F64)
    old = torch.tensor([[-1.0, -1.0, 0.0], [-3.0, 0.0, 0.0]], dtype=F64)
    ref = torch.tensor([[-2.0, -1.5, -9.0], [-2.0, 0.0, 0.0]], dtype=F64)
    out = kl_in_reward(rewards, old, ref, ragged_mask([2, 1], 3), 0.1, "k1")
    torch.testing.assert_close(out, torch.tensor([1 - 0.1 * 1.5, -1 + 0.1 * 1.0], dtype=F64))


# ---------------------------------------------------------------------------------------------------
# Aggregation


def aggregation_case():
    # token ratios 1, 2, 3 | 4 | (empty row), A = 1, no clip: per-token loss -1, -2, -3 | -4 | -
    # Padding holds -inf in logp, as some engines write it: it must not leak into loss or gradient.
    r = torch.tensor([[1.0, 2.0, 3.0], [4.0, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64)
    mask = ragged_mask([3, 1, 0], 3)
    logp = torch.where(mask, r.log() - 1.0, -math.inf).requires_grad_()
    old = torch.full((3, 3), -1.0, dtype=F64)
    return logp, mask, torch.ones(3, dtype=F64), old


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        ("seq_mean_token_mean", (-(1 + 2 + 3) / 3 - 4 / 1 + 0) / 3),  # mean over 3 answers of token means
        ("token_mean", -(1 + 2 + 3 + 4) / 4),  # every valid token weighs 1/4
        ("seq_mean_token_sum_norm", (-(1 + 2 + 3) / 4 - 4 / 4 + 0) / 3),  # token sums / max_len 4
    ],
)
def test_aggregations_on_ragged_masks(aggregation, expected):
    logp, mask, a, old = aggregation_case()
    loss, _ = policy_loss(logp, mask, a, old, **sw(clip=False, aggregation=aggregation, max_len=4))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64))
    g = grad_of(loss, logp)
    assert torch.isfinite(g).all() and torch.all(g[~mask] == 0)


# ---------------------------------------------------------------------------------------------------
# The slow reference: one sequence, one token at a time.


def loop_loss(logp, mask, adv, old, ref, s: dict) -> torch.Tensor:
    b, t = logp.shape
    lengths = [int(mask[i].sum()) for i in range(b)]
    total_tokens = max(sum(lengths), 1)
    total = logp.new_zeros(())
    for i in range(b):
        n = lengths[i]
        if s["ratio"] == "sequence":  # GSPO's definition, no stop-gradient needed for a sum of s_i
            s_i = torch.exp(sum((logp[i, k] - old[i, k] for k in range(n)), logp.new_zeros(())) / max(n, 1))
        for k in range(n):
            if s["ratio"] == "none":
                rho = torch.exp(logp[i, k] - logp[i, k].detach())
            elif s["ratio"] == "token":
                rho = torch.exp(logp[i, k] - old[i, k])
            else:
                rho = s_i
            a = adv[i]
            obj = rho * a
            if s["clip"]:
                obj = torch.minimum(obj, torch.clamp(rho, 1 - s["eps_low"], 1 + s["eps_high"]) * a)
            term = -obj
            if s["dual_clip"] is not None and a < 0:
                term = torch.minimum(term, -s["dual_clip"] * a)
            if s["kl_in"] == "loss" and s["beta"] > 0:
                d = ref[i, k] - logp[i, k]
                term = term + s["beta"] * (torch.exp(d) - d - 1)
            if s["aggregation"] == "seq_mean_token_mean":
                total = total + term / n / b
            elif s["aggregation"] == "token_mean":
                total = total + term / total_tokens
            else:
                total = total + term / s["max_len"] / b
    return total


def random_batch(seed: int, b: int = 6, t: int = 5, spread: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g, dtype=F64) * 3 - 0.05
    old = logp + spread * torch.randn(b, t, generator=g, dtype=F64)
    ref = logp + 0.3 * torch.randn(b, t, generator=g, dtype=F64)
    adv = torch.randn(b, generator=g, dtype=F64)
    mask = ragged_mask([5, 2, 0, 4, 1, 3][:b], t)
    return logp, mask, adv, old, ref


COMBOS = [
    sw(ratio=r, aggregation=ag, clip=c, dual_clip=d, beta=bt, max_len=7)
    for r in RATIOS
    for ag in AGGREGATIONS
    for c in (False, True)
    for d in (None, 2.0)
    for bt in (0.0, 0.1)
]


@pytest.mark.parametrize(
    "s",
    COMBOS,
    ids=lambda s: "-".join(str(s[k]) for k in ("ratio", "aggregation", "clip", "dual_clip", "beta")),
)
def test_vectorised_loss_matches_the_loop_and_micro_batches_add_up(s):
    logp0, mask, adv, old, ref = random_batch(3)
    logp = logp0.clone().requires_grad_()
    loss, m = policy_loss(logp, mask, adv, old, ref, **s)
    g = grad_of(loss, logp)
    x = logp0.clone().requires_grad_()
    expected = loop_loss(x, mask, adv, old, ref, s)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(g, grad_of(expected, x))
    assert all(not v.requires_grad for v in m.values())

    # Gradient accumulation: micro-batches, each cut to its own longest row as the trainer does,
    # normalised by the whole batch's counts, sum to the full-batch loss and gradient.
    x = logp0.clone().requires_grad_()
    parts = []
    for rows in ([0, 1], [2], [3, 4, 5]):
        t = max(int(mask[rows].sum(1).max()), 1)
        part, _ = policy_loss(
            x[rows, :t],
            mask[rows, :t],
            adv[rows],
            old[rows, :t],
            ref[rows, :t],
            total_seqs=6,
            total_tokens=int(mask.sum()),
            **s,
        )
        parts.append(part)
    total = torch.stack(parts).sum()
    torch.testing.assert_close(total, loss)
    torch.testing.assert_close(grad_of(total, x), g)


def test_sequence_ratio_equals_its_definition():
    # s_i = (prod_t pi_t / pi_old_t)^(1/|o_i|); with A = (1, 0, ...), no clip, seq_mean_token_mean,
    # loss = -(1/B) * sum_i A_i s_i, so its value and its gradient are those of s_0 (times -1/B).
    logp0, mask, _, old, _ = random_batch(4)
    adv = torch.zeros(6, dtype=F64)
    adv[0] = 1.0
    x = logp0.clone().requires_grad_()
    loss, _ = policy_loss(x, mask, adv, old, **sw(ratio="sequence", clip=False))
    y = logp0.clone().requires_grad_()
    n = int(mask[0].sum())
    s0 = torch.prod(torch.exp(y[0, :n] - old[0, :n])) ** (1 / n)
    torch.testing.assert_close(loss, -s0 / 6)
    torch.testing.assert_close(grad_of(loss, x), grad_of(-s0 / 6, y))
    # clipping is one decision per sequence: its tokens are clipped all together or not at all
    _, m = policy_loss(logp0, mask, adv.abs() + 1, old, **sw(ratio="sequence", eps_low=1e-4, eps_high=1e-4))
    lengths = mask.sum(1).tolist()
    frac = float(m["clip_frac_high"]) * sum(lengths)
    assert any(abs(frac - sum(sub)) < 1e-9 for sub in _subset_sums(lengths))


def _subset_sums(xs: list[float]) -> list[list[float]]:
    out: list[list[float]] = [[]]
    for x in xs:
        out += [s + [x] for s in out]
    return out


# ---------------------------------------------------------------------------------------------------
# Presets


EXPECTED_PRESETS = {
    "onpolicy_sft",
    "reinforce",
    "reward_norm",
    "importance",
    "grpo",
    "sft_o1",
    "no_is",
    "no_is_mu1",
    "no_is_prox",
    "no_kl",
    "grpo_no_neg",
    "grpo_no_norm",
    "dr_grpo",
    "dapo",
    "gspo",
    "rloo",
}


def test_presets_exist_load_and_say_which_rung_they_are():
    assert EXPECTED_PRESETS <= set(list_presets())
    for path in sorted(Path(configs_dir()).glob("*.yaml")):
        text = path.read_text()
        assert text.startswith("#"), f"{path.name}: first line should say which rung / equation it is"
        assert "objective" in yaml.safe_load(text), path.name
        load_config(path)  # raises ConfigError on any bad key or value


def test_preset_switches_of_the_ladder():
    o = {p: load_config(p).objective for p in EXPECTED_PRESETS}
    assert [o[p].advantage for p in ("onpolicy_sft", "reinforce", "reward_norm", "importance", "grpo")] == [
        "relu",
        "raw",
        "group_norm",
        "group_norm",
        "group_norm",
    ]
    assert o["grpo"].beta == 0.04 and o["grpo"].kl_estimator == "k3" and o["grpo"].kl_in == "loss"
    assert o["no_kl"].beta == 0 and o["no_is"].ratio == "none" and o["gspo"].ratio == "sequence"
    assert (o["dapo"].eps_low, o["dapo"].eps_high, o["dapo"].aggregation) == (0.2, 0.28, "token_mean")
    assert load_config("dapo").rollout.dynamic_sampling and load_config("sft_o1").train.mu == 4
    # the leave-one-out ablations: GRPO with one trick removed, the rest GRPO's
    grpo = load_config("grpo")
    no_neg, no_norm = load_config("grpo_no_neg"), load_config("grpo_no_norm")
    assert no_neg.objective == replace(grpo.objective, advantage="group_norm_relu")
    assert no_norm.objective == replace(grpo.objective, advantage="raw", clip=False)
    assert no_neg.train.mu == no_norm.train.mu == grpo.train.mu == 2
    # three ways to drop IS: reuse unguarded, stay on-policy, reuse with a KL to pi_old
    no_is, mu1, prox = load_config("no_is"), load_config("no_is_mu1"), load_config("no_is_prox")
    assert no_is.objective == mu1.objective == replace(grpo.objective, ratio="none")
    assert (no_is.train.mu, mu1.train.mu, prox.train.mu) == (2, 1, 2)
    assert prox.objective == replace(no_is.objective, beta_old=5.0)


def test_loss_switches_are_exactly_policy_loss_keywords():
    cfg = load_config("dr_grpo")
    s = loss_switches(cfg.objective, 64)
    params = inspect.signature(policy_loss).parameters
    keyword_only = {k for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
    keyword_only -= {"total_seqs", "total_tokens", "behavior_logp"}  # data, not switches
    assert set(s) == keyword_only
    assert s["max_len"] == 64  # max_len: null -> the rollout's max_new_tokens
    assert loss_switches(load_config("dr_grpo", ["objective.max_len=100"]).objective, 64)["max_len"] == 100


@pytest.mark.parametrize("preset", sorted(EXPECTED_PRESETS))
def test_gradcheck_every_preset(preset):
    # gradcheck compares autograd with finite differences, which see through stop-gradients (sg);
    # so check the preset's loss with each sg frozen at the current point (what sg means), then
    # check that the preset's own path (old_logp None, ratio 'none', GSPO's sg form) has that gradient.
    cfg = load_config(preset)
    s = loss_switches(cfg.objective, 4)
    o = cfg.objective
    spread = 2 * min(o.eps_low, o.eps_high) if o.clip else 0.3  # some tokens inside the clip range
    logp0, mask, _, old, ref = random_batch(7, t=4, spread=spread)
    rewards = torch.tensor([1.0, -1.0, -2.0, 1.0, 1.0, -1.0], dtype=F64)
    adv, _ = compute_advantages(rewards, 3, o.advantage, o.std_ddof, o.std_eps)
    penalty = {**s, "ratio": "token", "beta": 0.0}
    for old_in in (None, old):  # the first pass over a batch, and a later one (mu > 1)
        frozen_old = logp0 if old_in is None or s["ratio"] == "none" else old_in
        frozen = {**s, "ratio": "token" if s["ratio"] == "none" else s["ratio"], "beta_old": 0.0}
        # beta_old's KL reads the real pi_old even where ratio none ignores it: that term alone
        kl_old_of = logp0 if old_in is None else old_in

        def f(x, frozen_old=frozen_old, frozen=frozen, kl_old_of=kl_old_of):
            loss = policy_loss(x, mask, adv, frozen_old, ref, **frozen)[0]
            if s["beta_old"] > 0:
                loss = loss + policy_loss(x, mask, torch.zeros_like(adv), kl_old_of, None, **penalty)[0]
            return loss

        x = logp0.clone().requires_grad_()
        assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7)
        real, _ = policy_loss(x, mask, adv, old_in, ref, **s)
        torch.testing.assert_close(grad_of(real, x), grad_of(f(x), x))
        assert torch.isfinite(real)


# ---------------------------------------------------------------------------------------------------
# Bad input: a ValueError that names the culprit.


def test_bad_shapes_name_the_argument():
    logp, mask, adv, old, ref = random_batch(6)
    with pytest.raises(ValueError, match="mask"):
        policy_loss(logp, mask[:, :3], adv, **sw())
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logp, mask, adv[:4], **sw())
    with pytest.raises(ValueError, match="old_logp"):
        policy_loss(logp, mask, adv, old[:2], **sw())
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, mask, adv, old, ref.T, **sw())
    with pytest.raises(ValueError, match="logp"):
        policy_loss(logp[0], mask[0], adv, **sw())
    with pytest.raises(ValueError, match="ref_logp"):  # beta > 0 with the KL in the loss needs pi_ref
        policy_loss(logp, mask, adv, old, None, **sw(beta=0.1))
    with pytest.raises(ValueError, match="max_len"):
        policy_loss(logp, mask, adv, **sw(aggregation="seq_mean_token_sum_norm", max_len=None))
    with pytest.raises(ValueError, match="rewards"):
        compute_advantages(torch.zeros(2, 3), 3, "group_norm")
    with pytest.raises(ValueError, match="rewards"):
        kl_in_reward(torch.zeros(5), old, ref, mask, 0.1, "k1")
    with pytest.raises(ValueError, match="counts"):
        advantages_for_counts([1.0, -1.0], [3])


def test_group_size_must_divide_the_batch():
    with pytest.raises(ValueError, match="group_size"):
        compute_advantages(torch.zeros(10), 4, "group_norm")
    with pytest.raises(ValueError, match="group_size"):
        compute_advantages(torch.zeros(10), 0, "group_norm")


@pytest.mark.parametrize(
    "switch, value, valid",
    [
        ("ratio", "seq", "token"),
        ("aggregation", "mean", "token_mean"),
        ("kl_estimator", "k4", "k3"),
        ("kl_in", "both", "reward"),
    ],
)
def test_unknown_switch_values_name_the_switch_and_the_valid_values(switch, value, valid):
    logp, mask, adv, old, ref = random_batch(7)
    with pytest.raises(ValueError, match=f"{switch}='{value}'.*{valid}"):
        policy_loss(logp, mask, adv, old, ref, **sw(**{switch: value}))


def test_unknown_estimators_list_the_valid_names():
    with pytest.raises(ValueError, match="estimator='ppo'.*group_norm.*rloo"):
        compute_advantages(torch.zeros(4), 2, "ppo")
    with pytest.raises(ValueError, match="kl_estimator='k9'.*k1, k2, k3"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k9")


def test_truncated_importance_sampling_weights_each_token():
    """tis_cap = 2: a token the engine found 3x less likely than pi_old gets weight min(3, 2) = 2,
    one it found 2x more likely gets 1/2; the gradient is the unweighted one times those weights."""
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]], requires_grad=True)
    mask = torch.ones(2, 2)
    a = torch.tensor([1.0, -1.0])
    engine = logp.detach() + torch.log(torch.tensor([[1 / 3, 2.0], [1.0, 1 / 3]]))
    weights = torch.tensor([[2.0, 0.5], [1.0, 2.0]])
    loss, m = policy_loss(logp, mask, a, behavior_logp=engine, **sw(ratio="token", tis_cap=2.0))
    (g,) = torch.autograd.grad(loss, logp)
    plain, _ = policy_loss(logp, mask, a, **sw(ratio="token"))
    (g0,) = torch.autograd.grad(plain, logp)
    assert torch.allclose(g, g0 * weights)
    # pi_old = sg(pi_theta) (mu = 1), ratio 1 inside the clip: loss = -mean_i mean_t w_it * A_i
    assert loss.item() == pytest.approx(-((2 + 0.5) / 2 - (1 + 2) / 2) / 2)
    assert m["tis_weight_mean"].item() == pytest.approx(5.5 / 4)
    assert m["tis_capped_frac"].item() == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="tis_cap=2.0 needs behavior_logp"):
        policy_loss(logp, mask, a, **sw(ratio="token", tis_cap=2.0))
