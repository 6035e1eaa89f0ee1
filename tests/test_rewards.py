"""Extractors, verifiers, the seed's reward scheme, user reward functions and the safety net."""

from __future__ import annotations

import math
import sys
import threading
import time
import warnings

import pytest
import torch

from sft2grpo.config import RewardConfig
from sft2grpo.rewards import (
    EXTRACTORS,
    RewardError,
    RewardWarning,
    answer_tag,
    auto,
    boxed,
    build_reward,
    call_with_timeout,
    exact_match,
    get_extractor,
    get_verifier,
    last_number,
    load_reward_function,
    math_equal,
)
from sft2grpo.tasks import Example, Task


def ex(answer: str, **meta) -> Example:
    return Example(prompt=f"q for {answer}", answer=answer, meta=meta, source="test")


def file_task(*examples: Example) -> Task:
    return Task("test", list(examples), [], None)


# ---------------------------------------------------------------------------------------------------
# Extractors


@pytest.mark.parametrize(
    "text, want",
    [
        (r"so \boxed{42}", "42"),
        (r"\boxed{1} then \boxed{2} finally", "2"),  # the last box wins
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the box
        (r"\boxed{\boxed{7}}", "7"),  # a box in a box: the inner answer
        (r"\boxed{3} and \boxed{4", "3"),  # an unclosed box is ignored
        (r"\boxed{}", None),
        (r"\fbox{5}", "5"),
        ("42", None),
    ],
)
def test_boxed(text, want):
    assert boxed(text) == want


@pytest.mark.parametrize(
    "text, want",
    [
        ("<answer>5</answer>", "5"),
        ("<answer>1</answer> hmm <ANSWER>\n 2 \n</ANSWER>", "2"),
        ("<answer>  </answer>", None),
        ("<answer>5", None),  # truncated before the closing tag
        ("5", None),
    ],
)
def test_answer_tag(text, want):
    assert answer_tag(text) == want


@pytest.mark.parametrize(
    "text, want",
    [
        ("The answer is 42.", "42"),  # a trailing full stop is not a decimal point
        ("it is -3", "-3"),
        ("x = \u22127", "-7"),  # Unicode minus
        ("5 - 3 = 2", "2"),
        ("10-3", "3"),  # a binary minus is not a sign
        ("total: 1,234 apples", "1234"),
        ("1,2,3", "3"),  # a list, not thousands
        ("pi is 3.14159, roughly", "3.14159"),
        ("half is .5", ".5"),
        ("three quarters: 3/4.", "3/4"),
        ("+8", "8"),
        ("first 12 then 7 then nothing", "7"),
        ("I am SmolLM2", None),  # digits glued to a word are not a number
        ("no number here", None),
        ("", None),
    ],
)
def test_last_number(text, want):
    assert last_number(text) == want


def test_auto_prefers_explicit_answers():
    assert auto(r"7 then \boxed{8} then 9") == "8"
    assert auto("7 <answer>8</answer> 9") == "8"
    assert auto("7 then 9") == "9"
    assert auto("nothing") is None


def test_registry_errors_list_names():
    assert set(EXTRACTORS) == {"last_number", "boxed", "answer_tag", "auto"}
    with pytest.raises(RewardError, match="last_number, boxed, answer_tag, auto"):
        get_extractor("regex")
    with pytest.raises(RewardError, match="valid names: auto, math, exact, task"):
        get_verifier("llm")


# ---------------------------------------------------------------------------------------------------
# Verifiers


@pytest.mark.parametrize(
    "pred, gold",
    [("0.5", "1/2"), (r"\frac{1}{2}", "0.5"), ("1/2", r"\frac{1}{2}"), ("1,234", "1234"), (r"\sqrt{4}", "2")],
)
def test_math_equivalent(pred, gold):
    assert math_equal(pred, gold)


@pytest.mark.parametrize("pred, gold", [("3", "4"), ("0.6", "1/2"), ("sey", "yes"), (r"2^{10}", "2")])
def test_math_different(pred, gold):
    # "sey" vs "yes" guards against math-verify reading words as products of symbols
    assert not math_equal(pred, gold)


