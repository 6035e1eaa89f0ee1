"""A step's rows as the loss needs them, of two kinds, and the bookkeeping around them.

A row is either sampled or given:
- `Batch`, the sampled rows: what the trainer keeps of a round of sampling, the prompts, the
  sampled completions with the engine's log-probs, and what the verifier said about each. Its rows
  are prompt-major, like a `Rollout`'s, so `rewards.view(num_groups, group_size)` gives the groups.
- `Given`, the given rows: reference completions (demonstrations) of the task's examples, with no
  reward and no engine log-probs, because nobody sampled or scored them. Rung 0 (SFT) trains on
  these alone; the trainer's one update takes either kind, or both.

Dynamic sampling (DAPO) lives here too: a group whose rewards are all equal gives every completion
advantage 0, so it adds cost and no signal; `dynamic_sampling` samples more rounds until enough
groups have spread, then keeps those (`select_groups`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sft2grpo.objective import all_equal


@dataclass
class Batch:
    """One step's rollouts, ready for the loss. B = groups * group_size rows, prompt-major."""

    prompts: list[list[int]]  # one token list per group
    row_prompt: torch.Tensor  # [B] long: the group (prompt) of each row
    completion_ids: torch.Tensor  # [B, T] long
    mask: torch.Tensor  # [B, T] float, 1 on generated tokens
    engine_logprobs: torch.Tensor  # [B, T] the rollout engine's log pi of each sampled token
    rewards: torch.Tensor  # [B]
    correct: torch.Tensor  # [B] bool
    format_error: torch.Tensor  # [B] bool
    texts: list[str]
    examples: list  # [B] the example of each row
    extras: list[dict[str, Any]]  # [B] per row: the columns reward functions gave log_extra
    # [B] bool, True on guide rows (`with_guides`): given rows that joined a group after its sampled
    # ones, nobody's sample, so they have no engine log-probs (0 there, never read); None: no guides
    given: torch.Tensor | None = None

    @property
    def num_groups(self) -> int:
        return len(self.prompts)

    @property
    def num_sampled(self) -> int:
        """The sampled rows: all of them, but the guide rows after them."""
        return len(self.texts) if self.given is None else int((~self.given).sum())


@dataclass
class Given:
    """Given rows: one reference completion per example, each with its own prompt. B rows."""

    prompts: list[list[int]]  # one token list per row
    row_prompt: torch.Tensor  # [B] long: the prompt of each row (its own: 0, 1, ..., B-1)
    completion_ids: torch.Tensor  # [B, T] long, the completion and its eos, eos-padded after it
    mask: torch.Tensor  # [B, T] float, 1 on the completion's tokens and its eos
    texts: list[str]  # [B] the completions
    examples: list  # [B] the example of each row


def given_rows(tokenizer, examples: list, chat_prompts: list[list[int]]) -> Given:
    """The examples' reference completions as given rows: token ids right-padded, mask 1 on each
    completion and the eos appended to it (so the model learns to stop). `chat_prompts` are the
    examples' prompt token lists (models.chat_prompt_ids)."""
    eos = tokenizer.eos_token_id
    ids = [tokenizer(e.completion, add_special_tokens=False)["input_ids"] + [eos] for e in examples]
    B, T = len(ids), max(map(len, ids))
    completion_ids = torch.full((B, T), eos, dtype=torch.long)  # [B, T]
    mask = torch.zeros(B, T)  # [B, T]
    for i, row in enumerate(ids):
        completion_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1.0
    return Given(
        prompts=chat_prompts,
        row_prompt=torch.arange(B),
        completion_ids=completion_ids,
        mask=mask,
        texts=[e.completion for e in examples],
        examples=list(examples),
    )


