"""Tasks: the prompts a policy answers and the answers its rewards are checked against.

`load_task(cfg.task)` reads `TaskConfig.name` as one of

    a reasoning-gym task    "chain_sum", "basic_arithmetic", ... generated offline from a seed, and
                            scored by reasoning-gym's own `score_answer` (`Task.scorer`)
    a JSONL file            "data/train.jsonl": one JSON object a line, `cfg.prompt_field` and
                            `cfg.answer_field` read from each, every other key kept in `meta`
    a Parquet file          "data/train.parquet", rows as in JSONL (needs the `data` extra)
    a datasets folder       a directory written by HF `datasets`' `save_to_disk` (needs the
                            `data` extra: pip install 'sft2grpo[data]')

and returns a `Task` with a training split, a held-out eval split and a validation split that share
no question text. The held-out split is for the numbers a run reports (before/after); the
validation split is for everything chosen while training (periodic evaluations, checkpoints), so
that nothing reported on the held-out problems was selected on them.
`cfg.instruction` ("Answer with the final number." by default) is appended to every prompt on a
line of its own, unless the prompt already ends with it.

    task = load_task(TaskConfig())  # chain_sum, 2-3 terms of 1-2 digits
    task.train[0].prompt
    # 'State the final answer to the following arithmetic problem: 15 - 43 - 75 =\\nAnswer with the final number.'

A row's prompt is a string, or a conversation in TRL's format: a list of {"role", "content"}
messages ending with the user's turn, e.g. [{"role": "system", "content": "Be brief."},
{"role": "user", "content": "2+2?"}]. A conversation goes through the chat template once, as it is;
its own system message wins over `model.system_prompt`, and the instruction goes at the end of its
last user message.

For supervised fine-tuning (`load_task(cfg, supervised=True)`, rung 0) each training row also needs
a reference completion, in TRL's SFT formats: a `completion` column next to the prompt (a string, or
a conversation's assistant turn [{"role": "assistant", "content": ...}]), or a `messages` column
holding the whole conversation, whose last turn, the assistant's, is the completion. The answer
column is then optional (without it, evaluation reports the held-out loss, not accuracy).
reasoning-gym tasks with a writer in SOLUTION_WRITERS get a worked solution for every training
problem, written from its metadata; held-out and validation problems never get one:

    worked_solution("chain_sum", {"expression": "74 + 30 - 91"})
    # '74 + 30 = 104, 104 - 91 = 13. The answer is 13.'

Bad data never passes silently: a missing file, a line that is not JSON, a missing or empty field,
a malformed message or an empty dataset raises `TaskError` with one line naming the file, the line
and the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import TaskConfig


class TaskError(ValueError):
    """A user-caused data problem; the message is one line naming the file, line and field."""


@dataclass
class Example:
    prompt: str  # the user message (a conversation's last one), instruction already appended
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)  # every other column; reasoning-gym: the entry
    source: str = ""  # "reasoning_gym:chain_sum" or "train.jsonl:12"
    messages: list[dict[str, str]] | None = None  # the prompt as a conversation, when it was one
    # the reference completion supervised fine-tuning trains on (a file's completion column, a
    # conversation's last assistant turn, a reasoning-gym worked solution); None when there is none
    completion: str | None = None

    @property
    def chat(self) -> str | list[dict[str, str]]:
        """What the chat template gets: the conversation, or the prompt as one user turn."""
        return self.messages if self.messages is not None else self.prompt

    @property
    def key(self) -> str:
        """Identity for train/eval deduplication: two conversations that differ only in their system
        message are different prompts."""
        return self.prompt if self.messages is None else json.dumps(self.messages, sort_keys=True)


@dataclass
class Task:
    name: str
    train: list[Example]
    eval: list[Example]
    # scorer(extracted_answer, example) -> float in [0, 1]; reasoning-gym's score_answer, else None
    scorer: Callable[[str, Example], float] | None = None
    # what loading dropped or shortened, e.g. {"eval_overlap_dropped": 3}; reported, never silent
    stats: dict[str, int] = field(default_factory=dict)
    val: list[Example] = field(default_factory=list)  # validation: disjoint from train and eval
    # task.difficulty's training pools, one per bucket (reasoning-gym, mode=adaptive), none of
    # their questions in eval or val; `train` stays the task's own split all the same
    buckets: list[list[Example]] = field(default_factory=list)


# The project's default difficulty per reasoning-gym task, applied under the user's kwargs. The
# 135M default model gets 2-3 terms of 1-2 digits right now and then (a few percent of samples),
# which is what a GRPO run needs: some groups with a reward spread from the first step on.
DEFAULT_KWARGS: dict[str, dict[str, Any]] = {
    "chain_sum": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
}

# The eval split is generated from seed + EVAL_SEED_OFFSET. Several reasoning-gym tasks seed item i
# with Random(seed + i), so seeds 0 and 1 would give the same items shifted by one; an offset far
# beyond any split size keeps the two index ranges apart. Dedup by question text is the real guard.
EVAL_SEED_OFFSET = 2**31
VAL_SEED_OFFSET = 2**30  # the validation split's seed, as far from train's and eval's
BUCKET_SEED_OFFSET = 2**24  # bucket i's training pool: seed + (i + 1) * this (below val's for i < 63)
DEFAULT_VAL_SIZE = 100  # reasoning-gym tasks when task.val_size is None (files: 0)


def default_kwargs(name: str) -> dict[str, Any]:
    """The reasoning-gym kwargs `TaskConfig(name=name)` runs with when `kwargs` is empty."""
    return dict(DEFAULT_KWARGS.get(name, {}))


def with_instruction(text: str, instruction: str) -> str:
    """`text`, then `instruction` on its own line (nothing added if empty or already there)."""
    text = text.rstrip()
    instruction = instruction.strip()
    if not instruction or text.endswith(instruction):
        return text
    return f"{text}\n{instruction}"


def load_task(cfg: TaskConfig, supervised: bool = False) -> Task:
    """The task named by `cfg.name`: a JSONL file, a datasets folder, or a reasoning-gym task.
    `supervised`: every training example must have a reference completion (`sft2grpo sft`), and
    file rows need no answer. With `cfg.demos` = N only the first N training examples keep their
    completion (`with_demos`)."""
    task = _load_task(cfg, supervised)
    return task if cfg.demos is None else with_demos(task, cfg.demos, supervised)


def with_demos(task: Task, n: int, supervised: bool = False) -> Task:
    """Demonstrations that run out: the first n training examples keep their reference completion,
    the rest lose it (RL still trains on them). `supervised` (rung 0 trains on completions only):
    the training split is those n. The held-out and validation splits are untouched."""
    train = [e if i < n else dataclasses.replace(e, completion=None) for i, e in enumerate(task.train)]
    if supervised:
        train = train[:n]
        if not train:
            raise TaskError(f"task.demos={n}: supervised fine-tuning needs at least one demonstration")
    kept = sum(e.completion is not None for e in train)
    return dataclasses.replace(task, train=train, stats={**task.stats, "demos": kept})


def epoch_order(rng: np.random.Generator, demonstrated: list[bool], per_step: int, share: float) -> list[int]:
    """One epoch's order of the training examples, `per_step` at a time. share 0: a permutation
    of them all. share > 0 (`task.demo_share`): each step's `per_step` slots hold k = max(1,
    round(share * per_step)) examples with a demonstration and the rest without, each kind walked in
    its own permutations (the demonstrated ones again and again when they are few), the step's slots
    shuffled; the epoch ends when the examples without a demonstration have all been drawn (or,
    when k = per_step, the demonstrated ones). Returns indices, len a multiple of per_step when
    share > 0."""
    n = len(demonstrated)
    with_demo = [i for i in range(n) if demonstrated[i]]
    without = [i for i in range(n) if not demonstrated[i]]
    if share == 0 or not without:
        return rng.permutation(n).tolist()
    if not with_demo:
        raise TaskError(f"task.demo_share={share}: no training problem has a demonstration (task.demos)")
    k = min(per_step, max(1, round(share * per_step)))
    steps = -(-len(without) // (per_step - k)) if k < per_step else -(-len(with_demo) // k)

    def stream(pool: list[int], length: int) -> list[int]:
        out: list[int] = []
        while len(out) < length:
            out += [pool[j] for j in rng.permutation(len(pool))]
        return out[:length]

    demo, rest = stream(with_demo, steps * k), stream(without, steps * (per_step - k))
    order: list[int] = []
    for s in range(steps):
        chunk = demo[s * k : (s + 1) * k] + rest[s * (per_step - k) : (s + 1) * (per_step - k)]
        order += [chunk[j] for j in rng.permutation(per_step)]
    return order


def _load_task(cfg: TaskConfig, supervised: bool) -> Task:
    name = cfg.name.strip()
    if not name:
        raise TaskError("task.name is empty")
    path = Path(name).expanduser()
    if cfg.difficulty.mode != "off" and (name.endswith((".jsonl", ".parquet")) or path.is_dir()):
        raise TaskError(
            f"task.difficulty.mode={cfg.difficulty.mode}: buckets are reasoning-gym kwargs, "
            f"but task.name={name} is a file"
        )
    if name.endswith(".jsonl"):
        return _load_jsonl(path, cfg, supervised)
    if name.endswith(".parquet"):
        return _load_parquet(path, cfg, supervised)
    if path.is_dir():
        return _load_hf_folder(path, cfg, supervised)
    if "/" in name or "\\" in name or path.suffix in (".json", ".csv", ".txt"):
        if path.exists():
            raise TaskError(f"task.name={name}: not a .jsonl or .parquet file or a datasets folder")
        raise TaskError(f"task.name={name}: file not found")
    task = _load_reasoning_gym(name, cfg)
    if supervised and name not in SOLUTION_WRITERS:
        raise TaskError(
            f"task.name={name}: supervised fine-tuning needs reference completions, and reasoning-gym "
            f"{name} has no solution writer (those that do: {', '.join(SOLUTION_WRITERS)}); give a "
            "file with a completion column, e.g. one that `sft2grpo sample` writes"
        )
    return task


# ---------------------------------------------------------------------------------------------------
# Worked solutions: a reference completion written from a reasoning-gym problem's metadata


def _chain_sum_solution(meta: dict[str, Any]) -> str:
    """'74 + 30 - 91' -> '74 + 30 = 104, 104 - 91 = 13. The answer is 13.': the running partial
    sums, left to right, then the final number as the reward's last-number extractor reads it."""
    tokens = str(meta["expression"]).split()  # "a op b op c": numbers and operators alternate
    total = int(tokens[0])
    steps = []
    for op, term in zip(tokens[1::2], tokens[2::2]):
        new = total + int(term) if op == "+" else total - int(term)
        steps.append(f"{total} {op} {term} = {new}")
        total = new
    return f"{', '.join(steps)}. The answer is {total}."


