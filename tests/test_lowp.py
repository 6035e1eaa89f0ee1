"""rollout.dtype: the sampler's low-precision copy of the weights (rollout/lowp.py, rollout/fast.py)."""

import copy
import json

import pytest
import torch
from test_rollout import PROMPTS, recompute

from sft2grpo.config import ConfigError, load_config
from sft2grpo.models import build_tiny, chat_prompt_ids
from sft2grpo.rollout import SamplingParams, fast, lowp, make_engine
from sft2grpo.rollout.lowp import DecodeWeights, int8_linear, quantize_int8


def test_quantize_int8_closed_form():
    w = torch.tensor([[1.27, -0.635, 0.0], [0.0, 0.0, 0.0], [-2.0, 1.0, 0.5]])
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    torch.testing.assert_close(scale, torch.tensor([0.01, 1.0, 2.0 / 127]))
    # round(-63.5) is -64 (half to even); the zero row stays zero with scale 1
    assert q.tolist() == [[127, -64, 0], [0, 0, 0], [-127, 64, 32]]
    assert (q.float() * scale[:, None] - w).abs().max() <= scale.max() / 2 + 1e-7


def test_int8_linear_is_the_dequantized_product():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(48, 32, generator=g), torch.randn(5, 3, 32, generator=g)
    q, scale = quantize_int8(w)
    y = int8_linear(x, q, scale)  # [5, 3, 48]
    assert y.shape == (5, 3, 48) and y.dtype == torch.float32
    # the same product in fp32 from bf16-rounded inputs; the kernel's result is rounded to bf16
    expect = x.bfloat16().float() @ (q.float() * scale.bfloat16().float()[:, None]).t()
    torch.testing.assert_close(y, expect, rtol=1e-2, atol=2e-2)


