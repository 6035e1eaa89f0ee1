"""One config object for every command: a dataclass tree, YAML files and dotted CLI overrides.

A run is described by `Config`. A YAML file sets any subset of its fields (a preset in `configs/`
usually sets only `objective` and a few `train` keys), and `key.sub=value` overrides on the command
line win over the file. Every value is checked against its field's type and allowed choices, and a
bad one stops the run with a one-line `ConfigError` that names the file, the key and the value.

    cfg = load_config("configs/grpo.yaml", ["train.steps=10", "objective.beta=0"])
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A user-caused configuration problem; the message is one line naming the culprit."""


# ---------------------------------------------------------------------------------------------------
# The tree. Field comments are shown by `sft2grpo train --help-config`.


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class ModelConfig:
    # "smollm2-135m" (embedded SmolLM2-135M-Instruct), "tiny" (random, for smoke runs),
    # a local HF folder, or a .gguf file.
    name: str = "smollm2-135m"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"  # auto -> cuda if available, else cpu
    system_prompt: str | None = None
    threads: int = 0  # torch intra-op threads on CPU; 0 leaves torch's default
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DifficultyConfig:
    # "adaptive": each step's training prompts come from `buckets`, a bucket drawn with weight
    # p(1-p), p its recent training accuracy, so that groups keep a reward spread as the model
    # learns (difficulty.py); held-out and validation problems stay the task's own. "off": as ever
    mode: Literal["off", "adaptive"] = "off"
    # reasoning-gym kwargs of each bucket, applied over task.kwargs, e.g. for chain_sum
    # {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}; task.size training problems each
    buckets: list[dict[str, Any]] = field(default_factory=list)
    ema: float = 0.3  # weight of a step's accuracy in a bucket's running estimate p
    prior: float = 0.5  # p of a bucket before its first step
    floor: float = 0.1  # share of the draws spread evenly over all buckets, so none starves


@dataclass
class TaskConfig:
    # a reasoning-gym task name (chain_sum, basic_arithmetic, ...), a .jsonl or .parquet file, or an HF
    # datasets folder; a row's prompt is a string or a list of chat messages
    name: str = "chain_sum"
    size: int = 2000  # training examples generated (reasoning-gym)
    eval_size: int = 200  # held-out examples, disjoint from training
    # validation examples, disjoint from training and held-out: what eval.every scores, so that
    # choosing a checkpoint or a setting never looks at the held-out split. None -> 100 for
    # reasoning-gym tasks (generated apart, no training row is lost) and 0 for files (set it to
    # take that many rows off the end of the training rows)
    val_size: int | None = None
    seed: int = 0  # generates a reasoning-gym task's problems and splits (train.seed is the run's)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the reasoning-gym generator
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    # supervised fine-tuning (`sft2grpo sft`, `sft_stage.steps`): the reference completion of a prompt/
    # completion row (a string, or TRL's conversational [{"role": "assistant", ...}]); a row with
    # `messages_field` instead is a whole conversation whose last (assistant) turn is the completion.
    # reasoning-gym tasks with a solution writer (chain_sum) write one for each training problem
    completion_field: str = "completion"
    messages_field: str = "messages"
    instruction: str = "Answer with the final number."  # appended to each prompt; "" for none
    # demonstrations that run out: only the first `demos` training problems keep their reference
    # completion (what the SFT stage, `objective.sft_weight` and guide rows read); RL draws from all
    # of them, and the held-out and validation problems are the same whatever this is. None: every
    # problem that has one
    demos: int | None = None
    # the share of each RL step's prompts drawn from the problems that have a demonstration, the
    # rest from those that have none (LUFFY and ReLIFT draw their RL prompts where demonstrations
    # are): with 64 demonstrations among 2000 problems a plain draw meets one in 30 steps' prompts,
    # and guide rows and the mixed loss have almost nothing to act on. 0: one draw over all
    demo_share: float = 0.0
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)


