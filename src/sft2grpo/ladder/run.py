"""`sft2grpo ladder`: every rung and variant on one budget, and a report that answers the seed's claims.

    sft2grpo ladder --budget small                       # 9 presets x 1 seed, a smoke check
    sft2grpo ladder                                      # configs/run.yaml's recipe, 40 steps, 3 seeds, 9 presets
    sft2grpo ladder --presets all --steps 30 --seeds 4 train.lr=3e-5

Every (preset, seed) run gets the same task, model, prompts (train.seed = seed), rollout budget and
held-out set; only the preset's own objective and train.mu differ (mu = 2 from rung 4 on is the rung).
The work, in order, each part skipped when its output exists, so rerunning the same command resumes
an interrupted ladder:

1. each run trains in its own process (`python -m sft2grpo train`): ru_maxrss only grows within a
   process, so each run's peak memory is its own and no_kl's missing reference model shows. A run
   with a finished summary.json is skipped, one with a checkpoint resumed, one with neither restarted.
   `--jobs` runs train at once (default 2), each with its share of the cores (`train_runs`).
   Each run scores the held-out split itself at the budget's earlier horizons (`eval.heldout_at`).
2. the cost runs (`costs.py`): grpo and no_kl alone, one process at a time, for what the reference
   model costs in memory and time.
3. `measure` processes (as many as jobs) evaluate the base model on the held-out set once (greedy
   and sampled), and for every run estimate KL(trained || base) (`kl_to_base`) and score its sampled
   accuracy: k answers per held-out problem at the rollout temperature (`evaluate_sampled`).
4. REPORT.md, results.json, curves.png and final.png (`report.py`): a table per preset (means
   with 95% intervals over seeds), a verdict at 95% on each of the seed's claims from paired
   intervals over seeds and problems (`verdicts.py`, `stats.py`), and the A/A check.

This process never loads a model (it imports torch at most, to look for checkpoints): a child
process starts with its parent's peak RSS as its own, so a parent holding a model would inflate every
run's peak memory.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .plan import (  # noqa: F401 (re-exported: the ladder's plan is part of its API)
    BUDGETS,
    DESCRIPTIONS,
    PRESETS,
    RUNGS,
    Budget,
    Plan,
    Run,
    is_finished,
    make_plan,
    parse_presets,
    read_json,
)

# Seconds per unit of work of one SmolLM2-135M run on a 2-core machine while another run shares it
# (`--jobs 2`, one thread each), with int8 rollouts, for the estimate printed before a ladder starts:
# a process start (imports, model load and save); a rollout's decode step (a fixed cost, plus a cost
# per row: the batch runs until its longest row stops); one row-token of a forward+backward pass; one
# greedy problem-token of evaluation. One table per kind of CPU this project runs on, since the
# training step differs about 3x between them: "fp32", an AVX2-only CPU where bf16 is emulated and
# autocast "auto" trains in fp32 (fitted to the first 8 runs of the 12-step ladder, 2026-11-30), and
# "bf16", a CPU with AVX512-BF16 or AMX (fitted to seed 0 of the 40-step ladder). The progress
# lines rescale the estimate by what finished runs took (docs/ladder/README.md).
COSTS = {
    "fp32": {"start": 28.0, "decode": 0.105, "decode_row": 5.2e-3, "update": 1.1e-2, "eval": 6.4e-3},
    "bf16": {"start": 56.0, "decode": 0.0448, "decode_row": 2.22e-3, "update": 4.46e-3, "eval": 2.75e-3},
}


def cost_table(cfg) -> dict[str, float]:
    """COSTS for this machine and the run's autocast: "bf16" where bf16 is native and the run uses it
    (train.autocast auto or bf16), else "fp32"."""
    import torch

    from ..models import has_fast_bf16

    native = cfg.train.autocast in ("auto", "bf16") and has_fast_bf16(torch.device("cpu"))
    return COSTS["bf16" if native else "fp32"]


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
    `cost` (default: this machine's, `cost_table`)."""
    COST = cost or cost_table(cfg)  # noqa: N806 (the table's name in the comments above)
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
    of about eval.batch_size rows, each as long as its longest row (`cost`: COSTS)."""
    size = min(cfg.eval.size or cfg.task.eval_size, cfg.task.eval_size)
    rows = size * k
    calls = -(-rows // max(cfg.eval.batch_size, k)) if rows else 0
    return (cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens) * (
        calls * cost["decode"] + rows * cost["decode_row"]
    )


def estimate_wall_s(run_s: float, jobs: int) -> float:
    """Wall time of `run_s` seconds of runs as COSTS count them (two sharing the cores), `jobs` at a
    time: halved with two at once, divided by JOBS_SPEEDUP when one run has both cores."""
    return run_s / 2 if jobs >= 2 else run_s / JOBS_SPEEDUP


def estimate_measure_s(plan: Plan) -> float:
    """The measure process: start, the base evaluation, and per run a load, a small rollout for KL
    and the sampled evaluation (eval_samples per held-out problem; the base model's too)."""
    cfg = plan.runs[0].cfg
    COST = cost_table(cfg)  # noqa: N806
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

    from .costs import COST_STEPS, PAIR, REPEATS, done

    if not all(p in plan.presets for p in PAIR) or done(plan):
        return 0.0
    total = 0.0
    for p in PAIR:
        cfg = next(r.cfg for r in plan.runs if r.preset == p)
        short = replace(
            cfg, train=replace(cfg.train, steps=COST_STEPS), eval=replace(cfg.eval, every=0, heldout_at=[])
        )
        total += REPEATS * estimate_run_s(short)
    return total / JOBS_SPEEDUP


# ---------------------------------------------------------------------------------------------------
# Running.


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)  # atomic: a reader sees the old file or the whole new one


