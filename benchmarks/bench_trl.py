"""Our Trainer vs TRL's GRPOTrainer: same model, prompts, reward and settings, side by side.

    python benchmarks/bench_trl.py                     # 1 then 4 prompts x 8 completions a step, 4 steps each
    python benchmarks/bench_trl.py --prompts 1         # 1 prompt x 8 only
    python benchmarks/bench_trl.py --rollout-dtype int8   # our sampler decodes with an int8 copy
    python benchmarks/bench_trl.py --beta 0            # no KL: neither trainer builds a reference model
    python benchmarks/bench_trl.py --rounds 2          # ours, TRL, TRL, ours: load and sampling luck hit both

Needs `trl` (only here, not a dependency of the package): `make bench` builds `.venv-bench` with it.

Each trainer runs in its own subprocess, so its peak RSS (ru_maxrss) is its own. Both load the same
safetensors folder (the embedded SmolLM2-135M-Instruct, converted once from its GGUF), in fp32 on
the CPU, and train on the same reasoning-gym chain_sum prompts in the same order (ours walks the
task in order; TRL runs with shuffle_dataset=False) in the model's chat template, scored by our
reward (right 1, wrong -1, no number -2; for TRL wrapped in its `f(prompts, completions, **kw)`
signature). Settings: `--group` completions per prompt, at most `--tokens` new tokens, temperature
1, beta, lr, one optimisation pass per batch (mu = num_iterations = 1), micro-batches of
`--micro-batch` sequences with gradient accumulation up to `--prompts x --group` per optimizer step.
TRL keeps its other defaults (gradient checkpointing on, loss_type, logging); bf16 is turned off
because the comparison is fp32.

Per step, both sides are measured the same way, by wrapping calls from this script (the trainers'
code is untouched):
- step: wall time between the ends of consecutive optimizer steps;
- rollout: the generate call (ours: the rollout engine; TRL: the unwrapped model's `generate`, or
  vLLM's weight sync + generate);
- reward: the reward function; reference: the reference model's log-prob forward (ours:
  `Trainer.no_grad_logprobs` on the reference; TRL: `_get_per_token_logps_and_entropies` on
  `ref_model`);
- update: the rest (policy forward/backward, optimizer, bookkeeping);
- generated tokens: completion tokens up to and including EOS (TRL's completion mask);
- step time per generated token: the two samplers draw different completions (same distribution,
  other draws), and how many tokens a step draws moves its time; this compares at equal work.
The first `--warmup` steps are dropped; the table shows medians over the remaining steps of every
round (tokens/s is total tokens over total rollout time). Then our rollout engines, fast vs hf, on
the same model (benchmarks/bench_rollout.py). The figures go to `--json` (default bench.json), with
flat keys for every ratio (`step_time_ratio_1x8`, `step_time_ratio_4x8`, `gen_tokens_per_s_ratio_vs_trl`,
`fast_vs_hf_tokens_per_s`, `peak_rss_ratio`, ...) and whether each target of the rollout issue is met.
Timings, not assertions: this machine is noisy, which is why ratios come from one invocation.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
TRL_MISSING = (
    "bench_trl: TRL is not installed in this Python ({exe}). Run `make bench`, which builds .venv-bench "
    "with trl==1.16.0, or `pip install trl==1.16.0` into a benchmark environment (not the package's)."
)
STEP_KEYS = ("step_s", "rollout_s", "reward_s", "ref_s", "update_s")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny, a model folder or a .gguf")
    ap.add_argument(
        "--task",
        default="chain_sum",
        help="task.name: a reasoning-gym task or a .jsonl file (no reasoning-gym needed)",
    )
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per trainer and round")
    ap.add_argument("--warmup", type=int, default=1, help="first steps left out of the medians")
    ap.add_argument(
        "--prompts", default="1,4", help="prompts per step; a comma list runs one comparison per value"
    )
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (num_generations)")
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens (max_completion_length)")
    ap.add_argument("--beta", type=float, default=0.04, help="KL weight; 0 builds no reference model")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward, both sides")
    ap.add_argument(
        "--rounds", type=int, default=1, help="repeat both trainers (seed + round), alternating the order"
    )
    ap.add_argument("--only", default="ours,trl", help="which trainers to run (ours, trl)")
    ap.add_argument("--engine", default="fast", help="our rollout engine (fast, hf, vllm)")
    ap.add_argument(
        "--rollout-dtype",
        default="model",
        choices=["model", "int8", "bfloat16"],
        help="ours: rollout.dtype, the weights our sampler decodes with (fast engine)",
    )
    ap.add_argument(
        "--no-prepack",
        action="store_true",
        help="ours: tuning.prepack=false (no oneDNN-prepacked copy of the weights for wide rollouts)",
    )
    ap.add_argument(
        "--checkpointing",
        action="store_true",
        help="ours: train.gradient_checkpointing (TRL's default is on): less memory, a longer update",
    )
    ap.add_argument("--trl-vllm", action="store_true", help="TRL generates with vLLM (colocate)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights, both sides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rollout-prompts", type=int, default=8, help="fast vs hf: prompts (0 skips it)")
    ap.add_argument("--rollout-repeats", type=int, default=1)
    ap.add_argument("--json", default="bench.json", help="where the figures go ('' for nowhere)")
    ap.add_argument("--worker", choices=["ours", "trl", "rollout"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps <= args.warmup:
        ap.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    try:
        args.prompt_list = [int(p) for p in str(args.prompts).split(",")]
    except ValueError:
        ap.error(f"--prompts: '{args.prompts}' is not a comma list of integers")
    for p in args.prompt_list:
        if p < 1 or (p * args.group) % args.micro_batch:
            ap.error(
                f"--prompts {p}: must be >= 1, and --micro-batch ({args.micro_batch}) must divide it x --group"
            )
    args.prompts = args.prompt_list[-1]  # a worker gets one value (the last --prompts on its line)
    return args


# ---------------------------------------------------------------------------------------------------
# Shared by the workers: the task, the clock, and the process's own peak memory.


def load_examples(args) -> list:
    """The task's first training examples; both trainers walk them in this order."""
    from sft2grpo.config import TaskConfig
    from sft2grpo.tasks import load_task

    n = (args.steps + 1) * args.prompts
    return load_task(TaskConfig(name=args.task, size=n, eval_size=0, seed=args.seed)).train


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class TimedCall:
    """`obj` with its call replaced by `call` (a timed wrapper of it) and every other attribute its
    own: the trainer also calls `reward_fn.end_step()` and `reward_fn.drain_metrics()`."""

    def __init__(self, obj, call):
        self._obj, self._call = obj, call

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._obj, name)


