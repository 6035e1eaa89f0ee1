"""benchmarks/regimes.py: the arms' commands, and regimes.json from the run folders they leave."""

import json

import pytest
from benchmark_module import load_benchmark

from sft2grpo.config import load_config


@pytest.fixture(scope="module")
def regimes():
    return load_benchmark("regimes")


def test_every_arm_is_a_valid_run(regimes, tmp_path):
    """Each arm's command loads as a config (bad keys would only show hours later), the scarce
    regime limits the demonstrations, and the arms share the seed and the held-out scoring."""
    for arm in regimes.ARMS:
        argv = regimes.command(arm, "scarce", 64, 2, tmp_path / arm)
        config = argv[argv.index("--config") + 1]
        cfg = load_config(config, [a for a in argv if "=" in a])
        assert cfg.task.demos == 64 and cfg.train.seed == 2 and cfg.eval.draws == 4
        assert cfg.task.eval_size == 200 and cfg.log.output_dir == str(tmp_path / arm)
        share = arm in ("sft_grpo_demo", "sft_guided", "sft_mixed")
        assert cfg.task.demo_share == (0.5 if share else 0.0)
    every = regimes.command("sft_guided", "all", 64, 0, tmp_path / "x")
    assert not any(a.startswith("task.demos") for a in every) and "objective.guide=no_right" in every


def test_long_budget_gives_every_stage_four_times_its_steps(regimes, tmp_path):
    """--budget long: SFT alone 120 steps against SFT 60 then RL 80 (make run's 30 against 15 + 20),
    GRPO alone 160; the arm's own keys are overridden, not duplicated into a second meaning."""
    steps = {}
    for arm in ("sft_only", "sft_grpo", "grpo_only"):
        for budget in ("make_run", "long"):
            argv = regimes.command(arm, "scarce", 64, 0, tmp_path / arm, budget)
            cfg = load_config(argv[argv.index("--config") + 1], [a for a in argv if "=" in a])
            steps[arm, budget] = (cfg.sft_stage.steps, cfg.train.steps, cfg.eval.every, cfg.eval.val_draws)
    assert steps == {
        ("sft_only", "make_run"): (0, 30, 10, 0),
        ("sft_only", "long"): (0, 120, 20, 4),
        ("sft_grpo", "make_run"): (15, 20, 10, 0),
        ("sft_grpo", "long"): (60, 80, 20, 4),
        ("grpo_only", "make_run"): (0, 40, 10, 0),
        ("grpo_only", "long"): (0, 160, 20, 4),
    }


