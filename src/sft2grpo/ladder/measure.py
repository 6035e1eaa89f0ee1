"""The ladder's measure process, `python -m sft2grpo.ladder measure SPEC.json`: everything that needs
a model, outside the ladder's own process (run.py starts it, `run.measure_runs`). For the base
model, its held-out accuracy (greedy, and sampled); for every finished run, KL(trained || base)
(`kl_to_base`) and its sampled accuracy (`write_sampled`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .plan import read_json, write_json


def measured(folder: Path, eval_samples: int) -> bool:
    """Whether the measure process is done with a run folder (or base/): KL (runs only) and, with
    eval_samples > 0, the sampled evaluation with that many samples per problem."""
    if folder.name != "base" and not (folder / "kl.json").exists():
        return False
    if not eval_samples:
        return True
    done = read_json(folder / "sampled.json") or {}
    return done.get("samples_per_problem") == eval_samples and (folder / "eval_sampled.jsonl").exists()


def write_sampled(folder: Path, comp, cfg, k: int, seed: int) -> float:
    """sampled.json (metrics) and eval_sampled.jsonl (per problem) in `folder`; returns the accuracy."""
    from ..evaluate import evaluate_sampled, write_jsonl

    t0 = time.perf_counter()
    res = evaluate_sampled(comp.eval_engine, comp.tokenizer, comp.task, comp.reward_fn, cfg, k, seed)
    write_jsonl(folder / "eval_sampled.jsonl", res.samples)
    write_json(folder / "sampled.json", {**res.metrics, "seed": seed, "time_s": time.perf_counter() - t0})
    return res.metrics["accuracy"]


def kl_to_base(policy, base, examples: list, cfg, samples: int, seed: int = 0) -> dict[str, float]:
    """Per-token KL(policy || base) on `samples` completions of `policy` (its Components) per example.

    The policy samples at the rollout temperature; both models score the same tokens, and the mean
    over every completion token of Schulman's k3 = exp(d) - d - 1, d = log pi_base - log pi (>= 0,
    unbiased for each token's KL given its prefix, the estimator GRPO's loss uses) is the number
    reported; the mean of k1 = -d is kept too (unbiased, noisier). Zero for policy == base.
    """
    import torch

    from .. import objective
    from ..models import chat_prompt_ids, group_logprobs
    from ..rollout.base import SamplingParams

    dev = next(policy.model.parameters()).device
    ids = chat_prompt_ids(policy.tokenizer, [e.chat for e in examples], cfg.model.system_prompt)
    params = SamplingParams(
        n=samples, max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature
    )
    ro = policy.eval_engine.generate(ids, params, torch.Generator().manual_seed(seed))
    row_prompt = torch.arange(len(ids), device=dev).repeat_interleave(samples)  # [B]
    comp, mask = ro.completion_ids.to(dev), ro.mask.float().to(dev)  # [B, T]
    with torch.no_grad():
        lp = group_logprobs(policy.model, ids, row_prompt, comp, mask, cfg.rollout.temperature)  # [B, T]
        ref = group_logprobs(base, ids, row_prompt, comp, mask, cfg.rollout.temperature)  # [B, T]
    tokens = mask.sum().clamp(min=1)
    k3 = objective.kl_penalty(lp, ref, "k3")  # [B, T]
    return {
        "kl_k3": float((k3 * mask).sum() / tokens),
        "kl_k1": float(((lp - ref) * mask).sum() / tokens),
        "tokens": int(mask.sum()),
        "prompts": len(ids),
        "samples": samples,
    }


def measure(spec_path: Path) -> None:
    """Write <out>/base/eval.json (held-out metrics of the base model) and <run>/kl.json for each run
    listed in the spec that `measure_runs` wrote."""
    from dataclasses import replace

    from ..components import build_components
    from ..config import LoraConfig, load_config
    from ..evaluate import evaluate_heldout, write_jsonl

    spec = json.loads(spec_path.read_text())
    out = spec_path.parent
    cfg = load_config(None, [*spec["shared"], "log.progress=false"])
    # trained models are saved with LoRA merged in, so every model here is a plain one
    cfg = replace(cfg, model=replace(cfg.model, lora=LoraConfig(enabled=False)))
    base = build_components(cfg)
    first = spec.get("base", True)  # with several measure processes, only the first measures the base
    if first and not (out / "base" / "eval.json").exists():
        t0 = time.perf_counter()
        res = evaluate_heldout(base.eval_engine, base.tokenizer, base.task, base.reward_fn, cfg)
        (out / "base").mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "base" / "eval_samples.jsonl", res.samples)
        write_json(out / "base" / "eval.json", {**res.metrics, "time_s": time.perf_counter() - t0})
        print(f"base: held-out accuracy {res.metrics['accuracy']:.3f}", flush=True)
    k = spec.get("eval_samples", 0)
    if first and k and not measured(out / "base", k):
        # one sampled evaluation of the base model (seed 0), paired with every seed's run
        acc = write_sampled(out / "base", base, cfg, k, seed=0)
        print(f"base: sampled accuracy {acc:.3f} ({k} per problem)", flush=True)
    examples = base.task.eval[: spec["kl_prompts"]]
    for item in spec["runs"]:
        d, seed = Path(item["dir"]), int(item["seed"])
        t0 = time.perf_counter()
        run_cfg = replace(cfg, model=replace(cfg.model, name=str(d / "model")))
        policy = build_components(run_cfg, task=base.task)
        if not (d / "kl.json").exists():
            kl = kl_to_base(policy, base.model, examples, cfg, spec["kl_samples"])
            write_json(d / "kl.json", {**kl, "time_s": time.perf_counter() - t0})
            print(f"{d.name}: KL k3 {kl['kl_k3']:.4g} per token", flush=True)
        if k and not measured(d, k):
            acc = write_sampled(d, policy, cfg, k, seed)
            print(f"{d.name}: sampled accuracy {acc:.3f} ({k} per problem)", flush=True)
        del policy