class Clock:
    """Per-step accumulators filled by wrapped calls; `end_step` closes a step's row."""

    def __init__(self):
        import torch

        cuda = torch.cuda.is_available()
        self.sync = torch.cuda.synchronize if cuda else (lambda: None)
        self.gpu_peak = (lambda: torch.cuda.max_memory_reserved() / 2**20) if cuda else (lambda: 0.0)
        self.rows: list[dict] = []
        self.acc = {"rollout_s": 0.0, "reward_s": 0.0, "ref_s": 0.0, "tokens": 0}
        self.last = time.perf_counter()

    def start(self) -> None:
        self.sync()
        self.last = time.perf_counter()

    def timed(self, key: str, fn, count=None, when=None):
        """fn wrapped: its seconds add to `key` (if `when(*args)` holds); `count(result, *args, **kw)`
        adds generated tokens. A call from inside the same wrapper (the hf engine's `generate` calls
        `self.generate` once per prompt, which is the wrapper again) is timed and counted once, by
        the outer call."""
        depth = [0]

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            if depth[0] or (when is not None and not when(*a, **kw)):
                return fn(*a, **kw)
            self.sync()
            t0 = time.perf_counter()
            depth[0] += 1
            try:
                out = fn(*a, **kw)
            finally:
                depth[0] -= 1
            self.sync()
            self.acc[key] += time.perf_counter() - t0
            if count is not None:
                self.acc["tokens"] += count(out, *a, **kw)
            return out

        return wrapper

    def end_step(self) -> None:
        self.sync()
        now = time.perf_counter()
        row = {"step_s": now - self.last, **self.acc}
        row["update_s"] = row["step_s"] - row["rollout_s"] - row["reward_s"] - row["ref_s"]
        row["peak_rss_mb"] = peak_rss_mb()
        row["peak_gpu_mb"] = self.gpu_peak()
        self.rows.append(row)
        self.acc = dict.fromkeys(self.acc, 0.0)
        self.acc["tokens"] = 0
        self.last = now
        print(
            f"  step {len(self.rows)}: {row['step_s']:.2f} s (rollout {row['rollout_s']:.2f}, "
            f"reward {row['reward_s']:.2f}, ref {row['ref_s']:.2f}, update {row['update_s']:.2f}), "
            f"{row['tokens']} tokens, peak RSS {row['peak_rss_mb']:.0f} MiB",
            flush=True,
        )


