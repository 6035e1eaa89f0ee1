"""Our SFT step vs TRL's SFTTrainer: same model, rows, batch and settings, side by side.

    python benchmarks/bench_sft.py                       # 16 rows a step, 2 warm-up + 8 timed steps each
    python benchmarks/bench_sft.py --warmup 2 --steps 3  # a quick look
    python benchmarks/bench_sft.py --rounds 2            # ours, TRL, TRL, ours: load hits both alike
    python benchmarks/bench_sft.py --trl-packing bfd     # TRL packs the rows itself (packing=True, BFD)
    python benchmarks/bench_sft.py --checkpointing       # gradient checkpointing on both sides

Needs `trl` (only here, not a dependency of the package): `make bench` builds `.venv-bench` with it.

Each trainer runs in its own subprocess, so its peak RSS (ru_maxrss) is its own. Both load the same
safetensors folder (the embedded SmolLM2-135M-Instruct, converted once from its GGUF) in fp32 on the
CPU and train on the same rows in the same order: the first `--batch x (--warmup + --steps)`
reasoning-gym chain_sum training problems with their worked solutions (`load_task(...,
supervised=True)`), the prompt through the model's chat template, the completion the worked
solution followed by eos. Ours is the `Trainer` with given rows (rung 0) on configs/sft0.yaml with
`train.autocast=off` (fp32), `train.packing=true` (each micro-batch one padding-free row: every
prompt and completion, a block-diagonal mask, the LM head only on the completion positions). TRL is
SFTTrainer on prompt/completion text rows (the prompt already templated, so TRL adds eos and
tokenizes prompt + completion itself; the first batch is checked token for token against ours),
`completion_only_loss=True`, `bf16=False`, and by default `padding_free=True`: each batch of
`--micro-batch` rows flattened into one row with `position_ids` restarting at every row, the path
TRL's `packing=True` (BFD) trains through, here fed the same rows per step as ours. With
`--trl-packing bfd`, TRL packs the dataset itself (`packing=True`, best-fit decreasing into bins of
about one step's tokens, one bin a step): its steps then hold other rows than ours, so the loss
check does not apply and tokens/s is the figure to compare.

Same on both sides: `--batch` rows per optimizer step (16) in micro-batches of `--micro-batch`
(default: the whole step) with gradient accumulation, AdamW (fused, betas 0.9/0.999, no weight decay), lr `--lr` held constant,
gradient clipping at 1.0, the loss a mean over the step's completion tokens, gradient
checkpointing off (TRL's default is on; `--checkpointing` turns it on for both), one torch thread
count (`--threads`, 0 = torch's default, the same in both processes).

Per step, both sides are measured alike from this script (the trainers' code is untouched): step
time is the wall time between the ends of consecutive optimizer steps; tokens are counted on the
batch the step trains on (ours: the given rows `Trainer.demonstrations` builds; TRL: the inputs of its
`compute_loss`), completion tokens (those with a loss, eos included) and all tokens (prompts too).
The first `--warmup` steps are dropped; the table shows the median step time over the remaining
steps of every round, tokens/s as total tokens over total step time, and the peak RSS. The loss of
the first batch (before any update) is compared between the two (in fp32 they agree to ~1e-7; the
check fails above 1e-3), and so is the loss of every later step: the same rows and the same update
give the same numbers throughout, so the two sides time the same work.

Where the work differs (TRL 1.16 on a CPU): TRL's fused LM head (`add_fused_lm_head`) scores only
the labelled positions on CUDA/XPU with Triton, but elsewhere every position of the packed row,
prompts included, in [4096 x 32768] tiles, computing entropy and top-1 for its metrics as well, and
recomputes the tiles in backward; ours runs the LM head on the completion positions alone. TRL
tokenizes the whole dataset before training; ours tokenizes each step's rows inside the step.

The figures go to `--json` (default bench.json), merged into what is there: flat keys
`sft_step_time_ratio`, `sft_tokens_per_s_ratio` (completion tokens), `sft_all_tokens_per_s_ratio`,
`sft_peak_rss_ratio` (ours / TRL), `sft_first_loss_abs_diff`, `sft_step_loss_max_abs_diff`,
`sft_same_rows`, and the details under `sft`. Timings, not assertions: this machine is noisy, which is why ratios come from one
invocation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_trl import model_folder, peak_rss_mb, ratio, run_worker, versions  # noqa: E402  (stdlib-only at import)

TRL_MISSING = (
    "bench_sft: TRL is not installed in this Python ({exe}). Run `make bench`, which builds .venv-bench "
    "with trl==1.16.0, or `pip install trl==1.16.0` into a benchmark environment (not the package's)."
)
LOSS_TOL = 1e-3  # fp32 on both sides: the first batch's losses agree far closer than this


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny, a model folder or a .gguf")
    ap.add_argument(
        "--task", default="chain_sum", help="a reasoning-gym task with worked solutions, or a file"
    )
    ap.add_argument("--batch", type=int, default=16, help="rows per optimizer step, both sides")
    ap.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="rows per forward/backward, both sides (default: --batch)",
    )
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the figures")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per trainer and round (after warm-up)")
    ap.add_argument("--lr", type=float, default=5e-5, help="constant learning rate (configs/sft0.yaml's)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads, both sides (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--rounds", type=int, default=1, help="repeat both trainers, alternating which goes first"
    )
    ap.add_argument("--only", default="ours,trl", help="which trainers to run (ours, trl)")
    ap.add_argument(
        "--trl-packing",
        default="padding_free",
        choices=["padding_free", "bfd"],
        help="padding_free: TRL flattens each batch of the same rows as ours (padding_free=True); "
        "bfd: packing=True, TRL bins the rows itself (other rows per step: no loss check)",
    )
    ap.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing on both sides (default off)"
    )
    ap.add_argument("--json", default="bench.json", help="merge the figures into this file ('' for nowhere)")
    ap.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.micro_batch is None:
        args.micro_batch = args.batch
    if args.batch < 1 or args.micro_batch < 1 or args.batch % args.micro_batch:
        ap.error(f"--micro-batch ({args.micro_batch}) must divide --batch ({args.batch}), both >= 1")
    if args.steps < 1 or args.warmup < 0:
        ap.error(f"--steps ({args.steps}) must be >= 1 and --warmup ({args.warmup}) >= 0")
    if args.rounds < 1:
        ap.error(f"--rounds ({args.rounds}) must be >= 1")
    args.which = [w.strip() for w in args.only.split(",") if w.strip()]
    if not args.which or any(w not in ("ours", "trl") for w in args.which):
        ap.error(f"--only: '{args.only}' must list ours and/or trl")
    args.total_steps = args.warmup + args.steps
    args.rows = args.batch * args.total_steps
    return args


# ---------------------------------------------------------------------------------------------------
# Shared by the workers: the config and rows, and a clock for the steps.


def our_config(args, folder: str):
    """configs/sft0.yaml as this benchmark runs it; the TRL worker reads its task section too, so both
    sides train on the same rows."""
    from sft2grpo.config import load_config

    overrides = [
        f"model.name={folder}",
        "model.dtype=float32",
        f"model.threads={args.threads}",
        f"task.name={args.task}",
        f"task.size={args.rows}",
        "task.eval_size=0",
        "task.val_size=0",
        f"task.seed={args.seed}",
        f"train.steps={args.total_steps}",
        f"train.prompts_per_step={args.batch}",
        f"train.micro_batch_size={args.micro_batch}",
        "train.packing=true",
        "train.autocast=off",
        f"train.gradient_checkpointing={str(args.checkpointing).lower()}",
        f"train.lr={args.lr}",
        "train.schedule=constant",
        "train.warmup_steps=0",
        "train.weight_decay=0.0",
        "train.adam_beta1=0.9",
        "train.adam_beta2=0.999",
        "train.max_grad_norm=1.0",
        "train.mu=1",
        f"train.seed={args.seed}",
        "eval.before=false",
        "eval.after=false",
        "eval.every=0",
        "log.plots=false",
        "log.progress=false",
        "checkpoint.every=0",
    ]
    return load_config("sft0", overrides)


class StepClock:
    """One row per optimizer step: its wall time (end of the previous step to the end of this one),
    the tokens counted into `acc` meanwhile, and the process's peak RSS so far."""

    def __init__(self):
        import torch

        self.sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        self.rows: list[dict] = []
        self.acc = {"tokens": 0, "completion_tokens": 0, "rows": 0}
        self.last = time.perf_counter()

    def start(self) -> None:
        self.sync()
        self.last = time.perf_counter()

    def end_step(self, **extra) -> None:
        self.sync()
        now = time.perf_counter()
        row = {"step_s": now - self.last, **self.acc, "peak_rss_mb": peak_rss_mb(), **extra}
        self.rows.append(row)
        self.acc = dict.fromkeys(self.acc, 0)
        self.last = now
        print(
            f"  step {len(self.rows)}: {row['step_s']:.2f} s, {row['rows']} rows, {row['completion_tokens']} "
            f"completion / {row['tokens']} tokens, peak RSS {row['peak_rss_mb']:.0f} MiB",
            flush=True,
        )


