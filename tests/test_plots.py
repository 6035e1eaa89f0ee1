"""The training plot on synthetic run folders (no model): which panels and lines a run's rows give
(pure functions, no matplotlib), and that the PNG is written for an RL run, an SFT run and a
pipeline folder (sft/ then rl/)."""

import json
from pathlib import Path

import pytest

from sft2grpo.tracking import (
    PLOT_PANELS,
    STAGE_BOUNDARY_LABEL,
    is_pipeline,
    plot_metrics,
    plot_stages,
    run_panels,
    stage_plan,
)

PNG = b"\x89PNG\r\n\x1a\n"


def rl_rows(steps: int = 4, beta: float = 0.0, mu: int = 1) -> list[dict]:
    """Rows as the RL trainer writes them: with beta = 0 the KL is logged as 0 (or not at all) and
    with mu = 1 nothing is ever clipped."""
    rows = []
    for s in range(1, steps + 1):
        row = {
            "step": s,
            "reward_mean": 0.1 * s,
            "accuracy": 0.25 * (s % 2),
            "format_error_rate": 0.1,
            "zero_std_frac": 0.25 * (s % 3),
            "completion_len": 40.0 + s,
            "entropy": 1.5 - 0.1 * s,
            "loss": -0.05,  # the policy-gradient surrogate, not a cross-entropy: never drawn for RL
            "lr": 1e-5,
            "grad_norm": 1.0,
            "tokens_per_s": 1000.0,
            "clip_frac_low": 0.02 * s if mu > 1 else 0.0,
            "clip_frac_high": 0.01 * s if mu > 1 else 0.0,
            "time_rollout": 0.5,
            "time_reward": 0.01,
            "time_update": 0.3,
            "time_step": 0.81,
        }
        if beta:
            row["kl"] = 0.001 * s
        rows.append(row)
    return rows


def sft_rows(steps: int = 3) -> list[dict]:
    return [
        {
            "step": s,
            "loss": 3.0 / s,
            "completion_len": 30.0 + s,
            "tokens_per_s": 2000.0,
            "lr": 2e-5,
            "grad_norm": 5.0 / s,
            "skipped_steps": 0,
            "time_update": 0.2,
            "time_step": 0.21,
        }
        for s in range(1, steps + 1)
    ]


def val_rows(steps: list[int], acc: float = 0.5) -> list[dict]:
    rows = [{"step": 0, "tag": "before", "accuracy": 0.9}]  # held-out: never on the validation curve
    rows += [{"step": s, "tag": "val", "accuracy": acc * s / max(steps)} for s in steps]
    return rows + [{"step": steps[-1], "tag": "after", "accuracy": 0.9}]


def write_run(d: Path, rows: list[dict], evals: list[dict]) -> Path:
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    return d


def titles(panels) -> list[str]:
    return [p.title for p in panels]


def by_title(panels, start: str):
    (panel,) = [p for p in panels if p.title.startswith(start)]
    return panel


def test_rl_run_with_beta_0_and_mu_1_shows_no_kl_or_clip_panel():
    panels = run_panels(rl_rows(beta=0.0, mu=1), val_rows([0, 2, 4]))
    assert titles(panels) == [
        "reward (mean over samples)",
        "accuracy (%)",
        "groups with reward spread (%)",
        "entropy (mean -log pi of sampled tokens)",
        "completion length (tokens)",
        "step time (s)",
    ]
    assert all(p.series for p in panels)  # no "not logged" frame
    # the same when the zeros are logged: kl = 0.0 throughout
    assert titles(run_panels([{**r, "kl": 0.0} for r in rl_rows()])) == titles(panels)


def test_kl_and_clip_panels_come_when_they_are_not_all_zero():
    panels = run_panels(rl_rows(beta=0.04, mu=2))
    assert titles(panels)[6:] == ["KL to reference", "clip fraction (%)"]
    clip = by_title(panels, "clip fraction")
    assert [s.label for s in clip.series] == ["clip_frac_low", "clip_frac_high"]
    assert clip.series[0].ys == pytest.approx([2.0, 4.0, 6.0, 8.0])  # percent


def test_group_spread_is_the_share_of_groups_with_spread_in_percent():
    rows = rl_rows()
    spread = by_title(run_panels(rows), "groups with reward spread").series[0]
    assert spread.xs == [1, 2, 3, 4]
    assert spread.ys == pytest.approx([100 * (1 - r["zero_std_frac"]) for r in rows])
    assert spread.ys == pytest.approx([75.0, 50.0, 100.0, 75.0])


def test_accuracy_panel_has_training_and_validation_curves_in_percent():
    acc = by_title(run_panels(rl_rows(), val_rows([0, 2, 4])), "accuracy")
    train, val = acc.series
    assert (train.label, train.ys) == ("training accuracy", [25.0, 0.0, 25.0, 0.0])
    assert val.validation and val.xs == [0, 2, 4]  # "before"/"after" rows are the held-out set
    assert val.ys == pytest.approx([0.0, 25.0, 50.0])


