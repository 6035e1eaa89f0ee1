"""What every rollout engine returns, and the bookkeeping they share (padding, EOS, stop strings).

An engine samples `n` completions for each prompt and returns a `Rollout` whose rows are
prompt-major (p0s0 .. p0s(n-1), p1s0, ...), so `x.view(num_prompts, n)` gives the groups. Each
engine produces raw token and log-prob matrices; `finish` turns them into the final mask, finish
reasons and padding with one set of rules, so engines can only differ in what they sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

# One generator for the whole call, or one per prompt: with one per prompt, a prompt's samples depend
# only on its own generator, not on which other prompts share the batch (or the process).
Generators = torch.Generator | list[torch.Generator] | None


@dataclass
class Rollout:
    prompt_ids: list[list[int]]  # one entry per prompt
    completion_ids: torch.Tensor  # [B, T] long, B = num_prompts * n, prompt-major; pad after the end
    mask: torch.Tensor  # [B, T] float32: 1 for generated tokens incl. the EOS that ended the row
    logprobs: torch.Tensor  # [B, T] float32: log pi(token) under logits / temperature; 0 where mask is 0
    finish_reasons: list[str]  # "stop" (EOS or stop string) | "length"

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum().item())


@dataclass(frozen=True)
class SamplingParams:
    """How an engine samples: the same knobs for every engine and every caller (training rollouts,
    evaluation, rejection sampling, the ladder's KL estimate)."""

    n: int = 1  # completions per prompt
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: list[str] | None = None  # strings that end a completion (besides the eos tokens)
    greedy: bool = False  # argmax decoding; the other knobs are then unused

    @classmethod
    def of(cls, rollout: Any, n: int) -> SamplingParams:
        """The training rollout's sampling: `n` completions per prompt with a RolloutConfig's knobs."""
        r = rollout
        return cls(n, r.max_new_tokens, r.temperature, r.top_p, r.top_k, list(r.stop) or None)


class Engine(Protocol):
    name: str

    def generate(
        self, prompt_ids: list[list[int]], params: SamplingParams, generator: Generators = None
    ) -> Rollout: ...


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's eos plus the generation config's."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen is not None:
        ids.update(int(i) for i in (gen if isinstance(gen, list | tuple) else [gen]))
    if not ids:
        raise ValueError("the tokenizer has no eos token, so completions could never stop")
    return sorted(ids)


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def unpadded_ids(completion_ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Each row's generated token ids without padding: what TRL passes reward functions as
    `completion_ids`."""
    lengths = mask.sum(1).long().tolist()
    return [row[:k].tolist() for row, k in zip(completion_ids, lengths)]


def decode_completions(tokenizer, completion_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Text of each row's generated tokens (special tokens such as EOS dropped)."""
    lengths = mask.sum(1).long().tolist()
    return [
        tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
        for row, n in zip(completion_ids, lengths)
    ]


def contains_stop(tokenizer, ids: list[int], stop: list[str]) -> bool:
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return any(s in text for s in stop)


def stop_index(tokenizer, ids: list[int], stop: list[str]) -> int | None:
    """Index of the token whose decoding first completes a stop string, or None.

    Decoded prefixes only grow, so "contains a stop string" flips once: binary search for it.
    """
    if not stop or not ids or not contains_stop(tokenizer, ids, stop):
        return None
    lo, hi = 0, len(ids) - 1  # the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if contains_stop(tokenizer, ids[: mid + 1], stop):
            hi = mid
        else:
            lo = mid + 1
    return lo


def finish(
    prompt_ids: list[list[int]],
    tokens: torch.Tensor,
    logprobs: torch.Tensor,
    eos_ids: list[int],
    pad_id: int,
    tokenizer=None,
    stop: list[str] | None = None,
) -> Rollout:
    """Raw samples -> Rollout: each row ends at its first EOS or the token completing a stop string.

    tokens [B, S] long and logprobs [B, S] as sampled (anything after a row's end is ignored).
    The result is trimmed to the longest row, padded with `pad_id`, and its log-probs zeroed there.
    """
    tokens, logprobs = tokens.cpu(), logprobs.float().cpu()
    B, S = tokens.shape
    is_eos = torch.isin(tokens, torch.tensor(eos_ids))  # [B, S]
    # First EOS per row; S when there is none (argmax of an all-false row is 0, hence the `any`).
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full((B,), S))  # [B]
    ends, reasons = [], []
    for i in range(B):
        end = int(first_eos[i])
        if stop and tokenizer is not None:
            s = stop_index(tokenizer, tokens[i, : min(end + 1, S)].tolist(), stop)
            end = min(end, s) if s is not None else end
        reasons.append("stop" if end < S else "length")
        ends.append(min(end + 1, S))  # number of tokens the row keeps, its ending token included
    length = torch.tensor(ends)  # [B]
    T = max(1, int(length.max())) if B else 0
    mask = (torch.arange(T).unsqueeze(0) < length.unsqueeze(1)).float()  # [B, T]
    completion = torch.where(mask.bool(), tokens[:, :T], torch.full_like(tokens[:, :T], pad_id))
    return Rollout(
        prompt_ids=[list(p) for p in prompt_ids],
        completion_ids=completion,
        mask=mask,
        logprobs=torch.where(mask.bool(), logprobs[:, :T], 0.0),
        finish_reasons=reasons,
    )


def row_uniforms(generator: Generators, num_prompts: int, n: int) -> torch.Tensor:
    """[num_prompts * n] uniforms on the CPU, prompt-major: from one generator, or n from each of a
    list of generators (one per prompt)."""
    if isinstance(generator, list | tuple):
        if len(generator) != num_prompts:
            raise ValueError(f"{len(generator)} generators for {num_prompts} prompts")
        return torch.cat([torch.rand(n, generator=g, device=g.device) for g in generator]).cpu()
    dev = generator.device if generator is not None else "cpu"
    return torch.rand(num_prompts * n, generator=generator, device=dev).cpu()


def cat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Rollouts of consecutive prompt lists as one, padded to the longest completion."""
    t = max(r.completion_ids.shape[1] for r in parts)

    def pad(x: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, t - x.shape[1]), value=value)

    return Rollout(
        prompt_ids=[p for r in parts for p in r.prompt_ids],
        completion_ids=torch.cat([pad(r.completion_ids, pad_id) for r in parts]),
        mask=torch.cat([pad(r.mask, 0.0) for r in parts]),
        logprobs=torch.cat([pad(r.logprobs, 0.0) for r in parts]),
        finish_reasons=[f for r in parts for f in r.finish_reasons],
    )


def repeat_rows(ro: Rollout, n: int) -> Rollout:
    """Each row n times in a row (prompt-major); greedy decoding of n "samples" is one decode."""
    return Rollout(
        prompt_ids=ro.prompt_ids,
        completion_ids=ro.completion_ids.repeat_interleave(n, 0),
        mask=ro.mask.repeat_interleave(n, 0),
        logprobs=ro.logprobs.repeat_interleave(n, 0),
        finish_reasons=[r for r in ro.finish_reasons for _ in range(n)],
    )


class eval_mode:
    """Context: the model in eval mode inside (no dropout while sampling); every submodule's own
    train/eval flag is restored afterwards, so a partly frozen model comes back exactly as it was."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self) -> torch.nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> bool:
        for m, training in self.modes:
            m.training = training
        return False
