"""Where one of our training steps spends its time: rollout prefill / decode / sampling, and the
update's reference forward, policy forward, backward and optimizer step.

    python benchmarks/profile_step.py                      # 1 prompt x 8, 3 steps (first is warm-up)
    python benchmarks/profile_step.py --prompts 4 --ops    # 4 x 8, plus torch.profiler's op table
    python benchmarks/profile_step.py --mu 2               # two passes per batch, as the grpo preset

Timers wrap the trainer's and the fast engine's own methods from here (nothing is edited); each
phase is bracketed by the wrapped call, so the phases add up to the step minus small glue. With
`--ops`, the last step also runs under torch.profiler and prints the most expensive operators.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sft2grpo.config import Config  # noqa: E402
from sft2grpo.run import start  # noqa: E402
from sft2grpo.trainer import Trainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_trl import TimedCall  # noqa: E402  (the reward wrapper that keeps end_step/drain_metrics)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=1)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument(
        "--mu", type=int, default=1, help="optimisation passes per batch (presets from rung 4: 2)"
    )
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--autocast", default="off", choices=["off", "bf16"])
    ap.add_argument("--ops", action="store_true", help="torch.profiler op table for the last step")
    ap.add_argument("--ops-update", action="store_true", help="... for the last step's update only")
    ap.add_argument("--rollout-dtype", default="model", help="rollout.dtype (model, int8, bfloat16)")
    ap.add_argument("--no-prepack", action="store_true", help="tuning.prepack=false")
    args = ap.parse_args()

    cfg = Config()
    cfg.model.name, cfg.model.threads = args.model, args.threads
    cfg.task.size, cfg.task.eval_size = (args.steps + 1) * args.prompts, 0
    cfg.rollout.group_size, cfg.rollout.max_new_tokens = args.group, args.tokens
    cfg.objective.beta = args.beta
    cfg.train.steps, cfg.train.prompts_per_step = args.steps, args.prompts
    cfg.train.micro_batch_size, cfg.train.mu, cfg.train.lr = args.micro_batch, args.mu, 1e-5
    cfg.train.autocast = args.autocast
    cfg.rollout.dtype, cfg.tuning.prepack = args.rollout_dtype, not args.no_prepack
    cfg.eval.before = cfg.eval.after = False
    tr = Trainer(cfg, Path(tempfile.mkdtemp(prefix="profile-")))
    state = start(tr)
    state.order, state.pos = list(range(len(tr.task.train))), 0

    acc: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)

    def timed(name, fn, when=None):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            key = name(*a, **kw) if callable(name) else name
            if key is None or (when is not None and not when(*a, **kw)):
                return fn(*a, **kw)
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            acc[key] += time.perf_counter() - t0
            counts[key] += 1
            return out

        return wrapper

    eng = tr.engine
    if hasattr(eng, "_prefill"):  # the fast engine: split its time
        eng._prefill = timed("rollout.prefill", eng._prefill)
        eng._decode = timed("rollout.decode", eng._decode)
        eng._sample_token = timed("rollout.sample", eng._sample_token)
        eng._compact = timed("rollout.compact", eng._compact)
    eng.generate = timed("rollout.total", eng.generate)
    tr.reward_fn = TimedCall(tr.reward_fn, timed("reward", tr.reward_fn))
    # pi_ref's forward; "update.old" appears only for trainers that spend a forward on pi_old (this
    # one takes it from pass 0), so the script can time an older checkout too
    tr.no_grad_logprobs = timed(
        lambda model, *a, **k: "update.reference" if model is tr.reference else "update.old",
        tr.no_grad_logprobs,
    )
    # policy forward with grad (the reference forward runs under no_grad inside no_grad_logprobs)
    tr.logprobs = timed("update.policy_forward", tr.logprobs, when=lambda *a, **k: torch.is_grad_enabled())
    tr.optimizer.step = timed("update.optimizer", tr.optimizer.step)
    tr.update = timed("update.total", tr.update)
    backward = torch.Tensor.backward
    torch.Tensor.backward = timed("update.backward", backward)

    rows = []
    for s in range(args.steps):
        acc.clear()
        counts.clear()
        last = s == args.steps - 1
        prof = None
        if last and (args.ops or args.ops_update):
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        if prof is not None and args.ops:
            prof.__enter__()
        if prof is not None and args.ops_update:  # start once the rollout is done: ref + update
            sample = tr.sample

            def sample_then_profile(*a, _sample=sample, _prof=prof, **k):
                out = _sample(*a, **k)
                _prof.__enter__()
                return out

            tr.sample = sample_then_profile
        t0 = time.perf_counter()
        row, batch = tr.train_step(state)
        state.step += 1
        acc["step"] = time.perf_counter() - t0
        if prof is not None:
            prof.__exit__(None, None, None)
        acc["tokens"] = float(batch.mask.sum())
        acc["decode_calls"] = counts["rollout.decode"]
        rows.append(dict(acc))
        print(
            f"step {s + 1}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(acc.items()) if k not in ("tokens", "decode_calls"))
            + f"; {acc['tokens']:.0f} tokens, {acc['decode_calls']} decode steps",
            flush=True,
        )
    torch.Tensor.backward = backward
    keep = rows[1:] or rows
    print(f"\nmedian over steps 2..{args.steps} (threads={torch.get_num_threads()}):")
    for k in sorted(keep[0]):
        print(f"  {k:<24} {statistics.median(r.get(k, 0.0) for r in keep):8.3f}")
    if prof is not None:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