SOLUTION_WRITERS: dict[str, Callable[[dict[str, Any]], str]] = {"chain_sum": _chain_sum_solution}


def worked_solution(name: str, meta: dict[str, Any]) -> str | None:
    """The worked solution of a reasoning-gym `name` problem from its metadata, or None when the
    task has no writer."""
    writer = SOLUTION_WRITERS.get(name)
    return writer(meta) if writer else None


# ---------------------------------------------------------------------------------------------------
# reasoning-gym


def _load_reasoning_gym(name: str, cfg: TaskConfig) -> Task:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TaskError(
            f"task.name={name}: not a reasoning-gym task, a .jsonl or .parquet file or a datasets folder{hint}"
        )
    kwargs = {**default_kwargs(name), **cfg.kwargs}

    def make(seed: int, size: int, kw: dict[str, Any] = kwargs, culprit: str = "") -> Any:
        try:
            return reasoning_gym.create_dataset(name, size=size, seed=seed, **kw)
        except (TypeError, AssertionError, ValueError) as e:
            msg = " ".join(str(e).split()) or type(e).__name__
            culprit = culprit or f"task.kwargs={kw}"
            raise TaskError(f"{culprit}: rejected by reasoning-gym {name}: {msg}") from None

    train_ds = make(cfg.seed, cfg.size)
    source = f"reasoning_gym:{name}"
    made = {source: train_ds}  # each example is scored by the dataset that generated it

    def scorer(answer: str, example: Example) -> float:
        return float(made.get(example.source, train_ds).score_answer(answer, example.meta))

    def to_example(entry: dict[str, Any], source: str = source, solved: bool = False) -> Example:
        return Example(
            with_instruction(entry["question"], cfg.instruction),
            str(entry["answer"]),
            entry,
            source,
            completion=worked_solution(name, entry["metadata"]) if solved else None,
        )

    # only training problems get a worked solution; held-out and validation ones never do
    train = [to_example(e, solved=True) for e in _entries(train_ds)]
    seen = {e.meta["question"] for e in train}

    # Fresh questions from another seed until `size` are found; candidates are capped so that a
    # task whose whole problem space fits in the training split cannot loop forever.
    def fresh(offset: int, size: int, key: str, label: str) -> tuple[list[Example], int]:
        out: list[Example] = []
        dropped = 0
        if size <= 0:
            return out, dropped
        for entry in _entries(make((cfg.seed + offset) % 2**32, 4 * size + 1000)):
            if entry["question"] in seen:
                dropped += 1
                continue
            seen.add(entry["question"])
            out.append(to_example(entry))
            if len(out) == size:
                break
        if not out:
            raise TaskError(
                f"task {name}: no {label} questions left: all {dropped} candidates also occur in the "
                f"{cfg.size} training examples; lower task.size or make task.kwargs harder"
            )
        if len(out) < size:
            warnings.warn(
                f"task {name}: only {len(out)} of task.{key}={size} {label} questions are "
                f"unseen in training ({dropped} duplicates dropped)",
                stacklevel=3,
            )
        return out, dropped

    evals, dropped = fresh(EVAL_SEED_OFFSET, cfg.eval_size, "eval_size", "held-out")
    # validation last: the held-out split stays exactly what it was before validation existed
    val_size = DEFAULT_VAL_SIZE if cfg.val_size is None else cfg.val_size
    val, _ = fresh(VAL_SEED_OFFSET, val_size, "val_size", "validation")
    stats = {"eval_overlap_dropped": dropped} if dropped else {}

    # Difficulty buckets last, so every split above is exactly what it is without them. Their
    # questions may repeat each other and the training split's, never eval's or val's.
    buckets: list[list[Example]] = []
    held = {e.meta["question"] for e in evals + val}
    for i, bucket in enumerate(cfg.difficulty.buckets if cfg.difficulty.mode == "adaptive" else []):
        culprit = f"task.difficulty.buckets[{i}]={bucket}"
        seed = (cfg.seed + (i + 1) * BUCKET_SEED_OFFSET) % 2**32
        ds = made[f"{source}#b{i}"] = make(seed, cfg.size, {**kwargs, **bucket}, culprit)
        pool = [to_example(e, f"{source}#b{i}") for e in _entries(ds) if e["question"] not in held]
        if not pool:
            raise TaskError(f"{culprit}: all {cfg.size} of its problems are held-out or validation ones")
        buckets.append(pool)
    return Task(name, train, evals, scorer, stats, val, buckets)