def versions() -> dict:
    import torch
    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if importlib.util.find_spec("trl"):
        import trl

        out["trl"] = trl.__version__
    return out


# ---------------------------------------------------------------------------------------------------
# Worker: ours.


def run_ours(args) -> dict:
    import torch

    from sft2grpo import run
    from sft2grpo.config import Config
    from sft2grpo.models import chat_prompt_ids
    from sft2grpo.trainer import Trainer

    cfg = Config()
    cfg.model.name = args.folder
    cfg.model.threads = args.threads
    cfg.model.dtype = args.dtype
    cfg.task.size, cfg.task.eval_size, cfg.task.seed = (args.steps + 1) * args.prompts, 0, args.seed
    cfg.task.name = args.task
    cfg.rollout.engine = args.engine
    cfg.rollout.dtype, cfg.tuning.prepack = args.rollout_dtype, not args.no_prepack
    cfg.rollout.group_size = args.group
    cfg.rollout.max_new_tokens = args.tokens
    cfg.rollout.temperature = args.temperature
    cfg.objective.beta = args.beta
    cfg.train.steps = args.steps
    cfg.train.prompts_per_step = args.prompts
    cfg.train.micro_batch_size = args.micro_batch
    cfg.train.gradient_checkpointing = args.checkpointing
    cfg.train.lr = args.lr
    cfg.train.mu = 1
    cfg.train.seed = args.seed
    cfg.eval.before = cfg.eval.after = False
    cfg.log.plots = cfg.log.progress = False

    t0 = time.perf_counter()
    tr = Trainer(cfg, Path(tempfile.mkdtemp(prefix="bench-ours-")))
    load_s = time.perf_counter() - t0
    state = run.start(tr)
    state.order, state.pos = list(range(len(tr.task.train))), 0  # the task in order, as TRL sees it

    clock = Clock()
    tr.engine.generate = clock.timed("rollout_s", tr.engine.generate, count=lambda ro, *a, **k: ro.num_tokens)
    tr.reward_fn = TimedCall(tr.reward_fn, clock.timed("reward_s", tr.reward_fn))
    tr.no_grad_logprobs = clock.timed(
        "ref_s", tr.no_grad_logprobs, when=lambda model, *a, **k: model is tr.reference
    )
    first_prompt = chat_prompt_ids(tr.tokenizer, [tr.task.train[0].prompt], cfg.model.system_prompt)[0]
    clock.start()
    metrics = []
    for _ in range(args.steps):
        row, _batch = tr.train_step(state)
        state.step += 1
        clock.end_step()
        metrics.append({k: v for k, v in row.items() if isinstance(v, int | float)})
    return {
        "rows": clock.rows,
        "load_s": load_s,
        "reference_model": tr.reference is not None,
        "first_prompt_ids": first_prompt,
        "trainer_metrics": metrics,
        "threads": torch.get_num_threads(),
        "device": str(tr.device),
    }


