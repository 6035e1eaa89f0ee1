"""Runs that survive (issue 6): atomic checkpoints, exact resume after `kill -9` and after Ctrl-C,
bad steps and out-of-memory stops, and one clear line for each kind of bad input with nothing in
the output folder overwritten."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sft2grpo import checkpoint
from sft2grpo import run as run_module
from sft2grpo.cli import main
from sft2grpo.config import load_config
from sft2grpo.run import fit, start
from sft2grpo.trainer import Trainer, TrainingError

TOY = Path(__file__).parent / "toy_reward.py"
# Fields that measure the machine, not the run: they differ between any two runs.
VOLATILE = ("time_", "tokens_per_s", "peak_mem_mb")


def tiny_args(out: Path, *extra: str, reward: str = "lowercase_share") -> list[str]:
    return [
        "model.name=tiny",
        "task.size=16",
        "task.eval_size=4",
        "task.val_size=4",
        "rollout.group_size=4",
        "rollout.max_new_tokens=8",
        "train.prompts_per_step=2",
        "train.micro_batch_size=3",
        "train.lr=1e-3",
        "eval.before=false",
        "eval.after=false",
        "log.progress=false",
        "log.plots=false",
        f"reward.functions=['{TOY}:{reward}']",
        f"log.output_dir={out}",
        *extra,
    ]


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"
    ma, mb = metrics(a), metrics(b)
    assert [r["step"] for r in mb] == list(range(1, len(ma) + 1))  # each step logged once
    assert ma == mb


def test_kill_9_then_resume_is_bit_exact(tmp_path, capsys):
    """grpo (mu = 2: old log-probs and the clip; beta > 0: a reference model), 6 steps in one go vs
    a child process killed with SIGKILL after its step-2 checkpoint, then `--resume`."""
    settings = ["train.steps=6", "checkpoint.every=2", "checkpoint.keep=2"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert (
        main(["train", "--config", "grpo", *tiny_args(whole, *settings, reward="slow_lowercase_share")]) == 0
    )

    env = {**os.environ, "SFT2GRPO_TEST_SLEEP": "0.4"}
    cmd = [sys.executable, "-m", "sft2grpo", "train", "--config", "grpo"]
    child = subprocess.Popen(
        cmd + tiny_args(killed, *settings, reward="slow_lowercase_share"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while checkpoint.latest(killed) is None and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL, "the child finished before it could be killed"
    at_kill = checkpoint.latest(killed)
    assert at_kill is not None and at_kill.name in ("step-000002", "step-000004")
    assert not (killed / "summary.json").exists()

    assert main(["train", "--resume", str(killed)]) == 0
    assert f"resuming {killed} from {at_kill.name}" in capsys.readouterr().err
    assert_same_run(whole, killed)
    # keep=2: the two newest survive, and the final one is a complete HF folder
    assert [p.name for p in checkpoint.complete(killed)] == ["step-000004", "step-000006"]
    assert not list(checkpoint.folder(killed).glob(".tmp-*"))


def interrupt_during_step(monkeypatch, step: int) -> None:
    """Send SIGINT (a user's Ctrl-C) to this process while step `step` + 1 runs."""
    original = Trainer.train_step

    def train_step(self, state):
        if state.step == step:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, state)

    monkeypatch.setattr(Trainer, "train_step", train_step)


