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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple


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


# ---- The training plot. Which panels and lines a run's PNG shows is worked out from its rows by
# pure functions (`run_panels`, `stage_plan`); `draw_plan` only draws that plan with matplotlib.

Rows = list[dict[str, Any]]


class PanelSpec(NamedTuple):
    """A panel the training plot may draw: its title and the metrics.jsonl keys drawn in it.

    runs: the runs it is for: "rl" (rows with reward_mean), "sft" (rows without) or "both".
    show: "always" (when it has data); "nonzero" (only when some value is not 0: the KL with
    beta = 0 and the clip fractions with mu = 1 are 0 throughout, nothing to see); "spare" (only in
    the place of a panel that has no data in this run)."""

    title: str
    keys: list[str]
    runs: str = "both"
    show: str = "always"


# The training plot's panels, in the order drawn; `run_panels` picks the ones a run fills.
PLOT_PANELS: list[PanelSpec] = [
    PanelSpec("reward (mean over samples)", ["reward_mean"], runs="rl"),
    PanelSpec("SFT loss (cross-entropy per token)", ["loss"], runs="sft"),
    PanelSpec("accuracy (%)", ["accuracy"]),  # + the validation curve of evals.jsonl
    PanelSpec("groups with reward spread (%)", ["zero_std_frac"], runs="rl"),
    PanelSpec("entropy (mean -log pi of sampled tokens)", ["entropy"], runs="rl"),
    PanelSpec("completion length (tokens)", ["completion_len"]),
    PanelSpec("step time (s)", ["time_step", "time_rollout", "time_reward", "time_update"]),
    PanelSpec("KL to reference", ["kl"], runs="rl", show="nonzero"),
    PanelSpec("clip fraction (%)", ["clip_frac_low", "clip_frac_high"], runs="rl", show="nonzero"),
    PanelSpec("gradient norm", ["grad_norm"], show="spare"),
    PanelSpec("trained tokens / s", ["tokens_per_s"], show="spare"),
    PanelSpec("learning rate", ["lr"], show="spare"),
]
MIN_PANELS = 6  # spares, then as a last resort empty "not logged" frames, fill a plot up to this
STAGE_BOUNDARY_LABEL = "SFT | RL"

# How a logged key is drawn where not as logged: (legend label, logged value -> drawn value).
KEY_VIEW: dict[str, tuple[str, Callable[[float], float]]] = {
    "accuracy": ("training accuracy", lambda v: 100 * v),
    "zero_std_frac": ("groups with reward spread", lambda v: 100 * (1 - v)),  # the ones with signal
    "clip_frac_low": ("clip_frac_low", lambda v: 100 * v),
    "clip_frac_high": ("clip_frac_high", lambda v: 100 * v),
}


@dataclass
class Series:
    """One line of a panel; validation: evals.jsonl's curve, drawn black with markers."""

    label: str
    xs: list[float]
    ys: list[float]
    validation: bool = False


@dataclass
class Panel:
    title: str
    series: list[Series] = field(default_factory=list)


@dataclass
class PlotPlan:
    """What a training PNG shows. boundary: the x of the dashed line between the stages of a
    pipeline run (None for one run); xlim: the x range every panel shares (None: each its own)."""

    title: str
    panels: list[Panel]
    boundary: float | None = None
    xlim: tuple[float, float] | None = None


def key_series(rows: Rows, key: str, offset: float = 0, label: str | None = None) -> Series | None:
    """`key` over the steps of `rows` as KEY_VIEW draws it, step s at offset + s; None when no
    row has it."""
    name, view = KEY_VIEW.get(key, (key, float))
    pts = [(r["step"] + offset, view(r[key])) for r in rows if r.get(key) is not None and "step" in r]
    if not pts:
        return None
    return Series(label or name, [x for x, _ in pts], [y for _, y in pts])


def val_series(evals: Rows, offset: float = 0) -> Series | None:
    """Validation accuracy (%) from evals.jsonl rows: the "val" ones ("before"/"after" are the
    held-out set), step s at offset + s; None when there are none."""
    pts = [
        (r["step"] + offset, 100 * r["accuracy"])
        for r in evals
        if r.get("tag") == "val" and r.get("accuracy") is not None
    ]
    if not pts:
        return None
    return Series("validation accuracy", [x for x, _ in pts], [y for _, y in pts], validation=True)


