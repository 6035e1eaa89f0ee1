"""Copies of the policy's weights for decoding: bf16 or int8 (`rollout.dtype`), and prepacked fp32.

A decode step over a few rows reads every weight once and does little arithmetic with it, so on a
CPU its time is the time to stream the weights from memory. A copy at 1 byte per weight (int8, one
scale per output channel) or 2 (bf16) streams 4x or 2x less than fp32. The copy serves the
sampler only: the trainer computes every log-prob it uses (pi_old, the ratio, the KL) with the fp32
policy, and the gap between the two is logged (`logprob_gap_max`, `logprob_gap_mean`) and can be
corrected with `objective.tis_cap`.

`DecodeWeights` keeps one copy per plain `nn.Linear` and brings it up to date before each
`generate`: everything is copied again after `invalidate()`, which the trainer calls after every
optimizer step (a fused AdamW step writes the parameters without moving their version counters),
and a weight whose version counter moved (`load_state_dict`, other in-place writes) is copied
again too; so the copy is never stale, and costs nothing while the policy does not change. Layers
that are not plain `nn.Linear` (LoRA, quantised by others) keep their own forward.

int8 uses PyTorch's weight-only kernel `aten._weight_int8pack_mm` (CPU), which takes bf16
activations; outputs come back as float32. Its logits are rounded to bf16, about 3 significant
digits, which is part of the measured gap.

"onednn" (`tuning.prepack`, CPU) keeps the fp32 values, reordered once per optimizer step into the
blocked layout oneDNN's matmul reads; F.linear reorders nothing and runs MKL's general kernel, which
on a few rows is 1.3-1.7x slower over weights that come from memory (docs/benchmarks.md). Same
values, so the log-probs match the policy's up to the order of the sums. Only matrices of at least
PREPACK_MIN_ELEMENTS weights are copied: smaller ones were no faster. The engine releases this copy
after each rollout, so it takes memory only while sampling, not during the update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DTYPES = ("model", "bfloat16", "int8")  # rollout.dtype
KINDS = ("bfloat16", "int8", "onednn")  # the copies DecodeWeights makes
PREPACK_MIN_ELEMENTS = 1 << 19  # SmolLM2-135M: the MLP's and the LM head, not q/k/v/o
SCRATCH_ELEMENTS = 1 << 22  # the fp32 work space of an int8 refresh (16 MiB)


def quantize_int8(w: torch.Tensor, out: torch.Tensor | None = None, scratch: torch.Tensor | None = None):
    """Symmetric per-output-channel int8: w [out, in] -> (q [out, in] int8, scale [out] float32),
    with w ~ q * scale[:, None] and |q| <= 127. An all-zero row gets scale 1 (and q = 0).

    `out` (int8 [out, in]) is written in place when given, and `scratch` (float32, at least `in`
    elements) is the work space, reused: the rows go through it in chunks, so a refresh allocates
    nothing (writing into memory already touched is most of a CPU refresh's speed) and the LM
    head's 28M weights need no fp32 copy of their own.
    """
    w = w.detach().float()
    lo, hi = torch.aminmax(w, dim=1)  # [out], [out]
    amax = torch.maximum(-lo, hi)  # [out]
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))  # [out]
    inv = scale.reciprocal()[:, None]  # [out, 1]
    q = torch.empty_like(w, dtype=torch.int8) if out is None else out
    if scratch is None:
        scratch = torch.empty(w.numel(), dtype=torch.float32, device=w.device)
    rows = max(1, scratch.numel() // w.shape[1])
    for i in range(0, w.shape[0], rows):
        piece = w[i : i + rows]  # [r, in]
        buf = scratch[: piece.numel()].view_as(piece)  # [r, in]
        torch.mul(piece, inv[i : i + rows], out=buf).round_().clamp_(-127, 127)
        q[i : i + rows].copy_(buf)
    return q, scale


def prepack_available() -> bool:
    """Whether this torch has oneDNN's CPU matmul with prepacked weights (what "onednn" uses)."""
    ops = getattr(torch.ops, "mkldnn", None)
    return torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")


def prepack(w: torch.Tensor) -> torch.Tensor:
    """w [out, in] float32 (CPU) -> the same values in oneDNN's blocked layout (an opaque tensor that
    only `prepacked_linear` reads). Laid out for products of up to 64 rows, a wide decode step."""
    return torch.ops.mkldnn._reorder_linear_weight(w.detach(), 64)


def prepacked_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., in] float32 times a `prepack`ed [out, in] weight, plus bias [out] -> [..., out]."""
    return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., in] (any float dtype) times the int8 weight q [out, in] with scale [out] -> [..., out]
    float32: sum_i x_i q_oi * scale_o, computed in bf16 by the weight-only int8 kernel."""
    flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # [n, in]
    y = torch.ops.aten._weight_int8pack_mm(flat, q, scale.to(torch.bfloat16))  # [n, out] bf16
    return y.float().reshape(*x.shape[:-1], q.shape[0])