@pytest.mark.parametrize(
    "preset,extra",
    [
        ("no_kl", []),
        ("grpo", ["model.lora.enabled=true", "model.lora.r=4"]),
        ("no_kl", ["rollout.dtype=int8"]),  # the resumed sampler's int8 copy is made from the loaded weights
        (
            "no_kl",
            ["eval.heldout_at=[1,4]", "eval.heldout_at_draws=2"],
        ),  # held-out horizons on both sides of the stop
    ],
)
def test_ctrl_c_checkpoints_and_resume_is_exact(tmp_path, monkeypatch, preset, extra):
    """Ctrl-C finishes the step, saves a checkpoint (no `checkpoint.every` needed) and the resumed
    run equals the uninterrupted one; with LoRA the checkpoint holds the adapter alone."""
    args = ["train", "--config", preset, "train.steps=4", "eval.after=true", "eval.every=2", *extra]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main([*args[:3], *tiny_args(whole, *args[3:])]) == 0

    with monkeypatch.context() as m:
        interrupt_during_step(m, 1)
        assert main([*args[:3], *tiny_args(stopped, *args[3:])]) == 0
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["interrupted"] and summary["steps"] == 2 and "after" not in summary
    ckpt = checkpoint.latest(stopped)
    assert ckpt.name == "step-000002"
    saved = {p.name for p in (ckpt / "model").iterdir()}
    assert ("adapter_model.safetensors" in saved) == ("model.lora.enabled=true" in extra)

    earlier = checkpoint.load_state(ckpt)["earlier"]  # the first piece, up to its checkpoint
    assert 0 < earlier["wall_time_s"] <= summary["wall_time_s"] and earlier["peak_mem_mb"] > 1.0

    with monkeypatch.context() as m:
        m.setattr(run_module, "peak_memory_mb", lambda: 1.0)  # the resumed piece peaks lower
        t0 = time.time()
        assert main(["train", "--resume", str(stopped)]) == 0
        piece = time.time() - t0
    resumed = json.loads((stopped / "summary.json").read_text())
    # the whole run's figures, not the last piece's
    assert resumed["peak_mem_mb"] == earlier["peak_mem_mb"]
    assert earlier["wall_time_s"] < resumed["wall_time_s"] <= earlier["wall_time_s"] + piece
    assert_same_run(whole, stopped)
    evals = [evaluations(run) for run in (whole, stopped)]
    # the validation curve: the base model, every 2 steps and the last step; then the held-out "after"
    tags = [(0, "val"), (2, "val"), (4, "val"), (4, "after")]
    if "eval.heldout_at_draws=2" in extra:  # held-out at steps 1 and 4 too, greedy and 2 samples a problem
        tags[1:1] = [(1, "heldout"), (1, "heldout_sampled")]
        tags[5:5] = [(4, "heldout"), (4, "heldout_sampled")]
        for step in (1, 4):  # the step-1 files come from the first piece, the step-4 ones after resuming
            a, b = whole / "heldout" / f"step-{step}", stopped / "heldout" / f"step-{step}"
            for name in ("eval_samples.jsonl", "eval_sampled.jsonl"):
                assert (a / name).read_text() == (b / name).read_text()
            for name in ("eval.json", "sampled.json"):
                untimed = [
                    {k: v for k, v in json.loads((d / name).read_text()).items() if k != "time_s"}
                    for d in (a, b)
                ]
                assert untimed[0] == untimed[1] and untimed[0]["step"] == step
        horizon = {e["tag"]: e for e in evals[1] if e["step"] == 4}
        # the last step's greedy horizon is the "after" evaluation of the same model
        assert horizon["heldout"]["accuracy"] == horizon["after"]["accuracy"]
        assert horizon["heldout_sampled"]["samples_per_problem"] == 2
    assert [(e["step"], e["tag"]) for e in evals[1]] == tags
    assert evals[0] == evals[1]


