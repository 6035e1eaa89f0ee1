"""Packed vs padded log-probs in the update, side by side on the same rollouts.

    python benchmarks/bench_packing.py                          # make run's shape: 4 prompts x 8, 64 tokens, bf16
    python benchmarks/bench_packing.py --prompts 1 --autocast off --micro-batch 8   # make bench's shape

Samples a few batches with the trainer's own rollout (real model, real prompts), then times, on each
batch and alternating which goes first, the update's work for `train.packing=true` and `=false`:
the policy's forward + backward over the micro-batches, and one no-grad forward (what the
reference costs). Prints medians, ours-packed / padded ratios, the share of real tokens among
the padded positions, and the largest log-prob difference between the two.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sft2grpo.config import Config  # noqa: E402
from sft2grpo.run import start  # noqa: E402
from sft2grpo.trainer import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--autocast", default="bf16", choices=["off", "bf16"])
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    cfg = Config()
    cfg.model.name = args.model
    cfg.task.size, cfg.task.eval_size = args.batches * args.prompts, 0
    cfg.rollout.group_size, cfg.rollout.max_new_tokens = args.group, args.tokens
    cfg.train.prompts_per_step, cfg.train.micro_batch_size = args.prompts, args.micro_batch
    cfg.train.autocast = args.autocast
    cfg.eval.before = cfg.eval.after = False
    tr = Trainer(cfg, Path(tempfile.mkdtemp(prefix="bench-packing-")))
    state = start(tr)
    state.order, state.pos = list(range(len(tr.task.train))), 0
    batches = [tr.collect(state)[0] for _ in range(args.batches)]
    tr.model.train()

    def run(batch, packing: bool) -> tuple[float, float, torch.Tensor]:
        tr.cfg.train.packing = tr.policy_logprobs.packing = packing
        mbs = tr.micro_batches(batch)
        t0 = time.perf_counter()
        for rows in mbs:
            logp = tr.logprobs(None, batch, rows)
            (logp * batch.mask[rows, : logp.shape[1]]).sum().backward()
        t1 = time.perf_counter()
        lp = tr.no_grad_logprobs(tr.model, batch, mbs)
        t2 = time.perf_counter()
        tr.model.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, lp

    times: dict[tuple[bool, str], list[float]] = {
        (p, k): [] for p in (True, False) for k in ("grad", "nograd")
    }
    gap = 0.0
    errors: dict[bool, list[float]] = {}
    real = padded = 0
    for r in range(args.rounds):
        for b, batch in enumerate(batches):
            lps = {}
            for packing in (True, False) if (r + b) % 2 == 0 else (False, True):
                g, n, lps[packing] = run(batch, packing)
                times[(packing, "grad")].append(g)
                times[(packing, "nograd")].append(n)
            gap = max(gap, ((lps[True] - lps[False]).abs() * batch.mask).max().item())
            if r == 0 and args.autocast != "off":  # how far each is from fp32, on the same tokens
                tr.cfg.train.autocast = "off"
                exact = run(batch, False)[2]
                tr.cfg.train.autocast = args.autocast
                for packing in (True, False):
                    err = (lps[packing] - exact).abs()[batch.mask.bool()]
                    errors[packing] = errors.get(packing, []) + err.tolist()
            if r == 0:
                for rows in tr.micro_batches(batch):
                    lengths = batch.mask[rows].sum(1)
                    real += int(lengths.sum())
                    padded += len(rows) * int(lengths.max())

    print(
        f"{args.prompts} prompts x {args.group}, <= {args.tokens} tokens, micro-batches of {args.micro_batch}, "
        f"autocast {args.autocast}, {args.batches} batches x {args.rounds} rounds, threads {torch.get_num_threads()}"
    )
    print(f"completion tokens: {real} real of {padded} padded positions ({100 * real / max(padded, 1):.0f}%)")
    for k, what in (
        ("grad", "policy forward + backward"),
        ("nograd", "no-grad forward (reference)"),
    ):
        a, b = statistics.median(times[(True, k)]), statistics.median(times[(False, k)])
        print(f"{what:<40} packed {a:6.2f} s  padded {b:6.2f} s  packed/padded {a / b:.2f}x")
    print(f"largest |log-prob difference| packed vs padded: {gap:.2e}")
    for packing, err in errors.items():
        e = torch.tensor(err)
        print(
            f"{'packed' if packing else 'padded'} {args.autocast} vs fp32 log-probs: "
            f"mean |diff| {e.mean():.2e}, max {e.max():.2e}"
        )


if __name__ == "__main__":
    main()
