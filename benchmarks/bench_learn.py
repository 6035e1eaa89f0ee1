"""Who learns more in the same minutes: our trainer or TRL's GRPOTrainer, scored by one evaluation.

    make bench-learn                                       # make run's recipe vs TRL, 1 seed
    make bench-learn ARGS='--smoke'                        # tiny model, 2 steps, 8 problems: a minute or two
    make bench-learn ARGS='--seeds 0,1,2'                  # mean and spread over seeds
    make bench-learn ARGS='--ours-args "train.lr=1e-5 train.schedule=cosine"'
    make bench-learn ARGS='--trl-configs defaults --minutes 10'
    python benchmarks/bench_learn.py --recipe "train.mu=1 train.steps=36 train.lr=3e-5" --json out.json

Needs `trl` (only in the benchmark venv): `make bench-learn` runs this in .venv-bench (trl 1.16).

What runs, per seed, each in its own process (so neither trainer shares memory or threads with the other):
1. Ours: `sft2grpo train --config grpo <recipe> <--ours-args>` on the same model folder TRL loads,
   with train.seed = the seed, no evaluation inside the run, and train.autocast=off: the comparison is
   fp32 on both sides (bf16 is emulated, several times slower, on CPUs without AVX512-BF16/AMX).
   `make bench-learn` passes make run's recipe, `--config configs/run.yaml --recipe ""`; run directly,
   the script defaults to `--config grpo` and DEFAULT_RECIPE below (any train.autocast is dropped). Its training time is summary.json's train_time_s (the steps
   alone, without loading or evaluation).
2. TRL: GRPOTrainer on the same folder, the same training split (`load_task` of our recipe's task
   config), the same prompts in the same order (our trainer's permutation for that seed, fed with
   shuffle_dataset=False), in the same chat template, scored by our reward (wrapped in TRL's
   `f(prompts, completions, **columns)` signature), fp32. A TrainerCallback stops it at the step end
   nearest to the budget: ours' training time for the same seed, or `--minutes` if given (15 when
   ours is not run). Two settings (`--trl-configs`):
   - "ours": our recipe mapped onto GRPOConfig (lr, schedule and warm-up, beta, temperature, top-p/k,
     group size, prompts per step, max tokens, mu = num_iterations, Adam betas, weight decay, grad
     clip, epsilon low/high, importance-sampling level, loss aggregation -> loss_type, advantage ->
     scale_rewards); what TRL cannot express is listed in the output (e.g. TRL's std is unbiased);
   - "defaults": TRL's own defaults (lr 1e-6 and its beta, loss_type, scheduler, Adam betas, ...)
     with only group size, prompts per step, max tokens (and fp32, order, seed) matched.
   The better of the two (mean gain over seeds) is TRL's figure, so the comparison is fair to TRL.
   That choice looks at the held-out scores, which favours TRL: the direction a fair test errs in.
3. `sft2grpo eval --model <dir> --output <dir>` scores the base model once and every trained model on
   the same held-out problems (default the first 200 of the task's held-out split), greedy, with the
   same settings; per-problem correctness comes from each eval_samples.jsonl.

Printed and written to --json (default bench_learn.json): before/after accuracy per side, each gain
with a 95% interval (paired bootstrap over problems, `sft2grpo.evaluate.paired_bootstrap`), the ratio
of the gains (ours/TRL) and their difference (ours - TRL) with a paired-bootstrap interval: the
problems are resampled and both gains are computed on the same resample, so the difference is
after_ours - after_trl per problem. With several seeds each side's per-problem score is the mean over
its seeds, and the spread over seeds is shown beside it (the intervals cover problem sampling, not
seed-to-seed variation). One seed is an anecdote: a run's gain moves by several points with the seed.

Cost: per seed, ours' training time three times over (ours, TRL at ours, TRL at defaults), plus one
evaluation per model and the model loads; on 2 cores with make run's recipe, about 3 x 7-11 minutes
of training. Timings depend on the machine's load; the load averages before and after each run are recorded.
Schedules: TRL's max_steps is `--trl-max-steps` (a cap; the time budget stops it), except when our
recipe's schedule decays (cosine): then TRL decays over our number of updates, as ours does, and the
budget may stop it before the end of the decay. TRL's defaults decay linearly over the cap, so within
a budget of tens of steps its lr stays near its peak.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sft2grpo.tracking import plot_seeds, read_metrics

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_trl import TRL_MISSING, model_folder, peak_rss_mb, versions  # noqa: E402

# the recipe of make run before configs/run.yaml, in fp32 (bf16 autocast is emulated on this CPU);
# `make bench-learn` passes configs/run.yaml instead
DEFAULT_RECIPE = "train.mu=1 train.steps=36 train.lr=3e-5"
SMOKE_RECIPE = "train.steps=2"
TRL_CONFIGS = ("ours", "defaults")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny, a model folder or a .gguf")
    ap.add_argument("--config", default="grpo", help="our preset (or YAML) for the recipe")
    ap.add_argument("--recipe", default=DEFAULT_RECIPE, help="our overrides; train.autocast is dropped")
    ap.add_argument(
        "--ours-args", default="", help='more overrides for ours, e.g. "train.lr=1e-5 train.steps=20"'
    )
    ap.add_argument("--trl-configs", default="ours,defaults", help="TRL settings to run: ours, defaults")
    ap.add_argument("--only", default="ours,trl", help="sides to train (ours, trl)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (train.seed for ours, seed for TRL)")
    ap.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="TRL's training budget; default: ours' training time for the same seed (15 without ours)",
    )
    ap.add_argument(
        "--trl-max-steps", type=int, default=1000, help="TRL's max_steps (the budget stops it first)"
    )
    ap.add_argument("--eval-problems", type=int, default=200, help="held-out problems scored (eval.size)")
    ap.add_argument("--eval-args", default="", help="more overrides for every `sft2grpo eval`")
    ap.add_argument(
        "--output", default="", help="folder for runs, models and evals (default runs/bench-learn-<time>)"
    )
    ap.add_argument("--json", default="bench_learn.json", help="where the figures go ('' for nowhere)")
    ap.add_argument(
        "--smoke", action="store_true", help="model tiny, 2 steps, 8 problems: checks the pipeline"
    )
    ap.add_argument("--worker", choices=["trl"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.model = "tiny"
        args.ours_args = f"{SMOKE_RECIPE} {args.ours_args}".strip()
        args.eval_problems = min(args.eval_problems, 8)
        args.trl_max_steps = min(args.trl_max_steps, 2)
    bad = set(split_list(args.trl_configs)) - set(TRL_CONFIGS)
    if bad:
        ap.error(f"--trl-configs: unknown {', '.join(sorted(bad))}; choose from {', '.join(TRL_CONFIGS)}")
    bad = set(split_list(args.only)) - {"ours", "trl"}
    if bad:
        ap.error(f"--only: unknown {', '.join(sorted(bad))}; choose from ours, trl")
    return args


def split_list(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def recipe_overrides(recipe: str, extra: str) -> tuple[list[str], list[str]]:
    """Our overrides: the recipe without train.autocast (fp32 here, whatever make run uses), then
    autocast off, then the user's extras (which win). Returns (overrides, dropped)."""
    kept, dropped = [], []
    for o in shlex.split(recipe):
        (dropped if o.split("=", 1)[0].strip() == "train.autocast" else kept).append(o)
    # quoted: YAML reads a bare `off` as false, which the config rejects (a plain train.autocast=off
    # override fails the same way on the command line)
    return [*kept, 'train.autocast="off"', *shlex.split(extra)], dropped