def run_state(run: Run) -> str:
    """'done' (finished), 'resume' (has a complete checkpoint) or 'fresh'."""
    if is_finished(run):
        return "done"
    if run.dir.is_dir():
        from .. import checkpoint  # imports torch (a few hundred MB, less than any run's own peak)

        if checkpoint.latest(run.dir) is not None:
            return "resume"
    return "fresh"


def check_same_settings(run: Run) -> None:
    """A run folder trained with other settings would mix budgets in one table: refuse it."""
    import yaml

    from ..config import Config, to_dict

    saved = read_yaml(run.dir / "config.yaml", yaml)
    if saved is None:
        return
    planned, defaults = to_dict(run.cfg), to_dict(Config())
    for section, values in planned.items():
        if section in ("log", "checkpoint"):  # where and how often to write: not the experiment
            continue
        diff = first_difference(values, saved.get(section, {}), section, defaults.get(section))
        if diff:
            raise ValueError(
                f"{run.dir} holds a run with other settings ({diff}); rerun the same command, "
                "choose another --output, or delete that folder"
            )


def read_yaml(path: Path, yaml) -> dict | None:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def first_difference(a: Any, b: Any, key: str, default: Any = None) -> str | None:
    """'train.steps: 20 planned, 3 saved' for the first leaf where a and b differ, else None. A key
    the saved config lacks came with a newer sft2grpo: the run had its default (from `default`, the
    same place in a default config), and it differs only if the plan sets another value."""
    if isinstance(a, dict) and isinstance(b, dict):
        default = default if isinstance(default, dict) else {}
        for k in a:
            if k in b:
                d = first_difference(a[k], b[k], f"{key}.{k}", default.get(k))
            elif k in default:
                d = first_difference(a[k], default[k], f"{key}.{k}", default[k])
                d = d and f"{d} (the saved config lacks the key: a run from before it, at the default)"
            else:
                d = None
            if d:
                return d
        return None
    if a != b and not (isinstance(a, list | tuple) and isinstance(b, list | tuple) and list(a) == list(b)):
        return f"{key}: {a!r} planned, {b!r} saved"
    return None


def child_env(jobs: int) -> dict[str, str] | None:
    """The environment of a run's process when `jobs` runs share the machine: each gets its share of
    the CPU cores as OMP_NUM_THREADS (torch's default thread count follows it; `model.threads`, when
    set, still wins). None (inherit) for one job at a time or when the user set OMP_NUM_THREADS."""
    if jobs <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}