def evaluations(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def test_latest_ignores_incomplete_checkpoints(tmp_path):
    root = checkpoint.folder(tmp_path)
    (root / "step-000002").mkdir(parents=True)
    for f in (checkpoint.STATE_FILE, checkpoint.META_FILE):
        (root / "step-000002" / f).write_text("x")
    (root / ".tmp-step-000006").mkdir()  # a save that was killed mid-write
    (root / "step-000004").mkdir()  # no state.json: never completed
    (root / "step-000004" / checkpoint.STATE_FILE).write_text("x")
    (root / "step-abc").mkdir()
    assert checkpoint.latest(tmp_path) == root / "step-000002"
    assert checkpoint.latest(tmp_path / "nothing") is None


def test_keep_deletes_only_after_the_new_one_is_complete(tmp_path, monkeypatch):
    """keep=2 with a checkpoint every step; a save that fails (disk full) leaves the earlier
    checkpoints intact, removes its partial folder and stops the run with a message."""
    cfg = load_config("no_kl", tiny_args(tmp_path / "run", "train.steps=5", "checkpoint.every=1"))
    trainer = Trainer(cfg, tmp_path / "run")
    state = start(trainer)
    real_save = torch.save

    def save(obj, f, *a, **k):
        if state.step == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(checkpoint.CheckpointError) as e:
        fit(trainer, state)
    msg = str(e.value)
    assert "step-000003" in msg and "No space left on device" in msg and "step-000002" in msg
    assert "\n" not in msg
    assert [p.name for p in checkpoint.complete(tmp_path / "run")] == ["step-000001", "step-000002"]
    assert not list(checkpoint.folder(tmp_path / "run").glob(".tmp-*"))
    state = checkpoint.load_state(checkpoint.latest(tmp_path / "run"))
    assert state["step"] == 2


def test_bad_steps_stop_the_run_with_a_checkpoint_of_the_last_good_state(tmp_path, monkeypatch):
    from sft2grpo import objective

    cfg = load_config("no_kl", tiny_args(tmp_path / "run", "train.steps=6", "train.max_bad_steps=2"))
    trainer = Trainer(cfg, tmp_path / "run")
    state = start(trainer)
    real_loss = objective.policy_loss

    good = {}

    def nan_after_first_step(*a, **k):
        loss, m = real_loss(*a, **k)
        if state.step == 0:
            return loss, m
        if not good:  # the weights after the one good step
            good.update({n: p.detach().clone() for n, p in trainer.model.state_dict().items()})
        return loss * float("nan"), m

    monkeypatch.setattr(objective, "policy_loss", nan_after_first_step)
    with pytest.raises(TrainingError, match=r"^2 steps in a row had a NaN/inf loss or gradient \(step 3\)"):
        fit(trainer, state)
    assert state.skipped_steps == 2
    ckpt = checkpoint.latest(tmp_path / "run")
    assert ckpt.name == "step-000002"  # steps 2 and 3 were bad; step 2 was skipped and counted
    saved = load_file(ckpt / "model" / "model.safetensors")
    assert saved.keys() <= good.keys()
    for name, p in saved.items():
        assert torch.equal(p, good[name]) and torch.isfinite(p).all()


def test_out_of_memory_names_the_sizes_and_the_setting(tmp_path, monkeypatch):
    # grpo: its KL term keeps every row in the passes (no_kl skips a step's forward when no group
    # has a reward spread, and that step would never reach the allocation that fails)
    cfg = load_config("grpo", tiny_args(tmp_path / "run", "train.steps=1"))
    trainer = Trainer(cfg, tmp_path / "run")

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(Trainer, "logprobs", oom)
    with pytest.raises(TrainingError) as e:
        trainer.fit()
    msg = str(e.value)
    assert msg.startswith("out of memory in a micro-batch of 3 sequences x ")
    assert "train.micro_batch_size (now 3)" in msg and "rollout.max_new_tokens (now 8)" in msg
    # other runtime errors are not dressed up as out of memory
    monkeypatch.setattr(Trainer, "logprobs", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape")))
    with pytest.raises(RuntimeError, match="^shape$"):
        Trainer(cfg, tmp_path / "run2").fit()


# -- bad input: one line, exit 2, no traceback, nothing written -----------------------------------


def bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    fake = tmp / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF file")
    broken = tmp / "broken.jsonl"
    broken.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2", "answer": \n')
    empty = tmp / "empty.jsonl"
    empty.write_text("")
    no_ckpt = tmp / "no_ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.yaml").write_text("preset: grpo\n")
    return [
        (["train.stpes=3"], "unknown key 'train.stpes'"),
        (["train.steps=many"], "train.steps"),
        (["objective.beta=-0.1"], "objective.beta=-0.1: must be >= 0"),
        (["objective.eps_low=1.0"], "objective.eps_low=1.0: must be in [0, 1)"),
        (["rollout.group_size=1"], "rollout.group_size=1"),
        (["model.name=/no/such/model"], "/no/such/model"),
        ([f"model.name={fake}"], str(fake)),
        ([f"task.name={broken}"], f"{broken}:2"),
        ([f"task.name={empty}"], str(empty)),
        (["reward.functions=['no_such_module_xyz:score']"], "no_such_module_xyz"),
        (["--resume", str(no_ckpt)], f"--resume {no_ckpt}: no complete checkpoint"),
        (["--resume", str(tmp / "nowhere")], "not a run folder"),
    ]


CASES = [
    "unknown key",
    "wrong type",
    "negative beta",
    "eps >= 1",
    "group of 1",
    "missing model",
    "not GGUF",
    "malformed JSONL",
    "empty dataset",
    "reward import",
    "resume no ckpt",
    "resume no folder",
]


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASES)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    argv, expected = bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    if argv[0] == "--resume":
        full = ["train", *argv]
    else:
        base = tiny_args(out, "train.steps=1")
        full = ["train", *[a for a in base if a.split("=")[0] not in {x.split("=")[0] for x in argv}], *argv]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code = main(full)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sft2grpo: error: "), err
    assert expected in lines[0]
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written or overwritten
    assert (out / "notes.txt").read_text() == "keep me"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "train", "--resume", str(tmp_path / "nowhere")])