# ---------------------------------------------------------------------------------------------------
# The figures: pure functions of per-problem scores (prompt -> fraction correct), tested without TRL.


def read_scores(eval_dir: str | Path) -> dict[str, float]:
    """prompt -> fraction of its answers correct, from `sft2grpo eval --output`'s eval_samples.jsonl."""
    from sft2grpo.evaluate import problem_scores

    path = Path(eval_dir) / "eval_samples.jsonl"
    if not path.is_file():
        raise SystemExit(f"bench_learn: {path} is missing; the evaluation above failed")
    return problem_scores(read_metrics(path))


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def spread(xs: list[float]) -> float:
    """Sample standard deviation over seeds (0 for one seed)."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def seed_mean(runs: list[dict[str, float]], prompts: list[str]) -> list[float]:
    """Each problem's score averaged over the seeds' runs."""
    return [mean([r[p] for r in runs]) for p in prompts]


def side_summary(base: dict[str, float], runs: list[dict[str, float]], prompts: list[str]) -> dict:
    """One side's before/after and gain: the gain's interval pairs the base with the seed-mean after
    score of each problem; the per-seed gains give the spread."""
    from sft2grpo.evaluate import paired_bootstrap

    before = [base[p] for p in prompts]
    gains = [mean([r[p] for p in prompts]) - mean(before) for r in runs]
    boot = paired_bootstrap(before, seed_mean(runs, prompts))
    return {
        "before": mean(before),
        "after": mean(seed_mean(runs, prompts)),
        "after_per_seed": [mean([r[p] for p in prompts]) for r in runs],
        "gain": boot["diff"],
        "gain_ci95": boot["ci95"],
        "gain_per_seed": gains,
        "gain_sd": spread(gains),
        "seeds": len(runs),
    }


def compare(
    base: dict[str, float], ours: list[dict[str, float]], trl: list[dict[str, float]], prompts: list[str]
) -> dict:
    """ours - TRL: gain_ours - gain_trl = after_ours - after_trl problem by problem (the base cancels),
    so a paired bootstrap of the two after-scores resamples problems and computes both gains on the
    same resample. The ratio of the gains is a point figure (its interval is unbounded when TRL's gain
    can be 0)."""
    from sft2grpo.evaluate import paired_bootstrap

    boot = paired_bootstrap(seed_mean(trl, prompts), seed_mean(ours, prompts))
    g_ours = side_summary(base, ours, prompts)["gain"]
    g_trl = side_summary(base, trl, prompts)["gain"]
    return {
        "gain_ours": g_ours,
        "gain_trl": g_trl,
        "diff": boot["diff"],
        "diff_ci95": boot["ci95"],
        "ratio": g_ours / g_trl if g_trl else None,
        "method": boot["method"],
    }


def common_prompts(*score_sets: dict[str, float]) -> list[str]:
    """Prompts scored in every evaluation, in the first one's order."""
    first, rest = score_sets[0], score_sets[1:]
    return [p for p in first if all(p in s for s in rest)]


