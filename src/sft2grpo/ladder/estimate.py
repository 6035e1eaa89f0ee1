"""The ladder's time estimate, printed before it starts (`--dry-run` prints only that): seconds
per unit of work, fitted per kind of CPU, times the units each run, the cost runs and the measure
process will do. Reads configs; runs nothing. (costs.py measures something else: what the
reference model costs, from grpo and no_kl trained alone.)
"""

from __future__ import annotations

from .plan import Plan

# Seconds per unit of work of one SmolLM2-135M run on a 2-core machine while another run shares it
# (`--jobs 2`, one thread each), with int8 rollouts, for the estimate printed before a ladder starts:
# a process start (imports, model load and save); a rollout's decode step (a fixed cost, plus a cost
# per row: the batch runs until its longest row stops); one row-token of a forward+backward pass; one
# greedy problem-token of evaluation. One table per kind of CPU this project runs on, since the
# training step differs about 3x between them: "fp32", an AVX2-only CPU where bf16 is emulated and
# autocast "auto" trains in fp32 (fitted to the first 8 runs of the 12-step ladder, 2026-11-30), and
# "bf16", a CPU with AVX512-BF16 or AMX (fitted to seed 0 of the 40-step ladder). The progress
# lines rescale the estimate by what finished runs took (docs/ladder/README.md).
UNIT_SECONDS = {
    "fp32": {"start": 28.0, "decode": 0.105, "decode_row": 5.2e-3, "update": 1.1e-2, "eval": 6.4e-3},
    "bf16": {"start": 56.0, "decode": 0.0448, "decode_row": 2.22e-3, "update": 4.46e-3, "eval": 2.75e-3},
}


def unit_seconds(cfg) -> dict[str, float]:
    """UNIT_SECONDS for this machine and the run's autocast: "bf16" where bf16 is native and the run uses it
    (train.autocast auto or bf16), else "fp32"."""
    import torch

    from ..models import has_fast_bf16

    native = cfg.train.autocast in ("auto", "bf16") and has_fast_bf16(torch.device("cpu"))
    return UNIT_SECONDS["bf16" if native else "fp32"]


# Two runs at once did 1.5x the steps per minute of one run with both threads (docs/ladder/README.md)
JOBS_SPEEDUP = 1.5


def update_share(cfg) -> float:
    """The share of a step's rows that go through the update: rows with a zero advantage are skipped
    when there is no KL term; group-normalised advantages are zero in groups without a reward spread
    (about 60% of them on chain_sum), ReLU(r) is zero for every wrong answer (about 85%)."""
    if cfg.objective.beta > 0 or cfg.objective.advantage == "raw":
        return 1.0
    return 0.15 if cfg.objective.advantage == "relu" else 0.4


def estimate_run_s(cfg, cost: dict[str, float] | None = None) -> float:
    """Expected seconds of one run of the 135M model on 2 CPU cores shared with another run, from
    `cost` (default: this machine's, `unit_seconds`)."""
    COST = cost or unit_seconds(cfg)  # noqa: N806 (the table's name in the comments above)
    t, r = cfg.train, cfg.rollout
    rows = t.prompts_per_step * r.group_size
    rollouts = 1 + (r.max_resample_rounds if r.dynamic_sampling else 0)  # DAPO: worst case
    rollout = rollouts * r.max_new_tokens * (COST["decode"] + COST["decode_row"] * rows)
    # mu forward+backward passes, plus a no-grad forward (about a third) for pi_old and for pi_ref
    passes = t.mu + (t.mu > 1) / 3 + (cfg.objective.beta > 0) / 3
    step = rollout + COST["update"] * rows * update_share(cfg) * r.max_new_tokens * passes
    evals = (1 + (t.steps - 1) // cfg.eval.every) if cfg.eval.every else 1
    size = min(cfg.eval.size or cfg.task.eval_size, cfg.task.eval_size)
    tokens = cfg.eval.max_new_tokens or r.max_new_tokens
    eval_s = evals * COST["eval"] * size * tokens
    # the held-out split at the earlier horizons (eval.heldout_at): greedy, and sampled with eval.heldout_at_draws
    horizon_s = COST["eval"] * size * tokens + sampled_eval_s(cfg, cfg.eval.heldout_at_draws, COST)
    return COST["start"] + t.steps * step + eval_s + len(cfg.eval.heldout_at) * horizon_s


def sampled_eval_s(cfg, k: int, cost: dict[str, float]) -> float:
    """Seconds of `evaluate_sampled` with k answers per held-out problem (0 for k = 0): generate calls
    of about eval.batch_size rows, each as long as its longest row (`cost`: UNIT_SECONDS)."""
    size = min(cfg.eval.size or cfg.task.eval_size, cfg.task.eval_size)
    rows = size * k
    calls = -(-rows // max(cfg.eval.batch_size, k)) if rows else 0
    return (cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens) * (
        calls * cost["decode"] + rows * cost["decode_row"]
    )


def estimate_wall_s(run_s: float, jobs: int) -> float:
    """Wall time of `run_s` seconds of runs as UNIT_SECONDS count them (two sharing the cores), `jobs` at a
    time: halved with two at once, divided by JOBS_SPEEDUP when one run has both cores."""
    return run_s / 2 if jobs >= 2 else run_s / JOBS_SPEEDUP


def estimate_measure_s(plan: Plan) -> float:
    """The measure process: start, the base evaluation, and per run a load, a small rollout for KL
    and the sampled evaluation (eval_samples per held-out problem; the base model's too)."""
    cfg = plan.runs[0].cfg
    COST = unit_seconds(cfg)  # noqa: N806
    tokens = cfg.rollout.max_new_tokens
    size = min(cfg.eval.size or cfg.task.eval_size, cfg.task.eval_size)
    kl_row_tokens = plan.budget.kl_prompts * plan.budget.kl_samples * tokens
    rows = plan.budget.kl_prompts * plan.budget.kl_samples
    decode = tokens * (COST["decode"] + COST["decode_row"] * rows)
    per_run = 3 + decode + 2 * COST["update"] / 3 * kl_row_tokens  # load, sample, two forwards
    sampled_s = sampled_eval_s(cfg, plan.budget.eval_samples, COST)
    base = COST["eval"] * size * tokens + sampled_s
    return COST["start"] + base + len(plan.runs) * (per_run + sampled_s)


def estimate_cost_runs_s(plan: Plan) -> float:
    """The cost runs (`costs.py`): REPEATS x grpo and no_kl, COST_STEPS steps each without evaluation,
    one at a time with both cores; 0 when the plan lacks either preset or costs.json is there."""
    from dataclasses import replace

    from .costs import COST_STEPS, IN_PLAN, REPEATS, done

    if not all(p in plan.presets for p in IN_PLAN) or done(plan):
        return 0.0
    total = 0.0
    for p in IN_PLAN:  # the ladder's runs of the same objectives as the cost runs' PAIR
        cfg = next(r.cfg for r in plan.runs if r.preset == p)
        short = replace(
            cfg, train=replace(cfg.train, steps=COST_STEPS), eval=replace(cfg.eval, every=0, heldout_at=[])
        )
        total += REPEATS * estimate_run_s(short)
    return total / JOBS_SPEEDUP
