"""`sft2grpo ladder`: every rung and variant trained on one budget, and a report that answers the
seed's claims. The trainer never imports this package; it runs the trainer as a command.

- plan.py: the presets, the budgets and the plan of (preset, seed) runs (`make_plan`).
- plan.py: also the settings check that refuses a run folder trained with other settings.
- run.py: the command (`run_ladder`): trains each run in its own process, resumes, then starts the
  measure processes and writes the report.
- estimate.py: the time the ladder will take, from seconds per unit of work per kind of CPU.
- measure.py: the measure process (`python -m sft2grpo.ladder measure`): KL to base, sampled accuracy.
- costs.py: grpo and no_kl trained alone, for what the reference model costs.
- stats.py: the paired 95% interval over seeds and problems (each preset's own run-to-run
  variance), its family-wise level, and the verdict it gives.
- verdicts.py: the seed's claims, the A/A check and base -> grpo as paired comparisons, the
  findings; results.json with every run's per-problem scores.
- recompute.py: every comparison rebuilt from results.json alone (`python -m sft2grpo.ladder.recompute`).
- report.py: REPORT.md, results.json and the plots from the files the runs left.
"""

from .plan import BUDGETS, DEFAULT_PRESETS, PRESETS, Plan, Run, make_plan
from .run import run_ladder

__all__ = ["BUDGETS", "DEFAULT_PRESETS", "PRESETS", "Plan", "Run", "make_plan", "run_ladder"]