def _entries(ds: Any) -> Iterator[dict[str, Any]]:
    # Index access, not iteration: reasoning-gym datasets keep their iteration cursor on the object.
    for i in range(len(ds)):
        yield ds[i]


# ---------------------------------------------------------------------------------------------------
# Files


ROLES = ("system", "user", "assistant", "tool")


def _read_messages(value: list, where: str, name: str) -> list[dict[str, str]]:
    """A conversation prompt, checked: a non-empty list of {"role", "content"} objects with known
    roles and text content, a system message only first, the user's turn last."""
    at = f"{where}: field '{name}'"
    if not value:
        raise TaskError(f"{at} is an empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise TaskError(
                f"{at} message {i}: expected an object with 'role' and 'content', got {type(m).__name__}"
            )
        for k in ("role", "content"):
            if m.get(k) is None:
                raise TaskError(f"{at} message {i}: missing '{k}'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise TaskError(f"{at} message {i}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise TaskError(f"{at} message {i}: 'content' must be a string, got {type(content).__name__}")
        if role == "system" and i > 0:
            raise TaskError(f"{at} message {i}: a system message must come first")
        # datasets fills keys that only some messages have with None; those are not the user's data
        out.append({k: v for k, v in m.items() if v is not None})
    if out[-1]["role"] != "user":
        raise TaskError(
            f"{at}: the last message must be the user's (got '{out[-1]['role']}'), for the model to answer"
        )
    if not out[-1]["content"].strip():
        raise TaskError(f"{at}: the last user message is empty")
    return out


def _row_example(
    row: Any, where: str, cfg: TaskConfig, source: str, supervised: bool | str = False
) -> Example:
    """One row -> Example, or TaskError naming `where` ("file.jsonl:12") and the field. A row is a
    prompt (string or conversation) with an answer and, optionally, a completion; or a `messages`
    conversation whose last turn is the assistant's completion. `supervised`: the completion is
    required and the answer optional; "heldout" (a supervised run's eval file): either will do."""
    if not isinstance(row, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(row).__name__}")
    pf, af, cf, mf = cfg.prompt_field, cfg.answer_field, cfg.completion_field, cfg.messages_field
    completion = None
    if pf not in row and mf in row:  # a whole conversation: the last turn is the completion
        prompt, completion = _split_conversation(row[mf], where, mf)
    elif pf not in row:
        keys = ", ".join(map(str, row)) or "none"
        also = f" or '{mf}'" if supervised else ""
        raise TaskError(f"{where}: missing field '{pf}'{also} (fields: {keys}; see task.prompt_field)")
    else:
        prompt = row[pf]
        if cf in row:
            completion = _read_completion(row[cf], where, cf)
    if supervised is True and completion is None:
        keys = ", ".join(map(str, row)) or "none"
        raise TaskError(
            f"{where}: missing field '{cf}' (fields: {keys}; supervised fine-tuning needs a reference "
            "completion: see task.completion_field, or give a 'messages' conversation)"
        )
    if af not in row and (not supervised or completion is None):
        keys = ", ".join(map(str, row)) or "none"
        raise TaskError(f"{where}: missing field '{af}' (fields: {keys}; see task.answer_field)")
    messages = None
    if isinstance(prompt, list):
        messages = _read_messages(prompt, where, pf if pf in row else mf)
        last = messages[-1]
        last["content"] = prompt = with_instruction(last["content"], cfg.instruction)
    elif not isinstance(prompt, str):
        raise TaskError(
            f"{where}: field '{pf}' must be a string or a list of chat messages, got {type(prompt).__name__}"
        )
    elif not prompt.strip():
        raise TaskError(f"{where}: field '{pf}' is empty")
    else:
        prompt = with_instruction(prompt, cfg.instruction)
    text = ""  # a supervised row without an answer: evaluated by its loss, not its accuracy
    if af in row:
        answer = row[af]
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise TaskError(
                f"{where}: field '{af}' must be a string or a number, got {type(answer).__name__}"
            )
        text = str(answer).strip()
        if not text:
            raise TaskError(f"{where}: field '{af}' is empty")
    # Reward functions get every column by name; an answer column not called "answer" (TRL's
    # `solution`) keeps its own name too, since `def accuracy(completions, solution, **kw)` asks for it.
    dropped = {pf, cf, mf} | ({af} if af == "answer" else set())
    meta = {k: v for k, v in row.items() if k not in dropped}
    return Example(prompt, text, meta, source, messages, completion)


def _read_completion(value: Any, where: str, name: str) -> str:
    """A completion column: a non-empty string, or TRL's conversational completion, a list holding
    one assistant message."""
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            raise TaskError(
                f"{where}: field '{name}' as a list must hold one message with role 'assistant', got {value!r:.80}"
            )
        value = value[0].get("content")
    if not isinstance(value, str):
        raise TaskError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise TaskError(f"{where}: field '{name}' is empty")
    return value


def _split_conversation(value: Any, where: str, name: str) -> tuple[list[dict[str, str]], str]:
    """A `messages` row -> (the prompt conversation, the completion): its last message, which must
    be the assistant's, is the completion; the messages before it (ending with the user's) the prompt."""
    if not isinstance(value, list) or not value:
        raise TaskError(f"{where}: field '{name}' must be a non-empty list of chat messages")
    last = value[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        role = last.get("role") if isinstance(last, dict) else type(last).__name__
        raise TaskError(
            f"{where}: field '{name}': the last message must be the assistant's (got {role!r}), "
            "it is the completion trained on"
        )
    if len(value) < 2:
        raise TaskError(f"{where}: field '{name}' has no user message before the assistant's")
    return list(value[:-1]), _read_completion([last], where, name)


def _read_jsonl(path: Path, cfg: TaskConfig, supervised: bool | str = False) -> list[Example]:
    if not path.is_file():
        raise TaskError(f"{path}: file not found")
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():  # blank lines (a trailing newline, spacing) are not rows
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            out.append(_row_example(row, where, cfg, f"{path.name}:{lineno}", supervised))
    if not out:
        raise TaskError(f"{path}: no examples (the file is empty)")
    return out


def eval_sibling(path: Path) -> Path:
    """data/train.jsonl -> data/train.eval.jsonl (and .parquet alike)"""
    return path.with_name(f"{path.stem}.eval{path.suffix}")


def _load_jsonl(path: Path, cfg: TaskConfig, supervised: bool = False) -> Task:
    """Train on the file; hold out `<name>.eval.jsonl` beside it if present (its first eval_size
    rows), else the file's last `eval_size` rows. Training rows whose prompt also appears in the
    eval split are dropped, counted in `Task.stats` and warned about."""
    rows = _read_jsonl(path, cfg, supervised)
    sibling = eval_sibling(path)
    if sibling.is_file() and sibling != path:
        # a supervised run's held-out rows need an answer (accuracy) or a completion (loss), not both
        evals = _read_jsonl(sibling, cfg, "heldout" if supervised else False)[: cfg.eval_size]
        return _split(str(path), rows, evals, cfg)
    return _split_tail(str(path), rows, cfg, f" or add {sibling.name}", supervised)


def _split_tail(name: str, rows: list[Example], cfg: TaskConfig, alt: str, supervised: bool = False) -> Task:
    n = cfg.eval_size
    if n and len(rows) < 2 * n:
        # a small file still trains (RL or SFT alike): a tenth of its rows are held out, with a warning
        n = max(1, len(rows) // 10)
        warnings.warn(
            f"{name}: {len(rows)} rows; holding out {n} (a tenth) instead of task.eval_size={cfg.eval_size}",
            stacklevel=3,
        )
    if n and len(rows) <= n:
        raise TaskError(
            f"{name}: {len(rows)} rows leave none for training after holding out task.eval_size={n}; "
            f"lower task.eval_size{alt}"
        )
    return _split(name, rows[: len(rows) - n], rows[len(rows) - n :], cfg)


def _split(name: str, train: list[Example], evals: list[Example], cfg: TaskConfig) -> Task:
    held = {e.key for e in evals}
    kept = [e for e in train if e.key not in held]
    stats: dict[str, int] = {}
    if len(kept) < len(train):
        stats["train_overlap_dropped"] = len(train) - len(kept)
        warnings.warn(
            f"{name}: dropped {len(train) - len(kept)} training rows whose prompt is also in the eval split",
            stacklevel=3,
        )
    if not kept:
        raise TaskError(f"{name}: no training rows left once the eval split's prompts are removed")
    n_val = cfg.val_size or 0  # files: validation only when asked for, off the training rows' end
    if n_val and len(kept) <= n_val:
        raise TaskError(
            f"{name}: {len(kept)} training rows leave none after task.val_size={n_val} validation "
            "rows; lower task.val_size"
        )
    return Task(name, kept[: len(kept) - n_val], evals, None, stats, kept[len(kept) - n_val :])


# ---------------------------------------------------------------------------------------------------
# HF datasets folders and Parquet files

NEEDS_DATA = "needs the optional 'datasets' package: pip install 'sft2grpo[data]'"


def _load_parquet(path: Path, cfg: TaskConfig, supervised: bool = False) -> Task:
    """Rows as in JSONL, named by 0-based index; `<name>.eval.parquet` beside it is the eval split
    if present, else the last `eval_size` rows. Read with pyarrow (which the `data` extra brings)
    rather than datasets, which would first copy the file into its cache."""
    if not path.is_file():
        raise TaskError(f"{path}: file not found")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskError(f"{path}: reading Parquet {NEEDS_DATA}") from None

    def read(p: Path, supervised: bool | str = supervised) -> list[Example]:
        try:
            table = pq.read_table(p)
        except Exception as e:  # pyarrow raises its own ArrowInvalid, OSError, ...
            raise TaskError(f"{p}: not a readable Parquet file ({' '.join(str(e).split())})") from None
        out = [
            _row_example(row, f"{p} row {i}", cfg, f"{p.name}:{i}", supervised)
            for i, row in enumerate(table.to_pylist())
        ]
        if not out:
            raise TaskError(f"{p}: no examples (the file has no rows)")
        return out

    rows = read(path)
    sibling = eval_sibling(path)
    if sibling.is_file():
        held = read(sibling, "heldout" if supervised else False)
        return _split(str(path), rows, held[: cfg.eval_size], cfg)
    return _split_tail(str(path), rows, cfg, f" or add {sibling.name}", supervised)


def _load_hf_folder(path: Path, cfg: TaskConfig, supervised: bool = False) -> Task:
    """A `save_to_disk` folder: a Dataset (eval = its last eval_size rows) or a DatasetDict
    (train = "train", eval = the first of "test"/"validation"/"eval" present, else the tail).
    Errors name rows by their 0-based index, as `dataset[i]` does."""
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).is_file() for m in markers):
        raise TaskError(f"{path}: a folder, but not one written by datasets' save_to_disk")
    try:
        import datasets
    except ImportError:
        raise TaskError(f"{path}: reading a datasets folder {NEEDS_DATA}") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:
        raise TaskError(f"{path}: datasets could not load it: {' '.join(str(e).split())}") from None

    def rows(split: Iterable[dict[str, Any]], label: str) -> list[Example]:
        out = [
            _row_example(row, f"{path}[{label}] row {i}", cfg, f"{path.name}[{label}]:{i}", supervised)
            for i, row in enumerate(split)
        ]
        if not out:
            raise TaskError(f"{path}[{label}]: no examples")
        return out

    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise TaskError(f"{path}: no 'train' split (splits: {', '.join(loaded)})")
        train = rows(loaded["train"], "train")
        for label in ("test", "validation", "eval"):
            if label in loaded:
                return _split(str(path), train, rows(loaded[label], label)[: cfg.eval_size], cfg)
        return _split_tail(str(path), train, cfg, " or save a 'test' split", supervised)
    return _split_tail(str(path), rows(loaded, "rows"), cfg, "", supervised)
