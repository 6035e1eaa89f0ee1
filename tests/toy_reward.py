"""A reward the tiny random model can learn in a few steps: the share of characters that are
lowercase ASCII letters. Its byte-level vocabulary makes them about 1 token in 10 at the start, so
groups have spread from the first step. Used to show that the sign of the update is right."""

import string


def lowercase_share(prompts, completions, **columns):
    return [sum(ch in string.ascii_lowercase for ch in c) / max(1, len(c)) for c in completions]


def constant(prompts, completions, **columns):
    """Every completion gets the same reward: every group has zero spread."""
    return [0.5 for _ in completions]


def slow_lowercase_share(prompts, completions, **columns):
    """lowercase_share, after sleeping SFT2GRPO_TEST_SLEEP seconds (set only in a child process
    that a test kills mid-run, so the kill lands between checkpoints)."""
    import os
    import time

    time.sleep(float(os.environ.get("SFT2GRPO_TEST_SLEEP", "0")))
    return lowercase_share(prompts, completions)


def distinct(prompts, completions, **columns):
    """Every completion of a call gets a different reward: every group has spread."""
    return [float(i) for i in range(len(completions))]
