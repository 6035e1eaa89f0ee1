"""The metrics sinks for real: every plotted key is one the trainer writes, TensorBoard's event file
reads back the JSONL values, and W&B (offline) continues the same run id on --resume."""

import json
import struct
from pathlib import Path

import pytest

from sft2grpo.cli import main
from sft2grpo.config import load_config
from sft2grpo.tracking import PLOT_PANELS, plot_seeds, running_mean, seed_band, seed_curve
from sft2grpo.trainer import Trainer

TOY = Path(__file__).parent / "toy_reward.py"


def tiny_overrides(out: Path, *extra: str) -> list[str]:
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
        f"reward.functions=['{TOY}:lowercase_share']",
        f"log.output_dir={out}",
        *extra,
    ]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_plotted_key_is_written_and_tensorboard_reads_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    # grpo: beta > 0 and clipping on, so the KL and clip-fraction panels have data
    cfg = load_config("grpo", tiny_overrides(run, "train.steps=2", "log.tensorboard=true", "log.plots=true"))
    Trainer(cfg, run).fit()
    rows = read_rows(run / "metrics.jsonl")
    drawn = {k for panel in PLOT_PANELS if panel.runs != "sft" for k in panel.keys}  # RL plot keys
    assert drawn <= set(rows[0]), f"plotted but never written: {sorted(drawn - set(rows[0]))}"
    assert (run / "training.png").stat().st_size > 0

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key in ("reward_mean", "loss", "time_reward"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in got] == [1, 2]
        assert [v for _, v in got] == pytest.approx([r[key] for r in rows], rel=1e-6)  # float32 on disk


def _wandb_history(run_file: Path) -> list[dict]:
    """The history rows of an offline W&B run file: a LevelDB-style log of protobuf records (7-byte
    file header, then chunks of crc32 + length + type, in 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf, rows = run_file.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if length == 0 and kind == 0:
            break
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                )
    return rows


def test_wandb_offline_and_resume_continues_the_same_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    for var, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_DATA_DIR": str(tmp_path / "data"),
        "WANDB_SILENT": "true",
    }.items():
        monkeypatch.setenv(var, value)
    run = tmp_path / "run"
    args = tiny_overrides(run, "log.wandb=true", "log.plots=false", "checkpoint.every=1")
    assert main(["train", "--config", "grpo", *args, "train.steps=1"]) == 0
    run_id = (run / "wandb_id.txt").read_text().strip()
    assert main(["train", "--resume", str(run), "train.steps=2"]) == 0
    assert (run / "wandb_id.txt").read_text().strip() == run_id
    # one W&B run, in two pieces: each folder holds run-<id>.wandb for the same id (the folder names
    # end in the id, wandb >= 0.31 adding "-1" when both pieces start in the same second)
    pieces = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(pieces) == 2
    assert [sorted(f.name for f in p.glob("run-*.wandb")) for p in pieces] == [[f"run-{run_id}.wandb"]] * 2
    jsonl = read_rows(run / "metrics.jsonl")
    logged = [_wandb_history(p / f"run-{run_id}.wandb") for p in pieces]
    assert [[h["_step"] for h in rows] for rows in logged] == [[1], [2]]  # the resume starts after step 1
    for rows, row in zip(logged, jsonl):
        assert rows[0]["reward_mean"] == pytest.approx(row["reward_mean"])


def test_seed_band_is_mean_min_max_over_the_steps_every_seed_has():
    curves = [{0: 10.0, 1: 20.0, 2: 30.0}, {0: 20.0, 1: 40.0}, {1: 60.0, 0: 0.0, 5: 1.0}]
    assert seed_band(curves) == ([0, 1], [10.0, 40.0], [0.0, 20.0], [20.0, 60.0])
    # smoothed per seed first: running means of 2 -> seed 0 [10, 15], seed 1 [20, 30], seed 2 [0, 30]
    assert seed_band(curves, window=2) == ([0, 1], [10.0, 25.0], [0.0, 15.0], [20.0, 30.0])
    assert seed_band([{0: 1.0}, {1: 2.0}]) == ([], [], [], [])
    assert running_mean([1.0, 3.0, 5.0, 7.0], 3) == [1.0, 2.0, 3.0, 5.0]


def test_plot_seeds_reads_validation_rows_and_turns_zero_spread_into_signal(tmp_path):
    runs = []
    for seed, (acc, zero) in enumerate([(0.25, 0.75), (0.5, 0.5)]):
        d = tmp_path / f"ours-seed{seed}"
        d.mkdir()
        rows = [
            {"step": s, "accuracy": acc, "zero_std_frac": zero, "completion_len": 20.0 + s} for s in (1, 2)
        ]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        evals = [{"step": 0, "tag": "val", "accuracy": 0.1}, {"step": 2, "tag": "val", "accuracy": acc}]
        evals.append({"step": 2, "tag": "heldout", "accuracy": 0.9})  # never on the validation curve
        (d / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
        runs.append(d)
    assert seed_curve(runs[0], "val:accuracy") == {0: 10.0, 2: 25.0}
    assert seed_curve(runs[0], "zero_std_frac") == {1: 25.0, 2: 25.0}  # % of groups with spread
    assert seed_curve(runs[1], "accuracy") == {1: 50.0, 2: 50.0}
    assert seed_curve(runs[1], "completion_len") == {1: 21.0, 2: 22.0}
    out = plot_seeds(runs, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_seeds([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