def _joined(label: str, parts: list[Series | None], validation: bool = False) -> Series | None:
    """One line through the points of several series (a metric over both stages)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return Series(label, [x for p in parts for x in p.xs], [y for p in parts for y in p.ys], validation)


def _panel(spec: PanelSpec, rows: Rows, offset: float = 0) -> Panel:
    return Panel(spec.title, [s for k in spec.keys if (s := key_series(rows, k, offset)) is not None])


def _shows(spec: PanelSpec, panel: Panel) -> bool:
    if spec.show == "nonzero":
        return any(y != 0 for s in panel.series for y in s.ys)
    return bool(panel.series)


def is_rl(rows: Rows) -> bool:
    """RL rows log a reward; supervised (SFT) rows do not."""
    return any(r.get("reward_mean") is not None for r in rows)


def run_panels(rows: Rows, evals: Rows | None = None) -> list[Panel]:
    """The panels of one run's plot, from its metrics.jsonl and evals.jsonl rows: the panels of
    PLOT_PANELS for its kind of run (RL or SFT) that have data ("nonzero" ones only with a value
    that is not 0), then spares with data up to MIN_PANELS, then, as a last resort, empty frames
    for the panels not logged in this run; in the order of PLOT_PANELS."""
    kind = "rl" if is_rl(rows) else "sft"
    specs = [(i, s) for i, s in enumerate(PLOT_PANELS) if s.runs in (kind, "both")]
    built = {i: _panel(s, rows) for i, s in specs}
    for i, s in specs:
        if s.keys == ["accuracy"] and (v := val_series(evals or [])) is not None:
            built[i].series.append(v)
    chosen = [i for i, s in specs if s.show != "spare" and _shows(s, built[i])]
    for pool in (
        [i for i, s in specs if s.show == "spare" and built[i].series],
        [i for i, s in specs if s.show == "always" and not built[i].series],
    ):
        chosen += pool[: max(0, MIN_PANELS - len(chosen))]
    return [built[i] for i in sorted(chosen)]


def stage_plan(sft_rows: Rows, sft_evals: Rows, rl_rows: Rows, rl_evals: Rows, title: str = "") -> PlotPlan:
    """The plot of a pipeline run (SFT, then RL) on one x axis: the SFT steps first, RL step s at
    sft_steps + s (the RL stage's step 0, the SFT model, on the boundary). Accuracy (validation over
    both stages, training over RL), the SFT loss over the SFT part, the RL panels (reward, groups
    with spread, entropy; KL and clip fraction when not all 0) over the RL part, completion length
    and step time over both."""
    b = max((r["step"] for r in sft_rows if "step" in r), default=0)  # sft_steps
    acc = Panel("accuracy (%)")
    for s in (
        key_series(rl_rows, "accuracy", b, "training accuracy (RL)"),
        _joined("validation accuracy", [val_series(sft_evals), val_series(rl_evals, b)], validation=True),
    ):
        if s is not None:
            acc.series.append(s)
    panels = [acc] + [_panel(s, sft_rows) for s in PLOT_PANELS if s.runs == "sft"]
    rl_panels = [(spec, _panel(spec, rl_rows, b)) for spec in PLOT_PANELS if spec.runs == "rl"]
    panels += [p for spec, p in rl_panels if _shows(spec, p)]
    lengths = Panel("completion length (tokens)")
    for rows, offset, label in ((sft_rows, 0, "SFT: reference completions"), (rl_rows, b, "RL: sampled")):
        if (s := key_series(rows, "completion_len", offset, label)) is not None:
            lengths.series.append(s)
    times = Panel("step time (s)")
    for key in ("time_step", "time_rollout", "time_reward", "time_update"):
        if (s := _joined(key, [key_series(sft_rows, key), key_series(rl_rows, key, b)])) is not None:
            times.series.append(s)
    panels += [lengths, times]
    xs = [x for p in panels for s in p.series for x in s.xs] + [0, b]
    return PlotPlan(title, panels, boundary=b, xlim=(min(xs), max(xs)))


def draw_plan(plan: PlotPlan, out: Path) -> Path:
    """Draw a PlotPlan into a PNG: up to 3 panels in a row, 2 rows up to 8, then 3."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = max(1, len(plan.panels))
    nrows = 1 if n <= 3 else 2 if n <= 8 else 3
    ncols = math.ceil(n / nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.5 * nrows), squeeze=False)
    for ax in axes.flat[len(plan.panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, plan.panels):
        for s in panel.series:
            style = {"marker": "." if len(s.xs) < 40 else None}
            if s.validation:
                style = {"marker": "o", "color": "black", "markersize": 4}
            ax.plot(s.xs, s.ys, label=s.label, **style)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("step" if plan.boundary is None else "step (SFT, then RL)")
        ax.grid(alpha=0.3)
        if plan.xlim is not None and plan.xlim[1] > plan.xlim[0]:
            pad = 0.02 * (plan.xlim[1] - plan.xlim[0])
            ax.set_xlim(plan.xlim[0] - pad, plan.xlim[1] + pad)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # steps
        if plan.boundary is not None:
            if panel.series:  # headroom above the lines for the label
                lo, hi = ax.get_ylim()
                ax.set_ylim(lo, hi + 0.12 * (hi - lo))
            ax.axvline(plan.boundary, color="grey", ls="--", lw=1)
            ax.text(
                plan.boundary,
                0.97,
                STAGE_BOUNDARY_LABEL,
                transform=ax.get_xaxis_transform(),  # x in steps, y in the panel's height
                ha="center",
                va="top",
                fontsize=8,
                color="dimgrey",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
            )
        if not panel.series:  # the last resort: say so rather than leave an empty frame
            ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes)
        if len(panel.series) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(plan.title)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def is_pipeline(run_dir: Path) -> bool:
    """A pipeline run's folder: sft/ and rl/ stage folders with metrics, no metrics of its own."""
    run_dir = Path(run_dir)
    return (
        not read_metrics(run_dir / "metrics.jsonl")
        and (run_dir / "sft" / "metrics.jsonl").is_file()
        and (run_dir / "rl" / "metrics.jsonl").is_file()
    )