def start_run(run: Run, state: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start training (or resuming) one run in its own process, its output appended to `log`."""
    if state == "fresh":
        shutil.rmtree(run.dir, ignore_errors=True)  # a crashed start without a checkpoint
    argv = [sys.executable, "-m", "sft2grpo", "train"]
    argv += ["--resume", str(run.dir)] if state == "resume" else ["--config", run.preset, *run.overrides]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {shlex.join(argv)}\n")
        f.flush()
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)  # the child keeps f


def add_wall_time(run_dir: Path, seconds: float) -> None:
    """Process wall time of a run, summed over its resumed pieces (ladder.json in the run folder)."""
    if not run_dir.is_dir():
        return
    prev = read_json(run_dir / "ladder.json") or {}
    write_json(run_dir / "ladder.json", {"wall_s": prev.get("wall_s", 0.0) + seconds})


def drop_checkpoints(run_dir: Path) -> None:
    """A finished run's checkpoints only served resuming (1.6 GB each for the 135M model)."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # checkpoint.folder(run_dir)


def last_error(log: Path) -> str:
    """The last 'sft2grpo: error' line (or the last line) of a run's log, for the report."""
    try:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    errors = [x for x in lines if x.startswith("sft2grpo: error")]
    return (errors or lines or ["no output"])[-1][:200]


def run_ladder(**kwargs) -> int:
    """`sft2grpo ladder`: plan, train what is not finished, measure, report. Returns the exit code:
    0 when every run finished, 1 when some failed (the report then shows the others), 130 when a run
    was stopped by a signal (rerun to resume)."""
    dry_run = kwargs.pop("dry_run", False)
    plan = make_plan(**kwargs)
    jobs = plan.jobs
    for run in plan.runs:
        check_same_settings(run)
    states = {(r.preset, r.seed): run_state(r) for r in plan.runs}
    todo = [r for r in plan.runs if states[(r.preset, r.seed)] != "done"]
    est = {(r.preset, r.seed): estimate_run_s(r.cfg) for r in todo}
    print_plan(plan, states, est, jobs)
    if dry_run:
        return 0
    plan.out.mkdir(parents=True, exist_ok=True)
    for run in plan.runs:
        if states[(run.preset, run.seed)] == "done":
            drop_checkpoints(run.dir)
            print(f"{tag(plan, run)}  finished before: skipped", flush=True)
    t0 = time.time()
    try:
        failed = train_runs(plan, states, est, jobs)
    finally:  # the ladder's own wall time of training, summed over its resumed pieces
        prev = read_json(plan.out / "time.json") or {}
        write_json(plan.out / "time.json", {"train_wall_s": prev.get("train_wall_s", 0.0) + time.time() - t0})
    if failed is None:
        return 130
    from .costs import measure_costs

    problem = measure_costs(plan)  # alone on the machine: after training, before measuring
    problem = measure_runs(plan, jobs) or problem
    from .report import write_report

    report = write_report(plan, failed)
    print(f"report: {report}")
    if problem:
        print(f"sft2grpo: warning: {problem}; the report lacks those numbers", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(plan.runs)} runs failed; see {plan.out / 'logs'}", file=sys.stderr)
    return 1 if failed or problem else 0


def run_log(plan: Plan, run: Run) -> Path:
    return plan.out / "logs" / f"{run.preset}-s{run.seed}.log"


def tag(plan: Plan, run: Run) -> str:
    return f"[{plan.runs.index(run) + 1:2d}/{len(plan.runs)}] {run.preset:11s} seed {run.seed}"


def train_runs(plan: Plan, states: dict, est: dict, jobs: int) -> dict[tuple[str, int], str] | None:
    """Train every unfinished run, `jobs` processes at a time, in plan order (seed-major). Returns the
    failed runs with their last error line, or None when a run was stopped by a signal: the others
    are then stopped the same way (each checkpoints first) so that the same command resumes them."""
    todo = [r for r in plan.runs if states[(r.preset, r.seed)] != "done"]
    env = child_env(jobs)
    failed: dict[tuple[str, int], str] = {}
    running: dict[subprocess.Popen, tuple[Run, float]] = {}
    t_start, spent, spent_est, stopped = time.time(), 0.0, 0.0, False
    try:
        while (todo and not stopped) or running:
            while todo and len(running) < jobs and not stopped:
                run = todo.pop(0)
                proc = start_run(run, states[(run.preset, run.seed)], run_log(plan, run), env)
                running[proc] = (run, time.time())
            done = [p for p in running if p.poll() is not None]
            if not done:
                time.sleep(0.5)
                continue
            for proc in done:
                run, t0 = running.pop(proc)
                took = time.time() - t0
                add_wall_time(run.dir, took)
                key = (run.preset, run.seed)
                spent, spent_est = spent + took, spent_est + est[key]
                if proc.returncode == 0 and is_finished(run):
                    drop_checkpoints(run.dir)
                    s = read_json(run.dir / "summary.json") or {}
                    acc = (s.get("after") or {}).get("accuracy")
                    what = f"held-out {100 * acc:.1f}%" if acc is not None else "no held-out evaluation"
                    mem = s.get("peak_mem_mb", 0) / 1024
                    line = f"{states[key]:6s} {took:5.0f} s  {what}  peak {mem:.2f} GiB"
                elif proc.returncode == 0 and (read_json(run.dir / "summary.json") or {}).get("interrupted"):
                    # stopped by a signal (it checkpointed first): stop the ladder too, as Ctrl-C would
                    print(
                        f"{tag(plan, run)}  interrupted after {took:.0f} s; rerun the same command to resume",
                        flush=True,
                    )
                    if not stopped:
                        for other in running:
                            other.send_signal(signal.SIGINT)
                    stopped = True
                    continue
                else:
                    log = run_log(plan, run)
                    failed[key] = last_error(log)
                    line = f"FAILED after {took:.0f} s (log: {log}): {failed[key]}"
                # what is left: estimates rescaled by what finished runs took against theirs (which
                # absorbs the slowdown of runs sharing the cores), spread over the jobs
                ratio = spent / max(spent_est, 1e-9)
                left = sum(est[(r.preset, r.seed)] * ratio for r in todo) + estimate_measure_s(plan) * ratio
                left += sum(
                    max(0.0, est[(r.preset, r.seed)] * ratio - (time.time() - t)) for r, t in running.values()
                )
                left /= jobs
                print(
                    f"{tag(plan, run)}  {line}  | ladder {(time.time() - t_start) / 60:.1f} min, "
                    f"~{left / 60:.0f} min left",
                    flush=True,
                )
    except KeyboardInterrupt:
        # Ctrl-C reached the children too: each finishes its step, checkpoints and exits
        for proc, (run, t0) in running.items():
            proc.wait()
            add_wall_time(run.dir, time.time() - t0)
        print("\ninterrupted; rerun the same command to resume")
        raise
    return None if stopped else failed


def print_plan(plan: Plan, states: dict, est: dict, jobs: int = 1) -> None:
    cfg = plan.runs[0].cfg
    done = sum(s == "done" for s in states.values())
    seeds = f"{len(plan.seeds)} seed{'s' if len(plan.seeds) > 1 else ''}"
    print(
        f"ladder: {len(plan.presets)} presets x {seeds} = {len(plan.runs)} runs, "
        f"budget {plan.budget_name}: {plan.steps} steps of {cfg.train.prompts_per_step} prompts x "
        f"{cfg.rollout.group_size} completions x <= {cfg.rollout.max_new_tokens} tokens, held-out "
        f"{min(cfg.eval.size or cfg.task.eval_size, cfg.task.eval_size)} problems (greedy"
        + (f", and {plan.budget.eval_samples} samples each" if plan.budget.eval_samples else "")
        + "); "
        f"task {cfg.task.name}, model {cfg.model.name}; output {plan.out}/"
    )
    width = max(11, *(len(p) for p in plan.presets))  # 11: the default ladder's widest, reward_norm
    for p in plan.presets:
        runs = [r for r in plan.runs if r.preset == p]
        marks = " ".join(f"s{r.seed}:{states[(p, r.seed)]}" for r in runs)
        secs = [est[(p, r.seed)] for r in runs if (p, r.seed) in est]
        mins = f"~{sum(secs) / 60:4.1f} min" if secs else "    -    "
        print(
            f"  {p:{width}s} mu {runs[0].cfg.train.mu}  beta {runs[0].cfg.objective.beta:<5g} {mins}  {marks}"
        )
    total = estimate_wall_s(sum(est.values()) + (estimate_measure_s(plan) if est else 0.0), jobs)
    total += estimate_cost_runs_s(plan)
    kind = next(k for k, v in COSTS.items() if v is cost_table(cfg))
    print(
        f"{done} of {len(plan.runs)} runs finished before; estimate for the rest, with measurements: "
        f"~{total / 60:.0f} min, {jobs} run{'s' if jobs > 1 else ''} at a time (SmolLM2-135M timings on "
        f"2 CPU cores, {kind} training)",
        flush=True,
    )


def measure_runs(plan: Plan, jobs: int = 1) -> str | None:
    """Base evaluation and KL and sampled accuracy of every finished run, in `jobs` processes of their
    own (`measure`), each with its share of the runs; the first also measures the base model.
    Returns what went wrong, or None."""
    finished = [r for r in plan.runs if is_finished(r)]
    k = plan.budget.eval_samples
    need_base = not (plan.out / "base" / "eval.json").exists() or not measured(plan.out / "base", k)
    need_kl = [r for r in finished if not measured(r.dir, k) and (r.dir / "model").is_dir()]
    if need_base or need_kl:
        t0 = time.time()
        sampled = f" and sampled accuracy ({k} per problem)" if k else ""
        what = (["the base model's held-out accuracy"] if need_base else []) + [
            f"KL{sampled} of {len(need_kl)} runs"
        ]
        n = max(1, min(jobs, len(need_kl)))
        print(f"measuring {' and '.join(what)}" + (f", {n} processes" if n > 1 else ""), flush=True)
        (plan.out / "logs").mkdir(parents=True, exist_ok=True)
        procs = []
        for i in range(n):
            spec = {
                "shared": plan.shared,
                "base": i == 0,
                "runs": [{"dir": str(r.dir), "seed": r.seed} for r in need_kl[i::n]],
                "kl_prompts": plan.budget.kl_prompts,
                "kl_samples": plan.budget.kl_samples,
                "eval_samples": k,
            }
            name = "measure" if n == 1 else f"measure-{i}"
            write_json(plan.out / f"{name}.json", spec)
            log = plan.out / "logs" / f"{name}.log"
            argv = [sys.executable, "-m", "sft2grpo.ladder", "measure", str(plan.out / f"{name}.json")]
            with open(log, "a", encoding="utf-8") as f:
                procs.append(
                    (subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=child_env(n)), log)
                )
        wait_measuring(procs, need_kl, k)
        errors = [last_error(log) + f" (log: {log})" for proc, log in procs if proc.returncode != 0]
        if errors:
            return f"measuring the base model and KL failed: {errors[0]}"
        (plan.out / "base").mkdir(exist_ok=True)
        prev = read_json(plan.out / "base" / "time.json") or {}
        write_json(plan.out / "base" / "time.json", {"wall_s": prev.get("wall_s", 0.0) + time.time() - t0})
    if not plan.keep_models:
        for r in finished:
            if measured(r.dir, k):
                shutil.rmtree(r.dir / "model", ignore_errors=True)
    return None


