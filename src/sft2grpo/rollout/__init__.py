"""Rollout engines: sample n completions per prompt from the live policy, behind one interface.

    engine = make_engine("fast", model, tokenizer)
    ro = engine.generate(prompt_ids, n=8, max_new_tokens=64, generator=g)   # -> Rollout

- `hf`: transformers' generate, the reference.
- `fast`: our own KV-cache sampler (prefill each prompt once, drop finished rows); llama-family.
- `vllm`: vLLM on GPU, colocated, weights pushed from the policy in memory (needs the [gpu] extra).
"""

from __future__ import annotations

import warnings

from sft2grpo.rollout.base import Engine, Rollout

ENGINES = ("fast", "hf", "vllm")


def make_engine(name: str, model, tokenizer) -> Engine:
    """The engine called `name` around the live policy `model` (no copy of its weights)."""
    if name == "hf":
        from sft2grpo.rollout.hf import HFEngine

        return HFEngine(model, tokenizer)
    if name == "fast":
        from sft2grpo.rollout.fast import FastEngine, unsupported_reason
        from sft2grpo.rollout.hf import HFEngine

        why = unsupported_reason(model)
        if why is not None:
            warnings.warn(f"rollout.engine=fast: {why}; falling back to hf", stacklevel=2)
            return HFEngine(model, tokenizer)
        return FastEngine(model, tokenizer)
    if name == "vllm":
        from sft2grpo.rollout.vllm import VLLMEngine

        return VLLMEngine(model, tokenizer)
    raise ValueError(f"unknown rollout engine '{name}'; valid engines: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Engine", "Rollout", "make_engine"]
