"""`sft2grpo ladder` end to end on the tiny model (two presets x two seeds, each run its own process),
its resume rules, the report and results.json from run folders written by hand (a known effect, a
failed A/A check), and the verdict logic on numbers chosen by hand."""

import json
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sft2grpo.cli import main
from sft2grpo.ladder import estimate, measure
from sft2grpo.ladder import plan as ladder_plan
from sft2grpo.ladder import report as ladder_report
from sft2grpo.ladder import run as ladder  # the command's module: what monkeypatch must reach
from sft2grpo.ladder.plan import AA
from sft2grpo.ladder.verdicts import aa_status, comparisons, results_json
from sft2grpo.models import has_fast_bf16

TOY = Path(__file__).parent / "toy_reward.py"
TINY = [
    "task.size=16",
    "task.eval_size=4",
    "eval.size=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=8",
    "train.prompts_per_step=2",
    "train.micro_batch_size=8",
    "log.plots=false",
    "checkpoint.every=1",  # the tiny model's checkpoints are small: exercise writing and dropping them
    f"reward.functions=['{TOY}:lowercase_share']",
]
SECTIONS = ["## Command", "## Budget", "## Machine", "## Curves", "## Results", "## Verdict", "## Runs"]


PLAN_KW = dict(model="tiny", budget="small", presets="importance,importance_twin", seeds=2, steps=2)


def ladder_argv(out, *extra):
    return [
        *["ladder", "--model", "tiny", "--budget", "small", "--presets", "importance,importance_twin"],
        *["--seeds", "2", "--steps", "2", "--output", str(out), *TINY, *extra],
    ]


