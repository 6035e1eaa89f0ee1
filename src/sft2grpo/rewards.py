"""Rewards: pull an answer out of a completion, check it, turn the verdict into a number.

    completion --extractor--> "42" --verifier--> correct? --scheme--> +1 / -1 / -2

Extractors (`EXTRACTORS`, picked by `reward.extractor`) are pure `str -> str | None`; None means the
completion holds no parsable answer, which the seed's scheme punishes hardest (a format error).
Verifiers (`VERIFIERS`, picked by `reward.verifier`) share one contract,
`verifier(extracted, example, scorer) -> bool`:

    math   mathematical equivalence with math-verify (1/2 == 0.5 == \\frac{1}{2}); answers it cannot
           parse fall back to `exact`
    exact  normalised string match (case, spaces, a trailing period), numeric when both are numbers
    task   the task's own scorer (reasoning-gym's `score_answer`); a score of 1.0 is correct
    auto   `task` when the task has a scorer, else `exact`, then `math`

User reward functions are called the way TRL's GRPOTrainer calls them, with keyword arguments only:

    fn(prompts=, completions=, completion_ids=, trainer_state=, log_metric=, log_extra=, **columns)

`columns` holds `answer` and every other dataset column (`Example.meta`) by name, as lists; a row
whose prompt is a conversation gives its prompt as messages and its completion as
`[{"role": "assistant", "content": text}]`. `trainer_state.global_step` is the number of optimizer
steps done. `log_metric(name, value)` lands in metrics.jsonl (the step's mean), `log_extra(column,
values)` in samples.jsonl. `async def` functions are awaited, concurrently with each other. So
`def f(completions, **kwargs)` and `def accuracy(completions, solution, **kwargs)` work unchanged.
They are named in `reward.functions` as "module:function" or "path/to/file.py:function". When any
are given, their weighted sum REPLACES the built-in verifier reward; put the special name "builtin"
in the list to keep it as one more term (with its own weight). A None value means "does not apply
here": that term is left out of the completion's sum, as TRL's nansum does. The `correct` and
`format_error` flags always come from the built-in extractor and verifier, so accuracy means the
same thing in every run.

Nothing here may crash a training run: a reward function (or verifier) that raises, returns the
wrong length, returns NaN/inf/text or runs past `reward.timeout` seconds gives the format-error
reward to the completions it should have scored, a `RewardWarning` with the count, and `faults` in
the result. Timeouts interrupt the call with a SIGALRM timer when called from the main thread (the
usual case, and the only way to actually stop runaway sympy work); elsewhere the call runs in a
daemon thread that is abandoned on timeout. Neither can stop a single long C call that never
returns to the interpreter, so math-verify never sees answers longer than `MAX_MATH_CHARS`. What
must not pass quietly is a function that can never work: `end_step` tells the trainer when one has
failed on every completion for `reward.max_failed_steps` steps in a row, and the run stops.

    fn = build_reward(RewardConfig(), task)
    res = fn(["... so the answer is 7.", "no idea"], [ex, ex])
    res.rewards  # tensor([ 1., -2.])
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from .config import RewardConfig
from .tasks import Example, Task

Extractor = Callable[[str], "str | None"]
TaskScorer = Callable[[str, Example], float]
Verifier = Callable[[str, Example, "TaskScorer | None"], bool]

BUILTIN = "builtin"  # the name that keeps the verifier reward among user functions
MAX_MATH_CHARS = 200  # longer answers skip math-verify: sympy on huge inputs can stall in C code


class RewardError(ValueError):
    """A user-caused reward problem (bad name, a function that does not load); one line."""


class RewardWarning(UserWarning):
    """A reward call failed and its completions got the format-error reward."""


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}".rstrip(": ")


# ---------------------------------------------------------------------------------------------------
# Extractors


_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")


def boxed(text: str) -> str | None:
    """Content of the last balanced `\\boxed{...}`; nested braces and `\\{` escapes are respected.

    >>> boxed(r"first \\boxed{1}, then \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    found = None
    for m in _BOX_OPEN.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            c = text[i]
            if c == "\\":  # \{ and \} are literal braces, not grouping
                i += 2
                continue
            depth += (c == "{") - (c == "}")
            i += 1
        if depth == 0:
            inner = text[m.end() : i - 1].strip()
            if inner:
                found = inner  # a later (or an inner, nested) box wins
    return found


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def answer_tag(text: str) -> str | None:
    """Content of the last closed `<answer>...</answer>`; None if absent or empty."""
    matches = _ANSWER_TAG.findall(text)
    if not matches:
        return None
    return matches[-1].strip() or None


# A number that starts a token: not glued to a letter/digit or a preceding point, so "5-3" yields 3
# (not -3), "SmolLM2" yields nothing and "v1.2" yields nothing. Thousands groups ("1,234") are one
# number; a bare list ("1,2,3") is three. The possessive `++` stops "3/45.6" from being read as 3/4.
_NUMBER = re.compile(
    r"(?<![\w.])"
    r"(?P<sign>[-+\u2212]?)"
    r"(?P<num>(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]++)(?:\.[0-9]++)?|\.[0-9]++)"
    r"(?:/(?P<den>[0-9]++)(?!\.[0-9]))?"
)


def last_number(text: str) -> str | None:
    """The last number in the text, normalised: "-3", "1234" (from "1,234"), "3.5", "3/4".

    A trailing full stop is not a decimal point ("is 42." -> "42"); "+" and the Unicode minus are
    normalised to nothing and "-".
    """
    last = None
    for last in _NUMBER.finditer(text):  # noqa: B007 - only the final match is wanted
        pass
    if last is None:
        return None
    sign = "-" if last["sign"] in ("-", "\u2212") else ""
    num = last["num"].replace(",", "")
    den = f"/{last['den']}" if last["den"] else ""
    return f"{sign}{num}{den}"


def auto(text: str) -> str | None:
    """`boxed`, else `answer_tag`, else `last_number`: the most explicit answer the text offers."""
    for extract in (boxed, answer_tag, last_number):
        found = extract(text)
        if found is not None:
            return found
    return None


EXTRACTORS: dict[str, Extractor] = {
    "last_number": last_number,
    "boxed": boxed,
    "answer_tag": answer_tag,
    "auto": auto,
}


def _lookup(registry: dict, name: str, kind: str):
    """registry[name], or a RewardError that lists the valid names."""
    if name not in registry:
        raise RewardError(f"unknown {kind} '{name}'; valid names: {', '.join(registry)}")
    return registry[name]


def get_extractor(name: str) -> Extractor:
    return _lookup(EXTRACTORS, name, "extractor")


# ---------------------------------------------------------------------------------------------------
# Timeouts


class _Interrupt(BaseException):
    """Raised by the SIGALRM handler. A BaseException, so `except Exception` in the interrupted code
    (math-verify has plenty) cannot swallow it."""


def call_with_timeout(fn: Callable[..., Any], timeout: float, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, or `TimeoutError` once it has run `timeout` seconds.

    On the main thread with no other timer armed, a one-shot ITIMER_REAL interrupts the call itself
    (two syscalls of overhead, and sub-second precision, unlike math-verify's whole-second alarm).
    Elsewhere signals are unavailable, so the call runs in a daemon thread that is left behind if it
    overruns: the caller gets its answer on time, the stray thread finishes on its own.
    """
    on_main = threading.current_thread() is threading.main_thread()
    if on_main and hasattr(signal, "setitimer") and signal.getitimer(signal.ITIMER_REAL)[0] == 0:

        def on_alarm(signum: int, frame: Any) -> None:
            raise _Interrupt

        previous = signal.signal(signal.SIGALRM, on_alarm)
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, timeout)
                return fn(*args, **kwargs)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Interrupt:
            # Also catches an alarm that fired just as fn returned: counted as a timeout, never leaked.
            raise TimeoutError(f"ran past {timeout:g} s") from None
        finally:
            signal.signal(signal.SIGALRM, previous)

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller below
            box["error"] = e

    worker = threading.Thread(target=run, name="sft2grpo-reward", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"ran past {timeout:g} s (left running in a background thread)")
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---------------------------------------------------------------------------------------------------
# Verifiers


_THOUSANDS = re.compile(r"[-+]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")


def _normalise(s: str) -> str:
    s = " ".join(s.split()).casefold()
    if len(s) >= 2 and s[0] == s[-1] == "$":  # "$42$" is 42 written as LaTeX
        s = s[1:-1].strip()
    return s.rstrip(".").rstrip()


def _as_number(s: str) -> Fraction | None:
    """Exact value of "3", "-3.50", "1,234", "3/4" (already normalised), else None."""
    s = s.replace("\u2212", "-")
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def exact_match(pred: str, gold: str) -> bool:
    """Normalised string equality, or equal values when both sides read as numbers."""
    a, b = _normalise(pred), _normalise(gold)
    if a == b:
        return bool(a)
    x, y = _as_number(a), _as_number(b)
    return x is not None and y is not None and x == y


def _silence_math_verify() -> None:
    # math-verify warns once when its own signal timeout is off; ours replaces it (see
    # call_with_timeout), and theirs would raise outright when called off the main thread.
    from math_verify import grader, parser

    parser.TIMEOUT_WARNING_SHOWN = True
    grader.TIMEOUT_WARNING_SHOWN = True


@functools.lru_cache(maxsize=8192)
def _math_parse(text: str) -> tuple:
    """math-verify's reading of an answer, cached: a group of completions shares one gold answer
    and often repeats the same guesses. LaTeX-looking text is wrapped in $...$ so that "\\sqrt{2}"
    parses at all and "2^{10}" is not read as "2"; plain text is parsed as is, so "yes" does not
    become the product y*e*s."""
    from math_verify import parse

    _silence_math_verify()
    latexy = any(c in text for c in "\\{}^_")
    parsed = parse(f"${text}$" if latexy else text, parsing_timeout=None)
    if not parsed and latexy:
        parsed = parse(text, parsing_timeout=None)
    return tuple(parsed)


def math_equal(pred: str, gold: str) -> bool:
    """math-verify equivalence; `exact_match` when either side is too long or will not parse.
    Run it under `call_with_timeout`: sympy can take minutes on inputs like 9^{9^{9^9}}."""
    if len(pred) > MAX_MATH_CHARS or len(gold) > MAX_MATH_CHARS:
        return exact_match(pred, gold)
    g, p = _math_parse(gold), _math_parse(pred)
    if not g or not p:
        return exact_match(pred, gold)
    from math_verify import verify

    return bool(verify(list(g), list(p), timeout_seconds=None))


def verify_math(extracted: str, example: Example, scorer: TaskScorer | None = None) -> bool:
    return math_equal(extracted, example.answer)


def verify_exact(extracted: str, example: Example, scorer: TaskScorer | None = None) -> bool:
    return exact_match(extracted, example.answer)


def verify_task(extracted: str, example: Example, scorer: TaskScorer | None = None) -> bool:
    """reasoning-gym scorers return a float in [0, 1] and give partial credit (e.g. 0.5 for "15"
    when the answer is "5", since the answer is a substring); only a full 1.0 counts as correct."""
    if scorer is None:
        raise RewardError("verifier 'task' needs a task with its own scorer")
    return float(scorer(extracted, example)) >= 1.0 - 1e-9


def verify_auto(extracted: str, example: Example, scorer: TaskScorer | None = None) -> bool:
    if scorer is not None:
        return verify_task(extracted, example, scorer)
    # exact first: it is microseconds, and settles most right answers without sympy
    return exact_match(extracted, example.answer) or math_equal(extracted, example.answer)


VERIFIERS: dict[str, Verifier] = {
    "auto": verify_auto,
    "math": verify_math,
    "exact": verify_exact,
    "task": verify_task,
}


def get_verifier(name: str) -> Verifier:
    return _lookup(VERIFIERS, name, "verifier")


# ---------------------------------------------------------------------------------------------------
# User reward functions


def load_reward_function(spec: str) -> Callable[..., Any]:
    """Import "package.module:function" or "path/to/file.py:function"; RewardError if it fails.

    A module name that is not importable from sys.path is also looked for relative to the current
    directory, since a console script (unlike `python -m`) does not put it on the path.
    """
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise RewardError(f"reward.functions: '{spec}' is not 'module:function' or 'file.py:function'")
    try:
        if where.endswith(".py") or "/" in where or os.sep in where:
            module = _import_file(Path(where))
        else:
            module = _import_module(where)
    except RewardError:
        raise
    except BaseException as e:  # a user module may raise anything, SystemExit included
        raise RewardError(f"reward.functions: cannot import '{spec}': {_one_line(e)}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise RewardError(f"reward.functions: '{spec}': {where} has no attribute '{name}'")
    if not callable(fn):
        raise RewardError(f"reward.functions: '{spec}': {name} is not callable")
    return fn


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name.split(".")[0] or os.getcwd() in sys.path:
            raise
    sys.path.append(os.getcwd())
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(os.getcwd())


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    path = path.resolve()
    # A unique module name per file, registered before exec so dataclasses and pickle can find it.
    tag = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    stem = re.sub(r"\W", "_", path.stem)
    mod_name = f"sft2grpo_user_{stem}_{tag}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


# The keyword arguments TRL passes besides the dataset's columns; a column with one of these names
# would be shadowed, so it is left out (TRL drops its "prompt", "completion" and "completion_ids").
RESERVED_KWARGS = ("prompts", "completions", "completion_ids", "trainer_state", "log_metric", "log_extra")
# samples.jsonl columns the trainer writes itself; `log_extra` may not overwrite them.
RESERVED_EXTRA = ("step", "prompt", "answer", "completion", "reward")


def example_columns(examples: Sequence[Example]) -> dict[str, list[Any]]:
    """TRL-style keyword columns: `answer`, then every meta key (missing ones as None), minus the
    names of RESERVED_KWARGS."""
    cols: dict[str, list[Any]] = {"answer": [e.answer for e in examples]}
    keys: dict[str, None] = {}
    for e in examples:
        keys.update(dict.fromkeys(e.meta))
    for k in keys:
        if k not in cols and k not in RESERVED_KWARGS:
            cols[k] = [e.meta.get(k) for e in examples]
    return cols


@dataclass
class TrainerState:
    """Stands in for TRL's `trainer_state` (a transformers TrainerState) for rewards that change
    with training progress, e.g. `min(1, trainer_state.global_step / 100)`."""

    global_step: int = 0  # optimizer steps finished before these completions were sampled
    max_steps: int = 0  # train.steps (0 when not known)


# ---------------------------------------------------------------------------------------------------
# Async reward functions share one event loop, run forever in a daemon thread: calls from any thread
# (the trainer's, or a worker's) submit to it, and a client a function keeps (an HTTP session) stays
# bound to the same loop from one step to the next, as with TRL's.

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _event_loop() -> asyncio.AbstractEventLoop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="sft2grpo-async-rewards", daemon=True).start()
        return _LOOP


async def _await_with_timeout(awaitable: Any, timeout: float) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise TimeoutError(f"ran past {timeout:g} s") from None


# ---------------------------------------------------------------------------------------------------
# The reward callable


@dataclass
class RewardResult:
    rewards: torch.Tensor  # (B,) float32, what the objective sees
    correct: torch.Tensor  # (B,) bool, from the built-in extractor + verifier
    format_error: torch.Tensor  # (B,) bool, no parsable answer
    faults: int  # completions whose reward was replaced because a reward call failed
    extracted: list[str | None]
    # one dict per completion: the columns reward functions gave `log_extra` (for samples.jsonl)
    extras: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Term:
    spec: str
    weight: float
    fn: Callable[..., Any] | None  # None = the built-in verifier reward
    # For reward.max_failed_steps: calls since the last `end_step`, how many of them faulted on every
    # completion and the first such error; then the run of consecutive all-failed steps.
    calls: int = 0
    failed_calls: int = 0
    window_error: str | None = None
    failed_steps: int = 0
    first_error: str | None = None

    @property
    def is_async(self) -> bool:
        # an `async def`, or an object whose class defines `async def __call__`
        return inspect.iscoroutinefunction(self.fn) or inspect.iscoroutinefunction(type(self.fn).__call__)


class _CallLog:
    """`log_metric` and `log_extra` for one call of one reward function. Closed when the call is
    over, so a call abandoned on timeout cannot write into a later step."""

    def __init__(self, spec: str, n: int):
        self.spec, self.n, self.open = spec, n, True
        self.metrics: list[tuple[str, float]] = []
        self.extras: dict[str, list[Any]] = {}

    def _warn(self, msg: str) -> None:
        warnings.warn(f"reward: '{self.spec}': {msg}", RewardWarning, 3)

    def log_metric(self, name: str, value: float) -> None:
        if not self.open:
            return
        try:
            self.metrics.append((str(name), float(value)))
        except (TypeError, ValueError):
            self._warn(f"log_metric({name!r}, {value!r}): the value is not a number; ignored")

    def log_extra(self, column: str, values: Sequence[Any]) -> None:
        if not self.open:
            return
        if column in RESERVED_EXTRA:
            self._warn(f"log_extra({column!r}): samples.jsonl writes that column itself; ignored")
            return
        try:
            values = list(values)
        except TypeError:
            self._warn(f"log_extra({column!r}, ...): expected one value per completion; ignored")
            return
        if len(values) != self.n:
            self._warn(f"log_extra({column!r}, ...): {len(values)} values for {self.n} completions; ignored")
            return
        self.extras[str(column)] = [_jsonable(v) for v in values]


def _jsonable(v: Any) -> Any:
    """A value samples.jsonl can hold: numpy and torch scalars as numbers, NaN and inf as null (JSON
    has neither), anything else unknown to JSON as its str()."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        item = getattr(v, "item", None)
        return _jsonable(item()) if callable(item) and getattr(v, "ndim", 0) == 0 else str(v)


class RewardFn:
    """`fn(completions, examples, completion_ids=..., step=...) -> RewardResult`; build it with
    `build_reward`. User functions are called as TRL calls them (see `_user_kwargs`); what they log
    with `log_metric` is averaged until the caller takes it with `drain_metrics`, and after each
    training step the caller asks `end_step` whether a function has failed for too long."""

    def __init__(self, cfg: RewardConfig, task: Task | None = None, max_steps: int = 0):
        self.cfg = cfg
        self.max_steps = max_steps
        self.task_scorer: TaskScorer | None = task.scorer if task is not None else None
        self.extract = get_extractor(cfg.extractor)
        self.verify = get_verifier(cfg.verifier)
        if cfg.verifier == "task" and self.task_scorer is None:
            name = task.name if task is not None else "this task"
            raise RewardError(
                f"reward.verifier=task: {name} has no scorer of its own; use auto, math or exact"
            )
        weights = list(cfg.weights) or [1.0] * len(cfg.functions)
        if len(weights) != len(cfg.functions):
            raise RewardError(
                f"reward.weights: {len(weights)} weights for {len(cfg.functions)} reward.functions"
            )
        self.terms = [
            _Term(spec, float(w), None if spec == BUILTIN else load_reward_function(spec))
            for spec, w in zip(cfg.functions, weights)
        ]
        self._metric_sums: dict[str, list[float]] = {}  # name -> [sum, count] since the last drain

    # -- built-in ------------------------------------------------------------------------------------

    def _check(self, completion: str, example: Example) -> tuple[str | None, bool, BaseException | None]:
        """(extracted, correct, error). The extractor is linear-time regex, so only the verifier
        runs under the timeout."""
        extracted = self.extract(completion)
        if extracted is None:
            return None, False, None
        try:
            ok = call_with_timeout(self.verify, self.cfg.timeout, extracted, example, self.task_scorer)
            return extracted, bool(ok), None
        except RewardError:
            raise
        except Exception as e:  # TimeoutError included
            return extracted, False, e

    # -- batch ---------------------------------------------------------------------------------------

    def __call__(
        self,
        completions: Sequence[str],
        examples: Sequence[Example],
        *,
        completion_ids: Sequence[Sequence[int]] | None = None,
        step: int = 0,
    ) -> RewardResult:
        """Score completion i of example i. `completion_ids` (the generated token ids, unpadded) and
        `step` (optimizer steps done) are handed to user functions as `completion_ids=` and
        `trainer_state.global_step`."""
        if len(completions) != len(examples):
            raise RewardError(f"reward: {len(completions)} completions but {len(examples)} examples")
        cfg, n = self.cfg, len(completions)
        extracted: list[str | None] = []
        correct = torch.zeros(n, dtype=torch.bool)
        fmt = torch.zeros(n, dtype=torch.bool)
        builtin = torch.empty(n, dtype=torch.float32)
        faulted = torch.zeros(n, dtype=torch.bool)
        first_error: BaseException | None = None
        for i, (c, ex) in enumerate(zip(completions, examples)):
            x, ok, err = self._check(c, ex)
            extracted.append(x)
            correct[i], fmt[i] = ok, x is None
            if err is not None:
                faulted[i] = True
                first_error = first_error or err
                builtin[i] = cfg.format_error
            else:
                builtin[i] = cfg.format_error if x is None else cfg.correct if ok else cfg.wrong
        if first_error is not None:
            k = int(faulted.sum())
            warnings.warn(
                f"reward: verifier '{cfg.verifier}' failed on {k} of {n} completions "
                f"(first: {_one_line(first_error)}); they get the format-error reward {cfg.format_error:g}",
                RewardWarning,
                2,
            )
        extras: list[dict[str, Any]] = [{} for _ in range(n)]
        if not self.terms:
            return RewardResult(builtin, correct, fmt, int(faulted.sum()), extracted, extras)

        kwargs = self._user_kwargs(completions, examples, completion_ids, step)
        weighted = torch.empty(len(self.terms), n, dtype=torch.float32)  # (terms, B), NaN = None
        for j, (term, (values, bad, log)) in enumerate(zip(self.terms, self._call_terms(kwargs, n))):
            if term.fn is None:
                weighted[j] = term.weight * builtin
                continue
            faulted |= bad
            weighted[j] = term.weight * values
            for name, value in log.metrics:
                self._metric_sums.setdefault(name, [0.0, 0])
                self._metric_sums[name][0] += value
                self._metric_sums[name][1] += 1
            for column, vals in log.extras.items():
                for row, v in zip(extras, vals):
                    row[column] = v
        # TRL's rule for None: that function does not apply to that completion, so its term is left
        # out of the sum (nansum); a completion no function applies to gets 0, with a warning.
        unscored = torch.isnan(weighted).all(0)  # (B,)
        if unscored.any():
            warnings.warn(
                f"reward: every reward function returned None for {int(unscored.sum())} of {n} "
                "completions; they get reward 0",
                RewardWarning,
                2,
            )
        rewards = weighted.nansum(0)  # (B,)
        return RewardResult(rewards, correct, fmt, int(faulted.sum()), extracted, extras)

    def _user_kwargs(
        self,
        completions: Sequence[str],
        examples: Sequence[Example],
        completion_ids: Sequence[Sequence[int]] | None,
        step: int,
    ) -> dict[str, Any]:
        """The keyword arguments of TRL's reward call. A row whose prompt is a conversation gets its
        prompt as messages and its completion as `[{"role": "assistant", "content": text}]`, as TRL
        does for conversational datasets; copies, so a function that edits them edits nothing else."""
        prompts: list[Any] = []
        comps: list[Any] = []
        for c, e in zip(completions, examples):
            if e.messages is None:
                prompts.append(e.prompt)
                comps.append(c)
            else:
                prompts.append([dict(m) for m in e.messages])
                comps.append([{"role": "assistant", "content": c}])
        ids = None if completion_ids is None else [list(map(int, x)) for x in completion_ids]
        if ids is not None and len(ids) != len(comps):
            raise RewardError(f"reward: {len(ids)} completion_ids for {len(comps)} completions")
        return {
            **example_columns(examples),
            "prompts": prompts,
            "completions": comps,
            "completion_ids": ids,
            "trainer_state": TrainerState(global_step=step, max_steps=self.max_steps),
        }

    def _call_terms(
        self, kwargs: dict[str, Any], n: int
    ) -> list[tuple[torch.Tensor, torch.Tensor, _CallLog]]:
        """Every user function on the batch -> per term (values (B,) with NaN for None, faulted (B,),
        its logs). The async ones are started first and run concurrently on the shared event loop
        while the plain ones run here, one after another, each under the timeout."""
        logs = [_CallLog(t.spec, n) for t in self.terms]

        def call_kwargs(log: _CallLog) -> dict[str, Any]:
            return {**kwargs, "log_metric": log.log_metric, "log_extra": log.log_extra}

        timeout = self.cfg.timeout
        async_terms = [i for i, t in enumerate(self.terms) if t.fn is not None and t.is_async]
        pending = None
        if async_terms:

            async def run_all() -> list[Any]:
                calls = [
                    _await_with_timeout(self.terms[i].fn(**call_kwargs(logs[i])), timeout)  # type: ignore[misc]
                    for i in async_terms
                ]
                return await asyncio.gather(*calls, return_exceptions=True)

            pending = asyncio.run_coroutine_threadsafe(run_all(), _event_loop())
            deadline = time.monotonic() + timeout + 1.0

        outputs: dict[int, Any] = {}
        for i, term in enumerate(self.terms):
            if term.fn is None or i in async_terms:
                continue
            try:
                out = call_with_timeout(term.fn, timeout, **call_kwargs(logs[i]))
                if inspect.isawaitable(out):  # a plain callable that hands back a coroutine
                    out = asyncio.run_coroutine_threadsafe(
                        _await_with_timeout(out, timeout), _event_loop()
                    ).result(timeout + 1.0)
                outputs[i] = out
            except Exception as e:  # TimeoutError included
                outputs[i] = e
            logs[i].open = False
        if pending is not None:
            try:
                results = pending.result(max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                # A coroutine that blocks the loop (time.sleep in an async def) cannot be cancelled
                # by wait_for; it is left behind and every async function of this call has failed.
                pending.cancel()
                results = [TimeoutError(f"ran past {timeout:g} s (blocking its event loop)")] * len(
                    async_terms
                )
            for i, out in zip(async_terms, results):
                outputs[i] = out
                logs[i].open = False

        return [
            (*self._read_values(term, outputs[i], n), logs[i])
            if term.fn is not None
            else (torch.empty(0), torch.zeros(n, dtype=torch.bool), logs[i])
            for i, term in enumerate(self.terms)
        ]

    def _read_values(self, term: _Term, out: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One function's output -> (values (B,), faulted (B,)). None is NaN (not applicable, not a
        fault); NaN, inf, text or a failed call get the format-error reward, so a broken function
        pushes the policy away from nothing in particular rather than crashing the run."""
        penalty = self.cfg.format_error
        values = torch.full((n,), penalty, dtype=torch.float32)
        bad = torch.ones(n, dtype=torch.bool)
        try:
            if isinstance(out, Exception):  # what gather() handed back for an async function
                raise out
            if isinstance(out, BaseException):  # CancelledError and kin: a fault, never a crash
                raise RuntimeError(_one_line(out))
            if isinstance(out, torch.Tensor):
                out = out.tolist()
            out = list(out)
            if len(out) != n:
                raise ValueError(f"returned {len(out)} values for {n} completions")
        except Exception as e:
            self._record(term, True, _one_line(e))
            warnings.warn(
                f"reward: '{term.spec}' failed on all {n} completions ({_one_line(e)}); "
                f"they get the format-error reward {penalty:g}",
                RewardWarning,
                5,  # _read_values, _call_terms' list, _call_terms, __call__: the caller's line
            )
            return values, bad
        for i, v in enumerate(out):
            if v is None:
                values[i], bad[i] = math.nan, False
                continue
            try:
                f = float(v)  # bools and numpy scalars welcome; strings are not
            except (TypeError, ValueError):
                continue
            if math.isfinite(f):
                values[i], bad[i] = f, False
        k = int(bad.sum())
        self._record(term, n > 0 and k == n, f"returned {k} of {n} values that are not finite numbers")
        if k:
            warnings.warn(
                f"reward: '{term.spec}' returned {k} of {n} values that are not finite numbers "
                f"(NaN, inf or text); they get the format-error reward {penalty:g}",
                RewardWarning,
                5,  # _read_values, _call_terms' list, _call_terms, __call__: the caller's line
            )
        return values, bad

    # -- what the caller collects ----------------------------------------------------------------------

    @staticmethod
    def _record(term: _Term, failed_all: bool, error: str) -> None:
        term.calls += 1
        if failed_all:
            term.failed_calls += 1
            term.window_error = term.window_error or error

    def end_step(self) -> str | None:
        """Call once per training step. Returns a one-line message when a user function has faulted
        on every completion of every call in `reward.max_failed_steps` consecutive steps (0: never),
        else None. A step without a call of a function leaves its count as it was."""
        limit, stop = self.cfg.max_failed_steps, None
        for t in self.terms:
            if t.calls and t.failed_calls == t.calls:
                t.failed_steps += 1
                t.first_error = t.first_error or t.window_error
            elif t.calls:
                t.failed_steps, t.first_error = 0, None
            t.calls = t.failed_calls = 0
            t.window_error = None
            if stop is None and limit and t.failed_steps >= limit:
                stop = (
                    f"reward function '{t.spec}' failed on every completion for {t.failed_steps} steps "
                    f"in a row (reward.max_failed_steps={limit}); first error: {t.first_error}"
                )
        return stop

    def drain_metrics(self, reserved: Collection[str] = ()) -> dict[str, float]:
        """The means of what reward functions gave `log_metric` since the last drain, then forgets
        them. A name in `reserved` (the caller's own metric keys) comes back as "reward/<name>"."""
        out = {
            (f"reward/{k}" if k in reserved else k): total / count
            for k, (total, count) in self._metric_sums.items()
        }
        self._metric_sums = {}
        return out


def build_reward(cfg: RewardConfig, task: Task | None = None, max_steps: int = 0) -> RewardFn:
    """The reward callable for a run: checks names, loads user functions (RewardError if any fails).
    `max_steps` is what user functions see as `trainer_state.max_steps`."""
    return RewardFn(cfg, task, max_steps)
