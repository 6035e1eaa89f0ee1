"""Offline rejection sampling, beside evaluation: reference completions for tasks that cannot
write them. `sft2grpo sample` draws n answers per training problem, keeps the right ones, and
writes them as prompt/completion/answer rows that `sft2grpo sft` trains on.

    sft2grpo sample --output kept.jsonl --n 8 --keep 1
    sft2grpo sft task.name=kept.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import Config
from .models import chat_prompt_ids

__all__ = ["sample_completions"]


def sample_completions(cfg: Config, output: Path, n: int = 8, keep: int = 1, problems: int = 0) -> dict:
    """Draw `n` completions of each training problem from cfg.model (rollout.temperature, top_p,
    top_k, max_new_tokens), keep up to `keep` distinct ones the reward marks right, and write them
    as prompt / completion / answer rows to `output` (JSONL), with the task's held-out problems
    (prompt and answer, no completion) in its `.eval.jsonl` sibling, so that `sft2grpo sft
    task.name=<output>` trains on the kept answers and is scored on the task's own held-out split.
    `problems` > 0 takes only the first that many training problems. Returns counts."""
    from .components import build_components
    from .rollout.base import SamplingParams, decode_completions, unpadded_ids
    from .tasks import eval_sibling
    from .tracking import Progress
    from .trainer import prompt_generator, seed_everything

    seed_everything(cfg.train.seed)
    parts = build_components(cfg)
    examples = parts.task.train[:problems] if problems > 0 else parts.task.train
    params = SamplingParams.of(cfg.rollout, n)
    per_call = max(1, cfg.eval.batch_size // n)  # rows per generate call near batch_size
    rows, solved = [], 0
    bar = Progress(len(examples), enabled=cfg.log.progress, desc="sample")
    for start in range(0, len(examples), per_call):
        chunk = examples[start : start + per_call]
        prompts = chat_prompt_ids(parts.tokenizer, [e.chat for e in chunk], cfg.model.system_prompt)
        generators = [prompt_generator(cfg.train.seed, start + i) for i in range(len(chunk))]
        ro = parts.eval_engine.generate(prompts, params, generators)  # rows prompt-major: chunk[0] x n, ...
        texts = decode_completions(parts.tokenizer, ro.completion_ids, ro.mask)
        owners = [e for e in chunk for _ in range(n)]
        res = parts.reward_fn(texts, owners, completion_ids=unpadded_ids(ro.completion_ids, ro.mask))
        for i, e in enumerate(chunk):
            right = [texts[i * n + j] for j in range(n) if bool(res.correct[i * n + j])]
            kept = list(dict.fromkeys(t.strip() for t in right if t.strip()))[:keep]
            solved += bool(kept)
            rows += [{"prompt": e.chat, "completion": t, "answer": e.answer} for t in kept]
            bar.update(kept=len(rows))
    bar.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    held = [{"prompt": e.chat, "answer": e.answer} for e in parts.task.eval]
    for path, data in ((output, rows), (eval_sibling(output), held)):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(x) + "\n" for x in data), encoding="utf-8")
        tmp.replace(path)  # whole or not at all
    return {"problems": len(examples), "solved": solved, "rows": len(rows), "heldout": len(held)}
