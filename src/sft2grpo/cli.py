"""The `sft2grpo` command: sft, train, sample, eval, ladder and advantages.

    sft2grpo sft task.name=rows.jsonl train.steps=100      # rung 0: fine-tune on given completions
    sft2grpo train --config grpo train.steps=20 rollout.group_size=8
    sft2grpo train --config pipeline                       # base -> SFT -> RL in one run folder (make run)
    sft2grpo sample --output kept.jsonl --n 8              # offline rejection sampling, for `sft`
    sft2grpo eval --model runs/grpo-.../model --task chain_sum
    sft2grpo advantages --rewards 1,-1,-2 --counts 1,127,896

Errors a user can cause (a bad key, a missing file, a malformed data row) print one line naming the
culprit and exit with status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG_TRAIN = """\
overrides are dotted keys with YAML values, applied after the config file, e.g.
  train.steps=20 train.lr=2e-5 rollout.group_size=8 objective.beta=0 model.name=tiny
`sft2grpo train --help-config` lists every key with its type and default."""


def _parser() -> argparse.ArgumentParser:
    from .config import list_presets

    p = argparse.ArgumentParser(
        prog="sft2grpo",
        description="Train language models with RL from verifiable rewards: the SFT -> GRPO ladder.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a policy with one preset (rung) of the ladder",
        description="Train a policy: rollouts -> rewards -> advantages -> the rung's loss.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s = sub.add_parser(
        "sft",
        help="supervised fine-tuning on reference completions (rung 0)",
        description="Fine-tune on given completions: cross-entropy on the completion tokens (the "
        "ladder's loss with A = 1 on every reference answer). Data: prompt/completion or messages rows "
        "in JSONL, Parquet or a datasets folder, or a reasoning-gym task with worked solutions "
        "(chain_sum). Same run folder, checkpoints, resume and evaluations as train.",
        epilog=EPILOG_TRAIN.replace("sft2grpo train", "sft2grpo sft"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # train and sft take the same run arguments (cmd_train serves both)
    for parser, default in ((t, "grpo"), (s, "sft0")):
        parser.add_argument(
            "--config",
            default=None,
            help=f"a YAML file or a preset name ({', '.join(list_presets())}); default: {default}",
        )
        parser.add_argument(
            "--resume",
            metavar="RUN_DIR|auto",
            help="continue a run from its newest complete checkpoint (its config.yaml, then overrides); "
            "auto: the newest run matching log.output_dir that has one, else a new run",
        )
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
        parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        parser.add_argument("--help-config", action="store_true", help="list every config key and exit")

    sm = sub.add_parser(
        "sample",
        help="write reference completions by rejection sampling: a model's right answers",
        description="Sample completions of each training problem from a model and keep the ones the "
        "reward marks right, as prompt/completion/answer rows for `sft2grpo sft` (offline rejection "
        "sampling, for tasks that cannot write worked solutions). The task's held-out problems go to "
        "OUTPUT's .eval.jsonl sibling, so the SFT run is scored on them.",
    )
    sm.add_argument("--output", required=True, help="the .jsonl file to write")
    sm.add_argument(
        "--config", default=None, help="YAML file or preset for model/task/reward/rollout settings"
    )
    sm.add_argument("--n", type=int, default=8, help="completions drawn per problem (default 8)")
    sm.add_argument(
        "--keep", type=int, default=1, help="right completions kept per problem, at most (default 1)"
    )
    sm.add_argument("--problems", type=int, default=0, help="only the first N training problems (0: all)")
    sm.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")

    e = sub.add_parser(
        "eval",
        help="held-out accuracy, pass@k, format errors and length of a model",
        description="Evaluate a model on a task's held-out split (the one training never sees).",
    )
    e.add_argument("--model", default="smollm2-135m", help="HF folder, .gguf file, smollm2-135m or tiny")
    e.add_argument("--task", default=None, help="reasoning-gym task name or a .jsonl file")
    e.add_argument("--config", default=None, help="YAML file or preset for task/reward/eval settings")
    e.add_argument("--output", default=None, help="folder for eval.json and samples (default: none)")
    e.add_argument(
        "--split",
        choices=("heldout", "val"),
        default="heldout",
        help="heldout: the problems a run reports on; val: the validation problems, for choosing "
        "settings and checkpoints (default: heldout)",
    )
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")

    a = sub.add_parser(
        "advantages",
        help="normalised advantage of each reward value for a group with given counts",
        description="Print the advantage each reward value gets in a group with the given counts.",
    )
    a.add_argument("--rewards", default="1,-1,-2", help="distinct reward values, comma-separated")
    a.add_argument("--counts", required=True, help="how many answers got each reward, comma-separated")
    a.add_argument("--ddof", type=int, default=0, help="std degrees of freedom: 0 population, 1 sample")
    a.add_argument(
        "--estimator",
        default="group_norm",
        help="advantage estimator: raw, relu, group_norm, group_norm_relu, group_mean, rloo",
    )
    lad = sub.add_parser(
        "ladder",
        help="train every rung and variant on one budget and report which parts matter",
        description="Train every preset of the ladder on the same task, model, prompts, seeds and "
        "rollout budget, evaluate each on the same held-out set, and write REPORT.md with curves, a "
        "table and a verdict on each of the seed's claims. Rerun the same command to resume.",
    )
    lad.add_argument("--task", default=None, help="reasoning-gym task or .jsonl file (default: chain_sum)")
    lad.add_argument("--model", default=None, help="model.name for every run (default: smollm2-135m)")
    lad.add_argument(
        "--budget",
        default="default",
        help="small (a smoke check) or default (configs/run.yaml's GRPO recipe, 40 steps, the held-out "
        "split scored at steps 10, 20 and 40)",
    )
    lad.add_argument("--steps", type=int, default=None, help="training steps per run (overrides the budget)")
    lad.add_argument("--seeds", type=int, default=None, help="seeds per preset (overrides the budget)")
    lad.add_argument(
        "--presets",
        default=None,
        help="comma-separated presets, or 'all' for all 16 (default: the 5 rungs, then GRPO without each of "
        "its tricks: IS as no_is, no_is_mu1 and no_is_prox, KL as rung 4 (importance), grpo_no_neg, "
        "grpo_no_norm; and importance_twin, rung 4 from another sampling stream, for the A/A check)",
    )
    lad.add_argument(
        "--eval-samples",
        type=int,
        default=None,
        help="samples per held-out problem for sampled accuracy (default: the budget's; 0 = greedy only)",
    )
    lad.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs trained (and measured) at once, each with its share of the CPU cores (default 2)",
    )
    lad.add_argument("--output", default="ladder", help="folder for runs, logs and REPORT.md")
    lad.add_argument("--keep-models", action="store_true", help="keep each run's model/ (540 MB for 135M)")
    lad.add_argument("--dry-run", action="store_true", help="print the plan and the estimate only")
    lad.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    return p


def cmd_train(args, supervised: bool = False) -> int:
    """`sft2grpo train` (RL, or the SFT -> RL pipeline when sft_stage.steps > 0) and, with
    `supervised`, `sft2grpo sft` (rung 0 alone, what `train` runs too when train.rows=given): the
    same config, run folder, resume and summary."""
    from .config import describe, dump_yaml, load_config

    if args.help_config:
        for key, tp, default in describe():
            print(f"{key:34s} {tp:40s} default: {default!r}")
        return 0
    from . import checkpoint, distributed, run
    from .pipeline import format_pipeline, run_pipeline
    from .sft import fit_supervised, supervised_config
    from .trainer import Trainer

    run_dir = ckpt = None
    if args.resume and args.resume != "auto":
        run_dir = Path(args.resume)
        if args.config:
            raise ValueError(f"--resume {run_dir}: the run's own config.yaml is used; drop --config")
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"--resume {run_dir}: not a run folder (no config.yaml)")
        cfg = load_config(str(run_dir / "config.yaml"), args.overrides)
        ckpt = checkpoint.latest(run_dir)
        # a pipeline's stages keep their own checkpoints (run_pipeline finds them)
        if ckpt is None and (supervised or cfg.sft_stage.steps == 0):
            raise FileNotFoundError(
                f"--resume {run_dir}: no complete checkpoint in {checkpoint.folder(run_dir)}"
            )
    else:
        cfg = load_config(args.config or ("sft0" if supervised else "grpo"), args.overrides)
        if args.resume == "auto":
            run_dir = run.find_resumable(cfg)
            ckpt = checkpoint.latest(run_dir) if run_dir else None
    supervised = supervised or cfg.train.rows == "given"
    if supervised:
        cfg = supervised_config(cfg)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    ctx = distributed.setup()  # under torchrun: join the process group; else one process
    if run_dir is None:
        run_dir = distributed.broadcast(run.make_run_dir(cfg), ctx)  # rank 0's {time} for every rank
    if not supervised and cfg.sft_stage.steps > 0:  # base -> SFT (run_dir/sft) -> RL (run_dir/rl)
        summary = run_pipeline(cfg, run_dir)
        if ctx.main and summary.get("interrupted"):
            print(f"interrupted in the {summary['stage']} stage; continue with --resume {run_dir}")
        elif ctx.main:
            print(format_pipeline(summary))
        distributed.shutdown()
        return 0
    trainer = Trainer(cfg, run_dir)  # bad input stops here
    state = run.start(trainer, ckpt)  # or a bad checkpoint
    if ctx.main:
        if ckpt is not None:
            print(f"# resuming {run_dir} from {ckpt.name}", file=sys.stderr)
        print(f"# resolved config (saved to {run_dir / 'config.yaml'})", file=sys.stderr)
        print(dump_yaml(cfg), file=sys.stderr, end="")
    summary = (fit_supervised if supervised else run.fit)(trainer, state)
    if ctx.main:
        print(format_summary(summary))
    distributed.shutdown()
    return 0


def format_summary(s: dict) -> str:
    """The before/after table printed at the end of a run."""
    lines = [f"run: {s['run_dir']}  preset: {s['preset']}  steps: {s['steps']}"]
    before, after = s.get("before"), s.get("after")
    if before or after:
        keys = [k for k in ("accuracy", "format_error_rate", "completion_len") if k in (before or after)]
        lines.append(f"{'held-out':20s} {'before':>10s} {'after':>10s} {'change':>10s}")
        for k in keys:
            b = before.get(k) if before else None
            a = after.get(k) if after else None
            fmt = (lambda v: f"{100 * v:9.1f}%") if k != "completion_len" else (lambda v: f"{v:10.1f}")
            delta = ""
            if a is not None and b is not None:
                delta = f"{100 * (a - b):+9.1f}p" if k != "completion_len" else f"{a - b:+10.1f}"
            lines.append(
                f"{k:20s} {fmt(b) if b is not None else '-':>10s} {fmt(a) if a is not None else '-':>10s} {delta:>10s}"
            )
    if s.get("change"):
        c = s["change"]
        lo, hi = (100 * x for x in c["ci95"])
        lines.append(
            f"held-out accuracy change: {100 * c['diff']:+.1f} points, 95% interval [{lo:+.1f}, {hi:+.1f}] "
            f"({c['method']}, {c['problems']} problems)"
        )
    if s.get("heldout_loss"):
        hl = s["heldout_loss"]
        b = "-" if hl["before"] is None else f"{hl['before']:.3f}"
        lines.append(
            f"held-out loss (mean -log pi per completion token): before {b}, after {hl['after']:.3f}"
        )
    if s.get("val"):
        v = s["val"]
        lines.append(
            f"validation accuracy: best {100 * v['best']:.1f}% at step {v['best_step']}, "
            f"final {100 * v['final']:.1f}% at step {v['final_step']}"
        )
    lines.append(
        f"wall time: {s.get('wall_time_s', 0):.0f} s, peak memory: {s.get('peak_mem_mb', 0):.0f} MiB"
    )
    if s.get("plot"):
        lines.append(f"plots: {s['plot']}")
    lines.append(f"model: {s.get('model_dir')}")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from .components import build_components
    from .config import load_config
    from .evaluate import evaluate_heldout, write_jsonl

    overrides = list(args.overrides) + [f"model.name={args.model}"]
    if args.task:
        overrides.append(f"task.name={args.task}")
    cfg = load_config(args.config, overrides)
    p = build_components(cfg)
    res = evaluate_heldout(p.eval_engine, p.tokenizer, p.task, p.reward_fn, cfg, split=args.split)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(res.metrics, indent=2))
        write_jsonl(out / "eval_samples.jsonl", res.samples)
    print(
        json.dumps({"model": args.model, "task": cfg.task.name, "split": args.split, **res.metrics}, indent=2)
    )
    return 0


def cmd_sample(args) -> int:
    from .config import load_config
    from .sample import sample_completions

    out = Path(args.output)
    if out.suffix != ".jsonl":
        raise ValueError(f"--output {out}: must be a .jsonl file")
    if args.n < 1 or args.keep < 1 or args.problems < 0:
        raise ValueError(
            f"--n {args.n} / --keep {args.keep} / --problems {args.problems}: n, keep >= 1, problems >= 0"
        )
    counts = sample_completions(
        load_config(args.config, args.overrides), out, args.n, args.keep, args.problems
    )
    print(
        f"{out}: {counts['rows']} completions, right answers to {counts['solved']} of {counts['problems']} "
        f"problems ({args.n} drawn each); {counts['heldout']} held-out problems in {out.stem}.eval.jsonl"
    )
    return 0


def cmd_advantages(args) -> int:
    from .objective import advantages_for_counts

    try:
        rewards = [float(x) for x in args.rewards.split(",")]
        counts = [int(x) for x in args.counts.split(",")]
    except ValueError:
        raise ValueError(f"--rewards {args.rewards!r} / --counts {args.counts!r}: expected numbers") from None
    if len(rewards) != len(counts):
        raise ValueError(f"--rewards has {len(rewards)} values but --counts has {len(counts)}")
    adv = advantages_for_counts(rewards, counts, args.estimator, args.ddof)
    print(f"{'reward':>8s} {'count':>7s} {'advantage':>10s}")
    for r, c, a in zip(rewards, counts, adv):
        print(f"{r:8g} {c:7d} {a:10.2f}")
    return 0


def cmd_ladder(args) -> int:
    from .ladder import run_ladder

    return run_ladder(
        budget=args.budget,
        steps=args.steps,
        seeds=args.seeds,
        presets=args.presets,
        task=args.task,
        model=args.model,
        output=args.output,
        overrides=args.overrides,
        keep_models=args.keep_models,
        eval_samples=args.eval_samples,
        **({"jobs": args.jobs} if args.jobs is not None else {}),
        dry_run=args.dry_run,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "train": cmd_train,
        "sft": lambda a: cmd_train(a, supervised=True),
        "sample": cmd_sample,
        "eval": cmd_eval,
        "advantages": cmd_advantages,
        "ladder": cmd_ladder,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"sft2grpo: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