def with_guides(batch: Batch, guides: Given, groups: list[int], reward: float) -> Batch:
    """`batch` with one guide row per group in `groups` after its sampled rows: the given row
    `guides` row i joins group groups[i], as right (`reward`). B + k rows, the sampled rows keep
    their places (prompt-major, group_size each) and `given` marks the guide rows."""
    k, b = len(groups), len(batch.texts)
    t = max(batch.mask.shape[1], guides.mask.shape[1])

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, t - x.shape[1]))

    return Batch(
        prompts=batch.prompts,
        row_prompt=torch.cat([batch.row_prompt, torch.tensor(groups, dtype=batch.row_prompt.dtype)]),
        completion_ids=torch.cat([pad(batch.completion_ids), pad(guides.completion_ids)]),
        mask=torch.cat([pad(batch.mask), pad(guides.mask)]),
        engine_logprobs=torch.cat([pad(batch.engine_logprobs), torch.zeros(k, t)]),
        rewards=torch.cat([batch.rewards, torch.full((k,), float(reward))]),
        correct=torch.cat([batch.correct, torch.ones(k, dtype=torch.bool)]),
        format_error=torch.cat([batch.format_error, torch.zeros(k, dtype=torch.bool)]),
        texts=batch.texts + guides.texts,
        examples=batch.examples + guides.examples,
        extras=batch.extras + [{} for _ in range(k)],
        given=torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(k, dtype=torch.bool)]),
    )


def cat_batches(a: Batch, b: Batch) -> Batch:
    """b's groups after a's, completions padded to the longer of the two."""
    t = max(a.mask.shape[1], b.mask.shape[1])

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, t - x.shape[1]))

    return Batch(
        prompts=a.prompts + b.prompts,
        row_prompt=torch.cat([a.row_prompt, b.row_prompt + len(a.prompts)]),
        completion_ids=torch.cat([pad(a.completion_ids), pad(b.completion_ids)]),
        mask=torch.cat([pad(a.mask), pad(b.mask)]),
        engine_logprobs=torch.cat([pad(a.engine_logprobs), pad(b.engine_logprobs)]),
        rewards=torch.cat([a.rewards, b.rewards]),
        correct=torch.cat([a.correct, b.correct]),
        format_error=torch.cat([a.format_error, b.format_error]),
        texts=a.texts + b.texts,
        examples=a.examples + b.examples,
        extras=a.extras + b.extras,
    )


def select_groups(batch: Batch, groups: list[int], g: int) -> Batch:
    """The given groups (each g rows), in that order."""
    rows = [gi * g + j for gi in groups for j in range(g)]
    return Batch(
        prompts=[batch.prompts[gi] for gi in groups],
        row_prompt=torch.arange(len(groups)).repeat_interleave(g),
        completion_ids=batch.completion_ids[rows],
        mask=batch.mask[rows],
        engine_logprobs=batch.engine_logprobs[rows],
        rewards=batch.rewards[rows],
        correct=batch.correct[rows],
        format_error=batch.format_error[rows],
        texts=[batch.texts[i] for i in rows],
        examples=[batch.examples[i] for i in rows],
        extras=[batch.extras[i] for i in rows],
    )


def informative_groups(rewards: torch.Tensor, g: int) -> list[int]:
    """Indices of the groups whose rewards are not all equal: [B] -> list of group numbers."""
    same = all_equal(rewards.view(-1, g))  # [groups]
    return torch.nonzero(~same).flatten().tolist()


def dynamic_sampling(
    sample: Callable[[], Batch],
    groups: int,
    g: int,
    max_rounds: int,
    any_short: Callable[[bool], bool] = bool,
) -> tuple[Batch, int]:
    """DAPO's dynamic sampling: `sample()` rounds until `groups` groups have spread or `max_rounds`
    extra rounds are spent. Returns `groups` groups (those with spread first, topped up with the
    others when the cap is reached, so the batch size never changes) and the extra rounds spent.

    `any_short(mine_short)` says whether any process still lacks groups: with several processes,
    all sample the same number of rounds, so they stay at one data position."""
    batch, rounds = sample(), 0
    keep = informative_groups(batch.rewards, g)
    while rounds < max_rounds and any_short(len(keep) < groups):
        rounds += 1
        batch = cat_batches(batch, sample())
        keep = informative_groups(batch.rewards, g)
    if len(keep) < groups:
        keep += [i for i in range(batch.num_groups) if i not in keep][: groups - len(keep)]
    return select_groups(batch, keep[:groups], g), rounds
