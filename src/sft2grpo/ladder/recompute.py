"""Every comparison of a ladder's results.json, recomputed from that file alone.

    python -m sft2grpo.ladder.recompute docs/ladder/results.json

results.json (schema 3) keeps every run's per-problem scores at every horizon (`per_problem`, in
the order of `problems`). This rebuilds the runs from them, reruns the comparisons of the report
(`verdicts.comparisons`: the same pairs, intervals and family), prints the deciding ones, and
checks that every interval and verdict equals the one the file holds. Exit status 1 on the first
that differs, 2 when the file cannot be read or has no per-problem scores.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .verdicts import comparisons


class Mismatch(ValueError):
    """A recomputed comparison differs from the one results.json holds."""


@dataclass
class StoredRun:
    """One run as results.json holds it: per horizon (None: the end) each problem's scores."""

    preset: str
    seed: int
    at: dict[int | None, dict[str, dict[str, float]]] = field(default_factory=dict)
    status: str = "finished"

    def scores(self, attr: str, horizon: int | None = None) -> dict[str, float]:
        return self.at.get(horizon, {}).get(attr, {})


def stored_runs(results: dict) -> dict[str, list[StoredRun]]:
    """preset -> its runs, from `per_problem` (the base model's one evaluation stands for every seed)."""
    problems, steps = results["problems"], results["steps"]
    by_preset: dict[str, list[StoredRun]] = {}
    for preset, entry in results["presets"].items():
        per = entry.get("per_problem")
        if per is None:
            raise ValueError(f"presets.{preset}: no per_problem scores (schema {results.get('schema')})")
        seeds = results["seeds"] if preset != "base" else results["seeds"][:1]
        runs = []
        for seed, scores in zip(seeds, per, strict=True):
            if scores is None:
                continue
            run = StoredRun(preset, seed)
            for h, by_attr in scores.items():
                at = None if int(h) == steps else int(h)
                run.at[at] = {
                    attr: {q: v for q, v in zip(problems, values, strict=True) if v is not None}
                    for attr, values in by_attr.items()
                }
            runs.append(run)
        if preset == "base" and runs:
            runs = [StoredRun("base", s, runs[0].at) for s in results["seeds"]]
        by_preset[preset] = runs
    return by_preset


def recompute(results: dict) -> list[dict]:
    """The report's accuracy comparisons at every horizon, as results.json lists them."""
    by_preset = stored_runs(results)
    out = []
    for h in results["horizons"]:
        for c in comparisons(by_preset, results["deciding_metric"], None if h == results["steps"] else h):
            c.horizon = h
            out.append(c)
    return out


def check(results: dict, tol: float = 1e-9) -> list[str]:
    """Lines of the deciding comparisons, recomputed; raises Mismatch naming the first comparison
    whose interval or verdict differs from the stored one (or is not stored)."""
    stored = {
        (c["a"], c["b"], c["metric"], c["horizon"], c["role"]): c
        for c in results["comparisons"]
        if c["role"] != "cost"
    }
    lines = []
    for c in recompute(results):
        key = (c.a, c.b, c.metric, c.horizon, c.role)
        s = stored.get(key)
        if s is None:
            raise Mismatch(f"{c.a} -> {c.b} ({c.metric}, step {c.horizon}): not in results.json")
        for name, mine, theirs in (
            ("ci95", c.ci95, s["ci95"]),
            ("ci_family", c.ci_family, s.get("ci_family")),
        ):
            if (mine is None) != (theirs is None) or (
                mine is not None and max(abs(x - y) for x, y in zip(mine, theirs, strict=True)) > tol
            ):
                raise Mismatch(
                    f"{c.a} -> {c.b} ({c.metric}, step {c.horizon}): {name} {mine} != stored {theirs}"
                )
        if (c.verdict, c.verdict_family) != (s["verdict"], s.get("verdict_family")):
            raise Mismatch(
                f"{c.a} -> {c.b} ({c.metric}, step {c.horizon}): verdict {c.verdict}/{c.verdict_family} "
                f"!= stored {s['verdict']}/{s.get('verdict_family')}"
            )
        if c.role.startswith("claim ") and c.ci95 is not None:
            lo, hi = c.ci95
            flo, fhi = c.ci_family or (lo, hi)
            lines.append(
                f"step {c.horizon:>3}  {c.role}  {c.a} -> {c.b}: {100 * c.diff:+.1f} [{100 * lo:+.1f}, "
                f"{100 * hi:+.1f}] {c.verdict}; family-wise [{100 * flo:+.1f}, {100 * fhi:+.1f}] "
                f"{c.verdict_family}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "docs/ladder/results.json")
    try:
        results = json.loads(path.read_text())
        lines = check(results)
    except (OSError, ValueError, KeyError) as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1 if isinstance(e, Mismatch) else 2
    print("\n".join(lines))
    print(f"{path}: every comparison recomputed from per_problem matches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