def test_math_falls_back_to_exact_for_words():
    assert math_equal("Yes", "yes")


@pytest.mark.parametrize(
    "pred, gold, want",
    [
        (" Yes. ", "yes", True),
        ("New   York", "new york", True),
        ("3.50", "3.5", True),
        ("1,234", "1234", True),
        ("$42$", "42", True),
        ("-0", "0", True),
        ("6/8", "3/4", True),
        ("4", "5", False),
        ("", "", False),
    ],
)
def test_exact_match(pred, gold, want):
    assert exact_match(pred, gold) is want


def test_task_scorer_needs_full_credit():
    # reasoning-gym gives partial credit (answer "5" is inside "15"): that must not count
    task = Task("t", [], [], scorer=lambda a, e: 1.0 if a == e.answer else 0.5)
    fn = build_reward(RewardConfig(verifier="task"), task)
    r = fn(["15", "5"], [ex("5"), ex("5")])
    assert r.correct.tolist() == [False, True]


def test_task_verifier_without_scorer_is_an_error():
    with pytest.raises(RewardError, match="no scorer"):
        build_reward(RewardConfig(verifier="task"), file_task())


# ---------------------------------------------------------------------------------------------------
# The scheme


def test_seed_scheme_right_wrong_format_error():
    fn = build_reward(RewardConfig(), file_task())
    r = fn(["so it is 7.", "it is 8", "I do not know"], [ex("7")] * 3)
    assert r.rewards.dtype == torch.float32
    assert r.rewards.tolist() == [1.0, -1.0, -2.0]
    assert r.correct.tolist() == [True, False, False]
    assert r.format_error.tolist() == [False, False, True]
    assert r.extracted == ["7", "8", None]
    assert r.faults == 0


def test_scheme_values_come_from_config():
    cfg = RewardConfig(correct=2.0, wrong=0.0, format_error=-0.5, extractor="boxed", verifier="math")
    r = build_reward(cfg, file_task())([r"\boxed{0.5}", r"\boxed{1}", "0.5"], [ex("1/2")] * 3)
    assert r.rewards.tolist() == [2.0, 0.0, -0.5]


def test_reasoning_gym_scorer_through_auto():
    from sft2grpo.config import TaskConfig
    from sft2grpo.tasks import load_task

    task = load_task(TaskConfig(size=5, eval_size=2))
    e = task.train[0]
    r = build_reward(RewardConfig(), task)([f"It is {e.answer}.", f"It is {int(e.answer) + 1}."], [e, e])
    assert r.rewards.tolist() == [1.0, -1.0]


# ---------------------------------------------------------------------------------------------------
# User reward functions


