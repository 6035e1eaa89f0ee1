"""The command line: each kind of bad input is one line on stderr and exit status 2; the smoke
paths (`advantages`, `train` and `eval` on the tiny model) work end to end."""

import json
import math

import pytest

from sft2grpo.cli import main
from sft2grpo.evaluate import (
    EvalResult,
    heldout_change,
    merge_evals,
    paired_bootstrap,
    pass_at_k,
    problem_scores,
)
from sft2grpo.tracking import plot_metrics


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_advantages_prints_formula_values(capsys):
    code, out, _ = run(capsys, "advantages", "--rewards", "1,-1,-2", "--counts", "896,127,1")
    assert code == 0
    # late stage of the seed's table: mean = (896 - 127 - 2)/1024 = 0.7490,
    # E[r^2] = (896 + 127 + 4)/1024 = 1.0029, std = sqrt(1.0029 - 0.7490^2) = 0.6648, so
    # (1 - 0.749)/0.6648 = 0.38, (-1 - 0.749)/0.6648 = -2.63, (-2 - 0.749)/0.6648 = -4.14.
    rows = [line.split() for line in out.strip().splitlines()[1:]]
    assert [r[2] for r in rows] == ["0.38", "-2.63", "-4.14"]


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["train", "--config", "grpo", "train.stpes=3"], "unknown key 'train.stpes'"),
        (["train", "--config", "nowhere.yaml"], "config file not found: nowhere.yaml"),
        (["train", "--config", "grpo", "objective.beta=-1"], "objective.beta=-1.0: must be >= 0"),
        (["advantages", "--counts", "1,x"], "expected numbers"),
        (["advantages", "--counts", "1,2"], "--rewards has 3 values but --counts has 2"),
        (
            ["train", "--config", "grpo", "model.name=/no/such/model", "log.output_dir=OUT"],
            "/no/such/model",
        ),
        (["train", "model.name=tiny", "task.name=/no/such.jsonl", "log.output_dir=OUT"], "/no/such.jsonl"),
        (["train", "task.val_size=-1"], "task.val_size=-1: must be >= 0 or null"),
        (
            ["train", "model.name=tiny", "task.val_size=0", "eval.every=2", "log.output_dir=OUT"],
            "eval.every=2 evaluates on the validation split, but task chain_sum has none; set task.val_size",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, expected):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("sft2grpo: error: ")
    assert expected in lines[-1]
    assert "Traceback" not in err