def wait_measuring(procs: list, runs: list[Run], k: int, every_s: float = 5.0) -> None:
    """Wait for the measure processes, printing how many of `runs` are measured as that grows (the
    measure phase of a full ladder takes the better part of an hour)."""
    done, t0 = 0, time.time()
    while True:
        running = [proc for proc, _ in procs if proc.poll() is None]
        now = sum(measured(r.dir, k) for r in runs)
        if now > done:
            done = now
            print(f"  measured {done} of {len(runs)} runs ({(time.time() - t0) / 60:.1f} min)", flush=True)
        if not running:
            return
        time.sleep(every_s)


def measured(folder: Path, eval_samples: int) -> bool:
    """Whether the measure process is done with a run folder (or base/): KL (runs only) and, with
    eval_samples > 0, the sampled evaluation with that many samples per problem."""
    if folder.name != "base" and not (folder / "kl.json").exists():
        return False
    if not eval_samples:
        return True
    done = read_json(folder / "sampled.json") or {}
    return done.get("samples_per_problem") == eval_samples and (folder / "eval_sampled.jsonl").exists()


def write_sampled(folder: Path, comp, cfg, k: int, seed: int) -> float:
    """sampled.json (metrics) and eval_sampled.jsonl (per problem) in `folder`; returns the accuracy."""
    from ..evaluate import evaluate_sampled, write_jsonl

    t0 = time.perf_counter()
    res = evaluate_sampled(comp.eval_engine, comp.tokenizer, comp.task, comp.reward_fn, cfg, k, seed)
    write_jsonl(folder / "eval_sampled.jsonl", res.samples)
    write_json(folder / "sampled.json", {**res.metrics, "seed": seed, "time_s": time.perf_counter() - t0})
    return res.metrics["accuracy"]