def plot_metrics(run_dir: Path, out: Path | None = None) -> Path | None:
    """Draw run_dir/metrics.jsonl (and evals.jsonl's validation curve) into run_dir/training.png,
    the panels `run_panels` picks; a pipeline folder (`is_pipeline`) is drawn by `plot_stages`.
    Returns the PNG's path, or None with nothing to draw."""
    run_dir = Path(run_dir)
    if is_pipeline(run_dir):
        return plot_stages(run_dir, out)
    rows = read_metrics(run_dir / "metrics.jsonl")
    if not rows:
        return None
    kind = "RL" if is_rl(rows) else "SFT"
    plan = PlotPlan(f"{run_dir.name} ({kind})", run_panels(rows, read_metrics(run_dir / "evals.jsonl")))
    return draw_plan(plan, out or run_dir / "training.png")


def plot_stages(run_dir: Path, out: Path | None = None) -> Path | None:
    """Draw a pipeline run (run_dir/sft, then run_dir/rl) into one PNG, run_dir/training.png, on
    one x axis (`stage_plan`). Returns its path, or None when neither stage logged a step."""
    run_dir = Path(run_dir)
    sft = [read_metrics(run_dir / "sft" / f) for f in ("metrics.jsonl", "evals.jsonl")]
    rl = [read_metrics(run_dir / "rl" / f) for f in ("metrics.jsonl", "evals.jsonl")]
    if not sft[0] and not rl[0]:
        return None
    n_sft = max((r["step"] for r in sft[0] if "step" in r), default=0)
    n_rl = max((r["step"] for r in rl[0] if "step" in r), default=0)
    title = f"{run_dir.name}: SFT ({n_sft} steps), then RL ({n_rl} steps)"
    return draw_plan(stage_plan(*sft, *rl, title=title), out or run_dir / "training.png")


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
