"""Rollout engines on the tiny model: fast matches hf token for token (greedy), its log-probs match
the trainer's recomputation, EOS / stop strings / max length end rows the same way, and dropping
finished rows changes nothing."""

import warnings

import pytest
import torch
from oracles import token_logprobs

from sft2grpo.config import LoraConfig
from sft2grpo.models import apply_lora, build_tiny, chat_prompt_ids, left_pad
from sft2grpo.rollout import SamplingParams, make_engine
from sft2grpo.rollout.fast import FastEngine
from sft2grpo.rollout.hf import HFEngine

PROMPTS = ["What is 12 + 7 - 3?", "Hi", "A longer prompt, so that the others get left padding: 5 * 6?"]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny()


def engines(model, tok, eos=None):
    hf, fast = make_engine("hf", model, tok), make_engine("fast", model, tok)
    if eos is not None:  # a token the random model emits often, so rows end at different steps
        hf.eos_ids = fast.eos_ids = eos
    return hf, fast


def recompute(model, ro, temperature=1.0):
    """The trainer's view: log-probs of the rollout's tokens from one forward pass."""
    n = ro.completion_ids.shape[0] // len(ro.prompt_ids)
    pid, patt = left_pad([p for p in ro.prompt_ids for _ in range(n)], 0)
    ids = torch.cat([pid, ro.completion_ids], 1)
    att = torch.cat([patt, ro.mask.long()], 1)
    with torch.no_grad():
        return token_logprobs(model, ids, att, ro.completion_ids.shape[1], temperature)


def common_token(model, tok) -> list[int]:
    ro = make_engine("fast", model, tok).generate(
        chat_prompt_ids(tok, PROMPTS), SamplingParams(n=1, max_new_tokens=24, greedy=True)
    )
    return [int(ro.completion_ids.flatten().mode().values)]


def test_greedy_fast_equals_hf(tiny):
    model, tok = tiny
    ids = chat_prompt_ids(tok, PROMPTS)
    hf, fast = engines(model, tok)
    a, b = (
        hf.generate(ids, SamplingParams(n=2, max_new_tokens=20, greedy=True)),
        fast.generate(ids, SamplingParams(n=2, max_new_tokens=20, greedy=True)),
    )
    assert a.completion_ids.shape == b.completion_ids.shape == (6, 20)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert len({tuple(r) for r in b.completion_ids.tolist()}) == 3  # prompt-dependent, pairs alike
    assert torch.equal(b.completion_ids[0], b.completion_ids[1])  # prompt-major groups
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=0)
    assert a.finish_reasons == b.finish_reasons == ["length"] * 6


def test_eos_ends_rows_and_dropping_them_matches_hf(tiny):
    model, tok = tiny
    ids = chat_prompt_ids(tok, PROMPTS)
    hf, fast = engines(model, tok, eos=common_token(model, tok))
    a, b = (
        hf.generate(ids, SamplingParams(n=2, max_new_tokens=20, greedy=True)),
        fast.generate(ids, SamplingParams(n=2, max_new_tokens=20, greedy=True)),
    )
    lengths = b.mask.sum(1)
    assert len(set(lengths.tolist())) > 1  # rows really ended at different steps
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.mask, b.mask)
    assert a.finish_reasons == b.finish_reasons
    for row, n, reason in zip(b.completion_ids, lengths.long(), b.finish_reasons):
        if reason == "stop":  # the EOS is the last masked token, padding after it
            assert row[n - 1] == fast.eos_ids[0] and (row[n:] == tok.pad_token_id).all()
            assert (row[: n - 1] != fast.eos_ids[0]).all()
    assert (b.logprobs[b.mask == 0] == 0).all()


def test_sampled_logprobs_match_trainer_recomputation(tiny):
    model, tok = tiny
    ids = chat_prompt_ids(tok, PROMPTS)
    hf, fast = engines(model, tok, eos=common_token(model, tok))
    for engine in (fast, hf):
        for temp, top_k, top_p in ((1.0, 0, 1.0), (0.7, 20, 0.9)):
            g = torch.Generator().manual_seed(1)
            ro = engine.generate(
                ids,
                SamplingParams(n=4, max_new_tokens=24, temperature=temp, top_k=top_k, top_p=top_p),
                generator=g,
            )
            lp = recompute(model, ro, temp)
            assert ro.mask.sum() > 12 and (ro.mask.sum(1) < 24).any()  # some rows ended early
            assert ((lp - ro.logprobs) * ro.mask).abs().max() < 1e-4, engine.name


def test_dropping_finished_rows_changes_nothing(tiny):
    """Same seed, once with a common EOS (rows leave the batch) and once with an EOS that never
    comes (no row leaves): every row must agree on the tokens it generated before it ended."""
    model, tok = tiny
    ids = chat_prompt_ids(tok, PROMPTS)
    fast = FastEngine(model, tok)
    fast.eos_ids = common_token(model, tok)
    dropped = fast.generate(
        ids, SamplingParams(n=3, max_new_tokens=24), generator=torch.Generator().manual_seed(5)
    )
    fast.eos_ids = [10**6]
    kept = fast.generate(
        ids, SamplingParams(n=3, max_new_tokens=24), generator=torch.Generator().manual_seed(5)
    )
    assert kept.mask.all() and not dropped.mask.all()
    m = dropped.mask.bool()
    assert torch.equal(dropped.completion_ids[m], kept.completion_ids[m])
    torch.testing.assert_close(dropped.logprobs[m], kept.logprobs[m], atol=1e-5, rtol=0)