def table(report: str, header: str) -> list[str]:
    """The body rows of the markdown table whose header line starts with `header`."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def interrupt_after_one_step(run):
    """Train `run` in this process and stop it after step 1, as Ctrl-C would: it checkpoints and
    writes a summary marked interrupted."""
    from sft2grpo.trainer import Trainer

    trainer = Trainer(run.cfg, run.dir)
    step = trainer.train_step

    def one_step(state):
        out = step(state)
        signal.raise_signal(signal.SIGINT)  # the trainer's handler: finish this step, then stop
        return out

    trainer.train_step = one_step
    assert trainer.fit()["interrupted"]


def test_ladder_on_the_tiny_model_resumes_reports_then_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "ladder"
    plan = ladder.make_plan(**PLAN_KW, output=out, overrides=TINY)
    interrupt_after_one_step(plan.runs[-1])  # importance_twin, seed 1: a ladder stopped during that run
    # two runs at a time (the default), then two measure processes
    assert main(ladder_argv(out)) == 0
    printed = capsys.readouterr().out
    assert "importance_twin seed 1  resume" in printed and printed.count("  fresh ") == 3
    resumed = [json.loads(x)["step"] for x in (out / "runs" / "importance_twin-s1" / "metrics.jsonl").open()]
    assert resumed == [1, 2]  # step 1 from the interrupted piece, step 2 after resuming
    report = (out / "REPORT.md").read_text()
    for s in SECTIONS:
        assert s in report, s
    # importance and importance_twin are one configuration, the twin sampling from another stream: the
    # A/A check, in the report's first lines. The tiny model's two draws differ, and the interval says so honestly
    assert report.splitlines()[2].startswith(
        "A/A check passed: importance vs importance_twin, one configuration sampled"
    )
    rows = table(report, "| preset | what it is")
    assert [r.split("|")[1].strip() for r in rows] == ["base model", "importance", "importance_twin"]
    assert all("2/2" in r for r in rows[1:])  # both seeds of each preset finished
    assert len(table(report, "| preset | seed | status")) == 4
    assert "decided by sampled accuracy (the share of 4 samples per held-out problem" in report
    assert (
        "- deciding, drop it from GRPO (rung 4, importance" in report
        and "grpo -> importance: not measured" in report
    )
    results = json.loads((out / "results.json").read_text())
    check_results_schema(results, ["importance", "importance_twin"], seeds=[0, 1])
    aa = next(c for c in results["comparisons"] if c["role"] == "A/A")
    assert (aa["a"], aa["b"], aa["verdict"], aa["seeds"], aa["problems"]) == (
        "importance",
        "importance_twin",
        "undecided",
        2,
        4,
    )
    for png in ("curves.png", "final.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    runs = sorted((out / "runs").iterdir())
    assert [r.name for r in runs] == [
        "importance-s0",
        "importance-s1",
        "importance_twin-s0",
        "importance_twin-s1",
    ]
    for r in runs:
        kl = json.loads((r / "kl.json").read_text())
        assert kl["kl_k3"] >= 0 and kl["tokens"] > 0
        sampled = [json.loads(x) for x in (r / "eval_sampled.jsonl").read_text().splitlines()]
        assert len(sampled) == 4 and all(len(x["correct"]) == 4 for x in sampled)  # 4 problems x k = 4
        assert len((r / "eval_after.jsonl").read_text().splitlines()) == 4  # greedy, per problem
        assert not (r / "checkpoints").exists()  # only needed to resume; dropped once finished
        assert not (r / "model").exists()  # dropped after measuring (no --keep-models)
        config = (r / "config.yaml").read_text()
        assert "before: false" in config and f"seed: {r.name[-1]}" in config
    evals = [json.loads(x) for x in (runs[0] / "evals.jsonl").read_text().splitlines()]
    # eval.every=1 from the small budget, on the validation split from the base model (step 0) on;
    # the held-out split at the small budget's early horizon (step 1), greedy and sampled
    assert [(e["step"], e["tag"]) for e in evals] == [
        (0, "val"),
        (1, "val"),
        (1, "heldout"),
        (1, "heldout_sampled"),
        (2, "val"),
        (2, "after"),
    ]
    horizon = json.loads((runs[0] / "heldout" / "step-1" / "sampled.json").read_text())
    assert horizon["problems"] == 4 and horizon["samples_per_problem"] == 4 and horizon["step"] == 1
    assert json.loads((out / "base" / "eval.json").read_text())["problems"] == 4
    assert json.loads((out / "base" / "sampled.json").read_text())["samples_per_problem"] == 4

    assert (
        "measuring the base model's held-out accuracy and KL and sampled accuracy (4 per problem) of 4 runs, 2 processes"
        in printed
    )
    assert "  measured 4 of 4 runs (" in printed  # the measure phase's progress, as runs finish
    assert json.loads((out / "measure-0.json").read_text())["base"] is True
    assert not json.loads((out / "measure-1.json").read_text())["base"]
    assert "2 runs trained at a time (`--jobs 2`)" in report and "- wall time: " in report
    assert json.loads((out / "time.json").read_text())["train_wall_s"] > 0

    mtimes = {r.name: (r / "summary.json").stat().st_mtime_ns for r in runs}
    capsys.readouterr()
    assert main(ladder_argv(out, "--jobs", "1")) == 0  # --jobs is how, not what: nothing to redo
    printed = capsys.readouterr().out
    assert printed.count("finished before: skipped") == 4
    assert "measuring" not in printed  # base evaluation, KL and sampled accuracy are on disk already
    assert {r.name: (r / "summary.json").stat().st_mtime_ns for r in runs} == mtimes

    # the same folder with another budget would mix settings in one table: refused before training
    assert main(ladder_argv(out, "train.lr=1e-4")) == 2
    assert "train.lr: 0.0001 planned, 2e-05 saved" in capsys.readouterr().err


def check_results_schema(results: dict, presets: list[str], seeds: list[int]) -> None:
    """results.json as the issue asks: seeds; per preset per-seed values; comparisons with a, b,
    metric, diff, ci95 [lo, hi] and verdict, the A/A and base -> grpo ones among them."""
    assert results["seeds"] == seeds and results["deciding_metric"] in ("sampled_accuracy", "greedy_accuracy")
    assert list(results["presets"]) == ["base", *presets]
    for p in presets:
        entry = results["presets"][p]
        for m in (
            "sampled_accuracy",
            "greedy_accuracy",
            "peak_mem_mb",
            "step_time_s",
            "kl_to_base",
            "status",
        ):
            assert len(entry[m]) == len(seeds), (p, m)
    assert set(results["presets"]["base"]) == {"sampled_accuracy", "greedy_accuracy", "per_problem"}
    # every run's per-problem scores at every horizon, in the order of `problems`
    assert results["schema"] == 3 and results["problems"] == sorted(results["problems"])
    for p in presets:
        for entry in results["presets"][p]["per_problem"]:
            if entry is not None:
                assert set(entry) == {str(h) for h in results["horizons"]}
                for h in entry.values():
                    assert len(h["sampled"]) == len(h["greedy"]) == len(results["problems"])
    # the deciding pairs carry their family-wise interval, which is wider
    for c in results["comparisons"]:
        if c["role"].startswith("claim ") and c["verdict"] != "not measured":
            assert c["family"] >= 1 and c["verdict_family"] in ("supported", "contradicted", "undecided")
            assert c["ci_family"][0] <= c["ci95"][0] and c["ci_family"][1] >= c["ci95"][1]
    roles = [c["role"] for c in results["comparisons"]]
    assert {"claim 1", "claim 2", "claim 3", "claim 4", "A/A", "base -> grpo"} <= set(roles)
    assert results["horizons"][-1] == results["steps"]
    for c in results["comparisons"]:
        assert {"a", "b", "metric", "diff", "ci95", "verdict", "horizon"} <= set(c)
        assert c["horizon"] in results["horizons"]
        assert c["verdict"] in ("supported", "contradicted", "undecided", "not measured")
        if c["verdict"] == "not measured":
            assert c["diff"] is None and c["ci95"] is None
        else:
            lo, hi = c["ci95"]
            assert lo <= c["diff"] <= hi
    claims = {(r["claim"], r["horizon"]) for r in results["claims"]}
    assert claims == {(i, h) for i in (1, 2, 3, 4) for h in results["horizons"]}


def test_first_difference_reads_a_key_older_runs_lack_at_its_default():
    planned = {"seed": 1, "dtype": "int8", "temperature": 0.7}
    defaults = {"seed": 0, "dtype": "model", "temperature": 1.0}
    saved = {"dtype": "int8", "temperature": 0.7}  # written before rollout.seed existed
    assert ladder_plan.first_difference(planned, saved, "rollout", defaults) == (
        "rollout.seed: 1 planned, 0 saved (the saved config lacks the key: a run from before it, at the default)"
    )
    assert ladder_plan.first_difference({**planned, "seed": 0}, saved, "rollout", defaults) is None
    assert ladder_plan.first_difference(planned, {**saved, "seed": 1}, "rollout", defaults) is None
    assert (
        ladder_plan.first_difference(planned, {**saved, "seed": 2}, "rollout", defaults)
        == "rollout.seed: 1 planned, 2 saved"
    )


def test_run_state_resumes_from_a_checkpoint_and_restarts_without_one(tmp_path):
    plan = ladder.make_plan(
        model="tiny", presets="importance", seeds=1, steps=2, output=tmp_path, overrides=TINY
    )
    (run,) = plan.runs
    assert ladder.run_state(run) == "fresh"
    run.dir.mkdir(parents=True)
    (run.dir / "metrics.jsonl").write_text('{"step": 1}\n')  # a run killed before its first checkpoint
    assert ladder.run_state(run) == "fresh"
    ckpt = run.dir / "checkpoints" / "step-000001"  # checkpoint.py's layout: complete when both exist
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.pt").write_bytes(b"")
    (ckpt / "state.json").write_text('{"step": 1}')
    assert ladder.run_state(run) == "resume"
    (run.dir / "summary.json").write_text(json.dumps({"steps": 2, "interrupted": False}))
    assert ladder.run_state(run) == "done"
    (run.dir / "summary.json").write_text(json.dumps({"steps": 1, "interrupted": True}))  # Ctrl-C
    assert ladder.run_state(run) == "resume"


CHILD = """
import json, signal, sys, time
from pathlib import Path
d = Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
def stop(*_):
    (d / "summary.json").write_text(json.dumps({"steps": 1, "interrupted": True}))
    (d / "stopped_by_sigint").write_text("")
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
if sys.argv[2] == "stop-now":
    stop()  # as a run stopped by a signal of its own: checkpoint, interrupted summary, exit 0
