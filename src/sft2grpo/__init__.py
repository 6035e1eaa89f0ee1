"""sft2grpo: GRPO derived as a ladder from on-policy SFT, with every rung a runnable preset.

The seed document is Ziyuan Nan, "From SFT to GRPO" (2025), CC-BY-4.0. Modules, in the order data
flows through them: tasks -> models/rollout -> rewards -> objective -> trainer; config holds the one
config object, tracking the metrics sinks and plots, cli the `sft2grpo` command. The ladder/ package
(plan, run, stats, verdicts, report) is `sft2grpo ladder`: it runs the trainer once per preset and seed,
each in its own process, and writes the report on the seed's claims.
"""

__version__ = "0.1.0"