# ---------------------------------------------------------------------------------------------------
# The measure process: everything that needs a model, outside the ladder's own process.


def kl_to_base(policy, base, examples: list, cfg, samples: int, seed: int = 0) -> dict[str, float]:
    """Per-token KL(policy || base) on `samples` completions of `policy` (its Components) per example.

    The policy samples at the rollout temperature; both models score the same tokens, and the mean
    over every completion token of Schulman's k3 = exp(d) - d - 1, d = log pi_base - log pi (>= 0,
    unbiased for each token's KL given its prefix, the estimator GRPO's loss uses) is the number
    reported; the mean of k1 = -d is kept too (unbiased, noisier). Zero for policy == base.
    """
    import torch

    from .. import objective
    from ..models import chat_prompt_ids, group_logprobs
    from ..rollout.base import SamplingParams

    dev = next(policy.model.parameters()).device
    ids = chat_prompt_ids(policy.tokenizer, [e.chat for e in examples], cfg.model.system_prompt)
    params = SamplingParams(
        n=samples, max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature
    )
    ro = policy.eval_engine.generate(ids, params, torch.Generator().manual_seed(seed))
    row_prompt = torch.arange(len(ids), device=dev).repeat_interleave(samples)  # [B]
    comp, mask = ro.completion_ids.to(dev), ro.mask.float().to(dev)  # [B, T]
    with torch.no_grad():
        lp = group_logprobs(policy.model, ids, row_prompt, comp, mask, cfg.rollout.temperature)  # [B, T]
        ref = group_logprobs(base, ids, row_prompt, comp, mask, cfg.rollout.temperature)  # [B, T]
    tokens = mask.sum().clamp(min=1)
    k3 = objective.kl_penalty(lp, ref, "k3")  # [B, T]
    return {
        "kl_k3": float((k3 * mask).sum() / tokens),
        "kl_k1": float(((lp - ref) * mask).sum() / tokens),
        "tokens": int(mask.sum()),
        "prompts": len(ids),
        "samples": samples,
    }


