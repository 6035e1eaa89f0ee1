"""`sft2grpo ladder` end to end on the tiny model (two presets x two seeds, each run its own process),
its resume rules, and its verdict logic on numbers chosen by hand."""

import json
import signal
from pathlib import Path

import pytest

from sft2grpo import ladder, ladder_report
from sft2grpo.cli import main

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


PLAN_KW = dict(model="tiny", budget="small", presets="sft,reinforce", seeds=2, steps=2)


def ladder_argv(out, *extra):
    return [
        *["ladder", "--model", "tiny", "--budget", "small", "--presets", "sft,reinforce"],
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

    def one_step():
        out = step()
        signal.raise_signal(signal.SIGINT)  # the trainer's handler: finish this step, then stop
        return out

    trainer.train_step = one_step
    assert trainer.fit()["interrupted"]


def test_ladder_on_the_tiny_model_resumes_reports_then_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "ladder"
    plan = ladder.make_plan(**PLAN_KW, output=out, overrides=TINY)
    interrupt_after_one_step(plan.runs[-1])  # reinforce, seed 1: a ladder stopped during that run
    assert main(ladder_argv(out)) == 0
    printed = capsys.readouterr().out
    assert "reinforce   seed 1  resume" in printed and printed.count("  fresh ") == 3
    resumed = [json.loads(x)["step"] for x in (out / "runs" / "reinforce-s1" / "metrics.jsonl").open()]
    assert resumed == [1, 2]  # step 1 from the interrupted piece, step 2 after resuming
    report = (out / "REPORT.md").read_text()
    for s in SECTIONS:
        assert s in report, s
    rows = table(report, "| preset | what it is")
    assert [r.split("|")[1].strip() for r in rows] == ["base model", "sft", "reinforce"]
    assert all("2/2" in r for r in rows[1:])  # both seeds of each preset finished
    assert len(table(report, "| preset | seed | status")) == 4
    # the deciding comparison of claim 1 is sft -> reinforce; two seeds give it a spread
    assert "add the negative gradient (rung 1 -> 2): sft" in report
    assert "the spread**" in report
    for png in ("curves.png", "final.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    runs = sorted((out / "runs").iterdir())
    assert [r.name for r in runs] == ["reinforce-s0", "reinforce-s1", "sft-s0", "sft-s1"]
    for r in runs:
        kl = json.loads((r / "kl.json").read_text())
        assert kl["kl_k3"] >= 0 and kl["tokens"] > 0
        assert not (r / "checkpoints").exists()  # only needed to resume; dropped once finished
        assert not (r / "model").exists()  # dropped after measuring (no --keep-models)
        config = (r / "config.yaml").read_text()
        assert "before: false" in config and f"seed: {r.name[-1]}" in config
    evals = [json.loads(x) for x in (runs[0] / "evals.jsonl").read_text().splitlines()]
    # eval.every=1 from the small budget, on the validation split from the base model (step 0) on
    assert [(e["step"], e["tag"]) for e in evals] == [(0, "val"), (1, "val"), (2, "val"), (2, "after")]
    assert json.loads((out / "base" / "eval.json").read_text())["problems"] == 4

    mtimes = {r.name: (r / "summary.json").stat().st_mtime_ns for r in runs}
    capsys.readouterr()
    assert main(ladder_argv(out)) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished before: skipped") == 4
    assert "measuring" not in printed  # base evaluation and KL are on disk already
    assert {r.name: (r / "summary.json").stat().st_mtime_ns for r in runs} == mtimes

    # the same folder with another budget would mix settings in one table: refused before training
    assert main(ladder_argv(out, "train.lr=1e-4")) == 2
    assert "train.lr: 0.0001 planned, 3e-05 saved" in capsys.readouterr().err


def test_run_state_resumes_from_a_checkpoint_and_restarts_without_one(tmp_path):
    plan = ladder.make_plan(model="tiny", presets="no_kl", seeds=1, steps=2, output=tmp_path, overrides=TINY)
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


def test_plan_gives_every_run_the_same_budget_and_its_own_seed(tmp_path):
    plan = ladder.make_plan(budget="small", presets="sft,importance,dapo", seeds=2, output=tmp_path)
    # seed-major: every preset has its seed 0 before any has seed 1
    assert [(r.preset, r.seed) for r in plan.runs][:4] == [
        ("sft", 0),
        ("importance", 0),
        ("dapo", 0),
        ("sft", 1),
    ]
    for r in plan.runs:
        c = r.cfg
        assert (c.train.steps, c.train.prompts_per_step, c.rollout.group_size) == (2, 2, 4)
        assert c.rollout.max_new_tokens == 32 and c.train.seed == r.seed and not c.eval.before
    mu = {r.preset: r.cfg.train.mu for r in plan.runs}
    assert mu == {"sft": 1, "importance": 2, "dapo": 2}  # the preset's own passes: that is the rung
    assert (
        plan.command
        == f"sft2grpo ladder --budget small --seeds 2 --presets sft,importance,dapo --output {tmp_path}"
    )
    assert len(ladder.make_plan(output=tmp_path).runs) == 12 * ladder.BUDGETS["default"].seeds


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--presets", "sft,grpoo"], "unknown preset 'grpoo'"),
        (["--budget", "huge"], "unknown budget 'huge'"),
        (["--seeds", "0"], "--seeds 0: must be >= 1"),
        (["train.stpes=3"], "unknown key 'train.stpes'"),
    ],
)
def test_bad_ladder_arguments_are_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    assert main(["ladder", "--dry-run", "--output", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "a,b,diff,spread,words",
    [
        # means 11 and 15.5: +4.5; ranges 2 and 1, so the spread is 2 and 4.5 exceeds it
        ([0.10, 0.12], [0.15, 0.16], 0.045, 0.02, "exceeds the spread"),
        # means 12 and 12.5: +0.5; ranges 4 and 1: within
        ([0.10, 0.14], [0.12, 0.13], 0.005, 0.04, "within the spread"),
        # a drop of 5 against a range of 3: exceeds, whatever the sign
        ([0.20, 0.23, 0.22], [0.16, 0.17, 0.17], -0.05, 0.03, "exceeds the spread"),
        ([0.10], [0.20], 0.10, None, "spread unknown (1 seed)"),
    ],
)
def test_compare_against_the_seed_spread(a, b, diff, spread, words):
    d, s, w = ladder_report.compare(a, b)
    assert d == pytest.approx(diff)
    assert s == (None if spread is None else pytest.approx(spread))
    assert w == words


def result(preset, accs, **kw):
    return [
        ladder_report.RunResult(preset, i, "finished", accuracy=a, **{k: v[i] for k, v in kw.items()})
        for i, a in enumerate(accs)
    ]


def test_verdicts_follow_the_numbers():
    by_preset = {
        "sft": result("sft", [0.10, 0.11]),
        "reinforce": result("reinforce", [0.20, 0.21]),  # +10 points, spread 1: the claim holds
        "reward_norm": result("reward_norm", [0.19, 0.23]),  # +0.5, spread 4: not shown
        "grpo": result("grpo", [0.20, 0.22], peak_mem_mb=[6000, 6010], kl=[0.02, 0.03]),
        "no_kl": result("no_kl", [0.22, 0.21], peak_mem_mb=[5400, 5402], kl=[0.05, 0.06]),
        "no_is": result("no_is", [0.10, 0.12]),  # -10 against spread 2: dropping IS cost accuracy
    }
    text = "\n".join(ladder_report.verdict_lines(by_preset))
    assert "**1. The negative gradient matters most**: supported at this budget." in text
    assert "**2. Reward normalisation and clipping matter most**: not shown at this budget" in text
    assert "**3. Importance sampling can be varied or dropped**: contradicted at this budget" in text
    assert (
        "**4. The KL penalty can be varied or dropped**: consistent at this budget: dropping it changed little"
        in text
    )
    assert "- peak memory: grpo 5.86 GiB -> no_kl 5.27 GiB (-0.59 GiB, -10%): **exceeds the spread**" in text
    assert "not measured (sft_o1 or reinforce has no finished run)" in text
    one_seed = {"sft": result("sft", [0.1]), "reinforce": result("reinforce", [0.3])}
    assert "undecided: with one seed" in "\n".join(ladder_report.verdict_lines(one_seed))
    assert ladder_report.ranking_line(by_preset).startswith(
        "By mean held-out accuracy: no_kl 21.5%, reward_norm 21.0%"
    )


def test_presets_with_the_same_configuration_are_reported_as_a_control(tmp_path):
    # importance and no_kl are one configuration (rung 4 = GRPO without KL); sft is another
    plan = ladder.make_plan(presets="importance,no_kl,sft", seeds=2, output=tmp_path)
    by_preset = {
        "importance": result("importance", [0.10, 0.15]),
        "no_kl": result("no_kl", [0.12, 0.15]),  # seed 0 differs by 2 points, seed 1 not at all
        "sft": result("sft", [0.30, 0.31]),
    }
    (line,) = ladder_report.same_config_lines(plan, by_preset)
    assert line.startswith("importance and no_kl train the same configuration")
    assert "differs by up to 2.0 points" in line