@dataclass
class RewardConfig:
    correct: float = 1.0
    wrong: float = -1.0
    format_error: float = -2.0  # no parsable answer
    extractor: Literal["last_number", "boxed", "answer_tag", "auto"] = "last_number"
    verifier: Literal["auto", "math", "exact", "task"] = "auto"
    functions: list[str] = field(default_factory=list)  # extra user rewards, "module:fn" or "file.py:fn"
    weights: list[float] = field(default_factory=list)  # one per function; default 1.0 each
    timeout: float = 5.0  # seconds per reward-function call
    # stop the run when one reward function faults on every completion this many steps in a row; 0 = never
    max_failed_steps: int = 3


@dataclass
class RolloutConfig:
    engine: Literal["fast", "hf", "vllm"] = "fast"
    group_size: int = 8  # completions per prompt, |G|
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    dynamic_sampling: bool = False  # DAPO: resample prompts until groups have non-zero reward spread
    max_resample_rounds: int = 2  # cap on extra rollout rounds per step with dynamic_sampling
    # weights the `fast` sampler decodes with: "model" (the policy's own), or a copy refreshed after
    # every optimizer step, "int8" (weight-only, CPU) or "bfloat16"; log-probs for the loss stay
    # the trainer's (docs/benchmarks.md has the speed and the log-prob gap)
    dtype: Literal["model", "bfloat16", "int8"] = "model"
    # the sampling stream: a prompt's completions are drawn from (train.seed, the prompt's number) and,
    # when not 0, this; the prompts and their order, the model's init and the rest stay train.seed's.
    # The ladder's A/A arm sets 1, so it is a second draw of its twin, not a copy of it
    seed: int = 0


@dataclass
class TuningConfig:
    """Engine knobs: they change speed and memory, never what is computed."""

    # `fast` on CPU with fp32 weights: rollouts of more than 16 rows read a second copy of the large
    # weights, prepacked for oneDNN's matmul (same values, 1.06-1.15x the tokens/s at 8 x 8; +430 MB
    # for the 135M model while sampling)
    prepack: bool = True


@dataclass
class ObjectiveConfig:
    """The switches of the ladder; see objective.py and the table in README.md."""

    advantage: Literal["raw", "relu", "group_norm", "group_norm_relu", "group_mean", "rloo"] = "group_norm"
    std_ddof: int = 0
    std_eps: float = 1e-6
    ratio: Literal["none", "token", "sequence"] = "token"
    clip: bool = True
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None  # c > 1 bounds the loss for negative advantages (dual-clip PPO)
    beta: float = 0.04  # KL weight; 0 means no reference model is ever built
    # KL to the policy that sampled the answers (pi_old), in the loss with kl_estimator: the seed's
    # "drop importance sampling, read the ratio as a regulariser". Zero on the first pass over a
    # batch (pi = pi_old); on later passes (train.mu > 1) it pulls pi back where ratio: none leaves
    # reused answers unguarded. 0 = off
    beta_old: float = 0.0
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    kl_in: Literal["loss", "reward"] = "loss"
    aggregation: Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"] = (
        "seq_mean_token_mean"
    )
    max_len: int | None = None  # constant for seq_mean_token_sum_norm; None -> rollout.max_new_tokens
    # truncated importance sampling: weight each token by min(pi_old / pi_engine, tis_cap), for
    # engines whose log-probs differ from the trainer's (vllm, bf16); null = off; 2.0 is common
    tis_cap: float | None = None
    # SFT and RL in one loss (CHORD): L = (1 - w) * surrogate + w * cross-entropy of the reference
    # completions of the step's prompts that have one (task.demos). 0 = RL alone; with given rows
    # alone (train.rows: given) the run is rung 0 whatever this is
    sft_weight: float = 0.0
    sft_weight_schedule: Literal["constant", "linear"] = "constant"  # linear: w falls to 0 at train.steps
    # guided groups: the reference completion (task.demos) joins its group as one more row, reward
    # reward.correct, normalised with the group (the seed's rare right answer in a group of wrong
    # ones). "no_right": only groups with no right answer; "always": every group; "off"
    guide: Literal["off", "no_right", "always"] = "off"