# ---------------------------------------------------------------------------------------------------
# Worker: TRL.


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sft2grpo.config import RewardConfig, TaskConfig
    from sft2grpo.rewards import build_reward
    from sft2grpo.tasks import load_task

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renames, once per step
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    task = load_task(
        TaskConfig(name=args.task, size=(args.steps + 1) * args.prompts, eval_size=0, seed=args.seed)
    )
    examples = task.train
    reward = build_reward(RewardConfig(), task)
    clock = Clock()

    def chain_sum_reward(prompts, completions, idx, **kwargs) -> list[float]:
        """Our reward in TRL's signature; `idx` is the dataset column naming each row's example."""
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return reward(texts, [examples[i] for i in idx]).rewards.tolist()

    rows = [{"prompt": [{"role": "user", "content": e.prompt}], "idx": i} for i, e in enumerate(examples)]
    dataset = Dataset.from_list(rows)
    per_step = args.prompts * args.group
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
        num_generations=args.group,
        max_completion_length=args.tokens,
        temperature=args.temperature,
        beta=args.beta,
        learning_rate=args.lr,
        num_iterations=1,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=per_step // args.micro_batch,
        max_steps=args.steps,
        bf16=False,  # fp32, like ours (TRL's default is bf16 autocast)
        shuffle_dataset=False,  # the prompts in dataset order, like ours
        seed=args.seed,
        save_strategy="no",
        report_to="none",
        model_init_kwargs={"dtype": args.dtype},
        disable_tqdm=True,  # a progress bar per step would interleave with our step lines
        use_vllm=args.trl_vllm,
        vllm_mode="colocate",
    )
    t0 = time.perf_counter()
    trainer = GRPOTrainer(
        model=args.folder,
        reward_funcs=clock.timed("reward_s", chain_sum_reward),
        args=config,
        train_dataset=dataset,
    )
    load_s = time.perf_counter() - t0

    first: dict = {}
    eos = torch.tensor(sorted(trainer.eos_token_ids) if hasattr(trainer, "eos_token_ids") else [2])

    def count_hf(out, *a, **kw) -> int:
        ids, att = kw["input_ids"], kw["attention_mask"]
        if "prompt" not in first:
            first["prompt"] = ids[0][att[0].bool()].tolist()
        completion = out[:, ids.shape[1] :].cpu()  # [B, T]
        is_eos = torch.isin(completion, eos)
        lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, completion.shape[1])
        return int(lengths.sum())

    def count_vllm(out, *a, **kw) -> int:
        prompts = kw.get("prompts", a[0] if a else None)
        if "prompt" not in first and prompts:
            first["prompt"] = list(prompts[0])
        return sum(len(c) for c in out[1])

    if args.trl_vllm:
        vg = trainer.vllm_generation
        vg.generate = clock.timed("rollout_s", vg.generate, count=count_vllm)
        vg.sync_weights = clock.timed("rollout_s", vg.sync_weights)
    else:
        policy = trainer.accelerator.unwrap_model(trainer.model)
        policy.generate = clock.timed("rollout_s", policy.generate, count=count_hf)
    trainer._get_per_token_logps_and_entropies = clock.timed(
        "ref_s",
        trainer._get_per_token_logps_and_entropies,
        when=lambda model, *a, **k: trainer.ref_model is not None and model is trainer.ref_model,
    )

    class StepClock(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            clock.start()

        def on_step_end(self, *a, **kw):
            clock.end_step()

    trainer.add_callback(StepClock())
    trainer.train()
    return {
        "rows": clock.rows,
        "load_s": load_s,
        "reference_model": trainer.ref_model is not None,
        "first_prompt_ids": first.get("prompt"),
        "gradient_checkpointing": bool(config.gradient_checkpointing),
        "loss_type": config.loss_type,
        "threads": torch.get_num_threads(),
        "device": str(trainer.accelerator.device),
    }


# ---------------------------------------------------------------------------------------------------
# Worker: our rollout engines, fast vs hf.


def run_rollout(args) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from bench_rollout import compare_engines, task_prompts

    from sft2grpo.config import ModelConfig
    from sft2grpo.models import chat_prompt_ids, load_policy

    model, tok = load_policy(ModelConfig(name=args.folder, threads=args.threads))
    ids = chat_prompt_ids(tok, task_prompts(args.rollout_prompts, args.seed), None)
    names = ["fast", "hf"] + ([f"fast:{args.rollout_dtype}"] if args.rollout_dtype != "model" else [])
    res = compare_engines(
        model, tok, ids, names, args.group, args.tokens, args.temperature, args.rollout_repeats, args.seed
    )
    res["prompts"], res["samples"], res["threads"] = args.rollout_prompts, args.group, torch.get_num_threads()
    return res


# ---------------------------------------------------------------------------------------------------
# The parent: resolve the model once, run the workers, print and save the comparison.


def model_folder(name: str, keep: list) -> str:
    """A folder both trainers load: the embedded model's converted cache, a GGUF's, or a folder.
    `tiny` is built and saved to a temporary folder (kept alive through `keep`)."""
    from sft2grpo import models

    if name == models.TINY_NAME:
        tmp = tempfile.TemporaryDirectory(prefix="bench-tiny-")
        keep.append(tmp)
        model, tok = models.build_tiny()
        return str(models.save_model(model, tok, Path(tmp.name) / "model"))
    if name == models.EMBEDDED_NAME:
        return str(models.gguf_to_folder(models.embedded_gguf_path()))
    if name.endswith(".gguf"):
        return str(models.gguf_to_folder(name))
    return name


def run_worker(kind: str, argv: list[str], folder: str, script: str = __file__) -> dict:
    """Run `script --worker kind` in a process of its own (so its peak RSS is its own) and return
    the result it wrote, with its wall time and the load averages around it. bench_sft.py calls it
    with its own script."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, script, *argv, "--worker", kind, "--folder", folder, "--out", str(out)]
        t0, load0 = time.perf_counter(), os.getloadavg()
        proc = subprocess.run(cmd)
        if proc.returncode != 0 or not out.is_file():
            name = Path(script).stem
            raise SystemExit(f"{name}: the {kind} worker failed (exit {proc.returncode}); see above")
        res = json.loads(out.read_text())
        res["wall_s"] = time.perf_counter() - t0
        # 1-minute load averages at start and end: > number of cores means other work shared the CPU
        res["loadavg_1min"] = [load0[0], os.getloadavg()[0]]
        print(
            f"  ({kind}: {res['wall_s']:.0f} s wall, load average {load0[0]:.2f} -> {res['loadavg_1min'][1]:.2f})"
        )
        return res


def summarise(runs: list[dict], warmup: int) -> dict:
    rows = [r for run in runs for r in run["rows"][warmup:]]
    out = {k: statistics.median(r[k] for r in rows) for k in STEP_KEYS}
    rollout = sum(r["rollout_s"] for r in rows)
    out["tokens_per_step"] = statistics.median(r["tokens"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    out["gen_tokens_per_s"] = tokens / rollout if rollout else 0.0
    # the two samplers draw different completions: per generated token, the steps compare at equal work
    out["step_ms_per_token"] = 1000 * sum(r["step_s"] for r in rows) / tokens if tokens else 0.0
    out["peak_rss_mb"] = max(run["rows"][-1]["peak_rss_mb"] for run in runs)
    out["peak_gpu_mb"] = max(run["rows"][-1]["peak_gpu_mb"] for run in runs)
    out["steps_measured"] = len(rows)
    return out


ROWS = [
    ("step time, median (s)", "step_s", "{:.2f}"),
    ("  rollout (generate)", "rollout_s", "{:.2f}"),
    ("  reward", "reward_s", "{:.3f}"),
    ("  reference forward", "ref_s", "{:.2f}"),
    ("  update (rest)", "update_s", "{:.2f}"),
    ("generated tokens / step", "tokens_per_step", "{:.0f}"),
    ("step time / generated token (ms)", "step_ms_per_token", "{:.1f}"),
    ("generation tokens/s", "gen_tokens_per_s", "{:.1f}"),
    ("peak RSS (MiB)", "peak_rss_mb", "{:.0f}"),
]


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def print_table(ours: dict, trl: dict, gpu: bool) -> dict:
    rows = ROWS + ([("peak GPU memory reserved (MiB)", "peak_gpu_mb", "{:.0f}")] if gpu else [])
    print(f"\n{'metric':<32} {'ours':>10} {'TRL':>10} {'ours/TRL':>9}")
    ratios = {}
    for label, key, fmt in rows:
        r = ratio(ours[key], trl[key])
        ratios[key] = r
        shown = f"{r:.2f}x" if r is not None else "-"
        print(f"{label:<32} {fmt.format(ours[key]):>10} {fmt.format(trl[key]):>10} {shown:>9}")
    return ratios


# The targets of the rollout issue, per setting (prompts per step) where they differ.
STEP_TARGETS = {1: 0.40, 4: 0.33}
TARGETS = {"gen_tokens_per_s_ratio_vs_trl": 2.5, "fast_vs_hf_tokens_per_s": 3.0, "peak_rss_ratio": 0.9}


def compare_setting(args, argv: list[str], folder: str, which: list[str], prompts: int) -> dict:
    """Both trainers at `prompts` prompts per step, rounds alternating which goes first."""
    runs: dict[str, list[dict]] = {w: [] for w in which}
    for r in range(args.rounds):
        for kind in which if r % 2 == 0 else which[::-1]:
            print(f"\n[{prompts} x {args.group}, round {r + 1}/{args.rounds}] {kind}", flush=True)
            # each round its own seed (prompts and samples), the same for both trainers: completion
            # lengths, which drive the step time, then average out over rounds
            worker_argv = [*argv, "--prompts", str(prompts), "--seed", str(args.seed + r)]
            runs[kind].append(run_worker(kind, worker_argv, folder))
    out: dict = {"prompts": prompts, "runs": runs}
    summary = {w: summarise(runs[w], args.warmup) for w in which}
    out["summary"] = summary
    if len(which) < 2:
        for w in which:
            print(f"\n{w}: " + ", ".join(f"{k} {v:.2f}" for k, v in summary[w].items()))
        return out
    gpu = any(v["peak_gpu_mb"] > 0 for v in summary.values())
    out["reference_model"] = {w: runs[w][0]["reference_model"] for w in which}
    out["same_prompt_tokens"] = runs["ours"][0]["first_prompt_ids"] == runs["trl"][0]["first_prompt_ids"]
    print(f"\n{prompts} prompt(s) x {args.group} completions per step:")
    out["ratio"] = print_table(summary["ours"], summary["trl"], gpu)
    out["gpu"] = gpu
    print(
        f"first prompt tokenised identically by both: {'yes' if out['same_prompt_tokens'] else 'NO'}; "
        f"reference model built: ours {out['reference_model']['ours']}, "
        f"TRL {out['reference_model']['trl']}; gradient checkpointing: ours {args.checkpointing}, TRL "
        f"{runs['trl'][0]['gradient_checkpointing']}; TRL loss_type {runs['trl'][0]['loss_type']}"
    )
    return out


def flat_figures(settings: list[dict], rollout: dict | None, group: int) -> dict:
    """The ratios as flat keys for bench.json: `step_time_ratio_<P>x<G>` (and the other figures
    with the same suffix) per setting; unsuffixed, the least favourable value over the settings."""
    flat: dict = {}
    for st in settings:
        if "ratio" not in st:
            continue
        ratio, tag = st["ratio"], f"{st['prompts']}x{group}"
        mem = "peak_gpu_mb" if st["gpu"] else "peak_rss_mb"
        flat[f"step_time_ratio_{tag}"] = ratio["step_s"]
        flat[f"step_time_per_token_ratio_{tag}"] = ratio["step_ms_per_token"]
        flat[f"gen_tokens_per_s_ratio_vs_trl_{tag}"] = ratio["gen_tokens_per_s"]
        flat[f"peak_rss_ratio_{tag}"] = ratio[mem]
    tps = [v for k, v in flat.items() if k.startswith("gen_tokens_per_s_ratio_vs_trl_") and v]
    rss = [v for k, v in flat.items() if k.startswith("peak_rss_ratio_") and v]
    if tps:
        flat["gen_tokens_per_s_ratio_vs_trl"] = min(tps)
        flat["peak_rss_ratio"] = max(rss)
    if rollout is not None:
        flat["fast_vs_hf_tokens_per_s"] = rollout["fast/hf"]
        for name, r in rollout.items():
            if name.startswith("fast:"):
                flat[f"{name.replace(':', '_')}_vs_fast_tokens_per_s"] = (
                    r["tokens_per_s"] / rollout["fast"]["tokens_per_s"]
                )
    return flat


def check_targets(flat: dict) -> dict:
    """Each target of the rollout issue that this run measured: met (True) or not."""
    met = {}
    for p, target in STEP_TARGETS.items():
        for k, v in flat.items():
            if k.startswith(f"step_time_ratio_{p}x") and v is not None:
                met[f"{k}_le_{target}"] = v <= target
    for k, target in TARGETS.items():
        if flat.get(k) is not None:
            met[f"{k}_{'le' if k == 'peak_rss_ratio' else 'ge'}_{target}"] = (
                flat[k] <= target if k == "peak_rss_ratio" else flat[k] >= target
            )
    return met


def parent(args, argv: list[str]) -> None:
    which = [w.strip() for w in args.only.split(",") if w.strip()]
    if "trl" in which and importlib.util.find_spec("trl") is None:
        raise SystemExit(TRL_MISSING.format(exe=sys.executable))
    keep: list = []
    folder = model_folder(args.model, keep)
    machine = {
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        # thread settings the workers inherit; OMP_WAIT_POLICY=PASSIVE matters on a shared CPU
        "env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
            if k in os.environ
        },
        **versions(),
    }
    print(
        f"model={args.model} ({folder}) prompts/step={','.join(map(str, args.prompt_list))} x "
        f"group={args.group} max_new_tokens={args.tokens} beta={args.beta} lr={args.lr} "
        f"micro_batch={args.micro_batch} steps={args.steps} (warm-up {args.warmup}) rounds={args.rounds} "
        f"engine={args.engine} rollout_dtype={args.rollout_dtype} prepack={not args.no_prepack}"
        f"{' trl-vllm' if args.trl_vllm else ''}; cpus={machine['cpus']} "
        f"load avg {machine['loadavg_before'][0]:.2f}; "
        + " ".join(f"{k} {v}" for k, v in versions().items())
        + "".join(f" {k}={v}" for k, v in machine["env"].items())
    )
    if machine["loadavg_before"][0] > (os.cpu_count() or 1):
        print(
            "note: the load average exceeds the core count, so other work shares the CPU; with torch's "
            "default OpenMP spin-waiting that can slow both trainers many times over "
            "(OMP_WAIT_POLICY=PASSIVE or --threads 1 limit the damage)"
        )
    settings = [compare_setting(args, argv, folder, which, p) for p in args.prompt_list]
    result: dict = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "folder", "out")},
        "model_folder": folder,
        "machine": machine,
        "by_prompts": settings,
    }
    rollout = None
    if args.rollout_prompts > 0 and args.engine != "vllm":
        print(f"\n[rollout engines] {args.rollout_prompts} prompts x {args.group}", flush=True)
        rollout = run_worker("rollout", argv, folder)
        result["rollout"] = rollout
        for name, r in rollout.items():
            if isinstance(r, dict) and "tokens_per_s" in r:
                print(
                    f"{name:>10}: {r['tokens']:6d} tokens {r['seconds']:7.2f} s {r['tokens_per_s']:8.1f} tokens/s"
                )
    result.update(flat_figures(settings, rollout, args.group))
    result["targets"] = check_targets(result)
    print("\nratios (bench.json):")
    for k, v in result.items():
        if isinstance(v, float):
            print(f"  {k:<44} {v:.2f}x")
    for k, ok in result["targets"].items():
        print(f"  target {k}: {'met' if ok else 'not met'}")
    result["machine"]["loadavg_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker is None:
        parent(args, argv)
        return
    if args.worker == "trl" and importlib.util.find_spec("trl") is None:
        raise SystemExit(TRL_MISSING.format(exe=sys.executable))
    fn = {"ours": run_ours, "trl": run_trl, "rollout": run_rollout}[args.worker]
    res = fn(args)
    res["peak_rss_mb_at_exit"] = peak_rss_mb()
    res["versions"] = versions()
    Path(args.out).write_text(json.dumps(res))


if __name__ == "__main__":
    main()
