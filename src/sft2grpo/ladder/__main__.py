"""`python -m sft2grpo.ladder measure SPEC.json`: the measure process (measure.py) of `run.measure_runs`."""

import sys
from pathlib import Path

from .measure import measure

if len(sys.argv) != 3 or sys.argv[1] != "measure":
    raise SystemExit("usage: python -m sft2grpo.ladder measure SPEC.json")
measure(Path(sys.argv[2]))
