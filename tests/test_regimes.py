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


def test_collect_reads_finished_runs_of_both_kinds(regimes, tmp_path):
    """A pipeline's final stage and a single run's "after" become one row each; an interrupted
    run and the logs folder are left out."""
    pipe = tmp_path / "scarce-make_run-sft_guided-s1"
    pipe.mkdir()
    (pipe / "config.yaml").write_text("task:\n  demos: 64\n  demo_share: 0.5\n")
    (pipe / "summary.json").write_text(
        json.dumps(
            {
                "accuracy": {"base": 0.09, "sft": 0.3, "rl": 0.35},
                "sampled_accuracy": {"base": 0.05, "sft": 0.25, "rl": 0.4},
                "sft": {"train_time_s": 100.0},
                "rl": {"train_time_s": 150.5},
            }
        )
    )
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
            "seed": 0,
            "train_s": 240.0,
            "greedy": 0.4,
            "sampled": 0.3,
        },
        {
            "regime": "scarce",
            "demos": 64,
            "demo_share": 0.5,
            "budget": "make_run",
            "arm": "sft_guided",
            "rl": True,
            "seed": 1,
            "train_s": 250.5,
            "greedy": 0.35,
            "sampled": 0.4,
        },
    ]