(d / "started").write_text("")
time.sleep(60)  # a long run, until the ladder passes on the signal
"""


def test_jobs_runs_at_once_and_a_stopped_run_stops_the_others_for_resume(tmp_path, monkeypatch):
    plan = ladder.make_plan(
        model="tiny",
        presets="importance,importance_twin",
        seeds=2,
        steps=1,
        output=tmp_path,
        overrides=TINY,
        jobs=2,
    )
    started = []

    def fake_start(run, state, log, env=None):
        started.append(run.dir.name)
        if run.dir.name == "importance_twin-s0":  # wait until the first run really runs, then stop this one
            while not (plan.runs[0].dir / "started").exists():
                time.sleep(0.05)
        mode = "stop-now" if run.dir.name == "importance_twin-s0" else "run"
        return subprocess.Popen([sys.executable, "-c", CHILD, str(run.dir), mode])

    monkeypatch.setattr(ladder, "start_run", fake_start)
    states = {(r.preset, r.seed): "fresh" for r in plan.runs}
    est = {k: 10.0 for k in states}
    t0 = time.time()
    assert ladder.train_runs(plan, states, est, jobs=2) is None  # None: stopped, rerun to resume
    assert time.time() - t0 < 30  # the sleeping run did not run its 60 s
    assert started == ["importance-s0", "importance_twin-s0"]  # two at once; seed 1 never started
    assert (plan.runs[0].dir / "stopped_by_sigint").exists()  # passed the signal on
    assert all(ladder.run_state(r) != "done" for r in plan.runs)
    wall = json.loads((plan.runs[0].dir / "ladder.json").read_text())["wall_s"]
    assert 0 < wall < 30


def test_child_env_shares_the_cores_between_jobs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(ladder.os, "cpu_count", lambda: 16)
    assert ladder.child_env(1) is None
    assert ladder.child_env(2)["OMP_NUM_THREADS"] == "8"
    assert ladder.child_env(32)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own choice wins
    assert ladder.child_env(2) is None


def test_plan_gives_every_run_the_same_budget_and_its_own_seed(tmp_path):
    plan = ladder.make_plan(budget="small", presets="onpolicy_sft,importance,dapo", seeds=2, output=tmp_path)
    # seed-major: every preset has its seed 0 before any has seed 1
    assert [(r.preset, r.seed) for r in plan.runs][:4] == [
        ("onpolicy_sft", 0),
        ("importance", 0),
        ("dapo", 0),
        ("onpolicy_sft", 1),
    ]
    for r in plan.runs:
        c = r.cfg
        assert (c.train.steps, c.train.prompts_per_step, c.rollout.group_size) == (2, 2, 4)
        assert c.rollout.max_new_tokens == 32 and c.train.seed == r.seed and not c.eval.before
    mu = {r.preset: r.cfg.train.mu for r in plan.runs}
    assert mu == {"onpolicy_sft": 1, "importance": 2, "dapo": 2}  # the preset's own passes: that is the rung
    assert (
        plan.command
        == f"sft2grpo ladder --budget small --seeds 2 --presets onpolicy_sft,importance,dapo --output {tmp_path}"
    )
    # the default ladder: the seed's 5 rungs, GRPO without each of its 4 tricks (IS three ways, KL as
    # rung 4) and the A/A twin, 3 seeds, make run's
    # work per step, the held-out split scored at steps 10, 20 and 40
    default = ladder.make_plan(output=tmp_path)
    assert default.presets == [
        "onpolicy_sft",
        "reinforce",
        "reward_norm",
        "importance",
        "grpo",
        "no_is",
        "no_is_mu1",
        "no_is_prox",
        "grpo_no_neg",
        "grpo_no_norm",
        "importance_twin",
    ]
    # the presets of a deciding pair and the A/A pair get 5 seeds, the evidence-only ones 3
    from sft2grpo.ladder.verdicts import deciding_pairs

    assert set(ladder_plan.DECIDING) == {p for pair in deciding_pairs() for p in pair} | set(AA)
    seeds = {p: sorted(r.seed for r in default.runs if r.preset == p) for p in default.presets}
    assert all(seeds[p] == ([0, 1, 2, 3, 4] if p in ladder_plan.DECIDING else [0, 1, 2]) for p in seeds)
    assert default.seeds == [0, 1, 2, 3, 4] and "--seeds" not in default.command
    assert len(ladder.make_plan(output=tmp_path, seeds=2).runs) == 11 * 2  # --seeds: every preset
    assert len(default.runs) == 7 * 5 + 4 * 3
    assert (
        ladder_report.seed_counts(default)
        == (
            "; 5 seeds for the presets that decide a claim and the A/A pair (importance, grpo, no_is_mu1, "
            "no_is_prox, grpo_no_neg, grpo_no_norm, importance_twin), 3 for onpolicy_sft, reinforce, "
            "reward_norm, no_is"
        )
        and default.steps == 40
        and default.budget.eval_samples == 4
    )
    assert default.jobs == 2 and "--jobs" not in default.command
    assert default.horizons == [10, 20, 40]
    c = default.runs[0].cfg
    assert (c.train.prompts_per_step, c.rollout.group_size, c.rollout.max_new_tokens) == (4, 8, 64)
    assert c.eval.size == 100 and c.eval.heldout_at == [10, 20] and c.eval.heldout_at_draws == 4
    # a horizon at or past the last step is dropped: that one is the end
    assert ladder.make_plan(output=tmp_path, steps=15).horizons == [10, 15]
    assert ladder.make_plan(output=tmp_path, steps=8).runs[0].cfg.eval.heldout_at == []
    # make run's recipe (configs/run.yaml), all but the objective, mu and the number of steps
    from sft2grpo.config import load_config

    run = load_config(str(Path(__file__).parents[1] / "configs" / "run.yaml"), [])
    for section, key in [
        ("train", "lr"),
        ("train", "schedule"),
        ("train", "warmup_steps"),
        ("train", "adam_beta2"),
        ("train", "autocast"),
        ("rollout", "temperature"),
        ("rollout", "dtype"),
    ]:
        assert getattr(getattr(c, section), key) == getattr(getattr(run, section), key), key
    # the A/A pair: one configuration, the second arm sampling from another stream with the same seed
    from sft2grpo.config import to_dict

    imp, twin = (next(r.cfg for r in default.runs if r.preset == p and r.seed == 1) for p in AA)
    assert (imp.rollout.seed, twin.rollout.seed, twin.train.seed) == (0, 1, 1)
    # every other preset samples from stream 0, as rung 4 does
    assert {r.cfg.rollout.seed for r in default.runs if r.preset != AA[1]} == {0}
    a, b = to_dict(imp), to_dict(twin)
    for d in (a, b):
        d.pop("log"), d["rollout"].pop("seed"), d.pop("preset", None)
    assert a == b
    assert len(ladder.make_plan(output=tmp_path, presets="all").presets) == 16
    # GRPO without KL is rung 4: the ladder reads no_kl as importance and trains it once
    assert ladder.make_plan(output=tmp_path, presets="no_kl,importance").presets == ["importance"]
    assert "--eval-samples 0" in ladder.make_plan(output=tmp_path, eval_samples=0).command


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--presets", "onpolicy_sft,grpoo"], "unknown preset 'grpoo'"),
        (["--budget", "huge"], "unknown budget 'huge'"),
        (["--seeds", "0"], "--seeds 0: must be >= 1"),
        (["--jobs", "0"], "--jobs 0: must be >= 1"),
        (["--eval-samples", "1"], "--eval-samples 1: must be 0 (greedy accuracy only) or >= 2"),
        (["train.stpes=3"], "unknown key 'train.stpes'"),
    ],
)
def test_bad_ladder_arguments_are_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    assert main(["ladder", "--dry-run", "--output", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def write_run(
    folder: Path,
    steps: int,
    greedy: list[float],
    sampled: list[list[bool]],
    early: dict | None = None,
    **extra,
) -> None:
    """The files a finished, measured ladder run (or base/, with steps=None) leaves, written by hand;
    `early`: {step: (greedy, sampled)} scored at an earlier horizon (heldout/step-N/)."""
    folder.mkdir(parents=True)
    acc = sum(greedy) / len(greedy)
    after = {"accuracy": acc, "format_error_rate": 0.0, "completion_len": 12.0, "problems": len(greedy)}
    write_scores(folder, "eval_after.jsonl" if steps else "eval_samples.jsonl", greedy, sampled)
    for step, (g, smp) in (early or {}).items():
        (folder / "heldout" / f"step-{step}").mkdir(parents=True)
        write_scores(folder / "heldout" / f"step-{step}", "eval_samples.jsonl", g, smp)
    if not steps:
        (folder / "eval.json").write_text(json.dumps(after))
        return
    summary = {"steps": steps, "interrupted": False, "after": after, "train_time_s": 5.0, **extra}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "kl.json").write_text(json.dumps({"kl_k3": extra.get("peak_mem_mb", 4000) / 1e5}))
    times = [{"step": i, "time_step": 1.0 + i / 10, "reward_mean": 0.1} for i in range(1, steps + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in times))


def write_scores(folder: Path, greedy_file: str, greedy: list[float], sampled: list[list[bool]]) -> None:
    rows = [{"prompt": f"q{i}", "correct": [bool(g)]} for i, g in enumerate(greedy)]
    srows = [{"prompt": f"q{i}", "correct": c} for i, c in enumerate(sampled)]
    (folder / greedy_file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "eval_sampled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in srows))
    sampled_acc = sum(map(sum, sampled)) / sum(map(len, sampled))
    (folder / "sampled.json").write_text(
        json.dumps({"accuracy": sampled_acc, "samples_per_problem": len(sampled[0])})
    )


LADDER = "onpolicy_sft,reinforce,importance,grpo,no_is,no_is_mu1,no_is_prox,grpo_no_neg,grpo_no_norm,importance_twin"


def test_report_and_results_json_from_run_folders_with_known_effects(tmp_path):
    """At the end GRPO without the negative gradient or without normalisation is 30 points below GRPO
    without IS or without KL (claims 1 and 2 supported), grpo beats the base model, and the A/A pair
    (importance, importance_twin) is one configuration. At the early horizon (step 1) the order is
    reversed for the negative gradient: claim 1 flips with the horizon and is no finding. 5 seeds.
    Costs come from costs/costs.json, runs alone."""
    plan = ladder.make_plan(model="tiny", budget="small", presets=LADDER, seeds=5, output=tmp_path)
    assert plan.horizons == [1, 2]
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.5, size=40)  # (P,) each problem's chance under the base model
    k = plan.budget.eval_samples

    def scores(shift):
        q = np.clip(p + shift, 0, 1)
        return (rng.random(40) < q).tolist(), (rng.random((40, k)) < q[:, None]).tolist()

    write_run(tmp_path / "base", None, *scores(0.0))
    shift = {"onpolicy_sft": 0.1, "reinforce": 0.0, "grpo_no_neg": 0.0, "grpo_no_norm": 0.0}
    shift |= dict.fromkeys(["importance", "grpo", "no_is", "no_is_mu1", "no_is_prox", "importance_twin"], 0.3)
    early = {"grpo_no_neg": 0.6, "grpo_no_norm": 0.0}  # at step 1 the negative gradient's removal helps
    for r in plan.runs:
        mem = {"grpo": 4700}.get(r.preset, 4100) + 10 * r.seed
        at1 = {1: scores(early.get(r.preset, shift[r.preset]))}
        write_run(r.dir, plan.steps, *scores(shift[r.preset]), early=at1, peak_mem_mb=mem)
    # sft seed 2 resumed from a checkpoint older than the summary's whole-run peak: its summary holds
    # the last piece's, its steps' log the first piece's higher one
    log = tmp_path / "runs" / "onpolicy_sft-s2" / "metrics.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    rows[0]["peak_mem_mb"] = 5000.0
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "costs").mkdir()
    costs = {"steps": 3, "repeats": 2, "seed": 0}
    costs["grpo"] = {
        "peak_mem_mb": [4096, 4106],
        "step_time_s": [30.0, 32.0],
        "step_times_s": [[30.0], [32.0]],
    }
    costs["no_kl"] = {
        "peak_mem_mb": [3072, 3072],
        "step_time_s": [10.0, 12.0],
        "step_times_s": [[10.0], [12.0]],
    }
    (tmp_path / "costs" / "costs.json").write_text(json.dumps(costs))

    report = ladder_report.write_report(plan).read_text()
    assert report.splitlines()[2].startswith("A/A check passed: importance vs importance_twin")
    assert "### At the end (step 2)" in report
    assert "**1. The negative gradient matters most: supported**" in report
    assert "**2. Reward normalisation and clipping matter most: supported**" in report
    assert (
        "- deciding, removing the negative gradient costs more than removing IS, sampled accuracy: "
        "grpo_no_neg -> no_is_mu1: +3" in report
    )
    assert "family-wise (7 deciding pairs) [" in report
    assert "  - on greedy accuracy (not deciding): grpo_no_neg -> no_is_mu1: +" in report
    assert "- evidence, rung 1 -> 2: the negative gradient as REINFORCE, raw rewards, no baseline" in report
    assert "- evidence, drop it and reuse answers with no guard (no_is): grpo -> no_is:" in report
    # over the horizons: claim 1 contradicted at step 1, supported at the end
    assert (
        "| 1. The negative gradient matters most | contradicted | supported | flips: not a finding |"
        in report
    )
    assert (
        "| 2. Reward normalisation and clipping matter most | supported | supported | stands at every horizon |"
        in report
    )
    # claim 2 is the one finding: claim 1 flips, claims 3 and 4 are undecided family-wise
    assert "Findings: 1, counting claims that rest on the same runs once." in report
    assert "- claim 2 supported (they share" not in report and "- claim 2 supported" in report
    assert "Run-to-run SD of sampled accuracy over seeds, points: " in report
    assert "| base -> grpo: base -> grpo | supported, +" in report
    assert "Deciding intervals at step 2: half-widths" in report
    assert (
        "- peak memory: 4.00 GiB with KL, 3.00 GiB without: -1.00 GiB (0.75x; per repetition -1.00, -1.01)"
        in report
    )
    assert (
        "- median step time: 31.0 s with KL, 11.0 s without: -20.0 s (0.35x; per repetition -20.0, -20.0)"
        in report
    )
    results = json.loads((tmp_path / "results.json").read_text())
    check_results_schema(results, plan.presets, seeds=[0, 1, 2, 3, 4])
    assert results["horizons"] == [1, 2] and results["costs"]["no_kl"]["peak_mem_mb"] == [3072, 3072]
    assert results["family"] == {"members": 7, "level": pytest.approx(1 - 0.05 / 7)}
    assert [f["claims"] for f in results["findings"]] == [[2]]
    check = results["variance_check"]["2"]
    assert set(check["sd_points"]) == set(plan.presets) and 0 <= check["bartlett_p"] <= 1
    end = {c["role"]: c for c in results["comparisons"] if c["horizon"] == 2}
    assert results["aa_trusted"] is True and end["A/A"]["verdict"] == "undecided"
    assert "own run-to-run variance" in end["A/A"]["method"] and end["A/A"]["run_df"] == 4
    assert (
        end["base -> grpo"]["verdict"] == "supported" and end["base -> grpo"]["metric"] == "sampled_accuracy"
    )
    first = [c for c in results["comparisons"] if c["role"] == "claim 1"]
    assert [(c["horizon"], c["b"], c["verdict_family"]) for c in first] == [
        (1, "no_is_mu1", "contradicted"),
        (1, "importance", "contradicted"),
        (2, "no_is_mu1", "supported"),
        (2, "importance", "supported"),
    ]
    assert first[-1]["diff"] == pytest.approx(0.3, abs=0.06)
    assert {(r["claim"], r["horizon"]): r["verdict"] for r in results["claims"]}[1, 1] == "contradicted"
    greedy = [c for c in results["comparisons"] if c["role"] == "other metric" and c["horizon"] == 2]
    assert {(c["a"], c["b"]) for c in greedy} == {
        ("grpo_no_neg", "no_is_mu1"),
        ("grpo_no_neg", "importance"),
        ("grpo_no_norm", "no_is_mu1"),
        ("grpo_no_norm", "importance"),
        ("grpo", "no_is_mu1"),
        ("grpo", "no_is_prox"),
        ("grpo", "importance"),
        ("base", "grpo"),
        ("importance", "importance_twin"),
    }
    assert all(c["metric"] == "greedy_accuracy" for c in greedy)
    # anyone can rebuild every comparison from results.json alone
    from sft2grpo.ladder import recompute

    lines = recompute.check(results)
    assert len(lines) == 14 and lines[0].startswith("step   1  claim 1  grpo_no_neg -> no_is_mu1: ")
    assert recompute.main([str(tmp_path / "results.json")]) == 0
    sft = results["presets"]["onpolicy_sft"]
    assert sft["status"] == ["finished"] * 5 and sft["peak_mem_mb"][:3] == [4100, 4110, 5000]
    assert sft["sampled_accuracy"][0] == pytest.approx(
        statistics.fmean(ladder_report.read_scores(plan.runs[0].dir / "eval_sampled.jsonl").values())
    )
    assert len(sft["sampled_accuracy_at"]["1"]) == 5
    # greedy decides when the budget samples nothing
    plan0 = ladder.make_plan(
        model="tiny", budget="small", presets=LADDER, seeds=5, output=tmp_path, eval_samples=0
    )
    assert "decided by greedy accuracy" in ladder_report.write_report(plan0).read_text()
    assert json.loads((tmp_path / "results.json").read_text())["deciding_metric"] == "greedy_accuracy"


def test_recompute_refuses_a_changed_interval_and_an_old_file(tmp_path, capsys):
    """recompute names the first comparison whose stored interval differs (exit 1), and a file
    without per-problem scores (schema 2) in one line (exit 2)."""
    from sft2grpo.ladder import recompute

    by_preset = {
        "base": runs_of("base", [[0.0, 0.25, 0.5, 0.25]] * 3),
        "grpo": runs_of("grpo", [[0.5, 0.75, 1.0, 0.75], [0.5, 0.5, 1.0, 0.75], [0.25, 0.75, 1.0, 0.75]]),
    }
    plan = ladder.make_plan(model="tiny", budget="small", presets="grpo", seeds=3, output=tmp_path)
    for runs in by_preset.values():  # the same scores at the early horizon
        for r in runs:
            r.sampled_at = {1: r.sampled}
    comps = []
    for h in plan.horizons:
        for c in comparisons(by_preset, "sampled_accuracy", None if h == plan.steps else h):
            c.horizon = h
            comps.append(c)
    results = json.loads(json.dumps(results_json(plan, by_preset, comps, "sampled_accuracy")))
    assert recompute.check(results) == []  # no claim pair measured: nothing to print, all equal
    path = tmp_path / "results.json"
    bad = next(c for c in results["comparisons"] if c["role"] == "base -> grpo" and c["horizon"] == 2)
    bad["ci95"][0] -= 0.01
    path.write_text(json.dumps(results))
    assert recompute.main([str(path)]) == 1
    assert "base -> grpo (sampled_accuracy, step 2): ci95" in capsys.readouterr().err
    del results["presets"]["grpo"]["per_problem"]
    path.write_text(json.dumps(results))
    assert recompute.main([str(path)]) == 2
    assert "presets.grpo: no per_problem scores" in capsys.readouterr().err


def runs_of(preset: str, per_seed: list[list[float]]) -> list:
    """RunResults of `preset` whose per-problem sampled scores are per_seed[seed]."""
    return [
        ladder_report.RunResult(
            preset, s, "finished", sampled={f"q{i}": x for i, x in enumerate(xs)}, peak_mem_mb=1000.0 + s
        )
        for s, xs in enumerate(per_seed)
    ]


def test_comparisons_pair_seeds_and_problems_and_the_aa_rule():
    base = [0.0, 0.25, 0.5, 0.25]
    by_preset = {
        "base": runs_of("base", [base] * 3),
        "importance": runs_of(
            "importance", [[0.25, 0.5, 0.5, 0.25], [0.0, 0.25, 0.5, 0.5], [0.25, 0.25, 0.5, 0.25]]
        ),
        # the same configuration: the other seeds' values, so the per-seed differences cancel in sum
        "importance_twin": runs_of(
            "importance_twin", [[0.0, 0.25, 0.5, 0.5], [0.25, 0.5, 0.5, 0.25], [0.25, 0.25, 0.5, 0.25]]
        ),
        "grpo": runs_of("grpo", [[x + 0.5 for x in base]] * 3),
    }
    comps = comparisons(by_preset, "sampled_accuracy")
    by_role = {c.role: c for c in comps}
    aa = by_role["A/A"]
    assert (aa.diff, aa.seeds, aa.problems, aa.verdict) == (0.0, 3, 4, "undecided")
    trusted, line = aa_status(comps)
    assert trusted and line.startswith("A/A check passed")
    g = by_role["base -> grpo"]  # +0.5 on every problem and seed: supported
    assert g.diff == pytest.approx(0.5) and g.verdict == "supported"
    # grpo's own seeds agree exactly and the base model is evaluated once: neither varies from run
    # to run, so the interval is the problem term alone, the run term at S - 1 = 2 df (Welch)
    assert g.se_run == 0 and g.run_df == 2 and "own run-to-run variance" in g.method
    assert by_role["claim 4"].verdict == "contradicted"  # grpo -> importance: about -0.4 in every seed
    assert by_role["claim 4"].family == 1 and by_role["claim 4"].ci_family == by_role["claim 4"].ci95
    # a seed that only one side finished is left out of the pairing; a missing preset is "not measured"
    by_preset["importance_twin"] = by_preset["importance_twin"][:2]
    aa = {c.role: c for c in comparisons(by_preset, "sampled_accuracy")}["A/A"]
    assert aa.seeds == 2 and aa.diff == pytest.approx(0.0)
    del by_preset["importance_twin"]
    trusted, line = aa_status(comparisons(by_preset, "sampled_accuracy"))
    assert trusted is None and line.startswith("A/A check not run")
    # the same run twice (deterministic training): a zero-width interval at 0 tests nothing
    by_preset["importance_twin"] = runs_of(
        "importance_twin", [list(r.sampled.values()) for r in by_preset["importance"]]
    )
    trusted, line = aa_status(comparisons(by_preset, "sampled_accuracy"))
    assert trusted is None and line.startswith(
        "A/A check vacuous: importance and importance_twin scored the same"
    )
    # a real difference between the two names of one configuration fails the check
    by_preset["importance_twin"] = runs_of(
        "importance_twin", [[x + 0.25 for x in r.sampled.values()] for r in by_preset["importance"]]
    )
    trusted, line = aa_status(comparisons(by_preset, "sampled_accuracy"))
    assert trusted is False and line.startswith("**Do not trust the statistics of this report")


def test_measured_asks_for_kl_and_the_sampled_evaluation_with_the_budget_k(tmp_path):
    # an interrupted measure process leaves some of these; the next ladder redoes only what is missing
    run = tmp_path / "runs" / "grpo-s0"
    run.mkdir(parents=True)
    assert not measure.measured(run, 8)
    (run / "kl.json").write_text("{}")
    assert measure.measured(run, 0) and not measure.measured(run, 8)
    (run / "sampled.json").write_text(json.dumps({"samples_per_problem": 4}))
    (run / "eval_sampled.jsonl").write_text("")
    assert measure.measured(run, 4) and not measure.measured(run, 8)  # another k: measured again
    base = tmp_path / "base"  # the base model has no KL to itself
    base.mkdir()
    (base / "sampled.json").write_text(json.dumps({"samples_per_problem": 8}))
    (base / "eval_sampled.jsonl").write_text("")
    assert measure.measured(base, 8)


def test_estimate_counts_the_rows_that_reach_the_update_and_the_jobs(tmp_path):
    plan = ladder.make_plan(output=tmp_path, seeds=1)
    cfg = {r.preset: r.cfg for r in plan.runs}
    assert [estimate.update_share(cfg[p]) for p in ("onpolicy_sft", "reward_norm", "reinforce", "grpo")] == [
        0.15,
        0.4,
        1,
        1,
    ]
    cost = estimate.UNIT_SECONDS["fp32"]
    est = {p: estimate.estimate_run_s(c, cost) for p, c in cfg.items()}
    # the same rollouts; KL sends every row through 2 passes and a reference forward
    assert est["onpolicy_sft"] < est["reward_norm"] < est["reinforce"] < est["grpo"] == est["no_is"]
    assert est["importance"] == est["importance_twin"]  # one configuration under two names
    u = cost["update"] * 32 * 64 * 40  # rows x tokens x steps
    assert est["grpo"] - est["importance"] == pytest.approx(u * (1.0 * (2 + 2 / 3) - 0.4 * (2 + 1 / 3)))
    # the held-out split scored at steps 10 and 20 too: greedy, and 4 samples a problem (400 rows in
    # 7 generate calls of at most 64 rows), 64 tokens each
    c = cfg["onpolicy_sft"]
    early = cost["eval"] * 100 * 64 + 64 * (7 * cost["decode"] + 400 * cost["decode_row"])
    late = replace(c, eval=replace(c.eval, heldout_at=[]))
    assert est["onpolicy_sft"] - estimate.estimate_run_s(late, cost) == pytest.approx(2 * early)
    # this machine's table: bf16 where it is native and the run's autocast allows it
    fp32 = replace(c, train=replace(c.train, autocast="off"))
    assert estimate.unit_seconds(fp32) is estimate.UNIT_SECONDS["fp32"]
    assert (
        estimate.unit_seconds(c)
        is estimate.UNIT_SECONDS["bf16" if has_fast_bf16(torch.device("cpu")) else "fp32"]
    )
    # the cost runs: 2 x (grpo, no_kl) of 3 steps, one at a time; none once costs.json is written
    runs = estimate.estimate_cost_runs_s(plan)
    assert 0 < runs < est["grpo"] / 4
    (tmp_path / "costs").mkdir()
    (tmp_path / "costs" / "costs.json").write_text(json.dumps({"steps": 3}))
    assert estimate.estimate_cost_runs_s(plan) == 0.0
    assert estimate.estimate_wall_s(600, 2) == 300 and estimate.estimate_wall_s(600, 1) == 400


def test_cost_runs_alternate_grpo_and_no_kl_alone_and_are_not_redone(tmp_path, monkeypatch):
    """The ladder trains GRPO without KL as rung 4 (importance); its cost runs train the no_kl preset
    (the same objective) beside grpo, alone."""
    from sft2grpo.ladder import costs

    plan = ladder.make_plan(model="tiny", budget="small", presets="grpo,importance", output=tmp_path)
    order = []
    real = subprocess.run

    def spy(argv, **kw):
        order.append(argv[argv.index("--config") + 1])
        assert "train.steps=3" in argv and "eval.after=false" in argv and "checkpoint.every=0" in argv
        return real(argv, **kw)

    monkeypatch.setattr(costs.subprocess, "run", spy)
    assert costs.measure_costs(plan) is None
    assert order == ["grpo", "no_kl", "grpo", "no_kl"]  # one at a time, alternating
    data = json.loads((tmp_path / "costs" / "costs.json").read_text())
    for p in ("grpo", "no_kl"):
        assert len(data[p]["peak_mem_mb"]) == 2 and all(m > 100 for m in data[p]["peak_mem_mb"])
        assert all(len(t) == 3 for t in data[p]["step_times_s"])
        assert data[p]["step_time_s"] == [statistics.median(t) for t in data[p]["step_times_s"]]
    assert not (tmp_path / "costs" / "grpo-r0" / "model").exists()  # only the numbers are kept
    assert costs.measure_costs(plan) is None and len(order) == 4  # done: not run again
    lines = costs.cost_lines(plan)
    assert lines[0].startswith("Measured alone (2 repetitions of grpo then no_kl, 3 steps each")
    # a ladder without both presets has nothing to measure
    other = ladder.make_plan(model="tiny", budget="small", presets="grpo", output=tmp_path / "x")
    assert costs.measure_costs(other) is None and not (tmp_path / "x" / "costs").exists()