def linears(model):
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_copies_refresh_only_what_changed(dtype):
    model, _ = build_tiny()
    mods = linears(model)
    low = DecodeWeights(dtype)
    low.refresh(mods)
    assert low.refreshed == len(mods)
    low.refresh(mods)  # nothing changed: nothing copied
    assert low.refreshed == len(mods)

    # a fused AdamW step (the trainer's optimizer) writes the parameters without moving their
    # version counters: only invalidate() (which the trainer calls after each step) makes it seen
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    model(torch.tensor([[3, 4, 5]])).logits.sum().backward()
    opt.step()
    low.invalidate()
    low.refresh(mods)
    assert low.refreshed == 2 * len(mods)
    x = torch.randn(2, mods[0].in_features)
    fresh = DecodeWeights(dtype)
    fresh.refresh(mods)
    assert torch.equal(low.linear(mods[0], x), fresh.linear(mods[0], x))  # never stale

    # loading a checkpoint writes the parameters in place too
    state = {k: v + 0.5 for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    before = low.refreshed
    low.refresh(mods)
    assert low.refreshed > before


def through_copy(model, dtype):
    """A copy of `model` whose every Linear computes what DecodeWeights computes for it."""
    twin = copy.deepcopy(model)
    low, mods = DecodeWeights(dtype), linears(twin)
    low.refresh(mods)
    for m in mods:
        m.forward = lambda x, m=m: low.linear(m, x)
    return twin


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_engine_samples_from_the_copy(dtype, monkeypatch):
    """Every projection and the LM head of the sampler read the copy: the engine's log-probs are
    the copy's (a transformers forward through it), 30x closer than to the fp32 policy's, whose
    distance is the gap the trainer logs."""
    monkeypatch.setattr(fast, "LOW_PRECISION_MAX_ROWS", 10**9)  # the prefill too, for this check
    model, tok = build_tiny()
    ids = chat_prompt_ids(tok, PROMPTS)
    engine = make_engine("fast", model, tok, dtype)
    ro = engine.generate(
        ids, SamplingParams(n=4, max_new_tokens=16), generator=torch.Generator().manual_seed(0)
    )
    m = ro.mask.bool()
    to_copy = (recompute(through_copy(model, dtype), ro) - ro.logprobs)[m].abs()  # [tokens]
    to_policy = (recompute(model, ro) - ro.logprobs)[m].abs()  # [tokens]
    assert to_copy.max() < 0.05 and to_copy.mean() < to_policy.mean() / 30
    assert 0.005 < to_policy.mean() < 0.2
    # greedy decoding with the copy mostly picks what the fp32 policy picks
    full = make_engine("fast", model, tok).generate(ids, SamplingParams(n=1, max_new_tokens=8, greedy=True))
    low = engine.generate(ids, SamplingParams(n=1, max_new_tokens=8, greedy=True))
    assert (full.completion_ids == low.completion_ids).float().mean() > 0.7


def test_products_over_the_row_threshold_use_the_policy_weights():
    """low_max_rows (LOW_PRECISION_MAX_ROWS by default) is where the copy stops: at 0 every product
    has more rows and the int8 engine samples exactly what the fp32 one does; above the batch it
    samples from the copy (bench_rollout's `fast:int8@N` sets it)."""
    model, tok = build_tiny()
    ids = chat_prompt_ids(tok, PROMPTS)
    full = make_engine("fast", model, tok).generate(
        ids, SamplingParams(n=4, max_new_tokens=12), generator=torch.Generator().manual_seed(3)
    )
    engine = make_engine("fast", model, tok, "int8")
    assert engine.low_max_rows == fast.LOW_PRECISION_MAX_ROWS
    engine.low_max_rows = 0
    off = engine.generate(
        ids, SamplingParams(n=4, max_new_tokens=12), generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(off.completion_ids, full.completion_ids) and torch.equal(off.logprobs, full.logprobs)
    engine.low_max_rows = 10**9
    on = engine.generate(
        ids, SamplingParams(n=4, max_new_tokens=12), generator=torch.Generator().manual_seed(3)
    )
    assert not torch.equal(on.logprobs, full.logprobs)


def test_engine_follows_the_policy_after_an_update():
    model, tok = build_tiny()
    ids = chat_prompt_ids(tok, PROMPTS)
    engine = make_engine("fast", model, tok, "int8")
    engine.generate(ids, SamplingParams(n=2, max_new_tokens=4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    after = engine.generate(
        ids, SamplingParams(n=2, max_new_tokens=12), generator=torch.Generator().manual_seed(1)
    )
    rebuilt = make_engine("fast", model, tok, "int8").generate(
        ids, SamplingParams(n=2, max_new_tokens=12), generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(after.completion_ids, rebuilt.completion_ids)
    assert torch.equal(after.logprobs, rebuilt.logprobs)


def test_rollout_dtype_needs_the_fast_engine(tmp_path):
    with pytest.raises(ConfigError, match=r"rollout\.dtype.*int8.*rollout\.engine=fast"):
        load_config(None, ["rollout.dtype=int8", "rollout.engine=hf"])
    with pytest.raises(ConfigError, match=r"rollout\.dtype"):
        load_config(None, ["rollout.dtype=int4"])
    with pytest.raises(ValueError, match="needs rollout.engine=fast"):
        model, tok = build_tiny()
        make_engine("hf", model, tok, "int8")


def test_trainer_decodes_with_a_copy_refreshed_every_step_and_evaluates_with_the_policy(tmp_path):
    from test_trainer import tiny_cfg

    from sft2grpo.trainer import Trainer

    gaps = {}
    for dtype in ("model", "int8"):
        cfg = tiny_cfg(tmp_path, "grpo", f"rollout.dtype={dtype}", "train.lr=1e-3", "train.steps=2")
        trainer = Trainer(cfg, tmp_path / dtype)
        trainer.fit()
        rows = [json.loads(line) for line in (tmp_path / dtype / "metrics.jsonl").read_text().splitlines()]
        gaps[dtype] = [r["logprob_gap_mean"] for r in rows]
        assert all(r["logprob_gap_mean"] <= r["logprob_gap_max"] for r in rows)
    assert max(gaps["model"]) < 1e-5  # the engine decodes with the policy itself
    assert min(gaps["int8"]) > 1e-3  # ... or with its int8 copy, and the gap is logged
    # one refresh before each step's rollout (the first, then after every optimizer step), never stale
    n = sum(type(m) is torch.nn.Linear for m in trainer.model.modules())
    assert trainer.engine.low.refreshed == 2 * n and trainer.engine.low.stale
    # held-out and validation scores come from the policy's own weights
    assert trainer.eval_engine is not trainer.engine and trainer.eval_engine.low is None


def test_quantizing_in_chunks_through_a_small_scratch_is_exact():
    w = torch.randn(37, 16, generator=torch.Generator().manual_seed(3))
    whole = quantize_int8(w)
    out = torch.zeros(37, 16, dtype=torch.int8)
    chunked = quantize_int8(w, out, torch.empty(5 * 16 + 3))  # 5 rows at a time, 8 pieces
    assert chunked[0] is out
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


# -- tuning.prepack: the fp32 weights laid out for oneDNN (CPU) ------------------------------------

needs_prepack = pytest.mark.skipif(not lowp.prepack_available(), reason="no oneDNN in this torch")


@needs_prepack
def test_prepacked_linear_is_the_fp32_product():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(48, 32, generator=g), torch.randn(48, generator=g)
    x = torch.randn(5, 3, 32, generator=g)
    packed = lowp.prepack(w)
    torch.testing.assert_close(lowp.prepacked_linear(x, packed, None), x @ w.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lowp.prepacked_linear(x, packed, b), x @ w.t() + b, rtol=1e-5, atol=1e-5)


@needs_prepack
def test_prepack_copies_only_large_fp32_matrices(monkeypatch):
    packed = DecodeWeights("onednn")
    big, small = torch.nn.Linear(64, 32), torch.nn.Linear(8, 4)
    monkeypatch.setattr(lowp, "PREPACK_MIN_ELEMENTS", 64 * 32)
    assert packed.wants(big) and not packed.wants(small) and not packed.wants(big.bfloat16())
    # the tiny test model has no matrix as large as the 135M model's MLPs: no copy at all
    model, tok = build_tiny()
    monkeypatch.setattr(lowp, "PREPACK_MIN_ELEMENTS", 1 << 19)
    assert make_engine("fast", model, tok).packed is None


@pytest.fixture
def prepack_everything(monkeypatch):
    """Prepack every matrix of the tiny model, as the 135M model's large ones are, for rollouts of
    any number of rows."""
    if not lowp.prepack_available():
        pytest.skip("no oneDNN in this torch")
    monkeypatch.setattr(lowp, "PREPACK_MIN_ELEMENTS", 0)
    monkeypatch.setattr(fast, "PREPACK_MIN_ROWS", 0)


def test_prepacked_engine_samples_what_the_policy_samples(prepack_everything):
    """The same fp32 values in another layout: the same tokens, log-probs equal up to the order of
    the sums, and greedy decoding identical."""
    model, tok = build_tiny()
    ids = chat_prompt_ids(tok, PROMPTS)
    plain = make_engine("fast", model, tok, prepack=False)
    packed = make_engine("fast", model, tok)
    assert plain.packed is None and packed.packed is not None
    a = plain.generate(
        ids, SamplingParams(n=4, max_new_tokens=16), generator=torch.Generator().manual_seed(0)
    )
    b = packed.generate(
        ids, SamplingParams(n=4, max_new_tokens=16), generator=torch.Generator().manual_seed(0)
    )
    assert packed.use_packed and packed.packed.refreshed == sum(1 for _ in packed._linears())
    assert not packed.packed.copies  # released after sampling, made again by the next rollout
    assert torch.equal(a.completion_ids, b.completion_ids)
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=1e-5)
    assert not torch.equal(a.logprobs, b.logprobs)  # it did run another kernel
    g1, g2 = (
        plain.generate(ids, SamplingParams(n=1, max_new_tokens=12, greedy=True)),
        packed.generate(ids, SamplingParams(n=1, max_new_tokens=12, greedy=True)),
    )
    assert torch.equal(g1.completion_ids, g2.completion_ids)


def test_small_rollouts_make_no_prepacked_copy(prepack_everything, monkeypatch):
    """At most PREPACK_MIN_ROWS rows (1 prompt x 8) decode with the policy itself: no copy made."""
    monkeypatch.setattr(fast, "PREPACK_MIN_ROWS", 8)
    model, tok = build_tiny()
    ids = chat_prompt_ids(tok, PROMPTS)
    engine = make_engine("fast", model, tok)
    engine.generate(
        ids[:2], SamplingParams(n=4, max_new_tokens=6), generator=torch.Generator().manual_seed(0)
    )
    assert not engine.use_packed and engine.packed.refreshed == 0
    engine.generate(
        ids[:3], SamplingParams(n=4, max_new_tokens=6), generator=torch.Generator().manual_seed(0)
    )
    assert engine.use_packed and engine.packed.refreshed > 0


def test_int8_with_prepack_uses_each_copy_for_its_rows(prepack_everything):
    """With both copies, int8 takes products of up to low_max_rows rows and the prepacked copy the
    wider ones; a rollout that never has more rows makes no prepacked copy, and one made earlier is
    not read once the weights changed (the prefill is wider than the batch)."""
    model, tok = build_tiny()
    ids = chat_prompt_ids(tok, PROMPTS)
    engine = make_engine("fast", model, tok, "int8")
    assert engine.low_max_rows == fast.LOW_PRECISION_MAX_ROWS
    engine.low_max_rows = 8
    engine.generate(
        ids[:2], SamplingParams(n=4, max_new_tokens=6), generator=torch.Generator().manual_seed(0)
    )  # 8 rows: int8 only
    assert not engine.use_packed and engine.packed.refreshed == 0
    engine.generate(
        ids, SamplingParams(n=4, max_new_tokens=6), generator=torch.Generator().manual_seed(0)
    )  # 3 prompts x 4 = 12 rows: wide
    assert engine.use_packed and engine.packed.refreshed > 0
    with torch.no_grad():  # an update the version counters do not see (as fused AdamW's), announced
        for p in model.parameters():
            p.data.mul_(1.5)
    engine.weights_changed()
    fresh = make_engine("fast", model, tok, "int8")
    fresh.low_max_rows = 8
    for prompts, seed in ((ids[:2], 1), (ids, 2)):  # 8 rows (a prefill of more), then 12
        got = engine.generate(
            prompts, SamplingParams(n=4, max_new_tokens=12), generator=torch.Generator().manual_seed(seed)
        )
        want = fresh.generate(
            prompts, SamplingParams(n=4, max_new_tokens=12), generator=torch.Generator().manual_seed(seed)
        )
        assert torch.equal(got.completion_ids, want.completion_ids)
        assert torch.equal(got.logprobs, want.logprobs)


def test_trainer_rollouts_read_a_prepacked_copy_of_the_current_weights(tmp_path, prepack_everything):
    """The copy is made at the start of each rollout and dropped at its end: after fused AdamW steps
    (which move no version counter) the engine samples what a new engine does, and between
    rollouts, during the update, no copy is held."""
    from test_trainer import tiny_cfg

    from sft2grpo.trainer import Trainer

    trainer = Trainer(tiny_cfg(tmp_path, "grpo", "train.lr=1e-2"), tmp_path / "run")
    assert trainer.engine.packed is not None
    trainer.fit()
    assert not trainer.engine.packed.copies and trainer.engine.packed.refreshed > 0
    ids = chat_prompt_ids(trainer.tokenizer, PROMPTS)
    got = trainer.engine.generate(
        ids, SamplingParams(n=4, max_new_tokens=12), generator=torch.Generator().manual_seed(5)
    )
    fresh = make_engine("fast", trainer.model, trainer.tokenizer)
    want = fresh.generate(
        ids, SamplingParams(n=4, max_new_tokens=12), generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(got.completion_ids, want.completion_ids) and torch.equal(got.logprobs, want.logprobs)
    off = Trainer(tiny_cfg(tmp_path, "grpo", "tuning.prepack=false"), tmp_path / "off")
    assert off.engine.packed is None
