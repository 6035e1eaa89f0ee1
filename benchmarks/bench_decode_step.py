"""One whole decode step of the fast engine, by number of rows and by the weights it reads.

    python benchmarks/bench_decode_step.py                    # 135M model, rows 1..64, 2 threads
    python benchmarks/bench_decode_step.py --rows 8,32 --cache 200

Calls `FastEngine._decode` (all layers, attention over `--cache` cached tokens, the LM head) on
random cache contents for `rows` live rows, with the weights each setting reads: the int8 copy
(rollout.dtype=int8, for every row count), the fp32 copy prepacked for oneDNN (tuning.prepack) and
the policy's fp32 weights as F.linear reads them (tuning.prepack=false). Best of `--repeats`, ms.
This is the cost table behind LOW_PRECISION_MAX_ROWS and PREPACK_MIN_ROWS; a rollout's time is the
sum of such steps over its shrinking batch. Timings, not assertions.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sft2grpo.config import ModelConfig  # noqa: E402
from sft2grpo.models import load_policy  # noqa: E402
from sft2grpo.rollout import make_engine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", default="1,4,8,16,24,32,48,64")
    ap.add_argument("--cache", type=int, default=100, help="tokens already in the KV cache")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model, tok = load_policy(ModelConfig(name=args.model, threads=args.threads))
    engines = {
        "int8": make_engine("fast", model, tok, "int8", prepack=False),
        "prepacked": make_engine("fast", model, tok),
        "fp32": make_engine("fast", model, tok, prepack=False),
    }
    engines["int8"].low_max_rows = 10**9  # the copy at every row count, to see where it stops paying
    print(f"ms per decode step, {args.cache} cached tokens, {torch.get_num_threads()} threads")
    print(f"{'rows':>5}" + "".join(f"{n:>11}" for n in engines))
    e = engines["fp32"]
    slot = args.cache
    with torch.inference_mode():
        for engine in engines.values():
            engine.refresh_copy()  # rows=None: every copy the engine has
        for rows in (int(r) for r in args.rows.split(",")):
            kv = torch.randn(2, len(e.layers), rows, e.n_kv, slot + 1, e.head_dim)
            tok_ids = torch.randint(0, 1000, (rows,))
            pos = torch.full((rows,), slot)
            bias = torch.zeros(rows, 1, 1, slot + 1)
            times = []
            for engine in engines.values():
                engine._decode(tok_ids, pos, kv, slot, bias)  # warm-up
                best = float("inf")
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    engine._decode(tok_ids, pos, kv, slot, bias)
                    best = min(best, time.perf_counter() - t0)
                times.append(best * 1e3)
            print(f"{rows:>5}" + "".join(f"{t:>11.1f}" for t in times), flush=True)


if __name__ == "__main__":
    main()
