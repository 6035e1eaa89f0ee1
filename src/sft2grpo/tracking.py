"""Where metrics go: a JSONL file always, TensorBoard and W&B when asked, PNG plots at the end.

The trainer talks to one `Tracker` with two methods, `log(step, metrics)` and `close()`; the sinks
behind it share that contract, so the loop never branches on `if wandb:` (nanochat's null-logger
idea). Plots are drawn from the JSONL file itself, so they can be redrawn for any finished or
interrupted run with `plot_metrics(run_dir)`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

# Panels of the training plot: (title, metric keys drawn in it).
PLOT_PANELS: list[tuple[str, list[str]]] = [
    ("reward", ["reward_mean"]),
    ("accuracy / format errors", ["accuracy", "format_error_rate"]),
    ("KL to reference", ["kl"]),
    ("clip fraction", ["clip_frac_low", "clip_frac_high"]),
    ("completion length (tokens)", ["completion_len"]),
    ("step time (s)", ["time_rollout", "time_reward", "time_update", "time_step"]),
]


class JsonlSink:
    """One JSON object per line; flushed every write so a killed run keeps every finished step."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    def __init__(self, log_dir: Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard itself is optional
            raise RuntimeError(
                "log.tensorboard=true needs tensorboard: pip install 'sft2grpo[tracking]'"
            ) from e
        # purge_step: a resumed run drops the events logged after its checkpoint, so no step is doubled
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, project: str, run_name: str, config: dict, run_id: str):
        try:
            import wandb
        except ImportError as e:
            raise RuntimeError("log.wandb=true needs wandb: pip install 'sft2grpo[tracking]'") from e
        # the same id on resume continues the same W&B run
        self.run = wandb.init(project=project, name=run_name, config=config, id=run_id, resume="allow")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in metrics.items() if isinstance(v, int | float)}, step=step)

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """Fans each `log` call out to every sink."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for s in self.sinks:
            s.log(step, metrics)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def make_tracker(
    run_dir: Path, *, tensorboard: bool, wandb: bool, project: str, config: dict, resume_step: int = 0
) -> Tracker:
    """Sinks for a run; `resume_step` > 0 continues a resumed run after that step."""
    sinks: list[Any] = [JsonlSink(run_dir / "metrics.jsonl")]
    if tensorboard:
        sinks.append(TensorBoardSink(run_dir / "tensorboard", resume_step + 1 if resume_step else None))
    if wandb:
        id_file = run_dir / "wandb_id.txt"
        if not id_file.exists():
            import secrets

            id_file.write_text(secrets.token_hex(4))
        sinks.append(WandbSink(project, run_dir.name, config, id_file.read_text().strip()))
    return Tracker(sinks)


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the rows of a JSONL log up to `last_step` (a resumed run writes the later ones again).
    A line cut short by a killed process is dropped too. Written atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= last_step:
            keep.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    tmp.replace(path)


def _plain(v: Any) -> Any:
    """JSON has no NaN; keep the row valid and the value visible."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a blank line, or the last line of a killed run
                continue
    return rows


def plot_metrics(run_dir: Path, out: Path | None = None) -> Path | None:
    """Draw the panels of PLOT_PANELS from run_dir/metrics.jsonl into a PNG; returns its path."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (title, keys) in zip(axes.flat, PLOT_PANELS):
        drawn = 0
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=k, marker="." if len(pts) < 40 else None)
                drawn += 1
        if title.startswith("accuracy"):  # the validation curve (eval.every) beside the training one
            val = [
                (r["step"], r["accuracy"])
                for r in read_metrics(run_dir / "evals.jsonl")
                if r.get("tag") == "val"
            ]
            if val:
                xs, ys = zip(*val)
                ax.plot(xs, ys, label="validation accuracy", marker="o", color="black")
                drawn += 1
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if not drawn:  # e.g. KL with beta = 0: say so rather than leave an empty frame
            ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes)
        if drawn > 1:
            ax.legend(fontsize=7)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = out or run_dir / "training.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


# Panels of the over-seeds plot (`plot_seeds`): (title, where the curve comes from, running-mean
# window). "val:" reads evals.jsonl's validation rows; the rest are metrics.jsonl keys.
SEED_PANELS: list[tuple[str, str, int]] = [
    ("validation accuracy, greedy (%)", "val:accuracy", 1),
    ("training accuracy (%), running mean of 5 steps", "accuracy", 5),
    ("groups with reward spread (%), running mean of 5", "zero_std_frac", 5),
    ("completion length (tokens)", "completion_len", 1),
]


def running_mean(xs: list[float], window: int) -> list[float]:
    """Mean of each value and up to window - 1 before it (the first values average fewer)."""
    out = []
    for i in range(len(xs)):
        part = xs[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def seed_band(
    curves: list[dict[int, float]], window: int = 1
) -> tuple[list[int], list[float], list[float], list[float]]:
    """One curve per seed ({step: value}) -> (steps, mean, min, max) over the seeds, on the steps
    every seed has, each seed first smoothed by `running_mean(window)`. No common step: all empty."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not steps:
        return [], [], [], []
    ys = [running_mean([c[s] for s in steps], window) for c in curves]  # seeds x steps
    cols = list(zip(*ys))
    return steps, [sum(c) / len(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols]


def seed_curve(run_dir: Path, source: str) -> dict[int, float]:
    """{step: value} of one run for a SEED_PANELS source, in percent for accuracies and shares
    (zero_std_frac becomes the share of groups *with* spread, the ones that carry signal)."""
    if source.startswith("val:"):
        rows = [r for r in read_metrics(run_dir / "evals.jsonl") if r.get("tag") == "val"]
        source = source[4:]
    else:
        rows = read_metrics(run_dir / "metrics.jsonl")
    curve = {r["step"]: r[source] for r in rows if r.get(source) is not None}
    if source == "zero_std_frac":
        return {s: 100 * (1 - v) for s, v in curve.items()}
    if source == "accuracy":
        return {s: 100 * v for s, v in curve.items()}
    return curve


def plot_seeds(run_dirs: list[Path], out: Path) -> Path | None:
    """The runs of one recipe over seeds, in one PNG: each panel of SEED_PANELS as the mean over
    the runs (line), their min-max band and each run thin. Returns out, or None with no runs."""
    if not run_dirs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (title, source, window) in zip(axes.flat, SEED_PANELS):
        curves = [seed_curve(Path(d), source) for d in run_dirs]
        for d, c in zip(run_dirs, curves):
            if c:
                steps = sorted(c)
                ax.plot(
                    steps, running_mean([c[s] for s in steps], window), lw=0.7, alpha=0.6, label=Path(d).name
                )
        steps, mean, lo, hi = seed_band([c for c in curves if c], window)
        if steps:
            ax.plot(steps, mean, color="black", lw=2, marker="o" if len(steps) < 12 else None, label="mean")
            ax.fill_between(steps, lo, hi, color="grey", alpha=0.2, lw=0)
        else:
            ax.text(0.5, 0.5, "not logged in these runs", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{len(run_dirs)} runs: mean (black), min-max band (grey), each run (thin)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


class Progress:
    """A tqdm bar with ETA and the latest reward; silent when not wanted or not a terminal."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr)

    def update(self, **postfix: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
