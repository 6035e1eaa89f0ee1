"""benchmarks/bench_learn.py without TRL: the figures from made-up eval files, the recipe filter, the
prompt order it gives TRL, and the mapping of our config onto GRPOConfig's arguments."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from benchmark_module import load_benchmark

from sft2grpo.config import load_config
from sft2grpo.run import RunState
from sft2grpo.trainer import Trainer


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_learn")


def write_eval(folder: Path, correct: list[int], prompts=("a", "b", "c", "d")) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "eval_samples.jsonl", "w") as f:
        for p, c in zip(prompts, correct):
            f.write(
                json.dumps({"prompt": p, "answer": "1", "completions": ["x"], "correct": [bool(c)]}) + "\n"
            )
    return folder


def test_figures_from_eval_files(bench, tmp_path):
    # base 1/4 right; ours 3/4 (gain +0.5); TRL 2/4 (gain +0.25). Problem by problem ours - TRL is
    # [0, 1, 0, 0], so the difference of gains is 0.25 and the ratio 0.5 / 0.25 = 2.
    base = bench.read_scores(write_eval(tmp_path / "base", [0, 0, 1, 0]))
    ours = bench.read_scores(write_eval(tmp_path / "ours", [1, 1, 1, 0]))
    trl = bench.read_scores(write_eval(tmp_path / "trl", [1, 0, 1, 0]))
    s = bench.summarise(base, [ours], {"ours": [trl]})
    assert s["problems"] == 4 and s["base"] == 0.25
    assert s["ours"]["gain"] == pytest.approx(0.5) and s["ours"]["after"] == pytest.approx(0.75)
    assert s["trl"]["ours"]["gain"] == pytest.approx(0.25)
    c = s["ours_vs_trl"]
    assert c["diff"] == pytest.approx(0.25) and c["ratio"] == pytest.approx(2.0)
    # every resample's difference is a multiple of 1/4 in [0, 1]
    lo, hi = c["diff_ci95"]
    assert 0.0 <= lo <= 0.25 <= hi <= 1.0
    assert s["ours"]["seeds"] == 1 and s["ours"]["gain_sd"] == 0.0


def test_seeds_average_per_problem_and_spread(bench):
    base = {"a": 0.0, "b": 0.0, "c": 1.0, "d": 0.0}
    seed0 = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0}  # gain +0.5
    seed1 = {"a": 1.0, "b": 0.0, "c": 1.0, "d": 0.0}  # gain +0.25
    side = bench.side_summary(base, [seed0, seed1], ["a", "b", "c", "d"])
    assert side["gain_per_seed"] == pytest.approx([0.5, 0.25])
    assert side["gain"] == pytest.approx(0.375)  # the seed-mean scores [1, .5, 1, 0] minus the base
    assert side["gain_sd"] == pytest.approx(0.25 / math.sqrt(2))  # sample sd of {0.5, 0.25}


def test_better_trl_and_prompts_scored_everywhere(bench):
    base = {"a": 0.0, "b": 0.0, "c": 0.0}
    worse, better = {"a": 1.0, "b": 0.0, "c": 0.0}, {"a": 1.0, "b": 1.0}  # "c" missing: dropped
    s = bench.summarise(base, [], {"ours": [worse], "defaults": [better]})
    assert s["problems"] == 2 and s["trl_best"] == "defaults" and "ours_vs_trl" not in s
    assert bench.better_trl({"ours": 0.1, "defaults": 0.1}) == "ours"  # a tie keeps the first


def test_recipe_drops_autocast_and_extras_win(bench):
    overrides, dropped = bench.recipe_overrides(
        "train.mu=1 train.steps=36 train.lr=3e-5 train.autocast=bf16", "train.lr=1e-5"
    )
    assert dropped == ["train.autocast=bf16"]
    assert overrides == [
        "train.mu=1",
        "train.steps=36",
        "train.lr=3e-5",
        'train.autocast="off"',
        "train.lr=1e-5",
    ]
    cfg = load_config("grpo", overrides)
    assert cfg.train.lr == 1e-5 and cfg.train.autocast == "off"


def test_training_order_is_the_trainers(bench):
    # Trainer.draw itself, on a stand-in holding only what it reads and a fresh RunState: 5 examples,
    # 4 steps of 3 prompts cross two epochs, each a fresh permutation
    examples = [SimpleNamespace(i=i, completion="x") for i in range(5)]
    fake = SimpleNamespace(task=SimpleNamespace(train=examples))
    fake.cfg = SimpleNamespace(
        train=SimpleNamespace(prompts_per_step=3, seed=3),
        rollout=SimpleNamespace(seed=0),
        task=SimpleNamespace(demo_share=0.0),
    )
    fake.ctx = SimpleNamespace(world=1, rank=0)
    fake.epoch_order = lambda rng: Trainer.epoch_order(fake, rng)
    state = RunState(data_rng=np.random.default_rng(3))
    drawn = [x.i for _ in range(4) for x in Trainer.draw(fake, state)[0]]
    assert bench.training_order(5, 3, 12) == drawn


def test_trl_settings_map_our_recipe(bench):
    cfg = load_config("grpo", ["train.mu=1", "train.lr=3e-5", "train.steps=36"])
    kw, notes = bench.trl_settings(cfg, "ours", 1000)
    assert kw["learning_rate"] == 3e-5 and kw["beta"] == 0.04 and kw["loss_type"] == "grpo"
    assert kw["adam_beta2"] == 0.99 and kw["lr_scheduler_type"] == "constant" and kw["max_steps"] == 1000
    # 4 prompts x 8 = 32 sequences a step in micro-batches of 16: two accumulation steps
    assert kw["per_device_train_batch_size"] * kw["gradient_accumulation_steps"] == 32
    assert any("unbiased" in n for n in notes)
    cos = load_config(
        "grpo", ["train.mu=2", "train.steps=10", "train.schedule=cosine", "train.warmup_steps=2"]
    )
    kw, _ = bench.trl_settings(cos, "ours", 1000)
    assert kw["lr_scheduler_type"] == "cosine" and kw["max_steps"] == 20 and kw["warmup_steps"] == 2
    kw, notes = bench.trl_settings(cfg, "defaults", 1000)
    assert "learning_rate" not in kw and "beta" not in kw and "loss_type" not in kw and not notes
    assert kw["num_generations"] == 8 and kw["max_completion_length"] == 64


def test_same_start_compares_what_both_recorded(bench):
    ours = {"first_prompts": ["p1", "p2"]}  # ours' samples.jsonl shows the first 2 of 4 groups
    assert bench.same_start(ours, {"first_prompts": ["p1", "p2", "p3", "p4"]}) is True
    assert bench.same_start(ours, {"first_prompts": ["p2", "p1", "p3", "p4"]}) is False
    assert bench.same_start(ours, {}) is None
