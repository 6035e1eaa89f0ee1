"""Extractors, verifiers, the seed's reward scheme, user reward functions and the safety net."""

from __future__ import annotations

import math
import sys
import threading
import time

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
    score,
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


def test_score_for_evaluation():
    assert score("the answer is 12", ex("12")) == (True, False)
    assert score("the answer is 13", ex("12")) == (False, False)
    assert score("no clue", ex("12")) == (False, True)


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


def _nan_and_none(prompts, completions, **kw):
    return [1.0, float("nan"), None, "high"]


def _slow(prompts, completions, **kw):
    time.sleep(2)
    return [1.0] * len(completions)


@pytest.mark.parametrize(
    "fn, bad, match",
    [
        (_raises, 4, "failed on all 4 completions.*ZeroDivisionError: boom"),
        (_short, 4, "returned 1 values for 4 completions"),
        (_nan_and_none, 3, "returned 3 of 4 values that are not finite"),
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
    assert reward.total_faults == bad
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