def test_sampling_is_seeded(tiny):
    model, tok = tiny
    ids = chat_prompt_ids(tok, PROMPTS[:2])
    for engine in engines(model, tok):
        runs = [
            engine.generate(
                ids, SamplingParams(n=3, max_new_tokens=12), generator=torch.Generator().manual_seed(s)
            )
            for s in (7, 7, 8)
        ]
        assert torch.equal(runs[0].completion_ids, runs[1].completion_ids)
        assert not torch.equal(runs[0].completion_ids, runs[2].completion_ids)
        assert len({tuple(r) for r in runs[0].completion_ids.tolist()}) > 1  # samples differ


def test_top_k_one_and_tiny_top_p_are_greedy(tiny):
    model, tok = tiny
    ids = chat_prompt_ids(tok, PROMPTS)
    fast = FastEngine(model, tok)
    greedy = fast.generate(ids, SamplingParams(n=1, max_new_tokens=12, greedy=True))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(
        fast.generate(ids, SamplingParams(n=2, max_new_tokens=12, top_k=1), generator=g).completion_ids[::2],
        greedy.completion_ids,
    )
    assert torch.equal(
        fast.generate(ids, SamplingParams(n=2, max_new_tokens=12, top_p=1e-6), generator=g).completion_ids[
            ::2
        ],
        greedy.completion_ids,
    )


def test_stop_strings(tiny):
    model, tok = tiny
    ids = chat_prompt_ids(tok, PROMPTS[:1])
    full = FastEngine(model, tok).generate(ids, SamplingParams(n=1, max_new_tokens=20, greedy=True))
    text = tok.decode(full.completion_ids[0], skip_special_tokens=True)
    stop = text[5:7]  # two characters from the middle of the greedy answer
    for engine in engines(model, tok):
        ro = engine.generate(
            ids, SamplingParams(n=2, max_new_tokens=20, greedy=True, stop=[stop, "never there"])
        )
        kept = ro.completion_ids[0][ro.mask[0].bool()].tolist()
        assert stop in tok.decode(kept) and stop not in tok.decode(kept[:-1]), engine.name
        assert ro.finish_reasons == ["stop", "stop"]
        assert torch.equal(
            ro.completion_ids[:, : len(kept)], full.completion_ids[:, : len(kept)].expand(2, -1)
        )


def test_length_limit_and_shapes(tiny):
    model, tok = tiny
    ids = chat_prompt_ids(tok, PROMPTS)
    for engine in engines(model, tok):
        ro = engine.generate(
            ids, SamplingParams(n=2, max_new_tokens=5), generator=torch.Generator().manual_seed(0)
        )
        assert ro.completion_ids.shape == ro.mask.shape == ro.logprobs.shape == (6, 5)
        assert ro.completion_ids.dtype == torch.long and ro.mask.dtype == ro.logprobs.dtype == torch.float32
        assert ro.finish_reasons == ["length"] * 6 and ro.num_tokens == 30
        assert ro.prompt_ids == ids
        # fp32: the engine's log-probs are the trainer's own numbers, up to rounding
        assert (ro.logprobs - recompute(model, ro)).abs().max() < 1e-4


def test_engines_keep_train_mode_and_use_lora(tiny):
    _, tok = tiny
    model = apply_lora(build_tiny()[0], LoraConfig(enabled=True, r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    model.train()
    model.base_model.model.model.layers[0].eval()  # a mixed state must survive as it was
    ids = chat_prompt_ids(tok, PROMPTS)
    hf, fast = engines(model, tok)
    a, b = (
        hf.generate(ids, SamplingParams(n=1, max_new_tokens=12, greedy=True)),
        fast.generate(ids, SamplingParams(n=1, max_new_tokens=12, greedy=True)),
    )
    assert torch.equal(a.completion_ids, b.completion_ids)
    torch.testing.assert_close(recompute(model, b), b.logprobs, atol=1e-4, rtol=0)  # adapted model
    base = FastEngine(tiny[0], tok).generate(ids, SamplingParams(n=1, max_new_tokens=12, greedy=True))
    assert not torch.equal(base.completion_ids, b.completion_ids)  # the adapter was used
    assert model.training and not model.base_model.model.model.layers[0].training


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_fast_matches_hf_on_other_llama_family_models(tiny, kind):
    import transformers

    _, tok = tiny
    cls = {"qwen2": "Qwen2", "qwen3": "Qwen3"}[kind]
    config = getattr(transformers, f"{cls}Config")(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, initializer_range=0.2,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = getattr(transformers, f"{cls}ForCausalLM")(config).eval()
    with torch.no_grad():  # random biases (Qwen2) so that they matter
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.2)
    ids = chat_prompt_ids(tok, PROMPTS)
    hf, fast = engines(model, tok)
    assert isinstance(fast, FastEngine)
    a, b = (
        hf.generate(ids, SamplingParams(n=2, max_new_tokens=16, greedy=True)),
        fast.generate(ids, SamplingParams(n=2, max_new_tokens=16, greedy=True)),
    )
    assert torch.equal(a.completion_ids, b.completion_ids)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=0)


def test_registry_and_fallbacks(tiny):
    import transformers

    model, tok = tiny
    with pytest.raises(ValueError, match="unknown rollout engine 'fast2'; valid engines: fast, hf, vllm"):
        make_engine("fast2", model, tok)
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, eos_token_id=2)
    )
    with pytest.warns(UserWarning, match="model type 'gpt2'.*falling back to hf"):
        engine = make_engine("fast", gpt2, tok)
    assert isinstance(engine, HFEngine)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"needs the \[gpu\] extra: pip install 'sft2grpo\[gpu\]'"):
            make_engine("vllm", model, tok)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(make_engine("fast", model, tok), FastEngine)