def better_trl(gains: dict[str, float]) -> str:
    """The TRL setting with the larger mean gain (the first on a tie)."""
    return max(gains, key=lambda k: (gains[k], -list(gains).index(k)))


def summarise(base: dict, ours: list[dict], trl: dict[str, list[dict]]) -> dict:
    """Every figure of the report from per-problem scores: base, ours' runs (one per seed), TRL's
    runs per setting."""
    sets = [base, *ours, *(r for runs in trl.values() for r in runs)]
    prompts = common_prompts(*sets)
    out: dict = {"problems": len(prompts), "base": mean([base[p] for p in prompts])}
    if ours:
        out["ours"] = side_summary(base, ours, prompts)
    out["trl"] = {k: side_summary(base, runs, prompts) for k, runs in trl.items() if runs}
    if out["trl"]:
        best = better_trl({k: v["gain"] for k, v in out["trl"].items()})
        out["trl_best"] = best
        if ours:
            out["ours_vs_trl"] = compare(base, ours, trl[best], prompts)
    return out


def pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def print_report(s: dict, runs: dict) -> None:
    print(f"\nheld-out: {s['problems']} problems, greedy; base model {100 * s['base']:.1f}%")
    print(
        f"{'side':<16} {'seeds':>5} {'train s':>8} {'steps':>6} {'after':>7} {'gain (points) [95%]':>24} {'seed sd':>8}"
    )
    sides = [("ours", s.get("ours"), runs.get("ours", []))]
    sides += [(f"TRL ({k})", v, runs["trl"][k]) for k, v in s["trl"].items()]
    for name, side, rs in sides:
        if side is None:
            continue
        t = mean([r["train_time_s"] for r in rs])
        steps = mean([r["steps"] for r in rs])
        lo, hi = side["gain_ci95"]
        gain = f"{pts(side['gain'])} [{pts(lo)}, {pts(hi)}]"
        print(
            f"{name:<16} {side['seeds']:>5} {t:>8.0f} {steps:>6.1f} {100 * side['after']:>6.1f}% "
            f"{gain:>24} {100 * side['gain_sd']:>8.1f}"
        )
    if "trl_best" in s:
        print(f"TRL's figure: TRL ({s['trl_best']}), the larger gain of {', '.join(s['trl'])}")
    c = s.get("ours_vs_trl")
    if c:
        lo, hi = c["diff_ci95"]
        ratio = f"{c['ratio']:.2f}x" if c["ratio"] is not None else "- (TRL's gain is 0)"
        note = " (TRL's gain is negative: read the difference)" if c["gain_trl"] < 0 else ""
        print(
            f"ours/TRL gain ratio: {ratio}{note}; ours - TRL: {pts(c['diff'])} points "
            f"[{pts(lo)}, {pts(hi)}] ({c['method']}, seeds averaged per problem)"
        )
    n = s.get("ours", {}).get("seeds") or max((v["seeds"] for v in s["trl"].values()), default=0)
    if n < 2:
        print("one seed per side: an anecdote, not a measurement (--seeds 0,1,2)")


