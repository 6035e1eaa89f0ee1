"""The ladder from on-policy SFT to GRPO, as pure tensor functions with switches.

The seed document (Ziyuan Nan, "From SFT to GRPO", 2025) builds GRPO in steps. Every rung is the
same loss with different switches, and this module implements that one loss:

    L = agg_{i,t} [ -f_clip(ratio_it, A_i) + beta * KL_it ]

    rung                      advantage A_i        ratio                clip   KL
    1 on-policy SFT           relu(r_i)            none (pi/sg(pi))     off    0
    2 REINFORCE               r_i                  none                 off    0
    3 normalise + clip        (r_i - mean) / std   none                 0.2    0
    4 importance sampling     (r_i - mean) / std   token (pi/pi_old)    0.2    0
    5 GRPO                    (r_i - mean) / std   token                0.2    k3, beta 0.04

and `agg` is the seed's 1/|G| sum_i 1/|o_i| sum_t unless a variant (DAPO, Dr. GRPO) changes it.

How rung 3 is read. The seed writes f_clip(log pi, A), which taken literally is degenerate: log pi
is <= 0 < 1-eps, so clip(log pi, 1-eps, 1+eps) is the constant 1-eps. Then min(A log pi, (1-eps) A)
is A log pi when A > 0 (no clipping at all) and the constant (1-eps) A when A < 0, whose gradient is
zero: the literal rung 3 silently removes the negative gradient rung 2 just added. We read "log pi"
as the on-policy ratio pi / sg(pi) (ratio="none"): its value is 1 and its gradient grad log pi, so
rung 3 has the rung-2 gradient with A_i in place of r_i, and the clip starts to act once rung 4's
importance ratio can move away from 1 (train.mu > 1).

Shapes: B = sequences (completions), T = completion tokens, `mask` is B x T (bool or 0/1 float;
1 marks a real completion token). Example, the seed's early-training group:

    >>> r = torch.tensor([1.0] * 1 + [-1.0] * 127 + [-2.0] * 896)
    >>> adv, same = compute_advantages(r, group_size=1024, estimator="group_norm")
    >>> round(adv[0].item(), 2), round(adv[1].item(), 2), round(adv[-1].item(), 2)
    (8.41, 2.56, -0.37)

Registries (advantage estimators, KL estimators, ratios, aggregations) map a config string to a
function with one signature per registry; an unknown name is a ValueError listing the valid ones.
Nothing here reads the config or imports from this package: `config.loss_switches` turns the
config into the explicit scalars `policy_loss` takes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# exp() of a log-ratio above this overflows float16 and makes inf * 0 = NaN on masked tokens; a ratio
# of e^20 means the two policies disagree completely, and clipping would zero that token anyway.
LOG_RATIO_MAX = 20.0


def _lookup(registry: dict[str, Callable], name: str, switch: str) -> Callable:
    """registry[name], or a ValueError that names the switch and lists its valid values."""
    if name not in registry:
        raise ValueError(f"{switch}={name!r} is not one of: {', '.join(registry)}")
    return registry[name]


# ---------------------------------------------------------------------------------------------------
# Advantages. Every estimator: (r: [num_groups, group_size], std_ddof, eps) -> [num_groups, group_size].


def all_equal(r: Tensor) -> Tensor:
    """[G, n] -> [G] bool: True where a group's rewards are all the same (std exactly 0)."""
    return (r == r[:, :1]).all(dim=1)


def _adv_raw(r: Tensor, std_ddof: int, eps: float) -> Tensor:
    return r.clone()  # rung 2: the reward itself weighs log pi (REINFORCE, no baseline)


def _adv_relu(r: Tensor, std_ddof: int, eps: float) -> Tensor:
    return r.clamp_min(0.0)  # rung 1: wrong answers weigh 0, i.e. they are dropped (rejection sampling)


def _adv_group_norm(r: Tensor, std_ddof: int, eps: float) -> Tensor:
    n = r.shape[1]
    mean = r.mean(dim=1, keepdim=True)  # [G, 1]
    # std by hand so that ddof=1 on a group of one is 0/1, not a NaN with a warning
    var = (r - mean).pow(2).sum(dim=1, keepdim=True) / max(n - std_ddof, 1)  # [G, 1]
    adv = (r - mean) / (var.sqrt() + eps)  # [G, n]; eps only matters for near-equal rewards
    # all-equal groups carry no signal: exactly 0, not (r - mean) / eps amplified float noise
    return torch.where(all_equal(r)[:, None], torch.zeros_like(adv), adv)