@dataclass
class TrainConfig:
    # which rows a step trains on: "sampled", the policy's own answers, scored (RL, rungs 1-5), or
    # "given", the task's reference completions (rung 0, SFT: `sft2grpo sft` sets it)
    rows: Literal["sampled", "given"] = "sampled"
    steps: int = 40
    prompts_per_step: int = 4  # groups per step; completions per step = prompts_per_step * group_size
    mu: int = 1  # optimisation passes over each batch of rollouts
    micro_batch_size: int = 16  # sequences per forward/backward
    # pack each micro-batch's prompts and completions into one row with no padding (SDPA models);
    # false: one padded row per completion, each prompt's keys/values shared through the cache
    packing: bool = True
    # recompute each decoder layer's activations in backward instead of keeping them: less memory
    # for a longer update (transformers' gradient checkpointing, non-reentrant; same gradient)
    gradient_checkpointing: bool = False
    lr: float = 1e-5
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float = 1.0
    # the run's seed: the model's initialisation (LoRA, tiny), the order of the training problems and
    # each prompt's sampling generator. task.seed makes the problems and their splits (the same
    # held-out problems whatever this is); rollout.seed draws other answers to the same prompts
    seed: int = 0
    max_bad_steps: int = 5  # consecutive NaN/inf steps before the run stops
    # "bf16": forward/backward under bfloat16 autocast, fp32 weights and optimizer (faster on CPUs
    # with AVX512-BF16/AMX and on GPUs, several times slower on CPUs without them, where PyTorch
    # emulates it); "auto": bf16 where it is native, else off; "off": everything in model.dtype
    autocast: Literal["off", "bf16", "auto"] = "off"
    # with several processes (torchrun): "ddp" replicates the model, "fsdp2" shards it (fully_shard)
    parallel: Literal["ddp", "fsdp2"] = "ddp"


@dataclass
class EvalConfig:
    before: bool = True
    after: bool = True
    size: int | None = None  # None -> task.eval_size
    batch_size: int = 64
    max_new_tokens: int | None = None  # None -> rollout.max_new_tokens
    # sampled accuracy before and after training too, beside the greedy score: this many answers
    # drawn per held-out problem at the rollout temperature, the mean share right
    # (eval_before_sampled.jsonl, eval_after_sampled.jsonl). 0 = greedy only
    draws: int = 0
    k: int = 1  # pass@k; 1 = greedy decoding, one answer per problem
    k_draws: int | None = None  # answers drawn per problem for pass@k when k > 1 (>= k); None -> k
    temperature: float = 1.0  # sampling temperature when k > 1
    # steps between evaluations on the validation split during training (evals.jsonl, the plot);
    # the held-out split is scored before and after training, and at heldout_at. 0 = off
    every: int = 0
    # steps at which the held-out split is scored during training as well, as after it, into
    # heldout/step-N/: how a run got where it ended (the ladder's horizons). Measurements only:
    # choosing a step or a setting by them would leak the held-out split into the result
    heldout_at: list[int] = field(default_factory=list)
    # at heldout_at steps, also this many answers drawn per held-out problem at the rollout
    # temperature (sampled accuracy: the mean share right, less noisy than one greedy answer).
    # 0 = greedy only
    heldout_at_draws: int = 0
    # at every validation evaluation (eval.every), also this many answers drawn per validation
    # problem at the rollout temperature (tag "val_sampled" in evals.jsonl): choosing a setting by
    # sampled accuracy without reading the held-out split. 0 = greedy only
    val_draws: int = 0


@dataclass
class LogConfig:
    output_dir: str = "runs/{preset}-{time}"
    samples_per_step: int = 2  # completions written to samples.jsonl each step
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "sft2grpo"
    plots: bool = True
    progress: bool = True


@dataclass
class CheckpointConfig:
    every: int = 0  # steps between checkpoints (+ one at the end); 0 = only on interrupt or bad steps
    keep: int = 2