# ---------------------------------------------------------------------------------------------------
# TRL's settings from our recipe.


def trl_settings(cfg, kind: str, max_steps: int) -> tuple[dict, list[str]]:
    """GRPOConfig keyword arguments for TRL setting `kind` ("ours" or "defaults") from our Config,
    and notes on what TRL cannot match. Both settings share the batch shape: prompts per step x
    group, max new tokens, micro-batches as ours where they divide the batch."""
    t, r, o = cfg.train, cfg.rollout, cfg.objective
    per_step = t.prompts_per_step * r.group_size
    micro = t.micro_batch_size if per_step % t.micro_batch_size == 0 else per_step
    kw: dict = {
        "num_generations": r.group_size,
        "max_completion_length": r.max_new_tokens,
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": per_step // micro,  # one generation batch = our step's batch
        "max_steps": max_steps,
        "bf16": False,  # fp32, like ours (TRL's default is bf16 autocast)
        "shuffle_dataset": False,  # the dataset is already in our trainer's order
        "model_init_kwargs": {"dtype": cfg.model.dtype},
        "logging_steps": 1,  # per-step reward/KL in log_history, for the JSON
    }
    notes: list[str] = []
    if kind == "defaults":
        return kw, notes
    loss_type = {"seq_mean_token_mean": "grpo", "token_mean": "dapo", "seq_mean_token_sum_norm": "dr_grpo"}
    scale = {"group_norm": "group", "group_mean": "none"}
    if o.advantage not in scale:
        notes.append(f"objective.advantage={o.advantage} has no TRL form; TRL normalises by the group's std")
    elif o.advantage == "group_norm" and o.std_ddof == 0:
        notes.append("TRL's group std is unbiased (ddof 1); ours uses objective.std_ddof=0")
    if o.ratio == "none":
        notes.append("objective.ratio=none has no TRL form; TRL uses the token ratio")
    if not o.clip:
        notes.append("objective.clip=false has no TRL form; TRL clips at epsilon")
    if o.kl_estimator != "k3" or o.kl_in != "loss":
        notes.append(f"TRL's KL is k3 in the loss; ours is {o.kl_estimator} in the {o.kl_in}")
    if o.dual_clip is not None or o.tis_cap is not None:
        notes.append("objective.dual_clip / tis_cap not mapped")
    if r.dynamic_sampling:
        notes.append("rollout.dynamic_sampling has no TRL form; TRL trains on every group")
    if r.dtype != "model":
        notes.append(f"rollout.dtype={r.dtype}: ours decodes with a copy of the weights; TRL with the policy")
    if o.aggregation == "seq_mean_token_sum_norm" and o.max_len not in (None, r.max_new_tokens):
        notes.append("TRL's dr_grpo divides by max_completion_length, not objective.max_len")
    updates = t.steps * t.mu
    if t.schedule == "cosine":
        kw["max_steps"] = updates  # the decay spans our number of updates, as ours does
        kw["lr_scheduler_type"] = "cosine"
    else:
        kw["lr_scheduler_type"] = "constant_with_warmup" if t.warmup_steps else "constant"
    if t.warmup_steps:
        notes.append("warm-up: ours starts at lr/warmup, TRL's (transformers) at 0")
    kw.update(
        learning_rate=t.lr,
        warmup_steps=t.warmup_steps,
        beta=o.beta,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        num_iterations=t.mu,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        epsilon=o.eps_low,
        epsilon_high=o.eps_high,
        loss_type=loss_type[o.aggregation],
        scale_rewards=scale.get(o.advantage, "group"),
        importance_sampling_level="sequence" if o.ratio == "sequence" else "token",
    )
    return kw, notes