def test_resume_auto_finds_the_newest_run_or_starts_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    template = str(tmp_path / "runs" / "{preset}-{time}")
    args = ["train", "--config", "no_kl", "--resume", "auto", *tiny_args(Path(template), "train.steps=2")]
    assert main(args) == 0  # nothing to resume: a new run
    (first,) = (tmp_path / "runs").iterdir()
    assert checkpoint.latest(first) is None
    with monkeypatch.context() as m:
        interrupt_during_step(m, 0)
        assert main([a.replace("{time}", "second") for a in args]) == 0
    capsys.readouterr()
    assert main(args) == 0
    assert "resuming" in capsys.readouterr().err and "no_kl-second" in str(
        json.loads((tmp_path / "runs" / "no_kl-second" / "summary.json").read_text())["run_dir"]
    )
    assert [r["step"] for r in metrics(tmp_path / "runs" / "no_kl-second")] == [1, 2]


def test_run_state_round_trip_continues_every_stream_exactly():
    """RunState.state_dict() -> load_state_dict() into a fresh state: every field comes back, and
    the data order's generator, the difficulty filter's draws and the global RNGs (python, numpy,
    torch) continue exactly where the saved state left them."""
    import random

    import numpy as np

    from sft2grpo.difficulty import DifficultySampler
    from sft2grpo.run import RunState

    def fresh() -> RunState:
        return RunState(
            data_rng=np.random.default_rng(7), difficulty=DifficultySampler([3, 5], 7, 0.3, 0.5, 0.1)
        )

    a = fresh()
    a.data_rng.permutation(10)  # move every stream away from its seed
    a.difficulty.draw(4)
    a.difficulty.update(np.array([1.0, 2.0]), np.array([4.0, 4.0]))
    a.step, a.order, a.pos, a.drawn = 3, [2, 0, 1], 2, 12
    a.bad_steps, a.skipped_steps, a.train_time = 1, 2, 4.5
    a.before = {"accuracy": 0.25}
    saved = a.state_dict()
    b = fresh()
    b.load_state_dict(saved)
    for key in ("step", "order", "pos", "drawn", "bad_steps", "skipped_steps", "before", "train_time"):
        assert getattr(b, key) == getattr(a, key), key
    assert b.earlier == saved["earlier"] and b.earlier["wall_time_s"] >= 0
    assert b.data_rng.permutation(10).tolist() == a.data_rng.permutation(10).tolist()
    assert b.difficulty.draw(6) == a.difficulty.draw(6)
    assert b.difficulty.p.tolist() == a.difficulty.p.tolist()
    # the global RNGs are the saved ones again: the draws after a load repeat the draws after the save
    after_save = (random.random(), np.random.rand(), torch.rand(2).tolist())
    b.load_state_dict(saved)
    assert (random.random(), np.random.rand(), torch.rand(2).tolist()) == after_save
