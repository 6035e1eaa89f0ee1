"""The reference engine: transformers' own `generate`.

Simple and trusted, and the yardstick for `fast`. It pays for that: every prompt is prefilled n
times (once per sample), and finished rows keep being computed until the last row ends.

Log-probs come from a logits processor that sits before the sampling warpers (transformers puts
user processors first), so it sees the raw logits: it keeps one step's log-softmax and picks the
sampled token's entry when the next step (or the end) reveals which token was chosen.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch

from sft2grpo.models import left_pad
from sft2grpo.rollout.base import (
    Generators,
    Rollout,
    SamplingParams,
    cat_rollouts,
    contains_stop,
    eos_token_ids,
    eval_mode,
    finish,
    pad_token_id,
    repeat_rows,
)


class _LogprobRecorder:
    """A logits processor that records log softmax(raw logits / T)[sampled token] for each step."""

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.pending: torch.Tensor | None = None  # [B, V] the last step's log-probs
        self.picked: list[torch.Tensor] = []  # per step: [B]

    def _take(self, chosen: torch.Tensor) -> None:
        if self.pending is not None:
            self.picked.append(self.pending.gather(1, chosen.view(-1, 1)).squeeze(1))  # [B]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._take(input_ids[:, -1])  # the token sampled after the previous call
        self.pending = torch.log_softmax(scores.float() / self.temperature, dim=-1)  # [B, V]
        return scores

    def result(self, completion: torch.Tensor) -> torch.Tensor:
        """[B, S] log-probs for the generated tokens `completion` [B, S]."""
        self._take(completion[:, -1])
        self.pending = None
        return torch.stack(self.picked, dim=1)  # [B, S]


class _StopStrings:
    """A stopping criterion: a row is done once its decoded completion contains a stop string."""

    def __init__(self, tokenizer, stop: list[str], prompt_width: int):
        self.tokenizer, self.stop, self.width = tokenizer, stop, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        rows = input_ids[:, self.width :].tolist()
        done = [contains_stop(self.tokenizer, r, self.stop) for r in rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@contextlib.contextmanager
def seeded_global_rng(generator: torch.Generator | None, device: torch.device):
    """`generate` samples from the global RNG; seed a private copy of it from `generator`."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class HFEngine:
    name = "hf"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = pad_token_id(tokenizer)

    def generate(
        self, prompt_ids: list[list[int]], params: SamplingParams, generator: Generators = None
    ) -> Rollout:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        n, greedy, stop, temperature = params.n, params.greedy, params.stop, params.temperature
        if greedy and n > 1:  # the n greedy "samples" of a prompt are identical (and transformers
            # refuses num_return_sequences > 1 without sampling): decode once, repeat the rows
            return repeat_rows(self.generate(prompt_ids, replace(params, n=1), generator), n)
        if isinstance(generator, list | tuple):  # `generate` has one global RNG: a prompt at a time
            parts = [self.generate([p], params, g) for p, g in zip(prompt_ids, generator, strict=True)]
            return cat_rollouts(parts, self.pad_id)

        device = next(self.model.parameters()).device
        ids, att = left_pad(prompt_ids, self.pad_id, device)  # [P, L]
        # Every sampling knob is set explicitly, so a model's generation_config.json defaults
        # (top_k=50 is transformers' own) cannot change what is sampled behind our back. Greedy
        # decoding uses none of them, and transformers warns if they are passed.
        knobs = {} if greedy else {"temperature": temperature, "top_p": params.top_p, "top_k": params.top_k}
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=not greedy,
            **knobs,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_length=0,
            num_return_sequences=n,  # n copies of each prompt in a row: prompt-major
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        recorder = _LogprobRecorder(temperature)
        criteria = [_StopStrings(self.tokenizer, stop, ids.shape[1])] if stop else []
        with eval_mode(self.model), torch.inference_mode(), seeded_global_rng(generator, device):
            out = self.model.generate(
                input_ids=ids,
                attention_mask=att,
                generation_config=config,
                logits_processor=LogitsProcessorList([recorder]),
                stopping_criteria=StoppingCriteriaList(criteria),
            )
        tokens = out[:, ids.shape[1] :]  # [B, S]
        logprobs = recorder.result(tokens)  # [B, S]
        return finish(prompt_ids, tokens, logprobs, self.eos_ids, self.pad_id, self.tokenizer, stop)