def test_sft_run_shows_the_loss_and_fills_the_rl_panels_with_spares():
    panels = run_panels(sft_rows(), val_rows([0, 3]))
    assert titles(panels) == [
        "SFT loss (cross-entropy per token)",
        "accuracy (%)",
        "completion length (tokens)",
        "step time (s)",
        "gradient norm",
        "trained tokens / s",
    ]
    assert [s.label for s in by_title(panels, "accuracy").series] == ["validation accuracy"]
    assert [s.label for s in by_title(panels, "step time").series] == ["time_step", "time_update"]
    # no validation either: one more spare, and no empty frame
    assert "accuracy (%)" not in titles(run_panels(sft_rows()))
    assert all(p.series for p in run_panels(sft_rows()))


def test_not_logged_frames_only_as_the_last_resort():
    rows = [{"step": s, "reward_mean": s / 10, "time_step": 1.0} for s in range(1, 4)]
    panels = run_panels(rows)
    assert len(panels) == 6
    assert [p.title for p in panels if p.series] == ["reward (mean over samples)", "step time (s)"]
    assert titles(panels)[1] == "accuracy (%)" and not panels[1].series


def test_every_panel_key_is_a_key_a_trainer_writes():
    # the RL keys against the RL fixture (which copies the trainer's row); the SFT loss against SFT's
    rl_keys = set(rl_rows(beta=0.04, mu=2)[0])
    for spec in PLOT_PANELS:
        assert set(spec.keys) <= (set(sft_rows()[0]) if spec.runs == "sft" else rl_keys), spec.title


def test_stage_plan_puts_rl_step_s_at_sft_steps_plus_s():
    sft, rl = sft_rows(3), rl_rows(4)
    plan = stage_plan(sft, val_rows([0, 1, 2, 3]), rl, val_rows([0, 2, 4]))
    assert plan.boundary == 3 and plan.xlim == (0, 7)
    assert titles(plan.panels) == [
        "accuracy (%)",
        "SFT loss (cross-entropy per token)",
        "reward (mean over samples)",
        "groups with reward spread (%)",
        "entropy (mean -log pi of sampled tokens)",
        "completion length (tokens)",
        "step time (s)",
    ]
    train, val = by_title(plan.panels, "accuracy").series
    assert train.label == "training accuracy (RL)" and train.xs == [4, 5, 6, 7]
    # the SFT stage's validation rows, then the RL stage's from its step 0 (the SFT model) on
    assert val.validation and val.xs == [0, 1, 2, 3, 3, 5, 7]
    assert by_title(plan.panels, "SFT loss").series[0].xs == [1, 2, 3]
    for title in ("reward", "groups with", "entropy"):
        assert by_title(plan.panels, title).series[0].xs == [4, 5, 6, 7]
    sft_len, rl_len = by_title(plan.panels, "completion length").series
    assert (sft_len.xs, rl_len.xs) == ([1, 2, 3], [4, 5, 6, 7])
    times = {s.label: s.xs for s in by_title(plan.panels, "step time").series}
    assert times["time_step"] == [1, 2, 3, 4, 5, 6, 7]  # one line over both stages
    assert times["time_rollout"] == [4, 5, 6, 7]  # supervised steps sample nothing
    # a KL and clipping in the RL stage add their panels
    plan = stage_plan(sft, [], rl_rows(4, beta=0.04, mu=2), [])
    assert titles(plan.panels)[5:7] == ["KL to reference", "clip fraction (%)"]


@pytest.fixture
def runs(tmp_path):
    rl = write_run(tmp_path / "rl-run", rl_rows(beta=0.0, mu=1), val_rows([0, 2, 4]))
    sft = write_run(tmp_path / "sft-run", sft_rows(), val_rows([0, 3]))
    pipe = tmp_path / "pipeline"
    write_run(pipe / "sft", sft_rows(3), val_rows([0, 3]))
    write_run(pipe / "rl", rl_rows(4), val_rows([0, 2, 4]))
    return rl, sft, pipe


def test_png_for_an_rl_run_an_sft_run_and_a_pipeline(runs):
    pytest.importorskip("matplotlib")
    rl, sft, pipe = runs
    assert not is_pipeline(rl) and not is_pipeline(sft) and is_pipeline(pipe)
    for d in runs:
        out = plot_metrics(d)  # a pipeline folder goes to plot_stages
        assert out == d / "training.png" and out.read_bytes()[:8] == PNG
    assert plot_stages(pipe, pipe / "again.png").read_bytes()[:8] == PNG
    assert STAGE_BOUNDARY_LABEL == "SFT | RL"


def test_nothing_to_draw_returns_none(tmp_path):
    assert plot_metrics(tmp_path / "missing") is None
    pipe = tmp_path / "pipe"
    for stage in ("sft", "rl"):
        (pipe / stage).mkdir(parents=True)
        (pipe / stage / "metrics.jsonl").write_text("")  # a pipeline killed before its first step
    assert is_pipeline(pipe) and plot_metrics(pipe) is None and not (pipe / "training.png").exists()