class DecodeWeights:
    """Per plain `nn.Linear`, its weight as `kind` ("bfloat16", "int8" or "onednn"), refreshed on
    change.

        low = DecodeWeights("int8")
        low.refresh(linears)         # before each generate: copies what changed since last time
        low.invalidate()             # after an optimizer step: everything is copied again
        y = low.linear(layer, x)     # layer's output from the copy (or its own forward)

    A weight counts as changed after `invalidate()` or when its version counter moved (in-place
    writes such as `load_state_dict` move it; a fused optimizer step does not, hence invalidate).
    """

    def __init__(self, kind: str):
        if kind not in KINDS:
            raise ValueError(f"rollout.dtype: unknown '{kind}'; valid: {', '.join(DTYPES)}")
        self.dtype = kind
        self.copies: dict[nn.Module, tuple[torch.Tensor, torch.Tensor | None]] = {}  # weight, scale
        self.versions: dict[nn.Module, int] = {}
        self.stale = True
        self.scratch: torch.Tensor | None = None  # float32 work space for int8, reused
        self.refreshed = 0  # weights copied so far (the tests read it)

    def invalidate(self) -> None:
        """The policy's weights changed (an optimizer step): copy all of them at the next refresh."""
        self.stale = True

    def wants(self, m: nn.Module) -> bool:
        """Whether m gets a copy: a plain nn.Linear (large enough, for "onednn", and fp32)."""
        if type(m) is not nn.Linear:
            return False
        w = m.weight
        return self.dtype != "onednn" or (
            w.dtype == torch.float32 and w.device.type == "cpu" and w.numel() >= PREPACK_MIN_ELEMENTS
        )

    def _copy(self, m: nn.Linear) -> None:
        w, old = m.weight.detach(), self.copies.get(m)
        if self.dtype == "onednn":  # a new blocked tensor; the old one is freed when replaced
            self.copies[m] = (prepack(w), None)
            return
        if self.dtype == "bfloat16":
            low = old[0] if old is not None else torch.empty_like(w, dtype=torch.bfloat16)
            self.copies[m] = (low.copy_(w), None)
            return
        if self.scratch is None:  # 16 MiB of fp32 rows, reused by every weight
            self.scratch = torch.empty(SCRATCH_ELEMENTS, dtype=torch.float32, device=w.device)
        self.copies[m] = quantize_int8(w, None if old is None else old[0], self.scratch)

    def release(self) -> None:
        """Drop every copy; the next refresh makes them again."""
        self.copies.clear()
        self.versions.clear()

    def refresh(self, modules) -> None:
        """Copy the weight of every plain nn.Linear in `modules` whose values may have changed.
        (In inference mode, where generate runs, so the copies are always inference tensors.)"""
        with torch.inference_mode():
            for m in modules:
                if not self.wants(m):
                    continue
                version = m.weight._version
                if self.stale or m not in self.copies or self.versions[m] != version:
                    self._copy(m)
                    self.versions[m] = version
                    self.refreshed += 1
        self.stale = False

    def linear(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """m(x) computed with m's copy: x [..., in] -> [..., out] in x's dtype."""
        copy = self.copies.get(m)
        if copy is None:
            return m(x)
        if self.dtype == "onednn":
            return prepacked_linear(x, copy[0], m.bias)
        if self.dtype == "int8":
            y = int8_linear(x, *copy)
        else:
            y = F.linear(x.to(torch.bfloat16), copy[0]).float()
        if m.bias is not None:
            y = y + m.bias
        return y.to(x.dtype)
