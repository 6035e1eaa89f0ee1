"""Reward functions written for TRL's GRPOTrainer, used unchanged by sft2grpo:

    sft2grpo train --config examples/trl_grpo.yaml

Each is called with keyword arguments (prompts, completions, completion_ids, trainer_state,
log_metric, log_extra and every dataset column by name) and returns one float per completion.
The dataset (trl_math.jsonl) is conversational, so a completion is [{"role": "assistant", ...}].
"""

import re


def _text(completion):
    # conversational datasets give a list of messages; plain-text ones a string
    return completion[0]["content"] if isinstance(completion, list) else completion


def accuracy_reward(completions, solution, **kwargs):
    """1.0 when the answer in <answer>...</answer> (else the last number) equals `solution`."""
    rewards = []
    for completion, gold in zip(completions, solution):
        text = _text(completion)
        tagged = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
        numbers = re.findall(r"-?\d+", tagged[-1] if tagged else text)
        rewards.append(1.0 if numbers and numbers[-1] == str(gold) else 0.0)
    return rewards


def format_reward(completions, log_metric=None, **kwargs):
    """1.0 for a completion holding <answer>...</answer>; logs the share that does."""
    ok = [bool(re.search(r"<answer>.*?</answer>", _text(c), re.DOTALL)) for c in completions]
    if log_metric is not None:  # TRL >= 1.0 and sft2grpo pass it; older TRL does not
        log_metric("format_ok", sum(ok) / len(ok))
    return [float(x) for x in ok]
