"""The online difficulty filter (task.difficulty, issue 14): its two formulas in closed form, that it
draws more from the bucket the model solves half the time, that it is deterministic and resumes
exactly, that held-out and validation problems do not change when it is on, and one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_resume import assert_same_run, interrupt_during_step, tiny_args

from sft2grpo import checkpoint
from sft2grpo.cli import main
from sft2grpo.config import ConfigError, TaskConfig, load_config
from sft2grpo.difficulty import DifficultySampler, bucket_weights, ema_update
from sft2grpo.tasks import TaskError, load_task

T2D1 = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
T3D2 = {"min_terms": 3, "max_terms": 3, "min_digits": 2, "max_digits": 2}
T2D2 = {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2}
BUCKETS = (
    "task.difficulty.buckets=[{min_terms: 2, max_terms: 2, max_digits: 1}, {min_terms: 3, max_terms: 3}]"
)
FILTER = ["task.difficulty.mode=adaptive", BUCKETS, "task.difficulty.ema=0.5"]


# ---------------------------------------------------------------------------------------------------
# The formulas


def test_weights_are_p_times_1_minus_p_normalised_then_mixed_with_the_floor():
    p = np.array([0.5, 0.1, 1.0, 0.0])
    var = np.array([0.25, 0.09, 0.0, 0.0])
    np.testing.assert_allclose(bucket_weights(p, 0.0), var / 0.34)
    # a floor of 0.2 over 4 buckets: each gets 0.05 first, the other 0.8 goes by p(1-p)
    w = bucket_weights(p, 0.2)
    np.testing.assert_allclose(w, 0.8 * var / 0.34 + 0.05)
    assert w.sum() == pytest.approx(1.0) and w.min() == pytest.approx(0.05)
    # every bucket solved always or never: nothing to prefer, so uniform
    np.testing.assert_allclose(bucket_weights(np.array([0.0, 1.0, 1.0]), 0.1), [1 / 3] * 3)
    # p and 1 - p are worth the same; floor 1 is the plain uniform draw
    np.testing.assert_allclose(bucket_weights(np.array([0.2, 0.8]), 0.0), [0.5, 0.5])
    np.testing.assert_allclose(bucket_weights(np.array([0.5, 0.01]), 1.0), [0.5, 0.5])


def test_ema_moves_drawn_buckets_toward_their_accuracy_and_leaves_the_others():
    p = np.array([0.5, 0.2, 0.9])
    new = ema_update(p, correct=np.array([8.0, 12.0, 0.0]), rows=np.array([8.0, 16.0, 0.0]), ema=0.25)
    # bucket 0: accuracy 1 -> 0.75 * 0.5 + 0.25; bucket 1: 0.75 -> 0.75 * 0.2 + 0.25 * 0.75; bucket 2: not drawn
    np.testing.assert_allclose(new, [0.625, 0.3375, 0.9])
    np.testing.assert_allclose(ema_update(p, np.array([0.0, 8, 0]), np.array([8.0, 8, 8]), 1.0), [0, 1, 0])


def test_draws_shift_toward_the_bucket_solved_half_the_time():
    """Three buckets the simulated model solves 2%, 50% and 98% of the time: from a uniform start the
    filter learns that and ends up drawing the middle one most."""
    truth = np.array([0.02, 0.5, 0.98])
    s = DifficultySampler([50, 50, 50], seed=0, ema=0.3, prior=0.5, floor=0.1)
    world = np.random.default_rng(7)  # the simulated answers, apart from the sampler's own draws
    np.testing.assert_allclose(s.weights(), [1 / 3] * 3)
    late = np.zeros(3)
    for step in range(40):
        picks = [b for b, _ in s.draw(4)]
        rows = np.bincount(picks, minlength=3) * 8.0  # 8 answers per prompt
        s.update(world.binomial(rows.astype(int), truth), rows)
        if step >= 30:
            late += np.bincount(picks, minlength=3)
    w = s.weights()
    assert w.argmax() == 1 and w[1] > 0.6, w
    assert late.argmax() == 1 and late[1] > late[0] + late[2], late
    assert abs(s.p[1] - 0.5) < 0.2 and s.p[0] < 0.2 and s.p[2] > 0.8, s.p


def test_sampler_is_deterministic_and_uses_a_bucket_before_repeating_it():
    def run(seed):
        s = DifficultySampler([3, 5], seed=seed, ema=0.5, prior=0.5, floor=1.0)
        return s.draw(40)

    a = run(0)
    assert a == run(0) and a != run(1)
    for b, size in ((0, 3), (1, 5)):
        idx = [i for bb, i in a if bb == b]
        assert len(idx) >= 2 * size
        # each pass over a bucket is a permutation of its examples
        for start in range(0, len(idx) - size + 1, size):
            assert sorted(idx[start : start + size]) == list(range(size))


def test_sampler_state_round_trip_continues_the_same_draws():
    s = DifficultySampler([4, 6, 9], seed=3, ema=0.5, prior=0.5, floor=0.2)
    s.draw(5)
    s.update(np.array([1.0, 8, 0]), np.array([8.0, 8, 0]))
    state = s.state_dict()
    twin = DifficultySampler([4, 6, 9], seed=99, ema=0.5, prior=0.1, floor=0.2)
    twin.load_state_dict(state)
    assert twin.draw(30) == s.draw(30)
    np.testing.assert_array_equal(twin.p, s.p)
    with pytest.raises(ValueError, match="checkpoint has 3 difficulty buckets, the config 2"):
        DifficultySampler([4, 6], seed=3, ema=0.5, prior=0.5, floor=0.2).load_state_dict(state)


# ---------------------------------------------------------------------------------------------------
# The task: buckets, and splits that stay as they are


def test_heldout_and_validation_are_unchanged_when_the_filter_is_on():
    plain = load_task(TaskConfig(size=300, eval_size=100))
    on = TaskConfig(size=300, eval_size=100)
    on.difficulty.mode = "adaptive"
    on.difficulty.buckets = [T2D1, T3D2]
    task = load_task(on)
    for split in ("train", "eval", "val"):
        a, b = getattr(plain, split), getattr(task, split)
        assert [(e.prompt, e.answer, e.meta) for e in a] == [(e.prompt, e.answer, e.meta) for e in b], split
    assert plain.buckets == [] and len(task.buckets) == 2
    # each pool holds its bucket's difficulty only, and no held-out or validation question
    held = {e.meta["question"] for e in task.eval + task.val}
    for pool, (terms, digits) in zip(task.buckets, ((2, 1), (3, 2))):
        assert pool and all(e.meta["metadata"]["num_terms"] == terms for e in pool)
        assert all(e.meta["metadata"]["num_digits"] == digits for e in pool)
        assert not held & {e.meta["question"] for e in pool}
    # 2 one-digit terms: 200 distinct questions, some of them held out, so some of 300 were dropped
    assert 0 < len(task.buckets[0]) < 300 and len(task.buckets[1]) == 300
    e = task.buckets[1][0]
    assert e.source == "reasoning_gym:chain_sum#b1"
    assert task.scorer(e.answer, e) == 1.0 and task.scorer(str(int(e.answer) + 1), e) < 1.0
    # off with buckets listed: no pools at all
    off = TaskConfig(size=300, eval_size=100)
    off.difficulty.buckets = [T2D1]
    assert load_task(off).buckets == []


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "overrides,match",
    [
        (
            ["task.difficulty.mode=adaptive"],
            r"task.difficulty.buckets=\[\]: mode=adaptive needs at least one bucket",
        ),
        (["task.difficulty.buckets=[3]"], r"task.difficulty.buckets\[0\]: expected dict\[str, Any\], got 3"),
        (
            ["task.difficulty.buckets=[{}]"],
            r"task.difficulty.buckets\[0\]={}: a bucket needs at least one kwarg",
        ),
        (
            ["task.difficulty.buckets=[{max_terms: 2}, {max_terms: 2}]"],
            r"task.difficulty.buckets\[1\]={'max_terms': 2}: repeats an earlier bucket",
        ),
        (
            ["task.difficulty.mode=sometimes"],
            r"task.difficulty.mode: 'sometimes' is not one of off, adaptive",
        ),
        (["task.difficulty.ema=0"], r"task.difficulty.ema=0.0: must be in \(0, 1\]"),
        (["task.difficulty.floor=1.5"], r"task.difficulty.floor=1.5: must be in \[0, 1\]"),
        (["task.difficulty.prior=-0.1"], r"task.difficulty.prior=-0.1: must be in \[0, 1\]"),
    ],
)
def test_bad_filter_settings_are_one_line_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(None, overrides)
    one_line(e)


def test_bad_buckets_are_one_line_task_errors(tmp_path):
    cfg = TaskConfig(size=20, eval_size=5)
    cfg.difficulty.mode = "adaptive"
    cfg.difficulty.buckets = [T2D1, {"max_term": 2}]
    with pytest.raises(
        TaskError, match=r"task.difficulty.buckets\[1\]={'max_term': 2}: rejected by reasoning-gym chain_sum"
    ) as e:
        load_task(cfg)
    one_line(e)
    cfg.difficulty.buckets = [{"min_terms": 4, "max_terms": 2}]
    with pytest.raises(TaskError, match=r"task.difficulty.buckets\[0\]=.*rejected by reasoning-gym") as e:
        load_task(cfg)
    one_line(e)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1?", "answer": i + 1}) + "\n" for i in range(9)))
    cfg.name = str(data)
    with pytest.raises(
        TaskError, match="task.difficulty.mode=adaptive: buckets are reasoning-gym kwargs"
    ) as e:
        load_task(cfg)
    one_line(e)


# ---------------------------------------------------------------------------------------------------
# In the trainer, on the tiny model


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("dynamic", [False, True])
def test_trainer_draws_from_the_buckets_and_logs_what_the_filter_does(tmp_path, dynamic):
    """Every prompt comes from a bucket's pool; b{i}_n counts them (every rollout round with dynamic
    sampling), b{i}_w are the draw shares, from the estimates b{i}_p of the step before."""
    run = tmp_path / "run"
    extra = ["rollout.dynamic_sampling=true", "rollout.max_resample_rounds=1"] if dynamic else []
    # the `constant` reward gives every group zero spread, so dynamic sampling always resamples
    reward = "constant" if dynamic else "lowercase_share"
    args = tiny_args(run, "train.steps=3", "log.samples_per_step=2", *FILTER, *extra, reward=reward)
    assert main(["train", "--config", "no_kl", *args]) == 0
    rows = rows_of(run)
    cfg = load_config("no_kl", args)
    floor = cfg.task.difficulty.floor
    assert [r["step"] for r in rows] == [1, 2, 3]
    p = np.array([0.5, 0.5])  # the prior
    for r in rows:
        n = np.array([r["b0_n"], r["b1_n"]])
        assert n.sum() == cfg.train.prompts_per_step * (1 + r["resample_rounds"])
        assert r["resample_rounds"] == (1 if dynamic else 0)
        np.testing.assert_allclose([r["b0_w"], r["b1_w"]], bucket_weights(p, floor))
        new = np.array([r["b0_p"], r["b1_p"]])
        np.testing.assert_array_equal(new[n == 0], p[n == 0])  # a bucket not drawn keeps its estimate
        if not dynamic:
            # the tiny random model got no sum right, so every drawn bucket's estimate halved (ema 0.5);
            # with dynamic sampling the dropped groups count too, and `accuracy` does not show them
            assert r["accuracy"] == 0
            np.testing.assert_allclose(new[n > 0], p[n > 0] / 2)
        p = new
    task = load_task(cfg.task)
    pools = {e.prompt for pool in task.buckets for e in pool}
    plain = {e.prompt for e in task.train} - pools
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["prompt"] in pools for s in samples)
    assert not plain & {s["prompt"] for s in samples}


def test_filter_runs_are_deterministic_and_resume_exactly(tmp_path, monkeypatch):
    """Ctrl-C after step 2 of 4, then --resume: the same weights, metrics (the filter's included)
    and filter state as the uninterrupted run, which equals a second uninterrupted run."""
    whole, again, stopped = tmp_path / "whole", tmp_path / "again", tmp_path / "stopped"
    settings = ["train.steps=4", "task.difficulty.floor=0.3", *FILTER]
    for run in (whole, again):
        assert main(["train", "--config", "no_kl", *tiny_args(run, *settings)]) == 0
    assert_same_run(whole, again)
    with monkeypatch.context() as m:
        interrupt_during_step(m, 1)
        assert main(["train", "--config", "no_kl", *tiny_args(stopped, *settings)]) == 0
    state = checkpoint.load_state(checkpoint.latest(stopped))["difficulty"]
    assert state["pos"] and len(state["p"]) == 2 and state["p"] != [0.5, 0.5]
    assert main(["train", "--resume", str(stopped)]) == 0
    assert_same_run(whole, stopped)
    assert any(r["b0_n"] != r["b1_n"] for r in rows_of(whole))


def test_resume_without_filter_state_is_a_clear_error(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_during_step(m, 0)
        assert main(["train", "--config", "no_kl", *tiny_args(run, "train.steps=2", *FILTER)]) == 0
    ckpt = checkpoint.latest(run)
    state = checkpoint.load_state(ckpt)
    state["difficulty"] = None  # as saved by a run without the filter
    torch.save(state, ckpt / checkpoint.STATE_FILE)
    from sft2grpo.run import start
    from sft2grpo.trainer import Trainer

    tr = Trainer(load_config("no_kl", tiny_args(run, "train.steps=2", *FILTER)), run)
    with pytest.raises(checkpoint.CheckpointError, match="no difficulty-filter state"):
        start(tr, resume_from=ckpt)
