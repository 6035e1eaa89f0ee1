"""Rollout engines: sample n completions per prompt from the live policy, behind one interface.

    engine = make_engine("fast", model, tokenizer)
    ro = engine.generate(prompt_ids, SamplingParams(n=8, max_new_tokens=64), generator=g)   # -> Rollout

- `hf`: transformers' generate, the reference.
- `fast`: our own KV-cache sampler (prefill each prompt once, drop finished rows); llama-family.
- `vllm`: vLLM on GPU, colocated, weights pushed from the policy in memory (needs the [gpu] extra).

`ENGINES` is the registry `rollout.engine` selects from: every entry has one signature,
(model, tokenizer, dtype, prepack) -> Engine, from `rollout.dtype` and `tuning.prepack` (only
`fast` decodes with copies of the weights). An engine's module is imported only when it is chosen (vLLM is heavy).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from sft2grpo.rollout.base import Engine, Rollout, SamplingParams


def _hf(model, tokenizer, dtype: str = "model", prepack: bool = True) -> Engine:
    from sft2grpo.rollout.hf import HFEngine

    return HFEngine(model, tokenizer)


def _fast(model, tokenizer, dtype: str = "model", prepack: bool = True) -> Engine:
    from sft2grpo.rollout.fast import FastEngine, unsupported_reason

    why = unsupported_reason(model)
    if why is not None:
        if dtype != "model":
            raise ValueError(f"rollout.dtype={dtype} needs the fast engine, and {why}")
        warnings.warn(f"rollout.engine=fast: {why}; falling back to hf", stacklevel=3)
        return _hf(model, tokenizer)
    return FastEngine(model, tokenizer, dtype, prepack)


def _vllm(model, tokenizer, dtype: str = "model", prepack: bool = True) -> Engine:
    from sft2grpo.rollout.vllm import VLLMEngine

    return VLLMEngine(model, tokenizer)


ENGINES: dict[str, Callable[..., Engine]] = {"fast": _fast, "hf": _hf, "vllm": _vllm}


def make_engine(name: str, model, tokenizer, dtype: str = "model", prepack: bool = True) -> Engine:
    """The engine called `name` around the live policy `model`; with dtype "int8" or "bfloat16"
    (`fast` only) it decodes with a low-precision copy of the weights, kept up to date, and with
    prepack (`fast`, fp32 on CPU) with a copy laid out for oneDNN."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine '{name}'; valid engines: {', '.join(ENGINES)}")
    if dtype != "model" and name != "fast":
        raise ValueError(f"rollout.dtype={dtype} needs rollout.engine=fast, not {name}")
    return ENGINES[name](model, tokenizer, dtype, prepack)


__all__ = ["ENGINES", "Engine", "Rollout", "SamplingParams", "make_engine"]
