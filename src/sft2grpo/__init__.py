"""sft2grpo: GRPO derived as a ladder from on-policy SFT, with every rung a runnable preset.

The seed document is Ziyuan Nan, "From SFT to GRPO" (2025), CC-BY-4.0. Modules, in the order data
flows through them: tasks -> models/rollout -> rewards -> objective -> trainer; config holds the one
config object, tracking the metrics sinks and plots, cli the `sft2grpo` command.
"""

__version__ = "0.1.0"