def first_rows(batch) -> list[list[int]]:
    """Our batch's rows as token lists, prompt then completion (eos included), in example order."""
    lengths = batch.mask.sum(1).long().tolist()
    return [
        list(batch.prompts[p]) + batch.completion_ids[i, : lengths[i]].tolist()
        for i, p in enumerate(batch.row_prompt.tolist())
    ]


# ---------------------------------------------------------------------------------------------------
# Worker: ours.


def run_ours(args) -> dict:
    import torch

    from sft2grpo import run, sft
    from sft2grpo.trainer import Trainer

    cfg = our_config(args, args.folder)
    clock = StepClock()
    first: dict = {}

    def counted(state):
        """Trainer.demonstrations, counting the tokens of the rows the step trains on."""
        batch = build(state)
        examples = batch.examples
        completion = int(batch.mask.sum().item())
        clock.acc["completion_tokens"] += completion
        clock.acc["tokens"] += completion + sum(len(batch.prompts[p]) for p in batch.row_prompt.tolist())
        clock.acc["rows"] += len(examples)
        first.setdefault("rows", first_rows(batch))
        return batch

    with tempfile.TemporaryDirectory(prefix="bench-sft-ours-") as tmp:
        t0 = time.perf_counter()
        tr = Trainer(sft.supervised_config(cfg), Path(tmp))
        load_s = time.perf_counter() - t0
        state = run.start(tr)
        state.order, state.pos = list(range(len(tr.task.train))), 0  # the rows in order, as TRL reads them
        build, tr.demonstrations = tr.demonstrations, counted
        clock.start()
        for _ in range(args.total_steps):
            row, _ = tr.train_step(state)
            state.step += 1
            clock.end_step(loss=float(row["loss"]))
    return {
        "rows": clock.rows,
        "load_s": load_s,
        "first_loss": clock.rows[0]["loss"],
        "first_rows": first.get("rows"),
        "threads": torch.get_num_threads(),
        "bf16_autocast": bool(tr.bf16),
        "packing": cfg.train.packing,
        "device": str(tr.device),
    }


