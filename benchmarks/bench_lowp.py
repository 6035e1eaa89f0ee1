"""One decode step's matrix products at each weight precision and layout, by number of rows.

    python benchmarks/bench_lowp.py                 # SmolLM2-135M's MLP shapes, 30 layers, 2 threads
    python benchmarks/bench_lowp.py --rows 1,8,32 --threads 1

Times the 30 up-projections of a 135M model ([1536, 576] each, 106 MB in fp32, more than the
CPU's cache, so each product streams its weight from memory as a decode step does) for a batch of
`rows` hidden states: fp32 `F.linear` (the policy), fp32 as `W @ x^T`, fp32 prepacked for oneDNN
(tuning.prepack), bf16 `F.linear` (rollout.dtype=bfloat16) and the int8 weight-only kernel with
bf16 activations (rollout.dtype=int8). Best of 5 timings of `--repeats` passes each. Timings, not
assertions.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from sft2grpo.rollout.lowp import int8_linear, prepack, prepacked_linear, quantize_int8


def per_call_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeats * 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,4,8,16,32,64", help="batch sizes (decode rows)")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--shape", default="1536,576", help="out,in of each weight")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out, inp = (int(x) for x in args.shape.split(","))
    g = torch.Generator().manual_seed(0)
    fp32 = [torch.randn(out, inp, generator=g) for _ in range(args.layers)]
    bf16 = [w.bfloat16() for w in fp32]
    int8 = [quantize_int8(w) for w in fp32]
    packed = [prepack(w) for w in fp32]
    print(f"{args.layers} weights of [{out}, {inp}], {torch.get_num_threads()} threads; ms for all of them")
    cols = ("fp32", "W@x^T", "prepacked", "bf16", "int8", "fp32/int8", "fp32/prepacked")
    print(f"{'rows':>5}" + "".join(f"{c:>{max(9, len(c) + 1)}}" for c in cols))
    for rows in (int(r) for r in args.rows.split(",")):
        x = torch.randn(rows, inp, generator=g)
        xb = x.bfloat16()
        t32 = per_call_ms(lambda x=x: [F.linear(x, w) for w in fp32], args.repeats)
        tt = per_call_ms(lambda x=x: [(w @ x.t()).t() for w in fp32], args.repeats)
        tp = per_call_ms(lambda x=x: [prepacked_linear(x, w, None) for w in packed], args.repeats)
        t16 = per_call_ms(lambda xb=xb: [F.linear(xb, w) for w in bf16], args.repeats)
        t8 = per_call_ms(lambda x=x: [int8_linear(x, q, s) for q, s in int8], args.repeats)
        print(
            f"{rows:>5}{t32:>9.2f}{tt:>9.2f}{tp:>10.2f}{t16:>9.2f}{t8:>9.2f}"
            f"{t32 / t8:>9.2f}x{t32 / tp:>14.2f}x"
        )


if __name__ == "__main__":
    main()