def training_order(n: int, seed: int, count: int) -> list[int]:
    """The first `count` training-example indices our trainer draws with train.seed = `seed`: a fresh
    permutation of the n examples each epoch (Trainer.draw)."""
    import numpy as np

    rng, out = np.random.default_rng(seed), []
    while len(out) < count:
        out += rng.permutation(n).tolist()
    return out[:count]


# ---------------------------------------------------------------------------------------------------
# Worker: TRL, in its own process.


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sft2grpo.config import load_config
    from sft2grpo.rewards import build_reward
    from sft2grpo.tasks import load_task

    cfg = load_config(spec["config"], spec["overrides"])
    task = load_task(cfg.task)  # the same split ours trains on
    reward = build_reward(cfg.reward, task)
    kw, notes = trl_settings(cfg, spec["kind"], spec["max_steps"])
    need = kw["max_steps"] * cfg.train.prompts_per_step  # prompts TRL can draw before max_steps
    order = training_order(len(task.train), spec["seed"], need)
    examples = [task.train[i] for i in order]

    first_prompts: list[str] = []  # the prompts of TRL's first step, to check them against ours

    def chain_sum_reward(prompts, completions, idx, **kwargs) -> list[float]:
        """Our reward in TRL's signature; `idx` is the dataset column naming each row's example.
        (bench_trl.py's wrapper is the same, but local to its worker.)"""
        if not first_prompts:
            first_prompts.extend(dict.fromkeys(examples[i].prompt for i in idx))
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return reward(texts, [examples[i] for i in idx]).rewards.tolist()

    system = [{"role": "system", "content": cfg.model.system_prompt}] if cfg.model.system_prompt else []
    rows = [
        {"prompt": [*system, {"role": "user", "content": e.prompt}], "idx": i} for i, e in enumerate(examples)
    ]
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-learn-trl-"),
        seed=spec["seed"],
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        **kw,
    )
    trainer = GRPOTrainer(
        model=spec["folder"],
        reward_funcs=chain_sum_reward,
        args=config,
        train_dataset=Dataset.from_list(rows),
    )
    budget = spec["budget_s"]
    clock = {"start": 0.0, "last": 0.0, "steps": []}

    class Budget(TrainerCallback):
        """Stops training at the step end nearest the budget: once the time after the next step
        would be further from it than the time now (a step's overshoot would otherwise favour TRL)."""

        def on_train_begin(self, args, state, control, **kw):
            clock["start"] = clock["last"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            clock["steps"].append(now - clock["last"])
            clock["last"] = now
            elapsed = now - clock["start"]
            if elapsed + clock["steps"][-1] / 2 >= budget:
                control.should_training_stop = True
            print(
                f"  TRL step {state.global_step}: {clock['steps'][-1]:.1f} s, {elapsed:.0f}/{budget:.0f} s",
                flush=True,
            )

    trainer.add_callback(Budget())
    trainer.train()
    train_time = clock["last"] - clock["start"]
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.use_cache = True  # TRL turns the cache off for gradient checkpointing
    out = Path(spec["model_dir"])
    trainer.save_model(str(out))
    return {
        "train_time_s": train_time,
        "steps": trainer.state.global_step,
        "step_s": clock["steps"],
        "model_dir": str(out),
        "grpo_config": {k: v for k, v in kw.items() if k != "model_init_kwargs"},
        "loss_type": config.loss_type,
        "beta": config.beta,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": str(config.lr_scheduler_type),
        "scale_rewards": str(config.scale_rewards),
        "notes": notes,
        "first_prompts": first_prompts,
        "log_history": trainer.state.log_history,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }


# ---------------------------------------------------------------------------------------------------
# The parent: ours, TRL and the evaluations as subprocesses.


def run(cmd: list[str], what: str) -> float:
    """Run a subprocess (its output shows as it goes); stop with a one-line message if it fails."""
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"bench_learn: {what} failed (exit {proc.returncode}); see above")
    return time.perf_counter() - t0