def measure(spec_path: Path) -> None:
    """Write <out>/base/eval.json (held-out metrics of the base model) and <run>/kl.json for each run
    listed in the spec that `measure_runs` wrote."""
    from dataclasses import replace

    from ..components import build_components
    from ..config import LoraConfig, load_config
    from ..evaluate import evaluate_heldout, write_jsonl

    spec = json.loads(spec_path.read_text())
    out = spec_path.parent
    cfg = load_config(None, [*spec["shared"], "log.progress=false"])
    # trained models are saved with LoRA merged in, so every model here is a plain one
    cfg = replace(cfg, model=replace(cfg.model, lora=LoraConfig(enabled=False)))
    base = build_components(cfg)
    first = spec.get("base", True)  # with several measure processes, only the first measures the base
    if first and not (out / "base" / "eval.json").exists():
        t0 = time.perf_counter()
        res = evaluate_heldout(base.eval_engine, base.tokenizer, base.task, base.reward_fn, cfg)
        (out / "base").mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "base" / "eval_samples.jsonl", res.samples)
        write_json(out / "base" / "eval.json", {**res.metrics, "time_s": time.perf_counter() - t0})
        print(f"base: held-out accuracy {res.metrics['accuracy']:.3f}", flush=True)
    k = spec.get("eval_samples", 0)
    if first and k and not measured(out / "base", k):
        # one sampled evaluation of the base model (seed 0), paired with every seed's run
        acc = write_sampled(out / "base", base, cfg, k, seed=0)
        print(f"base: sampled accuracy {acc:.3f} ({k} per problem)", flush=True)
    examples = base.task.eval[: spec["kl_prompts"]]
    for item in spec["runs"]:
        d, seed = Path(item["dir"]), int(item["seed"])
        t0 = time.perf_counter()
        run_cfg = replace(cfg, model=replace(cfg.model, name=str(d / "model")))
        policy = build_components(run_cfg, task=base.task)
        if not (d / "kl.json").exists():
            kl = kl_to_base(policy, base.model, examples, cfg, spec["kl_samples"])
            write_json(d / "kl.json", {**kl, "time_s": time.perf_counter() - t0})
            print(f"{d.name}: KL k3 {kl['kl_k3']:.4g} per token", flush=True)
        if k and not measured(d, k):
            acc = write_sampled(d, policy, cfg, k, seed)
            print(f"{d.name}: sampled accuracy {acc:.3f} ({k} per problem)", flush=True)
        del policy
