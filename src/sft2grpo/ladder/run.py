"""`sft2grpo ladder`: every rung and variant on one budget, and a report that answers the seed's claims.

    sft2grpo ladder --budget small                       # 9 presets x 1 seed, a smoke check
    sft2grpo ladder                                      # configs/run.yaml's recipe (GRPO alone), 40 steps, 3 seeds, 9 presets
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
   accuracy: k answers per held-out problem at the rollout temperature (`evaluate_sampled`);
   measure.py is that process.
4. REPORT.md, results.json, curves.png and final.png (`report.py`): a table per preset (means
   with 95% intervals over seeds), a verdict at 95% on each of the seed's claims from paired
   intervals over seeds and problems (`verdicts.py`, `stats.py`), and the A/A check.

Before it starts, the time it will take is printed (estimate.py; `--dry-run` stops there).
This process never loads a model (it imports torch at most, to look for checkpoints): a child
process starts with its parent's peak RSS as its own, so a parent holding a model would inflate every
run's peak memory.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .estimate import (
    UNIT_SECONDS,
    estimate_cost_runs_s,
    estimate_measure_s,
    estimate_run_s,
    estimate_wall_s,
    unit_seconds,
)
from .measure import measured
from .plan import (  # noqa: F401 (re-exported: the ladder's plan is part of its API)
    BUDGETS,
    DESCRIPTIONS,
    PRESETS,
    RUNGS,
    Budget,
    Plan,
    Run,
    check_same_settings,
    is_finished,
    make_plan,
    parse_presets,
    read_json,
    write_json,
)

# ---------------------------------------------------------------------------------------------------
# Running.


def run_state(run: Run) -> str:
    """'done' (finished), 'resume' (has a complete checkpoint) or 'fresh'."""
    if is_finished(run):
        return "done"
    if run.dir.is_dir():
        from .. import checkpoint  # imports torch (a few hundred MB, less than any run's own peak)

        if checkpoint.latest(run.dir) is not None:
            return "resume"
    return "fresh"


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
    argv += ["--resume", str(run.dir)] if state == "resume" else ["--config", run.config, *run.overrides]
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
    return f"[{plan.runs.index(run) + 1:2d}/{len(plan.runs)}] {run.preset:15s} seed {run.seed}"


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
    counts = sorted({plan.seed_count(p) for p in plan.presets})
    seeds = " or ".join(map(str, counts)) + f" seed{'s' if counts[-1] > 1 else ''}"
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
    kind = next(k for k, v in UNIT_SECONDS.items() if v is unit_seconds(cfg))
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
