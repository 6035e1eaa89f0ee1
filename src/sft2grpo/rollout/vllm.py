"""vLLM rollouts on GPU, colocated in the training process (needs the [gpu] extra).

vLLM keeps its own copy of the weights. Before each `generate` the engine pushes the live policy's
weights into it in memory (`load_weights`), LoRA merged in, so samples always come from the
current policy. The engine runs in this process (V1 multiprocessing off) so the push is a plain
function call on the model, as in TRL's colocate mode.

Log-probs: vLLM reports raw log-probs (before temperature) unless asked for processed ones
(`logprobs_mode`, vLLM >= 0.10.2, requested here). Its kernels are not the trainer's, so its numbers
are close to the trainer's but not equal; the trainer uses its own (pi_old from its first pass), and
`objective.tis_cap` corrects for the difference.

Not tested here: this machine has no GPU and no vLLM. Written against vLLM's documented LLM API.
"""

from __future__ import annotations

import os
import tempfile

import torch

from sft2grpo.rollout.base import Generators, Rollout, SamplingParams, eos_token_ids, finish, pad_token_id

MISSING = "rollout.engine=vllm needs the [gpu] extra: pip install 'sft2grpo[gpu]'"


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise ImportError(MISSING) from None
    return vllm


class VLLMEngine:
    name = "vllm"

    def __init__(
        self, model, tokenizer, gpu_memory_utilization: float = 0.3, max_model_len: int | None = None
    ):
        vllm = _import_vllm()
        # The engine core in this process: the weight push below is then a direct call.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = pad_token_id(tokenizer)
        param = next(model.parameters())
        folder = self._source_folder(model, tokenizer)
        kwargs = dict(
            model=folder,
            tokenizer=folder,
            dtype=str(param.dtype).removeprefix("torch."),
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True,  # the n samples of a prompt share its prefill
            seed=0,
        )
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        try:  # log pi under logits / temperature, before top-k/top-p, like the other engines
            self.llm = vllm.LLM(**kwargs, logprobs_mode="processed_logprobs")
        except TypeError:  # older vLLM: raw log-probs only
            self.llm = vllm.LLM(**kwargs)

    @staticmethod
    def _source_folder(model, tokenizer) -> str:
        """A folder vLLM can build the architecture from; weights are overwritten by load_weights."""
        from sft2grpo.models import save_model

        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        path = getattr(lm.config, "_name_or_path", "") or ""
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
        return str(save_model(model, tokenizer, tempfile.mkdtemp(prefix="sft2grpo-vllm-") + "/model"))

    def _policy_weights(self) -> list[tuple[str, torch.Tensor]]:
        """(HF name, tensor) for every weight of the policy, LoRA merged in."""
        from sft2grpo.models import is_peft

        model = self.model
        if not is_peft(model):  # FSDP2 shards (DTensor) are gathered: a collective, every rank calls it
            return [
                (k, v.full_tensor() if hasattr(v, "full_tensor") else v)
                for k, v in model.state_dict().items()
            ]
        model.merge_adapter()  # in place, undone below: no second copy of the weights
        try:
            out = []
            for name, tensor in model.state_dict().items():
                if "lora_" in name:
                    continue
                name = name.removeprefix("base_model.model.").replace(".base_layer", "")
                out.append((name, tensor.clone()))
            return out
        finally:
            model.unmerge_adapter()

    def load_weights(self, model=None) -> None:
        """Push the policy's current weights into vLLM (no disk), then drop cached prefixes."""
        if model is not None:
            self.model = model
        weights = self._policy_weights()
        if hasattr(self.llm, "apply_model"):  # vLLM >= 0.9
            self.llm.apply_model(lambda m: m.load_weights(weights))
        else:
            executor = self.llm.llm_engine.model_executor
            executor.driver_worker.worker.model_runner.model.load_weights(weights)
        self.llm.reset_prefix_cache()  # keys/values computed with the old weights are stale

    def generate(
        self, prompt_ids: list[list[int]], params: SamplingParams, generator: Generators = None
    ) -> Rollout:
        from vllm import SamplingParams as VllmSamplingParams

        self.load_weights()
        if isinstance(generator, list | tuple):  # one seed per prompt, from its own generator
            seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=g)) for g in generator]
        else:
            seeds = torch.randint(0, 2**31 - 1, (len(prompt_ids),), generator=generator).tolist()
        p, stop = params, params.stop
        per_prompt = [
            VllmSamplingParams(
                n=p.n,
                temperature=0.0 if p.greedy else p.temperature,
                top_p=p.top_p,
                top_k=p.top_k if p.top_k > 0 else -1,
                max_tokens=p.max_new_tokens,
                stop=stop or None,
                logprobs=0,  # just the sampled token's
                seed=seed,
            )
            for seed in seeds
        ]
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        outputs = self.llm.generate(prompts, per_prompt, use_tqdm=False)
        rows = [c for out in outputs for c in out.outputs]  # prompt-major
        width = max(1, max(len(c.token_ids) for c in rows))
        tokens = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros(len(rows), width)
        for i, c in enumerate(rows):
            ids = list(c.token_ids)
            tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            if c.logprobs:
                logprobs[i, : len(ids)] = torch.tensor([lp[t].logprob for lp, t in zip(c.logprobs, ids)])
        # vLLM stops at EOS / stop strings itself; `finish` re-derives mask and reasons the shared way.
        return finish(prompt_ids, tokens, logprobs, self.eos_ids, self.pad_id, self.tokenizer, stop)