@dataclass
class SFTStageConfig:
    """The pipeline's first stage, which `sft2grpo train` runs before the RL objective when steps > 0:
    rung 0 (cross-entropy on reference completions) in <run>/sft/, then RL from its model in
    <run>/rl/ (pipeline.py). These keys stand in for train.steps, lr, prompts_per_step (batch_size),
    schedule and warmup_steps during that stage; everything else (model, task, eval, log,
    checkpoint) is shared. `sft2grpo sft` alone (rung 0 without RL after it) reads the train
    section instead."""

    steps: int = 0  # 0: no supervised stage, RL starts from model.name as it is
    lr: float = 5.0e-5
    batch_size: int = 16  # reference completions per step
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = 0


@dataclass
class Config:
    preset: str = "grpo"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sft_stage: SFTStageConfig = field(default_factory=SFTStageConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)


# ---------------------------------------------------------------------------------------------------
# Type checking of one value against a field's annotation.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return repr(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        # YAML 1.1 reads a bare off/on as false/true: give the word back where it is a choice
        if isinstance(value, bool) and ("on" if value else "off") in choices:
            value = "on" if value else "off"
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                continue
        raise bad
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):  # "a,b" from the command line
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, list | tuple):
            raise bad
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is Any:
        return value
    raise bad


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply(obj: Any, data: dict, prefix: str, source: str) -> None:
    """Set fields of dataclass `obj` from a (nested) dict, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix or 'top level'}' must be a mapping, got {data!r}")
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{path}'{hint}; valid keys: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, path, source)
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{source}: {path}"))


# Keys that have a new name: a file or an override that uses the old one still reads, with a
# one-line warning that names the new key (run folders and configs written before 2026-12-07).
RENAMED = {
    "sft": "sft_stage",  # the pipeline's first stage, not rung 0 (`sft0`) or rung 1 (`onpolicy_sft`)
    "eval.samples": "eval.k_draws",  # draws for pass@k, not eval.heldout_at_draws
    "eval.sampled": "eval.heldout_at_draws",
    "rollout.prepack": "tuning.prepack",  # an engine knob, apart from the user's keys
}


def _new_name(key: str) -> str | None:
    """The new dotted name of `key` (or of the section it is in), if it was renamed."""
    for old, new in RENAMED.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return None


def rename_old_keys(data: dict, source: str, warn: bool = True) -> dict:
    """`data` (nested, as read from YAML) with every renamed key moved to its new name (`warn`: say so,
    one line per key)."""
    flat: dict[str, Any] = {}

    def walk(d: Any, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if (
                isinstance(v, dict)
                and _new_name(key) is None
                and any(o.startswith(key + ".") for o in RENAMED)
            ):
                walk(v, key + ".")
            else:
                flat[key] = v

    walk(data, "")
    out: dict[str, Any] = {}
    for key, v in flat.items():
        new = _new_name(key)
        if new is not None:
            if warn:
                warnings.warn(f"{source}: '{key}' is now '{new}'; reading it as that", stacklevel=3)
            key = new
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(v, dict) and isinstance(node.get(leaf), dict):
            node[leaf].update(v)
        else:
            node[leaf] = v
    return out


def _yaml_line(path: Path, key: str) -> int | None:
    """Best-effort line number of a top-level or nested key in a YAML file (for error messages)."""
    leaf = key.split(".")[-1]
    try:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip().startswith(f"{leaf}:"):
                return i
    except OSError:
        return None
    return None


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-6' -> (['train', 'lr'], 3e-06). The value is read as YAML, so 'true', '1e-5',
    '[a, b]' and 'null' mean what they look like."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "1e-5" as a string; numbers are what people mean.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.split("."), value


# Presets that have a new name; the old one still reads, with a one-line warning. Rung 1 was `sft`,
# which also named rung 0's command, the pipeline's first stage and its config section.
PRESET_RENAMED = {"sft": "onpolicy_sft"}


def current_preset(name: str) -> str:
    """`name`, or its new name (with a one-line warning) if the preset was renamed."""
    if name in PRESET_RENAMED:
        new = PRESET_RENAMED[name]
        warnings.warn(
            f"preset '{name}' is now '{new}' (rung 1, on-policy SFT); reading it as that", stacklevel=3
        )
        return new
    return name


def resolve_preset_path(name_or_path: str) -> Path:
    """A preset name ('grpo') or a YAML path; presets live in the repo's configs/ folder."""
    name_or_path = current_preset(name_or_path)
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p
    candidate = configs_dir() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(f"unknown preset '{name_or_path}'; available: {', '.join(list_presets())}")