def _adv_group_norm_relu(r: Tensor, std_ddof: int, eps: float) -> Tensor:
    """GRPO without the negative gradient: the group-normalised advantage through ReLU, so answers
    below their group's mean weigh 0 instead of being pushed down (the `grpo_no_neg` ablation).

    rewards [1, -1, -1, -1] (one group): mean -0.5, std sqrt(3)/2 -> group_norm [1.73, -0.58, -0.58,
    -0.58] -> ReLU [1.73, 0, 0, 0]. All-equal groups stay exactly 0, as in group_norm.
    """
    return _adv_group_norm(r, std_ddof, eps).clamp_min(0.0)


def _adv_group_mean(r: Tensor, std_ddof: int, eps: float) -> Tensor:
    # Dr. GRPO: dividing by std up-weights groups that are almost solved or almost hopeless; skip it
    adv = r - r.mean(dim=1, keepdim=True)  # [G, n]
    return torch.where(all_equal(r)[:, None], torch.zeros_like(adv), adv)


def _adv_rloo(r: Tensor, std_ddof: int, eps: float) -> Tensor:
    n = r.shape[1]
    # baseline of completion i = mean of the other n-1 rewards, so it is independent of o_i (unbiased)
    others = (r.sum(dim=1, keepdim=True) - r) / max(n - 1, 1)  # [G, n]
    adv = r - others
    return torch.where(all_equal(r)[:, None], torch.zeros_like(adv), adv)


ADVANTAGE_ESTIMATORS: dict[str, Callable[[Tensor, int, float], Tensor]] = {
    "raw": _adv_raw,
    "relu": _adv_relu,
    "group_norm": _adv_group_norm,
    "group_norm_relu": _adv_group_norm_relu,
    "group_mean": _adv_group_mean,
    "rloo": _adv_rloo,
}


