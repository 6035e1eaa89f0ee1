"""Task loading: reasoning-gym splits that never overlap, JSONL files, and the errors bad data gives."""

from __future__ import annotations

import json

import pytest

from sft2grpo.config import TaskConfig
from sft2grpo.tasks import (
    DEFAULT_KWARGS,
    TaskError,
    default_kwargs,
    eval_sibling,
    load_task,
    with_instruction,
)

INSTR = "Answer with the final number."


# ---------------------------------------------------------------------------------------------------
# reasoning-gym


@pytest.fixture(scope="module")
def chain_sum():
    return load_task(TaskConfig(size=300, eval_size=100))


def test_default_chain_sum_difficulty(chain_sum):
    assert default_kwargs("chain_sum") == {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
    assert chain_sum.name == "chain_sum" and len(chain_sum.train) == 300 and len(chain_sum.eval) == 100
    for e in chain_sum.train + chain_sum.eval:
        md = e.meta["metadata"]
        assert md["num_terms"] in (2, 3) and md["num_digits"] in (1, 2)
        assert e.source == "reasoning_gym:chain_sum"


def test_instruction_appended(chain_sum):
    e = chain_sum.train[0]
    assert e.prompt == e.meta["question"] + "\n" + INSTR
    assert e.prompt.startswith("State the final answer to the following arithmetic problem: ")
    assert e.answer == e.meta["answer"]
    no_instr = load_task(TaskConfig(size=3, eval_size=1, instruction=""))
    assert no_instr.train[0].prompt == no_instr.train[0].meta["question"]


def test_with_instruction_is_not_doubled():
    assert with_instruction("Q?\n", INSTR) == "Q?\n" + INSTR
    assert with_instruction("Q?\n" + INSTR, INSTR) == "Q?\n" + INSTR


def test_train_and_eval_share_no_question(chain_sum):
    train_q = {e.meta["question"] for e in chain_sum.train}
    eval_q = [e.meta["question"] for e in chain_sum.eval]
    assert not train_q & set(eval_q)
    assert len(set(eval_q)) == len(eval_q)  # eval has no repeats either
    # 2-term 1-digit sums repeat often, so some eval candidates must have been dropped (and counted)
    assert chain_sum.stats.get("eval_overlap_dropped", 0) > 0


def test_validation_split_is_apart_and_leaves_the_others_unchanged(chain_sum):
    # val_size None: 100 validation problems for a reasoning-gym task, from a seed of their own
    assert len(chain_sum.val) == 100
    questions = [
        {e.meta["question"] for e in split} for split in (chain_sum.train, chain_sum.eval, chain_sum.val)
    ]
    assert len(questions[2]) == 100
    assert not questions[2] & questions[0] and not questions[2] & questions[1]
    # asking for no validation split changes neither training nor held-out problems
    without = load_task(TaskConfig(size=300, eval_size=100, val_size=0))
    assert without.val == []
    assert [e.prompt for e in without.train + without.eval] == [
        e.prompt for e in chain_sum.train + chain_sum.eval
    ]


def test_scorer_is_reasoning_gyms(chain_sum):
    e = chain_sum.eval[0]
    assert chain_sum.scorer(e.answer, e) == 1.0
    assert chain_sum.scorer(str(int(e.answer) + 1), e) < 1.0


def test_splits_are_deterministic():
    a = load_task(TaskConfig(size=20, eval_size=5, seed=3))
    b = load_task(TaskConfig(size=20, eval_size=5, seed=3))
    assert [e.prompt for e in a.train + a.eval] == [e.prompt for e in b.train + b.eval]


def test_user_kwargs_override_defaults():
    t = load_task(TaskConfig(size=10, eval_size=2, kwargs={"min_terms": 4, "max_terms": 4}))
    assert all(e.meta["metadata"]["num_terms"] == 4 for e in t.train)
    assert all(e.meta["metadata"]["num_digits"] <= DEFAULT_KWARGS["chain_sum"]["max_digits"] for e in t.train)


def test_exhausted_problem_space_is_an_error():
    # 2 one-digit terms: 10 * 10 * 2 = 200 distinct questions, all drawn by 2000 training examples
    cfg = TaskConfig(size=2000, eval_size=10, kwargs={"max_terms": 2, "max_digits": 1})
    with pytest.raises(TaskError, match="no held-out questions left"):
        load_task(cfg)


def test_bad_reasoning_gym_names_and_kwargs():
    with pytest.raises(TaskError, match="did you mean chain_sum"):
        load_task(TaskConfig(name="chain_sums"))
    with pytest.raises(TaskError, match="rejected by reasoning-gym chain_sum"):
        load_task(TaskConfig(size=5, kwargs={"nonsense": 1}))
    with pytest.raises(TaskError, match="rejected by reasoning-gym chain_sum"):
        load_task(TaskConfig(size=5, kwargs={"min_terms": 5, "max_terms": 2}))


# ---------------------------------------------------------------------------------------------------
# JSONL


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def rows(n, start=0):
    return [{"prompt": f"What is {i} + 1?", "answer": i + 1, "level": i % 3} for i in range(start, start + n)]


def test_jsonl_tail_split(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", rows(10))
    t = load_task(TaskConfig(name=str(p), eval_size=3))
    assert len(t.train) == 7 and len(t.eval) == 3
    assert t.eval[0].prompt == "What is 7 + 1?\n" + INSTR
    assert t.eval[0].answer == "8"  # numbers become strings
    assert t.eval[0].meta == {"level": 1}
    assert t.train[0].source == "d.jsonl:1" and t.eval[-1].source == "d.jsonl:10"
    assert t.scorer is None


def test_jsonl_validation_rows_come_off_the_training_rows_end(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", rows(10))
    assert load_task(TaskConfig(name=str(p), eval_size=3)).val == []  # files: none unless asked
    t = load_task(TaskConfig(name=str(p), eval_size=3, val_size=2))
    assert [e.answer for e in t.train] == ["1", "2", "3", "4", "5"]
    assert [e.answer for e in t.val] == ["6", "7"] and [e.answer for e in t.eval] == ["8", "9", "10"]
    with pytest.raises(TaskError, match=r"d\.jsonl: 7 training rows leave none after task.val_size=7"):
        load_task(TaskConfig(name=str(p), eval_size=3, val_size=7))


def test_jsonl_custom_fields_and_blank_lines(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", ['{"q": "2+2?", "a": "4"}', "", '{"q": "3+3?", "a": "6"}'])
    t = load_task(TaskConfig(name=str(p), eval_size=1, prompt_field="q", answer_field="a", instruction=""))
    assert [e.prompt for e in t.train] == ["2+2?"] and t.eval[0].answer == "6"
    assert t.eval[0].source == "d.jsonl:3"  # line numbers count the blank line


def test_jsonl_eval_sibling(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", rows(6))
    write_jsonl(eval_sibling(p), rows(4, start=4))  # rows 4 and 5 also occur in training
    assert eval_sibling(p).name == "d.eval.jsonl"
    with pytest.warns(UserWarning, match="dropped 2 training rows"):
        t = load_task(TaskConfig(name=str(p), eval_size=3))
    assert len(t.eval) == 3 and len(t.train) == 4
    assert not {e.prompt for e in t.train} & {e.prompt for e in t.eval}
    assert t.stats == {"train_overlap_dropped": 2}


@pytest.mark.parametrize(
    "lines, match",
    [
        (['{"prompt": "a", "answer": "1"}', '{"prompt": "b", "answer": '], r"d\.jsonl:2: malformed JSON"),
        (
            ['{"prompt": "a", "answer": "1"}', '{"question": "b", "answer": "2"}'],
            r"d\.jsonl:2: missing field 'prompt'",
        ),
        (
            ['{"prompt": "a"}'],
            r"d\.jsonl:1: missing field 'answer' \(fields: prompt; see task.answer_field\)",
        ),
        (['{"prompt": "  ", "answer": "1"}'], r"d\.jsonl:1: field 'prompt' is empty"),
        (['{"prompt": "a", "answer": ""}'], r"d\.jsonl:1: field 'answer' is empty"),
        (['{"prompt": "a", "answer": null}'], r"d\.jsonl:1: field 'answer' must be a string or a number"),
        (['{"prompt": ["a"], "answer": "1"}'], r"d\.jsonl:1: field 'prompt' must be a string"),
        (["[1, 2]"], r"d\.jsonl:1: expected a JSON object, got list"),
        ([], r"d\.jsonl: no examples"),
        (['{"prompt": "a", "answer": "1"}'], r"d\.jsonl: 1 rows leave none for training"),
    ],
)
def test_jsonl_bad_data(tmp_path, lines, match):
    p = write_jsonl(tmp_path / "d.jsonl", lines)
    with pytest.raises(TaskError, match=match) as info:
        load_task(TaskConfig(name=str(p), eval_size=1))
    assert "\n" not in str(info.value)


def test_missing_files(tmp_path):
    with pytest.raises(TaskError, match="nope.jsonl: file not found"):
        load_task(TaskConfig(name=str(tmp_path / "nope.jsonl")))
    with pytest.raises(TaskError, match="file not found"):
        load_task(TaskConfig(name="data/none.parquet"))
    with pytest.raises(TaskError, match="not one written by datasets"):
        load_task(TaskConfig(name=str(tmp_path)))


def test_datasets_folder_without_datasets(tmp_path):
    try:
        import datasets  # noqa: F401
    except ImportError:
        (tmp_path / "dataset_info.json").write_text("{}")
        with pytest.raises(TaskError, match="needs the optional 'datasets' package"):
            load_task(TaskConfig(name=str(tmp_path)))
    else:
        pytest.skip("datasets is installed; the folder path is exercised by its own loader")