def configs_dir() -> Path:
    """configs/ of a source checkout (src/sft2grpo/config.py -> ../../configs), else the installed copy."""
    here = Path(__file__).resolve().parent
    for c in (here.parent.parent / "configs", here / "configs"):
        if c.is_dir():
            return c
    return here.parent.parent / "configs"


# presets that `sft2grpo sft` runs (rung 0, reference completions); `sft2grpo train` refuses them
SUPERVISED_PRESETS = ("sft0",)


def list_presets() -> list[str]:
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- overrides, then `validate`. Raises ConfigError on any problem."""
    cfg = Config()
    if path is not None:
        p = resolve_preset_path(str(path))
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{p}:{line} is not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        data.setdefault("preset", p.stem)
        data = rename_old_keys(data, str(p))
        try:
            _apply(cfg, data, "", str(p))
        except ConfigError as e:
            msg = str(e)
            key = msg.split("'")[1] if "unknown key" in msg else msg.split(": ")[1] if ": " in msg else ""
            line = _yaml_line(p, key)
            if line is not None:
                msg = msg.replace(f"{p}:", f"{p}:{line}:", 1)
            raise ConfigError(msg) from None
    for text in overrides or []:
        keys, value = parse_override(text)
        data: Any = value
        for k in reversed(keys):
            data = {k: data}
        _apply(cfg, rename_old_keys(data, f"override '{text}'"), "", "override")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Range checks across fields; each failure names the key and the value."""

    def need(ok: bool, key: str, value: Any, why: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={value!r}: {why}")

    o, r, t = cfg.objective, cfg.rollout, cfg.train
    need(o.beta >= 0, "objective.beta", o.beta, "must be >= 0")
    need(o.beta_old >= 0, "objective.beta_old", o.beta_old, "must be >= 0")
    need(0 <= o.eps_low < 1, "objective.eps_low", o.eps_low, "must be in [0, 1)")
    need(o.eps_high >= 0, "objective.eps_high", o.eps_high, "must be >= 0")
    need(o.dual_clip is None or o.dual_clip > 1, "objective.dual_clip", o.dual_clip, "must be > 1 or null")
    need(o.std_ddof in (0, 1), "objective.std_ddof", o.std_ddof, "must be 0 or 1")
    need(o.std_eps > 0, "objective.std_eps", o.std_eps, "must be > 0")
    need(o.max_len is None or o.max_len > 0, "objective.max_len", o.max_len, "must be > 0")
    need(o.tis_cap is None or o.tis_cap >= 1, "objective.tis_cap", o.tis_cap, "must be >= 1 or null")
    need(0 <= o.sft_weight <= 1, "objective.sft_weight", o.sft_weight, "must be in [0, 1]")
    need(
        o.sft_weight == 0 or t.rows == "sampled",
        "objective.sft_weight",
        o.sft_weight,
        "mixes the cross-entropy into RL; with train.rows=given the run is rung 0 already",
    )
    if o.guide != "off":
        need(
            t.rows == "sampled",
            "objective.guide",
            o.guide,
            "guide rows join sampled groups; train.rows=given has none",
        )
        need(
            o.tis_cap is None,
            "objective.guide",
            o.guide,
            "guide rows have no engine log-probs for objective.tis_cap to weigh; set tis_cap null",
        )
    demos, share = cfg.task.demos, cfg.task.demo_share
    need(demos is None or demos >= 0, "task.demos", demos, "must be >= 0 or null (every problem)")
    need(0 <= share <= 1, "task.demo_share", share, "must be in [0, 1]")
    need(
        share == 0 or cfg.task.difficulty.mode == "off",
        "task.demo_share",
        share,
        "the difficulty filter picks the prompts itself; set task.difficulty.mode=off or demo_share=0",
    )
    need(r.group_size >= 1, "rollout.group_size", r.group_size, "must be >= 1")
    if o.advantage in ("group_norm", "group_norm_relu", "group_mean", "rloo"):
        need(
            r.group_size >= 2,
            "rollout.group_size",
            r.group_size,
            f"objective.advantage={o.advantage} needs groups of at least 2 completions",
        )
    if o.advantage in ("group_norm", "group_norm_relu") and o.std_ddof == 1:
        need(r.group_size >= 2, "rollout.group_size", r.group_size, "std with ddof=1 needs >= 2")
    need(r.max_new_tokens >= 1, "rollout.max_new_tokens", r.max_new_tokens, "must be >= 1")
    need(r.temperature > 0, "rollout.temperature", r.temperature, "must be > 0")
    need(0 < r.top_p <= 1, "rollout.top_p", r.top_p, "must be in (0, 1]")
    need(r.top_k >= 0, "rollout.top_k", r.top_k, "must be >= 0 (0 = off)")
    need(r.seed >= 0, "rollout.seed", r.seed, "must be >= 0 (0 = train.seed's stream)")
    need(cfg.train.seed >= 0, "train.seed", cfg.train.seed, "must be >= 0")
    need(r.max_resample_rounds >= 0, "rollout.max_resample_rounds", r.max_resample_rounds, "must be >= 0")
    need(
        r.dtype == "model" or r.engine == "fast",
        "rollout.dtype",
        r.dtype,
        f"a decoding copy needs rollout.engine=fast (not {r.engine})",
    )
    need(t.steps >= 0, "train.steps", t.steps, "must be >= 0")
    need(t.prompts_per_step >= 1, "train.prompts_per_step", t.prompts_per_step, "must be >= 1")
    need(t.mu >= 1, "train.mu", t.mu, "must be >= 1")
    need(t.micro_batch_size >= 1, "train.micro_batch_size", t.micro_batch_size, "must be >= 1")
    need(t.lr > 0, "train.lr", t.lr, "must be > 0")
    need(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "must be >= 0")
    need(t.max_grad_norm >= 0, "train.max_grad_norm", t.max_grad_norm, "must be >= 0 (0 = off)")
    need(t.max_bad_steps >= 1, "train.max_bad_steps", t.max_bad_steps, "must be >= 1")
    need(cfg.task.size >= 1, "task.size", cfg.task.size, "must be >= 1")
    need(cfg.task.eval_size >= 0, "task.eval_size", cfg.task.eval_size, "must be >= 0")
    vs = cfg.task.val_size
    need(vs is None or vs >= 0, "task.val_size", vs, "must be >= 0 or null")
    d = cfg.task.difficulty
    need(0 < d.ema <= 1, "task.difficulty.ema", d.ema, "must be in (0, 1]")
    need(0 <= d.prior <= 1, "task.difficulty.prior", d.prior, "must be in [0, 1]")
    need(0 <= d.floor <= 1, "task.difficulty.floor", d.floor, "must be in [0, 1]")
    if d.mode == "adaptive":
        need(bool(d.buckets), "task.difficulty.buckets", d.buckets, "mode=adaptive needs at least one bucket")
    for i, b in enumerate(d.buckets):
        need(bool(b), f"task.difficulty.buckets[{i}]", b, "a bucket needs at least one kwarg")
        need(b not in d.buckets[:i], f"task.difficulty.buckets[{i}]", b, "repeats an earlier bucket")
    need(cfg.eval.k >= 1, "eval.k", cfg.eval.k, "must be >= 1")
    need(
        cfg.eval.k_draws is None or cfg.eval.k_draws >= cfg.eval.k,
        "eval.k_draws",
        cfg.eval.k_draws,
        f"must be >= eval.k ({cfg.eval.k})",
    )
    need(cfg.eval.every >= 0, "eval.every", cfg.eval.every, "must be >= 0 (0 = off)")
    for h in cfg.eval.heldout_at:
        need(
            isinstance(h, int) and 1 <= h <= t.steps,
            "eval.heldout_at",
            cfg.eval.heldout_at,
            f"each step must be in 1..train.steps ({t.steps})",
        )
    need(
        cfg.eval.heldout_at_draws == 0 or cfg.eval.heldout_at_draws >= 2,
        "eval.heldout_at_draws",
        cfg.eval.heldout_at_draws,
        "must be 0 or >= 2",
    )
    need(cfg.eval.batch_size >= 1, "eval.batch_size", cfg.eval.batch_size, "must be >= 1")
    need(cfg.eval.draws == 0 or cfg.eval.draws >= 2, "eval.draws", cfg.eval.draws, "must be 0 or >= 2")
    need(
        cfg.eval.val_draws == 0 or cfg.eval.val_draws >= 2,
        "eval.val_draws",
        cfg.eval.val_draws,
        "must be 0 or >= 2",
    )
    need(cfg.checkpoint.every >= 0, "checkpoint.every", cfg.checkpoint.every, "must be >= 0")
    need(cfg.checkpoint.keep >= 1, "checkpoint.keep", cfg.checkpoint.keep, "must be >= 1")
    rw = cfg.reward
    need(
        not rw.weights or len(rw.weights) == len(rw.functions),
        "reward.weights",
        rw.weights,
        f"needs one weight per reward.functions entry ({len(rw.functions)})",
    )
    need(rw.timeout > 0, "reward.timeout", rw.timeout, "must be > 0")
    need(rw.max_failed_steps >= 0, "reward.max_failed_steps", rw.max_failed_steps, "must be >= 0 (0 = never)")
    need(cfg.model.lora.r >= 1, "model.lora.r", cfg.model.lora.r, "must be >= 1")
    s = cfg.sft_stage
    need(s.steps >= 0, "sft_stage.steps", s.steps, "must be >= 0 (0 = no supervised stage)")
    need(s.lr > 0, "sft_stage.lr", s.lr, "must be > 0")
    need(s.batch_size >= 1, "sft_stage.batch_size", s.batch_size, "must be >= 1")
    need(s.warmup_steps >= 0, "sft_stage.warmup_steps", s.warmup_steps, "must be >= 0")
    need(
        s.steps == 0 or t.rows == "sampled",
        "sft_stage.steps",
        s.steps,
        "a supervised stage goes before RL; with train.rows=given the run is rung 0 already",
    )


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, type, default) for every leaf field; used by `--help-config`."""
    rows = []
    hints = _hints(cls)
    inst = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        value = getattr(inst, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(type(value), key + ".")
        else:
            rows.append((key, _type_name(hints[f.name]), value))
    return rows


def loss_switches(obj: ObjectiveConfig, default_max_len: int) -> dict:
    """The objective section as the explicit keyword scalars of `objective.policy_loss`, which
    never reads the config itself. max_len (Dr. GRPO's constant) falls back to `default_max_len`,
    the rollout's max_new_tokens."""
    return {
        "ratio": obj.ratio,
        "clip": obj.clip,
        "eps_low": obj.eps_low,
        "eps_high": obj.eps_high,
        "dual_clip": obj.dual_clip,
        "beta": obj.beta,
        "beta_old": obj.beta_old,
        "kl_estimator": obj.kl_estimator,
        "kl_in": obj.kl_in,
        "aggregation": obj.aggregation,
        "max_len": obj.max_len if obj.max_len is not None else default_max_len,
        "tis_cap": obj.tis_cap,
    }