def test_train_refuses_a_folder_that_holds_a_run(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    code, _, err = run(capsys, "train", "model.name=tiny", f"log.output_dir={out}")
    assert code == 2 and "already holds a run" in err
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'  # nothing overwritten


def test_print_and_help_config(capsys):
    code, out, _ = run(capsys, "train", "--config", "no_kl", "--print-config")
    assert code == 0 and "beta: 0.0" in out
    code, out, _ = run(capsys, "train", "--help-config")
    assert code == 0 and "objective.kl_estimator" in out


def test_train_and_eval_smoke_on_tiny_model(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = run(
        capsys,
        "train",
        "--config",
        "no_kl",
        "model.name=tiny",
        "task.size=8",
        "task.eval_size=4",
        "task.val_size=3",
        "train.steps=2",
        "train.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=4",
        "eval.every=1",
        "eval.val_draws=2",
        "log.progress=false",
        f"log.output_dir={out}",
    )
    assert code == 0, stdout
    assert "held-out" in stdout and "accuracy" in stdout
    assert "held-out accuracy change:" in stdout and "validation accuracy: best" in stdout
    for name in ("config.yaml", "metrics.jsonl", "samples.jsonl", "summary.json", "training.png"):
        assert (out / name).exists(), name
    assert (out / "model" / "config.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and "before" in summary and "after" in summary
    # the change is the mean of the per-problem differences, read back from the eval files
    before, after = (
        [json.loads(x) for x in (out / f"eval_{t}.jsonl").read_text().splitlines()]
        for t in ("before", "after")
    )
    diffs = [float(a["correct"][0]) - float(b["correct"][0]) for a, b in zip(after, before)]
    assert summary["change"]["diff"] == pytest.approx(sum(diffs) / 4)
    assert summary["change"]["problems"] == 4
    lo, hi = summary["change"]["ci95"]
    assert lo <= summary["change"]["diff"] <= hi
    vals = [json.loads(x) for x in (out / "evals.jsonl").read_text().splitlines()]
    val = {r["step"]: r["accuracy"] for r in vals if r["tag"] == "val"}
    assert sorted(val) == [0, 1, 2] and all(r["problems"] == 3 for r in vals if r["tag"] == "val")
    assert summary["val"]["final"] == val[2] and summary["val"]["best"] == max(val.values())
    # eval.val_draws: sampled accuracy on the validation split at every evaluation, 2 answers each
    sampled = [r for r in vals if r["tag"] == "val_sampled"]
    assert [r["step"] for r in sampled] == [0, 1, 2] and all(r["problems"] == 3 for r in sampled)
    assert all(0 <= r["accuracy"] <= 1 for r in sampled)

    code, stdout, _ = run(
        capsys,
        "eval",
        "--model",
        str(out / "model"),
        "task.size=8",
        "task.eval_size=4",
        "rollout.max_new_tokens=4",
        "log.progress=false",
        "--output",
        str(tmp_path / "ev"),
    )
    assert code == 0
    metrics = json.loads(stdout)
    assert metrics["problems"] == 4 and 0 <= metrics["accuracy"] <= 1
    assert len((tmp_path / "ev" / "eval_samples.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 0, 3, 0.0),
        (5, 3, 3, 1.0),  # only 2 wrong answers: any 3 draws hold a right one
        (10, 2, 1, 0.2),  # pass@1 is the fraction right
        (6, 2, 3, 0.8),  # 1 - C(4,3)/C(6,3) = 1 - 4/20
    ],
)
def test_pass_at_k_closed_form(n, c, k, expected):
    assert math.isclose(pass_at_k(n, c, k), expected)


def test_paired_bootstrap_closed_form():
    # one problem of four goes 0 -> 1: diff 1/4. A resample of 4 problems holds it j times with
    # j ~ Binomial(4, 1/4): P(j = 0) = 0.316 > 2.5%, so the low end is 0; P(j >= 3) = 0.051 > 2.5%
    # and P(j = 4) = 0.004 < 2.5%, so the high end is 3/4.
    r = paired_bootstrap([0, 0, 1, 0], [1, 0, 1, 0])
    assert r["diff"] == 0.25 and r["ci95"] == [0.0, 0.75] and r["problems"] == 4
    same = paired_bootstrap([1, 0, 1], [1, 0, 1])  # no problem changed: no resample can differ
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0]
    # 30 of 100 problems gained, none lost: the interval is about 0.3 +- 1.96 * sqrt(0.21 / 100)
    gain = paired_bootstrap([0.0] * 100, [1.0] * 30 + [0.0] * 70)
    assert gain["ci95"][0] == pytest.approx(0.21, abs=0.02) and gain["ci95"][1] == pytest.approx(
        0.39, abs=0.02
    )
    with pytest.raises(ValueError, match="got 2 and 1"):
        paired_bootstrap([0, 1], [1])


def test_heldout_change_pairs_problems_by_prompt():
    before = [{"prompt": "a", "correct": [False]}, {"prompt": "b", "correct": [True]}]
    after = [{"prompt": "b", "correct": [True]}, {"prompt": "a", "correct": [True]}]  # another order
    assert heldout_change(before, after)["diff"] == 0.5
    # sampled evaluations: each problem's score is its fraction of correct answers
    assert problem_scores([{"prompt": "a", "correct": [True, False, False, True]}]) == {"a": 0.5}


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="n=3 c=4 k=1"):
        pass_at_k(3, 4, 1)


def test_plot_from_metrics(tmp_path):
    rows = [{"step": s, "reward_mean": s / 10, "kl": 0.01 * s, "time_step": 1.0} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    png = plot_metrics(tmp_path)
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_metrics(tmp_path / "empty") is None


def test_merge_evals_weights_shares_by_problems_and_keeps_a_metric_only_some_have():
    a = EvalResult(
        {"accuracy": 0.5, "problems": 2, "digits_share": 1.0}, [{"prompt": "q0"}, {"prompt": "q2"}]
    )
    b = EvalResult({"accuracy": 0.0, "problems": 1}, [{"prompt": "q1"}])  # logged no digits_share
    m = merge_evals([a, b])
    assert m.metrics == {"accuracy": 1 / 3, "problems": 3, "digits_share": 1.0}
    assert [r["prompt"] for r in m.samples] == ["q0", "q1", "q2"]  # share i holds i, i + n, ...
    m = merge_evals([b, a])  # the key order of the first share does not decide which keys survive
    assert m.metrics["digits_share"] == 1.0 and m.metrics["accuracy"] == pytest.approx(1 / 3)