def sft2grpo(*args: str) -> list[str]:
    # this interpreter's package (the venv the bench runs in), not whatever `sft2grpo` is on PATH
    return [sys.executable, "-m", "sft2grpo", *args]


def evaluate(model: str, out: Path, config: str, overrides: list[str]) -> dict[str, float]:
    run(
        sft2grpo("eval", "--model", model, "--config", config, "--output", str(out), *overrides),
        f"eval of {model}",
    )
    return read_scores(out)


def train_ours(folder: str, out: Path, config: str, overrides: list[str], seed: int) -> dict:
    cmd = sft2grpo(
        "train",
        "--config",
        config,
        *overrides,
        f"model.name={folder}",
        f"train.seed={seed}",
        "eval.before=false",  # every model is scored by the same `sft2grpo eval` below
        "eval.after=false",
        "log.progress=false",
        f"log.output_dir={out}",
    )
    wall = run(cmd, "our training")
    summary = json.loads((out / "summary.json").read_text())
    samples = read_metrics(out / "samples.jsonl")  # the first log.samples_per_step groups of a step
    return {
        "first_prompts": [r["prompt"] for r in samples if r["step"] == 1],
        "train_time_s": summary["train_time_s"],
        "steps": summary["steps"],
        "model_dir": summary["model_dir"],
        "run_dir": str(out),
        "wall_s": wall,
    }


def same_start(ours: dict, trl: dict) -> bool | None:
    """Whether TRL's first step drew the prompts ours did (as far as ours' samples.jsonl shows them);
    None when either side recorded none."""
    a, b = ours.get("first_prompts") or [], trl.get("first_prompts") or []
    n = min(len(a), len(b))
    return a[:n] == b[:n] if n else None


def train_trl(spec: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec, indent=2))
    result = out / "result.json"
    wall = run(
        [sys.executable, __file__, "--worker", "trl", "--spec", str(out / "spec.json")], "TRL's training"
    )
    res = json.loads(result.read_text())
    res["wall_s"] = wall
    return res