def test_collect_reads_finished_runs_of_both_kinds(regimes, tmp_path):
    """A pipeline's final stage and a single run's "after" become one row each, the pipeline's with
    its RL stage's own change and the shares of groups with a spread and with a guide (means over
    its steps); an interrupted run and the logs folder are left out."""
    pipe = tmp_path / "scarce-make_run-sft_guided-s1"
    pipe.mkdir()
    (pipe / "config.yaml").write_text(
        "task:\n  demos: 64\n  demo_share: 0.5\ntrain:\n  prompts_per_step: 2\nrollout:\n  group_size: 16\n"
    )
    (pipe / "summary.json").write_text(
        json.dumps(
            {
                "accuracy": {"base": 0.09, "sft": 0.3, "rl": 0.35},
                "sampled_accuracy": {"base": 0.05, "sft": 0.25, "rl": 0.4},
                "sft": {"train_time_s": 100.0},
                "rl": {"train_time_s": 150.5},
                "changes": {"sft->rl": {"diff": 0.05, "ci95": [0.0, 0.1]}},
                "sampled_changes": {"sft->rl": {"diff": 0.15, "ci95": [0.1, 0.2]}},
            }
        )
    )
    (pipe / "rl").mkdir()
    steps = [{"step": 1, "zero_std_frac": 0.75, "guided_frac": 0.25}, {"step": 2, "zero_std_frac": 0.25}]
    (pipe / "rl" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    answers = [{"correct": [0, 0, 1, 0]}, {"correct": [0, 0, 0, 0]}]  # pass@4: 1 of 2 problems
    (pipe / "rl" / "eval_after_sampled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in answers))
    single = tmp_path / "all-make_run-sft_only-s0"
    single.mkdir()
    (single / "config.yaml").write_text("task:\n  demos: null\n")
    (single / "summary.json").write_text(
        json.dumps({"after": {"accuracy": 0.4}, "after_sampled": {"accuracy": 0.3}, "train_time_s": 240.0})
    )
    stopped = tmp_path / "all-make_run-sft_grpo-s0"
    stopped.mkdir()
    (stopped / "summary.json").write_text(json.dumps({"interrupted": True}))
    (tmp_path / "logs").mkdir()
    rows = regimes.collect(tmp_path)
    assert rows == [
        {
            "regime": "all",
            "demos": None,
            "demo_share": 0.0,
            "budget": "make_run",
            "arm": "sft_only",
            "rl": False,
            "rl_batch": None,
            "seed": 0,
            "train_s": 240.0,
            "greedy": 0.4,
            "sampled": 0.3,
            "pass": None,
        },
        {
            "regime": "scarce",
            "demos": 64,
            "demo_share": 0.5,
            "budget": "make_run",
            "arm": "sft_guided",
            "rl": True,
            "rl_batch": "2x16",
            "seed": 1,
            "train_s": 250.5,
            "greedy": 0.35,
            "sampled": 0.4,
            "pass": 0.5,
            "rl_change_greedy": {"diff": 0.05, "ci95": [0.0, 0.1]},
            "rl_change_sampled": {"diff": 0.15, "ci95": [0.1, 0.2]},
            "spread_share": 0.5,
            "guided_share": 0.125,
        },
    ]


@pytest.fixture(scope="module")
def rl_recipe():
    return load_benchmark("rl_recipe")


def test_rl_recipe_arms_change_the_rl_stage_and_score_validation(rl_recipe, tmp_path):
    """Each arm is make run's pipeline with one RL setting changed, scoring validation greedy and
    sampled; the answers a step are as the module says."""
    answers = {}
    for arm in rl_recipe.ARMS:
        argv = rl_recipe.command(arm, 1, tmp_path / arm)
        cfg = load_config("pipeline", [a for a in argv if "=" in a])
        assert cfg.eval.every == 10 and cfg.eval.val_draws == 4 and cfg.train.seed == 1
        answers[arm] = cfg.train.prompts_per_step * cfg.rollout.group_size
        assert cfg.task.demos is None  # every problem has its worked solution
    assert answers == {
        "recipe": 32,
        "group16": 64,
        "group16_p2": 32,
        "prompts8": 64,
        "dynamic": 32,
        "t1.2": 32,
    }


def test_rl_recipe_collects_validation_and_chooses_on_sampled_accuracy(rl_recipe, tmp_path):
    """A finished arm's RL-stage curves and share of groups with spread are read back; the choice is
    the best final sampled validation accuracy, greedy breaking a tie, and its gain over recipe."""

    def arm(name, sampled, greedy, zero_std, seed=0):
        folder = tmp_path / f"{name}-s{seed}"
        (folder / "rl").mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"rl": {"train_time_s": 100.0}}))
        rows = [
            {"step": 0, "tag": "val", "accuracy": 0.4},
            {"step": 0, "tag": "val_sampled", "accuracy": 0.3},
        ]
        rows += [
            {"step": 20, "tag": "val", "accuracy": greedy},
            {"step": 20, "tag": "val_sampled", "accuracy": sampled},
        ]
        (folder / "rl" / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        metrics = [{"step": s, "zero_std_frac": z, "resample_rounds": 0} for s, z in enumerate(zero_std, 1)]
        (folder / "rl" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
        return rl_recipe.collect_run(folder)

    rows = [arm("recipe", 0.30, 0.45, [0.75, 0.25]), arm("group16", 0.36, 0.44, [0.5, 0.5])]
    rows.append(arm("t1.2", 0.36, 0.46, [0.5, 0.7]))
    assert rows[0]["spread_share"] == pytest.approx(0.5) and rows[0]["val_sampled"] == {0: 0.3, 20: 0.30}
    chosen = rl_recipe.choose(rows)
    assert chosen["chosen"] == "t1.2"  # ties group16 on sampled, ahead on greedy
    assert chosen["over_recipe"] == {"sampled": pytest.approx(0.06), "greedy": pytest.approx(0.01)}
    # seed 1 of recipe and group16: t1.2, screened on seed 0 alone, is no longer a finalist, and the
    # choice is the mean over seeds 0 and 1 (group16 (0.36 + 0.30) / 2 against recipe (0.30 + 0.34) / 2)
    rows += [arm("recipe", 0.34, 0.45, [0.5], seed=1), arm("group16", 0.30, 0.44, [0.5], seed=1)]
    chosen = rl_recipe.choose(rows)
    assert chosen["finalists"] == ["recipe", "group16"] and chosen["seeds"] == [0, 1]
    assert chosen["chosen"] == "group16" and chosen["final_val"]["t1.2"]["seeds"] == [0]
    assert chosen["over_recipe"]["sampled"] == pytest.approx(0.01)
    (tmp_path / "stopped-s0").mkdir()
    (tmp_path / "stopped-s0" / "summary.json").write_text(json.dumps({"interrupted": True}))
    assert rl_recipe.collect_run(tmp_path / "stopped-s0") is None


def test_table_gives_mean_sd_and_each_seed(regimes):
    """The docs' table: an arm's mean and SD over seeds with each seed, its RL stage's own change."""
    change = {"diff": 0.05, "ci95": [0.0, 0.1]}
    rows = [
        {
            "regime": "scarce",
            "budget": "make_run",
            "arm": "sft_only",
            "seed": 1,
            "greedy": 0.4,
            "sampled": 0.3,
            "pass": 0.5,
        },
        {
            "regime": "scarce",
            "budget": "make_run",
            "arm": "sft_only",
            "seed": 0,
            "greedy": 0.3,
            "sampled": 0.2,
            "pass": 0.4,
        },
        {
            **{"regime": "scarce", "budget": "make_run", "arm": "sft_guided", "seed": 0},
            **{"greedy": 0.35, "sampled": 0.25, "rl_change_greedy": change, "rl_change_sampled": change},
            "guided_share": 0.125,
        },
        {"regime": "all", "budget": "make_run", "arm": "sft_grpo", "seed": 0, "greedy": 0.5, "sampled": 0.5},
    ]
    lines = regimes.table(rows, "scarce")
    assert (
        lines[2]
        == "| `sft_only` | 2 | 35.0 ± 7.1 (30.0, 40.0) | 25.0 ± 7.1 (20.0, 30.0) | 45.0 ± 7.1 | - | - |"
    )
    assert lines[3] == "| `sft_guided` | 1 | 35.0 (35.0) | 25.0 (25.0) | - | +5.0 (+5.0) | 12.5% |"
    assert len(lines) == 4  # the other regime's arm is not in this table


def write_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_validation_curve_puts_the_rl_stage_after_the_sft_stage(regimes, tmp_path):
    """A pipeline's curve: the SFT stage's validation points at its cumulative step seconds, then
    the RL stage's at the SFT stage's total plus its own, without the RL stage's step 0 (the same
    model as the SFT stage's end); a step logged twice (a resumed run) counts once."""
    run = tmp_path / "all-long-sft_grpo-s0"
    write_rows(
        run / "sft" / "metrics.jsonl", [{"step": 1, "time_step": 30.0}, {"step": 2, "time_step": 30.0}]
    )
    write_rows(
        run / "sft" / "evals.jsonl",
        [
            {"step": 0, "tag": "val", "accuracy": 0.1},
            {"step": 0, "tag": "val_sampled", "accuracy": 0.05},
            {"step": 2, "tag": "val", "accuracy": 0.4},
            {"step": 2, "tag": "after", "accuracy": 0.9},  # held-out: not a validation point
            {"step": 2, "tag": "val_sampled", "accuracy": 0.3},
        ],
    )
    rl = [{"step": 1, "time_step": 6.0}, {"step": 1, "time_step": 6.0}, {"step": 2, "time_step": 12.0}]
    write_rows(run / "rl" / "metrics.jsonl", rl)
    write_rows(
        run / "rl" / "evals.jsonl",
        [{"step": 0, "tag": "val", "accuracy": 0.41}, {"step": 2, "tag": "val", "accuracy": 0.5}],
    )
    assert regimes.validation_curve(regimes.stage_logs(run)) == [
        {"minutes": 0.0, "greedy": 0.1, "sampled": 0.05},
        {"minutes": 1.0, "greedy": 0.4, "sampled": 0.3},
        {"minutes": 1.3, "greedy": 0.5, "sampled": None},
    ]
    assert regimes.validation_curve(regimes.stage_logs(tmp_path / "absent")) == []


def test_mean_curve_and_crossings(regimes):
    """Seeds averaged point by point; the crossings of two piecewise-linear curves by hand: a - b is
    -1 at x 0, +0.5 at x 2 and -2 at x 4, linear between, so they cross at 2 * 1/1.5 and at
    2 + 2 * 0.5/2.5."""
    c1 = [{"minutes": 0.0, "greedy": 0.1, "sampled": None}, {"minutes": 2.0, "greedy": 0.3, "sampled": 0.2}]
    c2 = [{"minutes": 0.0, "greedy": 0.3, "sampled": None}, {"minutes": 4.0, "greedy": 0.5, "sampled": 0.4}]
    greedy, sampled = regimes.mean_curve([c1, c2], "greedy"), regimes.mean_curve([c1, c2], "sampled")
    assert [x for p in greedy for x in p] == pytest.approx([0.0, 0.2, 3.0, 0.4])
    assert [x for p in sampled for x in p] == pytest.approx([3.0, 0.3])
    a = [(0.0, 0.0), (2.0, 2.0), (4.0, 0.0)]
    b = [(0.0, 1.0), (4.0, 2.0)]  # b(2) = 1.5
    assert regimes.crossings(a, b) == pytest.approx([2.0 * 1 / 1.5, 2.0 + 2.0 * 0.5 / 2.5])
    assert regimes.crossings(b, [(0.0, 0.0), (4.0, 1.0)]) == []  # always above
    assert regimes.crossings(a, [(1.0, 5.0), (3.0, 5.0)]) == []  # read on the shared range only


def test_plot_draws_the_curves_and_says_where_they_cross(regimes, tmp_path):
    """Two arms whose greedy validation crosses once (a - b: -10, +10 points at 0 and 2 minutes)
    and whose sampled curves do not; a row without a curve is left out; the PNG is written."""

    def row(arm, greedy, sampled):
        curve = [{"minutes": m, "greedy": g, "sampled": s} for m, g, s in zip((0.0, 2.0), greedy, sampled)]
        return {"regime": "all", "budget": "long", "arm": arm, "seed": 0, "curve": curve}

    rows = [row("sft_only", (0.1, 0.4), (0.1, 0.2)), row("sft_grpo", (0.2, 0.3), (0.3, 0.4))]
    rows.append({"regime": "all", "budget": "long", "arm": "sft_mixed", "seed": 0})  # collected before curves
    out = tmp_path / "curves.png"
    lines = regimes.plot(rows, "all", "long", out)
    assert lines == [
        "greedy: sft_only and sft_grpo cross at 1.0 min",
        "sampled: sft_only and sft_grpo do not cross",
    ]
    assert out.stat().st_size > 0


def test_paired_table_against_an_arm(regimes):
    """Each arm minus the base arm over the seeds both ran: greedy differences +1, +3, 0 points give
    mean 1.33, SD 1.53, half-width 4.303 * 1.53 / sqrt(3) = 3.79, so [-2.5, +5.1]; an arm on one
    shared seed gets no interval; another budget's rows stay out."""

    def row(arm, seed, greedy, sampled, budget="make_run"):
        return {
            "regime": "all",
            "budget": budget,
            "arm": arm,
            "seed": seed,
            "greedy": greedy,
            "sampled": sampled,
        }

    rows = [row("sft_only", s, g, 0.30) for s, g in enumerate((0.40, 0.42, 0.44))]
    rows += [row("sft_grpo", s, g, 0.32) for s, g in enumerate((0.41, 0.45, 0.44))]
    rows += [
        row("sft_mixed", 1, 0.40, 0.25),
        row("sft_mixed", 5, 0.9, 0.9),
        row("sft_guided", 0, 0.9, 0.9, "long"),
    ]
    lines = regimes.paired(rows, "all", "make_run", "sft_only")
    assert (
        lines[2]
        == "| `sft_grpo` | 3 | +1.3 [-2.5, +5.1] (+1.0, +3.0, +0.0) | +2.0 [+2.0, +2.0] (+2.0, +2.0, +2.0) |"
    )
    assert lines[3] == "| `sft_mixed` | 1 | -2.0 (-2.0) | -5.0 (-5.0) |"
    assert len(lines) == 4
