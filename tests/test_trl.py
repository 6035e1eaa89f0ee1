"""Bring-your-own rewards and data as TRL users write them, end to end on the tiny model: a TRL-style
reward file's logs and step info reach metrics.jsonl and samples.jsonl, a reward that can never work
stops the run loudly, and the README's migration example (examples/) trains."""

import json
import sys
from pathlib import Path

import pytest

from sft2grpo import checkpoint
from sft2grpo.cli import main

ROOT = Path(__file__).resolve().parent.parent

TRL_STYLE = """
def by_length(completion_ids, trainer_state, log_metric, log_extra, **kwargs):
    log_metric("step_seen", trainer_state.global_step)
    log_extra("n_ids", [len(ids) for ids in completion_ids])
    return [len(ids) / 8 for ids in completion_ids]

def breaks_after_first_step(completions, trainer_state, **kwargs):
    if trainer_state.global_step >= 1:
        raise ZeroDivisionError("boom")
    return [float(len(c)) for c in completions]
"""


def tiny_args(out: Path, *extra: str) -> list[str]:
    return [
        "model.name=tiny",
        "task.size=16",
        "task.eval_size=4",
        "rollout.group_size=4",
        "rollout.max_new_tokens=8",
        "train.prompts_per_step=2",
        "train.lr=1e-3",
        "eval.before=false",
        "eval.after=false",
        "log.progress=false",
        "log.plots=false",
        f"log.output_dir={out}",
        *extra,
    ]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "trl_style.py"
    path.write_text(TRL_STYLE)
    return path


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_logs_and_step_info_of_a_trl_style_reward_reach_the_run_files(tmp_path, reward_file, capsys):
    out = tmp_path / "run"
    args = tiny_args(out, "train.steps=2", f"reward.functions=['{reward_file}:by_length']")
    assert run(capsys, "train", "--config", "no_kl", *args)[0] == 0
    rows = read_rows(out / "metrics.jsonl")
    assert [r["step_seen"] for r in rows] == [0, 1]  # optimizer steps done when each step sampled
    assert all(r["reward_faults"] == 0 for r in rows)
    samples = read_rows(out / "samples.jsonl")
    assert len(samples) == 4  # 2 steps x samples_per_step
    for s in samples:  # the logged column sits beside the completion it belongs to
        assert s["reward"] == pytest.approx(s["n_ids"] / 8)
        assert 1 <= s["n_ids"] <= 8


@pytest.mark.filterwarnings("ignore::sft2grpo.rewards.RewardWarning")
def test_a_reward_that_never_works_stops_the_run_with_one_line_and_a_checkpoint(
    tmp_path, reward_file, capsys
):
    out = tmp_path / "run"
    spec = f"{reward_file}:breaks_after_first_step"
    args = tiny_args(
        out,
        "train.steps=6",
        f"reward.functions=['{spec}']",
        "reward.max_failed_steps=2",
        "checkpoint.every=1",
        "checkpoint.keep=5",
    )
    code, err = run(capsys, "train", "--config", "no_kl", *args)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"sft2grpo: error: reward function '{spec}' failed on every completion for 2 steps in a row "
        "(reward.max_failed_steps=2); first error: ZeroDivisionError: boom"
    )
    assert "Traceback" not in err
    # step 1 scored, step 2 faulted everywhere and trained, step 3 faulted again: stopped before its update
    assert [r["step"] for r in read_rows(out / "metrics.jsonl")] == [1, 2]
    assert [p.name for p in sorted(checkpoint.folder(out).glob("step-*"))] == ["step-000001", "step-000002"]
    assert checkpoint.latest(out).name == "step-000002"


def test_the_readme_trl_example_trains_on_the_tiny_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the example's paths are relative to the repository root, as in the README
    out = tmp_path / "run"
    code, err = run(
        capsys,
        "train",
        "--config",
        "examples/trl_grpo.yaml",
        *tiny_args(out, "train.steps=2", "log.tensorboard=false"),
    )
    assert code == 0, err
    rows = read_rows(out / "metrics.jsonl")
    assert len(rows) == 2
    assert all(r["reward_faults"] == 0 for r in rows)
    assert all(0.0 <= r["format_ok"] <= 1.0 for r in rows)  # format_reward's log_metric
    # read as conversations: samples show the user's turn, not the messages as one string
    assert all(s["prompt"].startswith("What is ") for s in read_rows(out / "samples.jsonl"))


def test_the_example_reward_functions_score_both_formats():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import trl_rewards
    finally:
        sys.path.remove(str(ROOT / "examples"))
    chat = [
        [{"role": "assistant", "content": t}] for t in ("so <answer>54</answer>", "54", "<answer>5</answer>")
    ]
    assert trl_rewards.accuracy_reward(chat, solution=["54", "54", "54"]) == [1.0, 1.0, 0.0]
    assert trl_rewards.accuracy_reward(["it is 7", "none"], solution=["7", "7"]) == [1.0, 0.0]
    logged = []
    assert trl_rewards.format_reward(chat, log_metric=lambda k, v: logged.append((k, v))) == [1.0, 0.0, 1.0]
    assert logged == [("format_ok", pytest.approx(2 / 3))]