def parent(args) -> None:
    from sft2grpo.config import load_config

    sides = split_list(args.only)
    trl_kinds = split_list(args.trl_configs) if "trl" in sides else []
    if trl_kinds and importlib.util.find_spec("trl") is None:
        raise SystemExit(TRL_MISSING.format(exe=sys.executable))
    seeds = [int(s) for s in split_list(args.seeds)]
    overrides, dropped = recipe_overrides(args.recipe, args.ours_args)
    load_config(args.config, overrides)  # a bad key stops here, before anything runs
    eval_overrides = [
        *(o for o in overrides if not o.startswith("train.")),  # task, reward, tokens: as trained
        f"eval.size={args.eval_problems}",
        "log.progress=false",
        *shlex.split(args.eval_args),
    ]
    out = Path(args.output or f"runs/bench-learn-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    keep: list = []
    folder = model_folder(args.model, keep)
    print(
        f"bench_learn: model {args.model} ({folder}); ours: --config {args.config} {shlex.join(overrides)}"
        f"{f' (dropped {shlex.join(dropped)}: fp32 on both sides)' if dropped else ''}; TRL: {', '.join(trl_kinds) or '-'}; "
        f"seeds {seeds}; {args.eval_problems} held-out problems; output {out}; "
        f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; "
        + " ".join(f"{k} {v}" for k, v in versions().items())
    )
    base = evaluate(folder, out / "eval-base", args.config, eval_overrides)
    runs: dict = {"ours": [], "trl": {k: [] for k in trl_kinds}}
    scores: dict = {"ours": [], "trl": {k: [] for k in trl_kinds}}
    for seed in seeds:
        budget = args.minutes * 60 if args.minutes else 15 * 60.0
        if "ours" in sides:
            load0 = os.getloadavg()[0]
            res = train_ours(folder, out / f"ours-seed{seed}", args.config, overrides, seed)
            res["loadavg_1min"] = [load0, os.getloadavg()[0]]
            res["scores_dir"] = str(out / f"eval-ours-seed{seed}")
            scores["ours"].append(
                evaluate(res["model_dir"], Path(res["scores_dir"]), args.config, eval_overrides)
            )
            runs["ours"].append(res)
            if args.minutes is None:
                budget = res["train_time_s"]  # TRL trains as long as ours did
        for kind in trl_kinds:
            spec = {
                "kind": kind,
                "seed": seed,
                "config": args.config,
                "overrides": overrides,
                "folder": folder,
                "budget_s": budget,
                "max_steps": args.trl_max_steps,
                "model_dir": str(out / f"trl-{kind}-seed{seed}" / "model"),
            }
            load0 = os.getloadavg()[0]
            res = train_trl(spec, out / f"trl-{kind}-seed{seed}")
            res["budget_s"] = budget
            res["loadavg_1min"] = [load0, os.getloadavg()[0]]
            res["scores_dir"] = str(out / f"eval-trl-{kind}-seed{seed}")
            scores["trl"][kind].append(
                evaluate(res["model_dir"], Path(res["scores_dir"]), args.config, eval_overrides)
            )
            runs["trl"][kind].append(res)
            if runs["ours"]:
                res["same_first_prompts_as_ours"] = same = same_start(runs["ours"][-1], res)
                print(
                    f"  TRL ({kind}) started on ours' prompts: {'NO' if same is False else 'yes' if same else '?'}"
                )
            for note in res["notes"]:
                print(f"  note (TRL {kind}): {note}")
    summary = summarise(base, scores["ours"], scores["trl"])
    print_report(summary, runs)
    if runs["ours"]:  # validation accuracy, signal, length over the seeds: where the learning went
        curves = plot_seeds([out / f"ours-seed{seed}" for seed in seeds], out / "ours-curves.png")
        print(f"\nours over seeds: {curves}")
    if args.json:
        result = {
            "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "spec")},
            "ours_overrides": overrides,
            "eval_overrides": eval_overrides,
            "model_folder": folder,
            "output": str(out),
            "machine": {"cpus": os.cpu_count(), "loadavg_after": os.getloadavg(), **versions()},
            "runs": runs,
            "summary": summary,
        }
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker == "trl":
        if importlib.util.find_spec("trl") is None:
            raise SystemExit(TRL_MISSING.format(exe=sys.executable))
        spec = json.loads(Path(args.spec).read_text())
        res = run_trl(spec)
        (Path(args.spec).parent / "result.json").write_text(json.dumps(res, indent=2, default=str))
        return
    parent(args)


if __name__ == "__main__":
    main()