# ---------------------------------------------------------------------------------------------------
# Worker: TRL.


def prompt_text(tokenizer, chat, system_prompt: str | None) -> str:
    """The prompt as `sft2grpo.models.chat_prompt_ids` templates it, as text (TRL tokenizes it)."""
    messages = [{"role": "user", "content": chat}] if isinstance(chat, str) else list(chat)
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n\n".join(m["content"] for m in messages)


def split_packed(input_ids: list[int], position_ids: list[int]) -> list[list[int]]:
    """A padding-free row back into its sequences: each starts where position_ids is 0."""
    out: list[list[int]] = []
    for tok, pos in zip(input_ids, position_ids):
        if pos == 0 or not out:
            out.append([])
        out[-1].append(tok)
    return out


def run_trl(args) -> dict:
    import datasets
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from sft2grpo.tasks import load_task

    warnings.filterwarnings("ignore", category=FutureWarning)
    datasets.disable_progress_bars()  # TRL's dataset preparation: a bar per pass otherwise
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = our_config(args, args.folder)
    examples = load_task(cfg.task, supervised=True).train[: args.rows]
    tok = AutoTokenizer.from_pretrained(args.folder, local_files_only=True)
    rows = [
        {"prompt": prompt_text(tok, e.chat, cfg.model.system_prompt), "completion": e.completion}
        for e in examples
    ]
    bfd = args.trl_packing == "bfd"
    pack_length = None
    if bfd:  # bins of about one step's tokens, one bin a step
        sizes = [len(tok(r["prompt"] + r["completion"] + tok.eos_token)["input_ids"]) for r in rows]
        pack_length = -(-sum(sizes) // args.total_steps)
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-sft-trl-"),
        per_device_train_batch_size=1 if bfd else args.micro_batch,
        gradient_accumulation_steps=1 if bfd else args.batch // args.micro_batch,
        max_steps=args.total_steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",  # ours is torch's fused AdamW too
        bf16=False,  # fp32, like ours (TRL's default is bf16)
        gradient_checkpointing=args.checkpointing,  # TRL's default is on; ours off
        completion_only_loss=True,
        packing=bfd,
        packing_strategy="bfd",
        padding_free=True,
        max_length=pack_length,  # None: padding-free without packing does not truncate
        shuffle_dataset=False,
        train_sampling_strategy="sequential",  # the rows in dataset order, like ours
        seed=args.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,  # CPU: nothing to pin (and a warning otherwise)
        model_init_kwargs={"dtype": "float32"},
    )
    clock = StepClock()
    first: dict = {}
    parts: list[tuple[float, int, bool]] = []  # this step's (loss, completion tokens, normalised by the step)
    t0 = time.perf_counter()
    trainer = SFTTrainer(
        model=args.folder, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok
    )
    load_s = time.perf_counter() - t0
    compute_loss = trainer.compute_loss

    def counted_loss(model, inputs, *a, num_items_in_batch=None, **kw):
        """TRL's compute_loss, counting the tokens it trains on and keeping each step's loss."""
        labels = inputs["labels"]
        n = int((labels != -100).sum())
        if "position_ids" in inputs and "attention_mask" not in inputs:  # padding-free: one row
            tokens = int(inputs["position_ids"].shape[1])
        else:
            tokens = int(inputs["attention_mask"].sum())
        if not clock.rows:  # the first step's rows, over its micro-batches
            ids, pos = inputs["input_ids"][0].tolist(), inputs["position_ids"][0].tolist()
            first.setdefault("rows", []).extend(split_packed(ids[:tokens], pos[:tokens]))
        loss = compute_loss(model, inputs, *a, num_items_in_batch=num_items_in_batch, **kw)
        clock.acc["completion_tokens"] += n
        clock.acc["tokens"] += tokens
        clock.acc["rows"] += (
            int((inputs["position_ids"][0][:tokens] == 0).sum()) if "position_ids" in inputs else 0
        )
        parts.append((float(loss.detach()), n, num_items_in_batch is not None))
        return loss

    trainer.compute_loss = counted_loss

    class Clocked(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            clock.start()

        def on_step_end(self, *a, **kw):
            clock.end_step(loss=step_loss(parts))
            parts.clear()

    trainer.add_callback(Clocked())
    trainer.train()
    shutil.rmtree(config.output_dir, ignore_errors=True)
    return {
        "rows": clock.rows,
        "load_s": load_s,
        "first_loss": clock.rows[0]["loss"],
        "first_rows": first.get("rows"),
        "threads": torch.get_num_threads(),
        "gradient_checkpointing": bool(config.gradient_checkpointing),
        "padding_free": bool(trainer.padding_free),
        "packing": bool(config.packing),
        "pack_length": pack_length,
        "completion_only_loss": bool(trainer.completion_only_loss),
        "loss_type": config.loss_type,
        "optim": str(getattr(config.optim, "value", config.optim)),
        "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
        "device": str(trainer.accelerator.device),
    }


# ---------------------------------------------------------------------------------------------------
# The parent: the machine, the workers, the table and bench.json. The helpers below are pure (tested
# in tests/test_bench_sft.py without TRL or a model).


def step_loss(parts: list[tuple[float, int, bool]]) -> float | None:
    """A TRL step's loss from its micro-batches' (loss, completion tokens, normalised): each already
    divided by the step's completion tokens (TRL passes num_items_in_batch) adds up; micro-batch
    means are weighted by their tokens."""
    if not parts:
        return None
    if all(normalised for _, _, normalised in parts):
        return sum(loss for loss, _, _ in parts)
    return sum(loss * n for loss, n, _ in parts) / max(1, sum(n for _, n, _ in parts))


def max_loss_diff(ours: list[float | None], trl: list[float | None]) -> float | None:
    """The largest |ours - TRL| over the steps both logged: the same rows and the same update give
    the same loss at every step, not only the first."""
    pairs = [(a, b) for a, b in zip(ours, trl) if a is not None and b is not None]
    return max(abs(a - b) for a, b in pairs) if pairs else None


def cpu_info(text: str | None = None) -> dict:
    """The CPU's model name and the flags that decide fp32/bf16 speed, from /proc/cpuinfo's text."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    if not model:
        import platform

        model = platform.processor() or platform.machine() or "unknown"
    return {"model": model, **{f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}}


def summarise(runs: list[dict], warmup: int) -> dict:
    """One side's figures over the steps after warm-up of every round: the median step time,
    tokens/s as total tokens over total step time, tokens per step, and the peak RSS."""
    rows = [r for run in runs for r in run["rows"][warmup:]]
    seconds = sum(r["step_s"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    completion = sum(r["completion_tokens"] for r in rows)
    return {
        "step_s": statistics.median(r["step_s"] for r in rows),
        "completion_tokens_per_s": completion / seconds if seconds else 0.0,
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "completion_tokens_per_step": statistics.median(r["completion_tokens"] for r in rows),
        "tokens_per_step": statistics.median(r["tokens"] for r in rows),
        "peak_rss_mb": max(run["rows"][-1]["peak_rss_mb"] for run in runs),
        "steps_measured": len(rows),
    }


ROWS = [
    ("step time, median (s)", "step_s", "{:.2f}"),
    ("completion tokens / s", "completion_tokens_per_s", "{:.0f}"),
    ("all tokens / s", "tokens_per_s", "{:.0f}"),
    ("completion tokens / step", "completion_tokens_per_step", "{:.0f}"),
    ("all tokens / step", "tokens_per_step", "{:.0f}"),
    ("peak RSS (MiB)", "peak_rss_mb", "{:.0f}"),
]


def table(ours: dict, trl: dict) -> tuple[list[str], dict]:
    """The side-by-side table's lines and the ratios ours / TRL by key."""
    lines = [f"{'metric':<28} {'ours':>10} {'TRL':>10} {'ours/TRL':>9}"]
    ratios = {}
    for label, key, fmt in ROWS:
        r = ratios[key] = ratio(ours[key], trl[key])
        shown = f"{r:.2f}x" if r is not None else "-"
        lines.append(f"{label:<28} {fmt.format(ours[key]):>10} {fmt.format(trl[key]):>10} {shown:>9}")
    return lines, ratios


def loss_check(ours: float | None, trl: float | None, tol: float = LOSS_TOL) -> dict:
    """The first batch's loss on both sides (before any update): the same rows give the same number."""
    if ours is None or trl is None:
        return {"ours": ours, "trl": trl, "abs_diff": None, "agree": None}
    diff = abs(ours - trl)
    return {"ours": ours, "trl": trl, "abs_diff": diff, "agree": diff <= tol}


def flat_figures(ratios: dict, check: dict, same_rows: bool | None, step_diff: float | None = None) -> dict:
    """The flat bench.json keys, next to bench_trl.py's (no key of theirs is reused)."""
    return {
        "sft_step_time_ratio": ratios["step_s"],
        "sft_tokens_per_s_ratio": ratios["completion_tokens_per_s"],
        "sft_all_tokens_per_s_ratio": ratios["tokens_per_s"],
        "sft_peak_rss_ratio": ratios["peak_rss_mb"],
        "sft_first_loss_abs_diff": check["abs_diff"],
        "sft_step_loss_max_abs_diff": step_diff,
        "sft_same_rows": same_rows,
    }


def merge_json(path: Path, figures: dict) -> dict:
    """figures merged into the JSON object at `path` (other benchmarks' keys kept); returns it."""
    data: dict = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
        except json.JSONDecodeError:
            loaded = None
        if isinstance(loaded, dict):
            data = loaded
        else:
            print(f"note: {path} was not a JSON object; starting it afresh")
    data.update(figures)
    path.write_text(json.dumps(data, indent=2))
    return data


def parent(args, argv: list[str]) -> None:
    if "trl" in args.which and importlib.util.find_spec("trl") is None:
        raise SystemExit(TRL_MISSING.format(exe=sys.executable))
    keep: list = []
    folder = model_folder(args.model, keep)
    cpu = cpu_info()
    machine = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
            if k in os.environ
        },
        **versions(),
    }
    print(
        f"CPU: {cpu['model']}, {machine['cpus']} cores; avx512_bf16 {'yes' if cpu['avx512_bf16'] else 'no'}, "
        f"amx_bf16 {'yes' if cpu['amx_bf16'] else 'no'}, avx512f {'yes' if cpu['avx512f'] else 'no'}; "
        f"load average {machine['loadavg_before'][0]:.2f}; "
        + " ".join(f"{k} {v}" for k, v in versions().items())
        + "".join(f" {k}={v}" for k, v in machine["env"].items())
    )
    print(
        f"model={args.model} ({folder}) task={args.task}: {args.batch} rows a step in micro-batches of "
        f"{args.micro_batch}, lr {args.lr} (AdamW, constant), fp32, completion-only loss, packed (ours "
        f"train.packing; TRL {args.trl_packing}), gradient checkpointing {'on' if args.checkpointing else 'off'}, "
        f"{args.warmup} warm-up + {args.steps} timed steps, rounds={args.rounds}, threads={args.threads or 'default'}"
    )
    if machine["loadavg_before"][0] > (os.cpu_count() or 1) * 0.5:
        print(
            "note: other work is using the CPU (load average above half the cores); both sides share that "
            "load, and the ratios are steadier than the absolute times"
        )
    runs: dict[str, list[dict]] = {w: [] for w in args.which}
    for r in range(args.rounds):
        for kind in args.which if r % 2 == 0 else args.which[::-1]:
            print(f"\n[round {r + 1}/{args.rounds}] {kind}", flush=True)
            res = run_worker(kind, argv, folder, script=__file__)  # bench_trl's, with this script
            print(f"  ({kind}: model and rows loaded in {res['load_s']:.1f} s)")
            runs[kind].append(res)
    summary = {w: summarise(runs[w], args.warmup) for w in args.which}
    result: dict = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "folder", "out")},
        "model_folder": folder,
        "machine": machine,
        "summary": summary,
        "runs": runs,
    }
    if len(args.which) < 2:
        for w in args.which:
            print(f"\n{w}: " + ", ".join(f"{k} {v:.2f}" for k, v in summary[w].items()))
        machine["loadavg_after"] = os.getloadavg()
        if args.json:
            merge_json(Path(args.json), {"sft": result})
            print(f"\nmerged into {args.json} (one side only: no ratios)")
        return
    ours, trl = runs["ours"][0], runs["trl"][0]
    threads = {w: sorted({run["threads"] for run in runs[w]}) for w in args.which}
    same_rows = None if args.trl_packing == "bfd" else ours["first_rows"] == trl["first_rows"]
    check = loss_check(ours["first_loss"], None if args.trl_packing == "bfd" else trl["first_loss"])
    print(
        f"\n{args.batch} rows a step, {summary['ours']['steps_measured']} timed steps each, CPU {cpu['model']} "
        f"(avx512_bf16 {'yes' if cpu['avx512_bf16'] else 'no'}):"
    )
    lines, ratios = table(summary["ours"], summary["trl"])
    print("\n".join(lines))
    if check["agree"] is None:
        print(
            f"first batch loss: ours {ours['first_loss']:.6f}, TRL {trl['first_loss']:.6f} "
            "(TRL's bins hold other rows with --trl-packing bfd: not compared)"
        )
    else:
        print(
            f"first batch loss (mean -log p per completion token, before any update): ours {check['ours']:.6f}, "
            f"TRL {check['trl']:.6f}, |diff| {check['abs_diff']:.2e} "
            f"({'agree' if check['agree'] else 'DISAGREE'} within {LOSS_TOL:g})"
        )
    step_diff = None
    if args.trl_packing != "bfd":
        losses = {w: [r.get("loss") for r in runs[w][0]["rows"]] for w in ("ours", "trl")}
        step_diff = max_loss_diff(losses["ours"], losses["trl"])
        shown = {w: " ".join("-" if v is None else f"{v:.4f}" for v in losses[w]) for w in losses}
        print(
            f"loss at each step: ours {shown['ours']} | TRL {shown['trl']} (max |diff| {'-' if step_diff is None else f'{step_diff:.2e}'})"
        )
    if same_rows is not None:
        print(
            f"first batch, token for token (prompt + completion + eos, {len(ours['first_rows'] or [])} rows): "
            f"{'identical' if same_rows else 'DIFFERENT'}"
        )
    print(
        f"threads: ours {threads['ours']}, TRL {threads['trl']}; TRL padding_free {trl['padding_free']}, "
        f"packing {trl['packing']}, completion_only_loss {trl['completion_only_loss']}, loss_type "
        f"{trl['loss_type']}, optim {trl['optim']}, attention {trl['attn_implementation']}, gradient "
        f"checkpointing {trl['gradient_checkpointing']}; ours bf16 autocast {ours['bf16_autocast']}"
    )
    if threads["ours"] != threads["trl"]:
        print("note: the two sides ran with different thread counts; pass --threads N")
    flat = flat_figures(ratios, check, same_rows, step_diff)
    result.update(ratio=ratios, loss_check=check, same_rows=same_rows, step_loss_max_abs_diff=step_diff)
    machine["loadavg_after"] = os.getloadavg()
    print("\nratios (bench.json):")
    for k, v in flat.items():
        print(f"  {k:<28} {v if not isinstance(v, float) else f'{v:.3g}'}")
    if args.json:
        merge_json(Path(args.json), {**flat, "sft": result})
        print(f"\nmerged into {args.json}")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker is None:
        parent(args, argv)
        return
    if args.worker == "trl" and importlib.util.find_spec("trl") is None:
        raise SystemExit(TRL_MISSING.format(exe=sys.executable))
    res = {"ours": run_ours, "trl": run_trl}[args.worker](args)
    res["peak_rss_mb_at_exit"] = peak_rss_mb()
    res["versions"] = versions()
    Path(args.out).write_text(json.dumps(res))


if __name__ == "__main__":
    main()