USER_MODULE = """
def length_penalty(prompts, completions, answer, **columns):
    return [-len(c) / 10 for c in completions]

def echo_meta(prompts, completions, answer, level, **columns):
    return [float(x) for x in level]

not_a_function = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards_mod"
    sys.modules.pop("my_rewards_mod", None)


def test_load_module_function(user_module):
    fn = load_reward_function(f"{user_module}:length_penalty")
    assert fn([""], ["abcde"], answer=["1"]) == [-0.5]


def test_load_file_function(tmp_path):
    path = tmp_path / "rw.py"
    path.write_text(USER_MODULE)
    fn = load_reward_function(f"{path}:length_penalty")
    assert fn([""], ["ab"], answer=["1"]) == [-0.2]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("no_such_module_xyz:fn", "cannot import 'no_such_module_xyz:fn'.*ModuleNotFoundError"),
        ("missing/dir/rw.py:fn", "cannot import 'missing/dir/rw.py:fn'.*no such file"),
        ("just_a_name", "is not 'module:function'"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(RewardError, match=match):
        load_reward_function(spec)


def test_bad_attribute_and_broken_file(tmp_path, user_module):
    with pytest.raises(RewardError, match="has no attribute 'nope'"):
        load_reward_function(f"{user_module}:nope")
    with pytest.raises(RewardError, match="not callable"):
        load_reward_function(f"{user_module}:not_a_function")
    bad = tmp_path / "broken.py"
    bad.write_text("def f(:\n")
    with pytest.raises(RewardError, match=r"cannot import .*broken.py:f.*SyntaxError") as info:
        load_reward_function(f"{bad}:f")
    assert "\n" not in str(info.value)
    with pytest.raises(RewardError, match="cannot import"):
        build_reward(RewardConfig(functions=[f"{bad}:f"]), file_task())


def test_user_functions_replace_builtin_unless_named(user_module):
    examples = [ex("7", level=1), ex("7", level=2)]
    completions = ["7", "abcdefghij"]  # right (len 1) and a format error (len 10)

    only_user = build_reward(RewardConfig(functions=[f"{user_module}:length_penalty"]), file_task())
    r = only_user(completions, examples)
    assert r.rewards.tolist() == pytest.approx([-0.1, -1.0])
    assert r.correct.tolist() == [True, False]  # flags still come from the built-in verifier
    assert r.format_error.tolist() == [False, True]

    both = RewardConfig(functions=["builtin", f"{user_module}:echo_meta"], weights=[1.0, 0.5])
    r = build_reward(both, file_task())(completions, examples)
    # builtin (+1, -2) + 0.5 * level (1, 2)
    assert r.rewards.tolist() == pytest.approx([1.5, -1.0])


def test_user_function_sees_columns():
    seen = {}

    def spy(prompts, completions, **columns):
        seen.update(columns, prompts=prompts)
        return [0.0] * len(completions)

    fn = build_reward(RewardConfig(), file_task())
    fn.terms = [_term(spy)]  # inject without a module on disk
    fn(["a", "b"], [ex("1", level=3, tag="x"), ex("2", level=4)])
    assert seen["answer"] == ["1", "2"]
    assert seen["level"] == [3, 4]
    assert seen["tag"] == ["x", None]
    assert seen["prompts"] == ["q for 1", "q for 2"]


def _term(fn, weight=1.0):
    from sft2grpo.rewards import _Term

    return _Term(spec=getattr(fn, "__name__", "fn"), weight=weight, fn=fn)


# ---------------------------------------------------------------------------------------------------
# Safety: nothing a reward function does crashes the run


def _with_user_fn(fn, timeout=5.0):
    reward = build_reward(RewardConfig(timeout=timeout), file_task())
    reward.terms = [_term(fn)]
    return reward


def _raises(prompts, completions, **kw):
    raise ZeroDivisionError("boom")


def _short(prompts, completions, **kw):
    return [1.0]


def _nan_and_text(prompts, completions, **kw):
    return [1.0, 2.0, float("nan"), "high"]


def _slow(prompts, completions, **kw):
    time.sleep(2)
    return [1.0] * len(completions)


@pytest.mark.parametrize(
    "fn, bad, match",
    [
        (_raises, 4, "failed on all 4 completions.*ZeroDivisionError: boom"),
        (_short, 4, "returned 1 values for 4 completions"),
        (_nan_and_text, 2, "returned 2 of 4 values that are not finite"),
        (_slow, 4, "TimeoutError"),
    ],
)
def test_faulty_user_functions_get_format_error_reward(fn, bad, match):
    reward = _with_user_fn(fn, timeout=0.1)
    t0 = time.perf_counter()
    with pytest.warns(RewardWarning, match=match):
        r = reward(["1", "2", "3", "4"], [ex("1")] * 4)
    assert time.perf_counter() - t0 < 1.5  # the slow one was cut off, not waited for
    assert r.faults == bad
    assert r.rewards.tolist()[-bad:] == [-2.0] * bad
    assert all(math.isfinite(v) for v in r.rewards.tolist())


def test_timeout_off_the_main_thread():
    # No signals in a worker thread: the call is abandoned in a daemon thread instead.
    reward = _with_user_fn(_slow, timeout=0.1)
    box = {}

    def run():
        with pytest.warns(RewardWarning):
            box["r"] = reward(["1"], [ex("1")])

    t = threading.Thread(target=run)
    t0 = time.perf_counter()
    t.start()
    t.join()
    assert time.perf_counter() - t0 < 1.5
    assert box["r"].rewards.tolist() == [-2.0] and box["r"].faults == 1


def test_pathological_math_is_interrupted():
    # sympy spends minutes comparing 5 with a power tower; the timer stops it.
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError):
        call_with_timeout(math_equal, 0.3, "5", r"9^{9^{9^{9}}}")
    assert time.perf_counter() - t0 < 2.0


def test_verifier_failure_is_a_fault_not_a_crash():
    def flaky(answer, example):
        raise RuntimeError("scorer bug")

    task = Task("t", [], [], scorer=flaky)
    fn = build_reward(RewardConfig(), task)
    with pytest.warns(RewardWarning, match="failed on 1 of 2 completions.*scorer bug"):
        r = fn(["3", "nothing"], [ex("3")] * 2)
    assert r.rewards.tolist() == [-2.0, -2.0]
    assert r.format_error.tolist() == [False, True]  # the fault is counted, not called a format error
    assert r.faults == 1


def test_call_with_timeout_restores_signal_state():
    import signal

    before = signal.getsignal(signal.SIGALRM)
    assert call_with_timeout(lambda x: x + 1, 1.0, 1) == 2
    with pytest.raises(KeyError):
        call_with_timeout(lambda: {}["k"], 1.0)
    assert signal.getsignal(signal.SIGALRM) == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_batch_is_fast():
    fn = build_reward(RewardConfig(verifier="math"), file_task())
    completions = [f"so the answer is {i % 13}." for i in range(64)]
    fn(completions[:2], [ex("7")] * 2)  # warm math-verify's imports
    t0 = time.perf_counter()
    fn(completions, [ex("7")] * 64)
    assert time.perf_counter() - t0 < 2.0


# ---------------------------------------------------------------------------------------------------
# TRL's calling convention: keywords, columns, conversations, trainer_state, logging, None, async


def _user_reward(*fns, weights=None, **cfg):
    """A RewardFn whose terms are the given functions (no module on disk)."""
    reward = build_reward(RewardConfig(**cfg), file_task())
    weights = weights or [1.0] * len(fns)
    reward.terms = [_term(fn, w) for fn, w in zip(fns, weights)]
    return reward


# The shapes TRL users write, each scoring "7" against the gold answer in a `solution` column.
def trl_completions_only(completions, **kwargs):
    return [float(c == s) for c, s in zip(completions, kwargs["solution"])]


def trl_prompts_first(prompts, completions, **kwargs):
    return [
        float(c == s) + 0.5 * p.startswith("q for")
        for p, c, s in zip(prompts, completions, kwargs["solution"])
    ]


def trl_solution(completions, solution, **kwargs):
    return [float(c == s) for c, s in zip(completions, solution)]


def trl_ids(completion_ids, **kwargs):
    return [len(ids) / 10 for ids in completion_ids]


@pytest.mark.parametrize(
    "fn, want",
    [
        (trl_completions_only, [1.0, 0.0]),
        (trl_prompts_first, [1.5, 0.5]),  # +0.5 for a prompt that starts with "q for"
        (trl_solution, [1.0, 0.0]),
        (trl_ids, [0.3, 0.1]),  # 3 and 1 token ids
    ],
)
def test_trl_shaped_functions_get_keyword_arguments(fn, want):
    reward = _user_reward(fn)
    examples = [ex("7", solution="7"), ex("7", solution="7")]
    r = reward(["7", "8"], examples, completion_ids=[[5, 6, 7], [9]])
    assert r.rewards.tolist() == pytest.approx(want)
    assert r.faults == 0


def test_positional_only_function_is_a_fault_not_a_silent_mismatch():
    # A function that cannot take TRL's keywords must fail loudly, not score prompts as completions.
    def positional(p, c, /):
        return [1.0] * len(c)

    with pytest.warns(RewardWarning, match="failed on all 2 completions.*TypeError"):
        r = _user_reward(positional)(["1", "2"], [ex("1")] * 2)
    assert r.faults == 2


def test_every_keyword_a_trl_function_gets():
    seen = {}

    def spy(**kwargs):
        seen.update(kwargs)
        return [0.0] * len(kwargs["completions"])

    reward = build_reward(RewardConfig(), file_task(), max_steps=40)
    reward.terms = [_term(spy)]
    # a column named like one of TRL's own keywords is dropped, never shadows it
    reward(["a", "b"], [ex("1", level=3, tag="x", trainer_state="col"), ex("2", level=4)], step=5)
    assert seen["prompts"] == ["q for 1", "q for 2"]
    assert seen["completions"] == ["a", "b"]
    assert seen["completion_ids"] is None  # the caller gave none
    assert seen["answer"] == ["1", "2"]
    assert seen["level"] == [3, 4]
    assert seen["tag"] == ["x", None]
    assert seen["trainer_state"].global_step == 5 and seen["trainer_state"].max_steps == 40
    assert callable(seen["log_metric"]) and callable(seen["log_extra"])
    assert set(seen) == {"prompts", "completions", "completion_ids", "answer", "level", "tag"} | {
        "trainer_state",
        "log_metric",
        "log_extra",
    }


def test_conversational_rows_get_messages_in_and_out():
    seen = {}

    def accuracy(completions, solution, **kwargs):  # the shape of TRL's accuracy_reward
        seen["prompts"] = kwargs["prompts"]
        return [float(c[0]["content"] == s) for c, s in zip(completions, solution)]

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3+4?"}]
    chat = Example("3+4?", "7", {"solution": "7"}, "t", messages)
    r = _user_reward(accuracy)(["7", "6"], [chat, chat])
    assert r.rewards.tolist() == [1.0, 0.0]
    assert seen["prompts"] == [messages, messages]
    seen["prompts"][0].append({"role": "user", "content": "edited"})
    assert chat.messages == messages and len(messages) == 2  # the function got copies


def test_none_means_not_applicable_and_is_left_out_of_the_sum():
    def math_only(completions, kind, **kw):
        return [1.0 if k == "math" else None for k in kind]

    def code_only(completions, kind, **kw):
        return [0.5 if k == "code" else None for k in kind]

    reward = _user_reward(math_only, code_only, weights=[2.0, 4.0])
    examples = [ex("1", kind="math"), ex("1", kind="code"), ex("1", kind="text")]
    with pytest.warns(RewardWarning, match="every reward function returned None for 1 of 3"):
        r = reward(["a", "b", "c"], examples)
    # math row: 2 * 1.0 (code term left out); code row: 4 * 0.5; text row: no term applies -> 0
    assert r.rewards.tolist() == [2.0, 2.0, 0.0]
    assert r.faults == 0  # None is not a fault


def test_log_metric_is_averaged_until_drained_and_log_extra_is_per_completion():
    def logs(completions, log_metric, log_extra, **kw):
        log_metric("mean_len", sum(map(len, completions)) / len(completions))
        log_metric("accuracy", 0.25)  # a name the trainer uses itself
        log_extra("length", [len(c) for c in completions])
        return [0.0] * len(completions)

    reward = _user_reward(logs)
    r = reward(["a", "abc"], [ex("1")] * 2)  # mean_len 2
    reward(["abcdef", "abcdef"], [ex("1")] * 2)  # mean_len 6
    assert r.extras == [{"length": 1}, {"length": 3}]
    assert reward.drain_metrics(reserved={"accuracy"}) == {"mean_len": 4.0, "reward/accuracy": 0.25}
    assert reward.drain_metrics() == {}  # drained


def test_log_extra_values_are_made_json():
    import numpy as np

    def fn(completions, log_extra, **kw):
        log_extra("v", [np.float32(1.5), float("nan"), {1, 2}])  # numpy scalar, NaN, not JSON at all
        return [0.0] * len(completions)

    r = _user_reward(fn)(["a", "b", "c"], [ex("1")] * 3)
    assert [row["v"] for row in r.extras] == [1.5, None, "{1, 2}"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda log_metric, log_extra: log_metric("x", "high"), "log_metric.*not a number"),
        (lambda log_metric, log_extra: log_extra("x", [1]), "1 values for 2 completions"),
        (lambda log_metric, log_extra: log_extra("reward", [1, 2]), "writes that column itself"),
    ],
)
def test_bad_logging_warns_and_is_ignored(call, match):
    def fn(completions, log_metric, log_extra, **kw):
        call(log_metric, log_extra)
        return [1.0] * len(completions)

    reward = _user_reward(fn)
    with pytest.warns(RewardWarning, match=match):
        r = reward(["a", "b"], [ex("1")] * 2)
    assert r.rewards.tolist() == [1.0, 1.0] and r.extras == [{}, {}]
    assert reward.drain_metrics() == {}


def test_async_functions_are_awaited_concurrently():
    import asyncio

    async def slow_len(completions, log_metric, **kw):
        await asyncio.sleep(0.4)
        log_metric("async_calls", 1.0)
        return [float(len(c)) for c in completions]

    class SlowHalf:  # an object with `async def __call__` is awaited too
        async def __call__(self, completions, **kw):
            await asyncio.sleep(0.4)
            return [0.5] * len(completions)

    reward = _user_reward(slow_len, SlowHalf(), trl_completions_only)
    t0 = time.perf_counter()
    r = reward(["7", "abc"], [ex("7", solution="7")] * 2)
    elapsed = time.perf_counter() - t0
    # len + 0.5 + exact match: "7" -> 1 + 0.5 + 1, "abc" -> 3 + 0.5 + 0
    assert r.rewards.tolist() == [2.5, 3.5]
    assert elapsed < 0.75, f"two 0.4 s sleeps took {elapsed:.2f} s: not concurrent"
    assert reward.drain_metrics() == {"async_calls": 1.0}


def test_async_faults_are_faults():
    import asyncio

    async def hangs(completions, **kw):
        await asyncio.sleep(10)

    async def raises(completions, **kw):
        raise KeyError("solution")

    reward = _user_reward(hangs, raises, timeout=0.2)
    t0 = time.perf_counter()
    with pytest.warns(RewardWarning) as record:
        r = reward(["1", "2"], [ex("1")] * 2)
    assert time.perf_counter() - t0 < 1.5
    text = " ".join(str(w.message) for w in record)
    assert "'hangs' failed on all 2 completions (TimeoutError: ran past 0.2 s)" in text
    assert "'raises' failed on all 2 completions (KeyError: 'solution')" in text
    assert r.rewards.tolist() == [-4.0, -4.0] and r.faults == 2  # two terms of -2 each


# ---------------------------------------------------------------------------------------------------
# A function that can never work stops the run after reward.max_failed_steps steps


def _step(reward, completions=("1", "2")):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RewardWarning)
        reward(list(completions), [ex("1")] * len(completions))
    return reward.end_step()


def test_end_step_reports_a_function_failing_every_completion_for_max_failed_steps():
    calls = []

    def broken(completions, **kw):
        calls.append(1)
        raise ZeroDivisionError(f"boom {len(calls)}")

    def fine(completions, **kw):
        return [1.0] * len(completions)

    reward = _user_reward(fine, broken, max_failed_steps=3)
    assert _step(reward) is None
    assert _step(reward) is None
    msg = _step(reward)
    assert msg == (
        "reward function 'broken' failed on every completion for 3 steps in a row "
        "(reward.max_failed_steps=3); first error: ZeroDivisionError: boom 1"
    )


def test_a_working_step_resets_the_count_and_none_or_partial_faults_do_not_count():
    state = {"fail": True}

    def flaky(completions, **kw):
        if state["fail"]:
            raise RuntimeError("down")
        return [1.0] * len(completions)

    def abstains(completions, **kw):
        return [None] * len(completions)

    def half_bad(completions, **kw):
        return [1.0] + [float("nan")] * (len(completions) - 1)

    reward = _user_reward(flaky, abstains, half_bad, max_failed_steps=2)
    assert _step(reward) is None  # flaky: 1
    state["fail"] = False
    assert _step(reward) is None  # flaky: back to 0
    state["fail"] = True
    assert _step(reward) is None  # flaky: 1
    assert "'flaky' failed on every completion for 2 steps" in _step(reward)
    # abstains (all None) and half_bad (one good value) never counted


def test_max_failed_steps_zero_never_stops():
    reward = _user_reward(_raises, max_failed_steps=0)
    assert all(_step(reward) is None for _ in range(5))