def compute_advantages(
    rewards: Tensor, group_size: int, estimator: str, std_ddof: int = 0, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Advantages of B completions laid out as consecutive groups of `group_size` (one per prompt).

    rewards: [B]. Returns (advantages [B], all_equal [B // group_size] bool). A group whose rewards are
    all equal gets advantage exactly 0 from group_norm, group_norm_relu, group_mean and rloo, never
    NaN; the mask counts those groups for logging (raw and relu still train on them, as rungs 1-2 do).

        >>> compute_advantages(torch.tensor([1.0, -1.0, 0.0, 0.0]), 2, "group_norm")[0]
        tensor([ 1.0000, -1.0000,  0.0000,  0.0000])
    """
    fn = _lookup(ADVANTAGE_ESTIMATORS, estimator, "advantage estimator")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    b = rewards.shape[0]
    if group_size < 1 or b % group_size != 0:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the number of rewards ({b})")
    if std_ddof < 0:
        raise ValueError(f"std_ddof={std_ddof} must be >= 0")
    r = rewards.detach()
    if not r.is_floating_point():
        r = r.to(torch.get_default_dtype())
    r = r.view(b // group_size, group_size)  # [G, n]: one row per prompt
    return fn(r, std_ddof, eps).reshape(b), all_equal(r)


def guided_advantages(
    rewards: Tensor,
    group_size: int,
    guided: Tensor,
    guide_rewards: Tensor,
    estimator: str,
    std_ddof: int = 0,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor]:
    """Advantages when some groups have one more row, a given one (a guide: the reference answer).

    rewards: [B] sampled rows, consecutive groups of `group_size`; guided: [k] long, the groups
    that get a guide row, ascending; guide_rewards: [k], each guide row's reward. A guided group is
    normalised as the group of group_size + 1 rows it now is, the others as before. Returns
    (advantages [B], guide advantages [k], all_equal [B // group_size] of the groups as normalised).

    The seed's early-training row made literal: 1023 sampled answers, 127 wrong (-1) and 896 without
    an answer (-2), and the reference answer (1) as the 1024th row: the guide gets 8.41, the wrong
    ones 2.56 and the unanswered -0.37, as `compute_advantages` gives the group of 1024.
    """
    fn = _lookup(ADVANTAGE_ESTIMATORS, estimator, "advantage estimator")
    adv, same = compute_advantages(rewards, group_size, estimator, std_ddof, eps)  # [B], [G]
    if guided.numel() == 0:
        return adv, rewards.new_zeros(0), same
    r = rewards.detach().to(adv.dtype).view(-1, group_size)  # [G, n]
    with_guide = torch.cat([r[guided], guide_rewards.detach().to(r.dtype)[:, None]], dim=1)  # [k, n+1]
    a = fn(with_guide, std_ddof, eps)  # [k, n+1]
    adv = adv.view(-1, group_size).clone()
    adv[guided] = a[:, :group_size]
    same = same.clone()
    same[guided] = all_equal(with_guide)
    return adv.reshape(-1), a[:, group_size], same


def advantages_for_counts(
    rewards: list[float], counts: list[int], estimator: str = "group_norm", ddof: int = 0
) -> list[float]:
    """Advantage of each distinct reward value in one group holding `counts[k]` copies of `rewards[k]`.

    The seed's worked example: advantages_for_counts([1, -1, -2], [1, 127, 896]) -> [8.41, 2.56, -0.37]
    (rounded). Computed in float64 on the expanded group, so it is the trainer's own formula.
    """
    if len(rewards) != len(counts):
        raise ValueError(f"counts has {len(counts)} entries but rewards has {len(rewards)}")
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"counts={counts}: each must be >= 1 (a value no completion got has no advantage)")
    values = torch.tensor(rewards, dtype=torch.float64)  # [K]
    reps = torch.tensor(counts)  # [K]
    group = torch.repeat_interleave(values, reps)  # [N]
    adv, _ = compute_advantages(group, group.numel(), estimator, ddof)
    first = torch.cumsum(reps, 0) - reps  # [K] index of each value's first copy
    return adv[first].tolist()


# ---------------------------------------------------------------------------------------------------
# KL estimators of KL(pi_theta || pi_ref) per token, from samples of pi_theta. (logp, ref_logp) -> [B, T].


def _kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return logp - ref_logp  # log(pi/pi_ref): unbiased, but negative on some tokens (high variance)


def _kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return 0.5 * (logp - ref_logp).pow(2)  # >= 0, low variance, biased (exact to second order)


def _kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    # Schulman's k3, used by GRPO: with x = pi_ref/pi, E_pi[x] = 1, so x - 1 - log x is unbiased, and
    # x - 1 >= log x makes every token's estimate >= 0
    d = ref_logp - logp  # log x
    return torch.exp(d) - d - 1


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": _kl_k1, "k2": _kl_k2, "k3": _kl_k3}
KL_PLACEMENTS = ("loss", "reward")


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) at the sampled tokens. logp, ref_logp: [B, T] -> [B, T]."""
    fn = _lookup(KL_ESTIMATORS, estimator, "kl_estimator")
    if ref_logp.shape != logp.shape:
        raise ValueError(f"ref_logp has shape {tuple(ref_logp.shape)}, logp has {tuple(logp.shape)}")
    return fn(logp, ref_logp)


def kl_in_reward(
    rewards: Tensor, logp_old: Tensor, ref_logp: Tensor, mask: Tensor, beta: float, estimator: str
) -> Tensor:
    """The kl_in="reward" placement: r_i - beta * sum_t KL_it, before advantages are computed.

    rewards: [B]; logp_old, ref_logp, mask: [B, T]. Returns [B], detached: the penalty is part of the
    reward (as in PPO-RLHF), so it reaches the policy only through the advantage.
    """
    _check_2d(logp_old, "logp_old")
    _check_like(ref_logp, logp_old, "ref_logp", "logp_old")
    _check_like(mask, logp_old, "mask", "logp_old")
    if rewards.shape != logp_old.shape[:1]:
        raise ValueError(f"rewards has shape {tuple(rewards.shape)}, expected ({logp_old.shape[0]},)")
    m = mask.bool()
    with torch.no_grad():
        # masked positions may hold padding garbage; zero them before exp() can turn them into inf
        kl = kl_penalty(torch.where(m, logp_old, 0.0), torch.where(m, ref_logp, 0.0), estimator)  # [B, T]
        return rewards - beta * (kl * m).sum(dim=1)  # [B]


# ---------------------------------------------------------------------------------------------------
# Ratios pi_theta / pi_old. Every ratio: (logp, old_logp, mask float) -> [B, T]; old_logp is detached.


def _ratio_none(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    # pi / sg(pi): value 1, gradient grad log pi. This is the seed's rung 1-3 "log pi" made sound: the
    # literal clip(log pi, 1-eps, 1+eps) is the constant 1-eps (log pi <= 0), so f_clip would give
    # every A < 0 token zero gradient (see the module docstring).
    # old_logp is ignored: without importance sampling, reused data is treated as on-policy.
    return torch.exp(logp - logp.detach())


def _ratio_token(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    # PPO's per-token importance weight for samples drawn from pi_old
    return torch.exp((logp - old_logp).clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX))


def _ratio_sequence(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    # GSPO: s_i = (pi(o_i) / pi_old(o_i))^(1/|o_i|), the geometric mean of the token ratios, so one
    # weight (and one clip decision) per sequence, on a scale that does not grow with length
    lengths = mask.sum(dim=1).clamp_min(1)  # [B]
    log_s = ((logp - old_logp) * mask).sum(dim=1) / lengths  # [B]
    log_s = log_s.clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX)
    # GSPO-token form s_it = sg(s_i) * pi_t / sg(pi_t): every token's value is s_i, and the gradient
    # d s_it / d logp_t = s_i, so summed with the sequence's (uniform) weights it equals grad s_i exactly
    return torch.exp(log_s.detach()[:, None] + logp - logp.detach())  # [B, T]


RATIOS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "none": _ratio_none,
    "token": _ratio_token,
    "sequence": _ratio_sequence,
}


# ---------------------------------------------------------------------------------------------------
# Aggregations: (loss_tok [B, T], mask float [B, T], max_len, n_seqs, n_tokens) -> scalar.
# n_seqs / n_tokens are the whole batch's counts, so micro-batch losses add up to the full-batch loss.


def _agg_seq_mean_token_mean(
    loss_tok: Tensor, mask: Tensor, max_len: int | None, n_seqs: Tensor | float, n_tokens: Tensor | float
) -> Tensor:
    # the seed: 1/|G| sum_i 1/|o_i| sum_t. Each answer weighs the same, so a token of a long answer
    # weighs less (the length bias Dr. GRPO points out). max(1, |o_i|) keeps empty rows at 0, not NaN.
    per_seq = (loss_tok * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)  # [B]
    return per_seq.sum() / n_seqs


def _agg_token_mean(
    loss_tok: Tensor, mask: Tensor, max_len: int | None, n_seqs: Tensor | float, n_tokens: Tensor | float
) -> Tensor:
    # DAPO: every token weighs the same, so long answers are not diluted
    return (loss_tok * mask).sum() / n_tokens


def _agg_seq_mean_token_sum_norm(
    loss_tok: Tensor, mask: Tensor, max_len: int | None, n_seqs: Tensor | float, n_tokens: Tensor | float
) -> Tensor:
    # Dr. GRPO: a constant in place of |o_i|, so neither length nor batch make-up rescales a token
    assert max_len is not None  # checked by policy_loss
    per_seq = (loss_tok * mask).sum(dim=1) / max_len  # [B]
    return per_seq.sum() / n_seqs


AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "seq_mean_token_mean": _agg_seq_mean_token_mean,
    "token_mean": _agg_token_mean,
    "seq_mean_token_sum_norm": _agg_seq_mean_token_sum_norm,
}


# ---------------------------------------------------------------------------------------------------
# The loss.


def _check_2d(x: Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [B, T], got shape {tuple(x.shape)}")


def _check_like(x: Tensor, ref: Tensor, name: str, ref_name: str) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(ref.shape)} like {ref_name}")


def _count(total: int | Tensor | None, own: int | Tensor) -> Tensor | float:
    """Denominator: the global count when the caller gives one, else this call's own; at least 1."""
    n = own if total is None else total
    return n.clamp_min(1) if isinstance(n, Tensor) else float(max(n, 1))


def policy_loss(
    logp: Tensor,
    mask: Tensor,
    advantages: Tensor,
    old_logp: Tensor | None = None,
    ref_logp: Tensor | None = None,
    *,
    ratio: str,
    clip: bool,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None,
    beta: float,
    kl_estimator: str,
    kl_in: str,
    aggregation: str,
    max_len: int | None,
    total_seqs: int | Tensor | None = None,
    total_tokens: int | Tensor | None = None,
    behavior_logp: Tensor | None = None,
    tis_cap: float | None = None,
    beta_old: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The ladder's loss for one (micro-)batch. Returns (scalar loss, metrics of detached scalars).

    logp: [B, T] log pi_theta of the sampled tokens (with grad); mask: [B, T]; advantages: [B];
    old_logp: [B, T] log pi_old, or None for on-policy data (then pi_old = sg(pi_theta), exact when
    mu = 1); ref_logp: [B, T] log pi_ref, needed only when kl_in="loss" and beta > 0.
    total_seqs / total_tokens: counts of the whole batch when this call sees one micro-batch of it;
    the micro-batch losses then sum to the full-batch loss (gradient accumulation).
    behavior_logp: [B, T] log-probs of the engine that sampled the tokens (vLLM, bf16), which differ
    from the trainer's; with tis_cap = C each token's policy term is weighted by the truncated
    importance weight min(pi_old / pi_behavior, C) (detached), correcting for that mismatch.
    beta_old: weight of a KL to pi_old (kl_estimator, per token, beside the policy term): a penalty
    on the ratio instead of a weight by it; 0 on pass 0, where pi_old = sg(pi_theta).

    Metrics, each a mean over the valid tokens: clip_frac_low / clip_frac_high (tokens where the
    lower / upper clipped branch is the min, so their gradient is 0), clip_frac_dual, ratio_mean, and
    kl when ref_logp is given (with kl_estimator). The advantages' own statistics are the caller's:
    it holds the whole batch's vector, this call only a micro-batch of it.
    """
    ratio_fn = _lookup(RATIOS, ratio, "ratio")
    agg_fn = _lookup(AGGREGATIONS, aggregation, "aggregation")
    kl_fn = _lookup(KL_ESTIMATORS, kl_estimator, "kl_estimator")
    if kl_in not in KL_PLACEMENTS:
        raise ValueError(f"kl_in={kl_in!r} is not one of: {', '.join(KL_PLACEMENTS)}")
    _check_2d(logp, "logp")
    _check_like(mask, logp, "mask", "logp")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}, expected ({logp.shape[0]},)")
    if old_logp is not None:
        _check_like(old_logp, logp, "old_logp", "logp")
    if ref_logp is not None:
        _check_like(ref_logp, logp, "ref_logp", "logp")
    kl_here = kl_in == "loss" and beta > 0
    if kl_here and ref_logp is None:
        raise ValueError(f"ref_logp is required when kl_in='loss' and beta={beta} > 0")
    if aggregation == "seq_mean_token_sum_norm" and (max_len is None or max_len < 1):
        raise ValueError(f"max_len={max_len!r}: aggregation='seq_mean_token_sum_norm' needs max_len >= 1")

    m = mask.bool()  # [B, T]
    mf = m.to(logp.dtype)  # [B, T]
    # padding may hold anything (even -inf); zero it first, so no exp() or 0 * inf makes a NaN
    logp = torch.where(m, logp, 0.0)  # [B, T]
    old = logp.detach() if old_logp is None else torch.where(m, old_logp.detach().to(logp.dtype), 0.0)
    a = advantages.detach().to(logp.dtype)[:, None]  # [B, 1]: one advantage for all tokens of o_i

    rho = ratio_fn(logp, old, mf)  # [B, T]
    surr = rho * a  # [B, T] importance-weighted advantage
    if clip:
        # PPO f_clip: the min takes the clipped (constant) branch only when the ratio has already
        # moved past 1 +- eps in the direction the advantage pushes it, so the update stops there
        obj = torch.minimum(surr, rho.clamp(1 - eps_low, 1 + eps_high) * a)  # [B, T]
    else:
        obj = surr
    pg = -obj  # [B, T]
    if dual_clip is not None:
        # dual-clip PPO: for A < 0 the min above does not bound rho (a token pi_theta now likes far
        # more than pi_old did), so cap that loss at c * |A|
        pg = torch.where(a < 0, torch.minimum(pg, -dual_clip * a), pg)
    tis = None
    if tis_cap is not None:
        if behavior_logp is None:
            raise ValueError(f"tis_cap={tis_cap} needs behavior_logp (the rollout engine's log-probs)")
        _check_like(behavior_logp, logp, "behavior_logp", "logp")
        behavior = torch.where(m, behavior_logp.detach().to(logp.dtype), 0.0)
        tis = torch.exp(old - behavior).clamp(max=tis_cap)  # [B, T] pi_old / pi_behavior, truncated
        pg = pg * tis
    loss_tok = pg
    kl_old = None
    if beta_old > 0:  # the ratio as a regulariser: beta_old * KL(pi_theta || pi_old) per token
        kl_old = kl_fn(logp, old)  # [B, T]
        loss_tok = loss_tok + beta_old * kl_old
    kl_tok = None
    if ref_logp is not None:
        kl_tok = kl_fn(logp, torch.where(m, ref_logp.detach().to(logp.dtype), 0.0))  # [B, T]
        if kl_here:
            # GRPO puts beta * D inside the per-token average, next to the clipped term
            loss_tok = loss_tok + beta * kl_tok

    n_seqs = _count(total_seqs, logp.shape[0])
    n_tokens = _count(total_tokens, mf.sum())
    loss = agg_fn(loss_tok, mf, max_len, n_seqs, n_tokens)

    with torch.no_grad():
        ntok = mf.sum().clamp_min(1)
        low = (rho < 1 - eps_low) & (a < 0) & m if clip else torch.zeros_like(m)
        high = (rho > 1 + eps_high) & (a > 0) & m if clip else torch.zeros_like(m)
        if dual_clip is not None:
            dual = (a < 0) & (-obj > -dual_clip * a) & m
        else:
            dual = torch.zeros_like(m)
        metrics = {
            "clip_frac_low": low.to(logp.dtype).sum() / ntok,
            "clip_frac_high": high.to(logp.dtype).sum() / ntok,
            "clip_frac_dual": dual.to(logp.dtype).sum() / ntok,
            "ratio_mean": (rho * mf).sum() / ntok,
        }
        if kl_tok is not None:
            metrics["kl"] = (kl_tok * mf).sum() / ntok
        if kl_old is not None:
            metrics["kl_old"] = (kl_old * mf).sum() / ntok
        if tis is not None:
            metrics["tis_weight_mean"] = (tis * mf).sum() / ntok
            metrics["tis_capped_frac"] = ((tis >= tis_cap) & m).to(logp.dtype).sum() / ntok
    return loss, metrics


def sft_loss(logp: Tensor, mask: Tensor, total_tokens: int | Tensor | None = None) -> Tensor:
    """Rung 0's loss on given rows: the cross-entropy of the reference completions, the mean
    -log pi per completion token over the step (`total_tokens`: the step's given tokens when this
    call sees one micro-batch of it, so the micro-batch losses add up to the step's).

    logp, mask: [B, T]. It is `policy_loss` with A = 1, ratio none, no clip or KL and token_mean
    aggregation in all but its value: that surrogate's value is -1 (ratio 1 times A = 1), its
    gradient -1/N sum grad log pi, which is this loss's gradient exactly.

        >>> sft_loss(torch.log(torch.tensor([[0.5, 0.25], [1.0, 0.1]])), torch.tensor([[1, 1], [1, 0]]))
        tensor(0.6931)
    """
    _check_2d(logp, "logp")
    _check_like(mask, logp, "mask", "logp")
    m = mask.bool()  # [B, T]
    mf = m.to(logp.dtype)  # [B, T]
    logp = torch.where(m, logp, 0.0)  # padding may hold -inf; 0 * -inf would be NaN
    return -(logp * mf).sum() / _count(total_tokens, mf.sum())
