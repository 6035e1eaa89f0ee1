"""Our own sampler for llama-family models: one preallocated KV cache for the whole group.

Where the time goes in GRPO rollouts, and what this engine does about it:
- n samples share a prompt, and chat prompts share a long head (system prompt, task template):
  the common head is prefilled once for all rows, each prompt's remainder once for its n rows,
  and their keys/values are broadcast into the cache rows (transformers prefills every row).
- Completions end at very different lengths: a row that hits EOS (or a stop string) leaves the
  batch at once, its cache row refilled by the last live row (one row copy, no reallocation), so
  late steps cost what the remaining rows cost.
- No per-step generality: no logits-processor list, no cache object, one small loop, and one
  pass of exp over the vocabulary per step for both the sample and its log-probability.
- A decode step over a few rows streams every weight from memory once: with `dtype="int8"` (or
  "bfloat16") the projections and the LM head read a low-precision copy instead (rollout/lowp.py),
  refreshed whenever the policy's weights change. On CPU (`prepack`, default on) the large
  products of wide rollouts read a copy of the fp32 weights prepacked for oneDNN's matmul, made at
  the start of each rollout and dropped at its end.

The forward pass calls the model's own submodules (norms, projections, MLP, rotary embedding), so
LoRA layers, biases (Qwen2) and q/k norms (Qwen3) behave exactly as in the HF model; only the
attention with the cache is ours. Greedy tokens match `hf`, log-probs match the trainer's forward pass.

Sampling draws one uniform per row per step from `generator` (for every row, live or not) and
inverts the CDF, so each row's sample is fixed by the seed, whatever the other rows did. With one
generator per prompt, a prompt's samples do not depend on the other prompts in the batch either.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from sft2grpo.models import left_pad, positions, unwrap, uses_sliding_window
from sft2grpo.rollout.base import (
    Generators,
    Rollout,
    SamplingParams,
    contains_stop,
    eos_token_ids,
    eval_mode,
    finish,
    pad_token_id,
    repeat_rows,
    row_uniforms,
)
from sft2grpo.rollout.lowp import DecodeWeights, prepack_available

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# Above this many rows (a prefill, a wide decode step) a matrix product is bound by arithmetic,
# not by reading the weights, and the fp32 weights are used even when rollout.dtype asks for a copy.
# 32: a whole 8 x 8 rollout was 1.15-1.29x faster with it than with 64 (docs/benchmarks.md); at
# 4 x 8, int8 up to 8 rows and prepacked fp32 above it was no faster than int8 throughout.
LOW_PRECISION_MAX_ROWS = 32
# A rollout of at most this many rows decodes without the prepacked fp32 copy (tuning.prepack):
# at 1 x 8 it would save 1-2 s of a ~17 s step, less the 0.2-0.4 s it takes to make in each rollout,
# for +430 MB while sampling, where 1 x 8 is under 0.9x TRL's peak memory (docs/benchmarks.md).
PREPACK_MIN_ROWS = 16


def unsupported_reason(model) -> str | None:
    """Why `fast` cannot run this model, or None if it can."""
    lm = unwrap(model)
    cfg = getattr(lm, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        return f"model type {kind!r} is not one of {', '.join(SUPPORTED_TYPES)}"
    inner = getattr(lm, "model", None)
    for part in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(inner, part):
            return f"{type(lm).__name__} has no model.{part}"
    if uses_sliding_window(cfg):
        return "sliding-window attention is not implemented"
    return None


def _common_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix all prompts share, leaving each at least one token of its own."""
    first, shortest = prompts[0], min(len(p) for p in prompts)
    k = 0
    while k < shortest - 1 and all(p[k] == first[k] for p in prompts):
        k += 1
    return k


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [b, heads, L, hd], cos/sin [b, 1, L, hd]; the rotate-half form transformers uses
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class FastEngine:
    name = "fast"

    def __init__(self, model, tokenizer, dtype: str = "model", prepack: bool = True):
        why = unsupported_reason(model)
        if why is not None:
            raise ValueError(f"rollout.engine=fast: {why}")
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = pad_token_id(tokenizer)
        lm = unwrap(model)
        cfg = lm.config
        self.lm, self.layers = lm, lm.model.layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        # rollout.dtype: "model" decodes with the policy's own weights, else with a copy
        self.low = None if dtype == "model" else DecodeWeights(dtype)
        # tuning.prepack: fp32 CPU weights, also as oneDNN reads them fastest (the large ones)
        self.packed = DecodeWeights("onednn") if prepack and prepack_available() else None
        if self.packed is not None and not any(map(self.packed.wants, self._linears())):
            self.packed = None  # no large fp32 CPU matrix (tiny models, bf16 or GPU weights)
        # products of more rows than this use the fp32 weights (prepacked where there is a copy)
        self.low_max_rows = LOW_PRECISION_MAX_ROWS
        self.use_packed = False  # set by refresh_copy: this generate reads the prepacked copy

    def weights_changed(self) -> None:
        """Tell the engine the policy's weights changed (the trainer calls it after each optimizer
        step): a low-precision copy is refreshed before the next generate. No-op without one (the
        prepacked copy lasts one generate)."""
        if self.low is not None:
            self.low.invalidate()

    def refresh_copy(self, rows: int | None = None) -> None:
        """Bring the copies up to date (what changed since the last call); generate calls it first
        with its number of rows, and drops the prepacked copy when it ends. That one is made only
        for rollouts of more rows than PREPACK_MIN_ROWS and than the low-precision copy takes
        (rows=None: always). No-op without a copy."""
        if self.low is not None:
            self.low.refresh(self._linears())
        floor = self.low_max_rows if self.low is not None else PREPACK_MIN_ROWS
        wide = rows is None or rows > floor
        self.use_packed = self.packed is not None and wide  # up to date only then: _lin checks
        if self.use_packed:
            self.packed.refresh(self._linears())

    def _linears(self):
        """Every projection the sampler runs, for DecodeWeights.refresh."""
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            yield from (a.q_proj, a.k_proj, a.v_proj, a.o_proj)
            yield from (getattr(m, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
        yield self.lm.lm_head

    def _lin(self, m, x: torch.Tensor) -> torch.Tensor:
        """m(x) for x [..., in]: from the low-precision copy when there is one and x has few rows,
        else from the prepacked copy when there is one (m(x) for a layer without a copy)."""
        if self.low is not None and x[..., 0].numel() <= self.low_max_rows:
            return self.low.linear(m, x)
        if self.use_packed:
            return self.packed.linear(m, x)
        return m(x)

    # -- the model, one layer at a time ---------------------------------------------------------

    def _qkv(self, attn, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Projections with RoPE: h [b, L, H] -> q [b, nh, L, hd], k and v [b, nkv, L, hd]."""
        b, L, _ = h.shape
        q = self._lin(attn.q_proj, h).view(b, L, self.n_heads, self.head_dim)  # [b, L, nh, hd]
        k = self._lin(attn.k_proj, h).view(b, L, self.n_kv, self.head_dim)  # [b, L, nkv, hd]
        v = self._lin(attn.v_proj, h).view(b, L, self.n_kv, self.head_dim)  # [b, L, nkv, hd]
        if getattr(attn, "q_norm", None) is not None:  # Qwen3 normalises q and k per head
            q, k = attn.q_norm(q), attn.k_norm(k)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [b, 1, L, hd]
        q = _rope(q.transpose(1, 2), cos, sin)  # [b, nh, L, hd]
        k = _rope(k.transpose(1, 2), cos, sin)  # [b, nkv, L, hd]
        return q, k, v.transpose(1, 2)

    def _finish_layer(self, layer, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        # o [b, L, nh * hd] attention output -> residual, then the MLP block
        x = x + self._lin(layer.self_attn.o_proj, o)  # [b, L, H]
        h, mlp = layer.post_attention_layernorm(x), layer.mlp  # [b, L, H]
        if self.low is None and not self.use_packed:
            return x + mlp(h)
        # the llama-family MLP, each projection through a copy: down(act(gate(h)) * up(h))
        gated = mlp.act_fn(self._lin(mlp.gate_proj, h)) * self._lin(mlp.up_proj, h)  # [b, L, I]
        return x + self._lin(mlp.down_proj, gated)  # [b, L, H]

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """The LM head on a few rows of final hidden states: h [b, H] -> logits [b, V] float32.

        On CPU, W @ h^T (the [V, H] weight as stored, times b columns) is faster than F.linear's
        h @ W^T for a few rows and a large vocabulary, and the head is most of a decode step
        (docs/benchmarks.md). Same values up to rounding. A head with a bias or a LoRA layer keeps
        its own forward.
        """
        head = self.lm.lm_head
        if self.low is not None and h.shape[0] <= self.low_max_rows:
            return self.low.linear(head, h).float()  # [b, V]
        if self.use_packed and head in self.packed.copies:
            return self.packed.linear(head, h)  # [b, V]
        if h.device.type == "cpu" and type(head) is torch.nn.Linear and head.bias is None:
            return (head.weight @ h.t()).t().float().contiguous()  # [b, V]
        return head(h).float()  # [b, V]

    def _prefill(
        self, ids: torch.Tensor, att: torch.Tensor, kv: torch.Tensor, n: int, start: int
    ) -> torch.Tensor:
        """Run P prompt pieces once; write their keys/values into the n cache rows of each.

        ids, att [P, L] left-padded, placed at cache slots start..start+L-1 after a prefix that is
        already in the cache (slots < start, the same for every row). kv [2, layers, P*n, nkv, S, hd].
        Returns the last position's logits [P, V] float32.
        """
        P, L = ids.shape
        end = start + L
        inner = self.lm.model
        pos = start + positions(att)  # [P, L]
        x = inner.embed_tokens(ids)  # [P, L, H]
        cos, sin = inner.rotary_emb(x, pos)  # [P, L, hd]
        eye = torch.eye(L, dtype=torch.bool, device=ids.device)
        # Causal over real keys; a padding query sees itself so its (unused) output stays finite.
        own = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril() & (att.bool()[:, None, :] | eye)
        seen = torch.ones(P, L, start, dtype=torch.bool, device=ids.device)  # the shared prefix
        allowed = torch.cat([seen, own], dim=-1).unsqueeze(1)  # [P, 1, L, start + L]
        groups = self.n_heads // self.n_kv
        for i, layer in enumerate(self.layers):
            h = layer.input_layernorm(x)  # [P, L, H]
            q, k, v = self._qkv(layer.self_attn, h, cos, sin)  # [P, nh|nkv, L, hd]
            # one prefill, n copies: broadcast [P, 1, nkv, L, hd] over the n sample rows
            kv[0, i, :, :, start:end].unflatten(0, (P, n)).copy_(k.unsqueeze(1))
            kv[1, i, :, :, start:end].unflatten(0, (P, n)).copy_(v.unsqueeze(1))
            # prefix + this piece, read back from the first cache row of each prompt
            keys = kv[0, i, ::n, :, :end].repeat_interleave(groups, 1)  # [P, nh, start + L, hd]
            values = kv[1, i, ::n, :, :end].repeat_interleave(groups, 1)  # [P, nh, start + L, hd]
            o = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=allowed, scale=layer.self_attn.scaling
            )
            x = self._finish_layer(layer, x, o.transpose(1, 2).reshape(P, L, -1))  # [P, L, H]
        return self._logits(inner.norm(x[:, -1]))  # [P, V]

    def _decode(self, tok: torch.Tensor, pos: torch.Tensor, kv: torch.Tensor, slot: int, bias: torch.Tensor):
        """One token for each of the b live rows, which occupy cache rows 0..b-1.

        tok, pos [b]; bias [b, 1, 1, slot+1] (0 or -inf for prompt padding). Returns [b, V] float32.
        """
        b = tok.shape[0]
        inner = self.lm.model
        x = inner.embed_tokens(tok[:, None])  # [b, 1, H]
        cos, sin = inner.rotary_emb(x, pos[:, None])  # [b, 1, hd]
        groups = self.n_heads // self.n_kv
        for i, layer in enumerate(self.layers):
            h = layer.input_layernorm(x)  # [b, 1, H]
            q, k, v = self._qkv(layer.self_attn, h, cos, sin)  # q [b, nh, 1, hd], k/v [b, nkv, 1, hd]
            kv[0, i, :b, :, slot] = k[:, :, 0]
            kv[1, i, :b, :, slot] = v[:, :, 0]
            keys, values = kv[0, i, :b, :, : slot + 1], kv[1, i, :b, :, : slot + 1]  # [b, nkv, s, hd]
            # The g query heads sharing a kv head act as g queries against it: no repeat of the cache.
            # Plain matmuls: for these tiny per-row products they take half the time of CPU SDPA.
            q = q.reshape(b, self.n_kv, groups, self.head_dim)  # [b, nkv, g, hd]
            scores = (
                torch.matmul(q, keys.transpose(-1, -2)) * layer.self_attn.scaling + bias
            )  # [b, nkv, g, s]
            o = torch.matmul(
                torch.softmax(scores.float(), dim=-1).to(values.dtype), values
            )  # [b, nkv, g, hd]
            x = self._finish_layer(layer, x, o.reshape(b, 1, -1))  # [b, 1, H]
        return self._logits(inner.norm(x[:, 0]))  # [b, V]

    # -- sampling -------------------------------------------------------------------------------

    @staticmethod
    def _sample_token(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, greedy: bool, u):
        """Choose one token per row; return (tokens [b], log pi(token) [b] before top-k/top-p).

        One pass of exp over the vocabulary serves both the log-probability (its sum gives the
        log-normaliser) and the sampling (its running sum is the unnormalised CDF).
        """
        scaled = logits / temperature if temperature != 1.0 else logits  # [b, V]
        top = scaled.amax(-1, keepdim=True)  # [b, 1]
        weights = torch.exp(scaled - top)  # [b, V] softmax numerators
        log_norm = top.squeeze(1) + weights.sum(-1).log()  # [b] logsumexp
        if greedy:
            tok = logits.argmax(-1)  # [b]
        else:
            if top_k > 0:
                kth = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]  # [b, 1]
                weights = weights.masked_fill(scaled < kth, 0.0)
            if top_p < 1.0:
                w_sorted, order = weights.sort(dim=-1, descending=True)  # [b, V]
                mass = w_sorted.cumsum(-1)  # [b, V]
                # drop a token once the more likely ones already hold top_p of the mass (keep >= 1)
                drop = (mass - w_sorted) >= top_p * mass[:, -1:]  # [b, V]
                weights = weights.scatter(-1, order, w_sorted.masked_fill(drop, 0.0))
            cdf = weights.cumsum(-1)  # [b, V] unnormalised
            # inverse-CDF sampling with this row's uniform; zero-weight tokens are never hit
            tok = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)  # [b]
            tok = tok.clamp(max=logits.shape[-1] - 1)
        return tok, scaled.gather(1, tok[:, None]).squeeze(1) - log_norm

    def generate(
        self, prompt_ids: list[list[int]], params: SamplingParams, generator: Generators = None
    ) -> Rollout:
        n, greedy, stop = params.n, params.greedy, params.stop
        if greedy and n > 1:  # the n greedy "samples" of a prompt are identical: decode once
            return repeat_rows(self.generate(prompt_ids, replace(params, n=1), generator), n)
        with eval_mode(self.model), torch.inference_mode():
            self.refresh_copy(len(prompt_ids) * n)
            try:
                p = params
                tokens, logprobs = self._generate(
                    prompt_ids, n, p.max_new_tokens, p.temperature, p.top_p, p.top_k, stop, generator, greedy
                )
            finally:  # the prepacked copy lives only while sampling: the update's memory is its own
                if self.use_packed:
                    self.packed.release()
        return finish(prompt_ids, tokens, logprobs, self.eos_ids, self.pad_id, self.tokenizer, stop)

    def _generate(self, prompt_ids, n, max_new_tokens, temperature, top_p, top_k, stop, generator, greedy):
        param = next(self.lm.parameters())
        dev = param.device
        # Chat prompts share a long head (system prompt, task template): prefill it once for all rows,
        # then each prompt's remainder once for its n rows. Cache slots: [shared | left-padded rest].
        shared = _common_prefix(prompt_ids)
        rest, att = left_pad([p[shared:] for p in prompt_ids], self.pad_id, dev)  # [P, Lr]
        P, L = len(prompt_ids), shared + rest.shape[1]
        B, S = P * n, L + max_new_tokens
        kv = torch.empty(2, len(self.layers), B, self.n_kv, S, self.head_dim, dtype=param.dtype, device=dev)
        if shared:
            head = torch.tensor([prompt_ids[0][:shared]], device=dev)  # [1, shared]
            self._prefill(head, torch.ones_like(head), kv, B, 0)
        first = self._prefill(rest, att, kv, n, shared).repeat_interleave(n, 0)  # [B, V]

        # Per-row state, reordered whenever finished rows leave. Row r of the cache holds sample rows[r].
        rows = torch.arange(B, device=dev)  # [b] original (prompt-major) row of each cache row
        pos = (shared + att.sum(-1)).repeat_interleave(n)  # [b] the next token's position = prompt length
        bias = torch.zeros(B, S, device=dev, dtype=param.dtype)  # [b, S] 0 = visible, -inf = padding
        bias[:, shared:L] = torch.where(att.bool(), 0.0, float("-inf")).repeat_interleave(n, 0)
        eos = torch.tensor(self.eos_ids, device=dev)
        out_tok = torch.full((B, max_new_tokens), self.pad_id, dtype=torch.long, device=dev)  # [B, T]
        out_lp = torch.zeros(B, max_new_tokens, device=dev)  # [B, T]

        logits = first
        for t in range(max_new_tokens):
            u = None
            if not greedy:  # one uniform per original row, drawn for all rows so each row's is fixed
                u = row_uniforms(generator, P, n).to(dev)[rows]  # [b]
            tok, lp = self._sample_token(logits, temperature, top_k, top_p, greedy, u)  # [b], [b]
            out_tok[rows, t], out_lp[rows, t] = tok, lp
            if t == max_new_tokens - 1:
                break
            done = torch.isin(tok, eos)  # [b]
            if stop:
                texts = out_tok[rows, : t + 1].tolist()
                hit = [contains_stop(self.tokenizer, r, stop) for r in texts]
                done |= torch.tensor(hit, device=dev)
            if bool(done.any()):
                keep = self._compact(kv, done, L + t)  # [b'] which old cache rows fill rows 0..b'-1
                if keep.numel() == 0:
                    break
                rows, pos, bias, tok = rows[keep], pos[keep], bias[keep], tok[keep]
            slot = L + t  # where this step's token's keys/values go
            logits = self._decode(tok, pos + t, kv, slot, bias[:, None, None, : slot + 1])  # [b, V]
        return out_tok, out_lp

    @staticmethod
    def _compact(kv: torch.Tensor, done: torch.Tensor, used: int) -> torch.Tensor:
        """Remove finished rows: each hole among the first b' rows takes the last live row's cache.

        One row copy per removed row (never a reallocation or a shift of the whole batch). Only the
        `used` filled slots are copied. Returns the old index of each surviving row, in new order.
        """
        live = (~done).nonzero().flatten().tolist()
        nb = len(live)
        holes = [r for r in (done.nonzero().flatten().tolist()) if r < nb]
        movers = [r for r in live if r >= nb]
        order = list(range(nb))
        for hole, mover in zip(holes, movers):
            kv[:, :, hole, :, :used].copy_(kv[:, :, mover, :, :used])  # [2, layers, nkv, used, hd]
            order[hole] = mover
        return torch.tensor(order, dtype=torch.long, device=kv.device)
