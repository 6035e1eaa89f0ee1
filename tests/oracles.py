"""Slow, obviously correct references the tests compare the library's fast paths against.

They live here, not in the package: the library computes log-probs one way (`completion_logprobs`),
and these are the plain forward passes that define what "right" means.
"""

import torch

from sft2grpo.models import positions, selective_logprobs


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0, chunk: int = 8) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position, [B, T, V] -> [B, T] float32 (no grad)."""
    out = []
    for lg in logits.split(chunk):
        lg = lg.float() / temperature  # [b, T, V]
        logp = torch.log_softmax(lg, dim=-1)  # [b, T, V], freed after this chunk
        out.append(-(logp.exp() * logp).sum(-1))  # [b, T]
    return torch.cat(out)


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion_tokens: int,
    temperature: float = 1.0,
    return_entropy: bool = False,
):
    """log pi(token) of the last T = num_completion_tokens positions of whole (prompt + completion)
    rows: [B, L] -> [B, T] float32, one plain forward over every row. Prompts may be left-padded.

    Only T+1 hidden states go through the LM head (`logits_to_keep`): the logits at position i
    predict token i+1, so the last T+1 positions cover the T completion tokens (the final one's
    prediction is dropped). With return_entropy, also each position's entropy ([B, T], no grad).
    """
    T = num_completion_tokens
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions(attention_mask),
        logits_to_keep=T + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1]  # [B, T, V]
    lp = selective_logprobs(logits, input_ids[:, -T:], temperature)  # [B, T]
    if return_entropy:
        return lp, entropy_from_logits(logits.detach(), temperature)
    return lp
