"""Task loading: reasoning-gym splits that never overlap, JSONL files, and the errors bad data gives."""

from __future__ import annotations

import json
import sys

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
        (
            ['{"prompt": 3, "answer": "1"}'],
            r"d\.jsonl:1: field 'prompt' must be a string or a list of chat messages",
        ),
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


def test_datasets_and_parquet_without_datasets(tmp_path, monkeypatch):
    (tmp_path / "dataset_info.json").write_text("{}")
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if it were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(
        TaskError, match=r"needs the optional 'datasets' package: pip install 'sft2grpo\[data\]'"
    ):
        load_task(TaskConfig(name=str(tmp_path)))
    with pytest.raises(TaskError, match=r"d.parquet: reading Parquet needs the optional 'datasets'"):
        load_task(TaskConfig(name=str(tmp_path / "d.parquet")))


# ---------------------------------------------------------------------------------------------------
# Conversational rows (TRL's format)

CHAT = [{"role": "system", "content": "You add."}, {"role": "user", "content": "What is 2 + 2?"}]


def chat_rows(n, system=True):
    msgs = CHAT if system else CHAT[1:]
    return [
        {"prompt": [*msgs[:-1], {"role": "user", "content": f"What is {i} + 1?"}], "solution": str(i + 1)}
        for i in range(n)
    ]


def test_conversational_jsonl(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", chat_rows(4))
    t = load_task(TaskConfig(name=str(p), eval_size=1, answer_field="solution"))
    e = t.train[1]
    # the instruction goes at the end of the last user message; the system message stays as it was
    assert e.messages == [CHAT[0], {"role": "user", "content": "What is 1 + 1?\n" + INSTR}]
    assert e.prompt == "What is 1 + 1?\n" + INSTR and e.chat is e.messages
    assert e.answer == "2"
    assert e.meta == {"solution": "2"}  # an answer column not named "answer" keeps its name for rewards


def test_conversations_differing_only_in_system_message_are_different_prompts(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", chat_rows(3, system=False))
    write_jsonl(eval_sibling(p), chat_rows(1, system=True) + chat_rows(1, system=False))
    with pytest.warns(UserWarning, match="dropped 1 training rows"):
        t = load_task(TaskConfig(name=str(p), eval_size=2, answer_field="solution"))
    # the eval row without a system message equals train row 0; the one with a system message doesn't
    assert [e.prompt.split("\n")[0] for e in t.train] == ["What is 1 + 1?", "What is 2 + 1?"]
    assert t.stats == {"train_overlap_dropped": 1}


@pytest.mark.parametrize(
    "prompt, match",
    [
        ([], r"c\.jsonl:1: field 'prompt' is an empty list of messages"),
        (
            ["hi"],
            r"c\.jsonl:1: field 'prompt' message 0: expected an object with 'role' and 'content', got str",
        ),
        ([{"content": "hi"}], r"c\.jsonl:1: field 'prompt' message 0: missing 'role'"),
        ([{"role": "user"}], r"c\.jsonl:1: field 'prompt' message 0: missing 'content'"),
        (
            [{"role": "human", "content": "hi"}],
            r"message 0: role 'human' is not one of system, user, assistant, tool",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            r"message 0: 'content' must be a string, got list",
        ),
        (
            [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}],
            r"message 1: a system message must come first",
        ),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            r"c\.jsonl:1: field 'prompt': the last message must be the user's \(got 'assistant'\)",
        ),
        ([{"role": "user", "content": " "}], r"c\.jsonl:1: field 'prompt': the last user message is empty"),
    ],
)
def test_malformed_messages_are_one_line_errors_naming_file_and_line(tmp_path, prompt, match):
    p = write_jsonl(tmp_path / "c.jsonl", [{"prompt": prompt, "answer": "1"}, *rows(3)])
    with pytest.raises(TaskError, match=match) as info:
        load_task(TaskConfig(name=str(p), eval_size=1))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------
# HF datasets folders and Parquet files (the `data` extra)


def test_datasets_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    datasets.Dataset.from_list(chat_rows(5)).save_to_disk(str(folder))
    t = load_task(TaskConfig(name=str(folder), eval_size=2, answer_field="solution"))
    assert len(t.train) == 3 and len(t.eval) == 2
    assert t.train[0].messages == [CHAT[0], {"role": "user", "content": "What is 0 + 1?\n" + INSTR}]
    assert t.eval[-1].answer == "5" and t.eval[-1].source == "ds[rows]:4"

    splits = tmp_path / "splits"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows(4)), "test": datasets.Dataset.from_list(rows(2, start=10))}
    ).save_to_disk(str(splits))
    t = load_task(TaskConfig(name=str(splits), eval_size=5))
    assert len(t.train) == 4 and [e.answer for e in t.eval] == ["11", "12"]
    assert t.eval[0].meta == {"level": 1}

    bad = tmp_path / "bad"
    datasets.Dataset.from_list([{"prompt": "a", "answer": "1"}, {"prompt": "", "answer": "2"}]).save_to_disk(
        str(bad)
    )
    with pytest.raises(TaskError, match=r"bad\[rows\] row 1: field 'prompt' is empty"):
        load_task(TaskConfig(name=str(bad), eval_size=1))


def test_parquet_file_with_eval_sibling(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(chat_rows(5)), p)
    t = load_task(TaskConfig(name=str(p), eval_size=1, answer_field="solution"))
    assert len(t.train) == 4 and t.eval[0].answer == "5" and t.eval[0].source == "d.parquet:4"
    assert t.train[2].messages[-1]["content"] == "What is 2 + 1?\n" + INSTR

    pq.write_table(pa.Table.from_pylist(rows(2, start=20)), eval_sibling(tmp_path / "e.parquet"))
    pq.write_table(pa.Table.from_pylist(rows(3)), tmp_path / "e.parquet")
    t = load_task(TaskConfig(name=str(tmp_path / "e.parquet"), eval_size=5))
    assert len(t.train) == 3 and [e.answer for e in t.eval] == ["21", "22"]

    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}, {"prompt": "b"}]), tmp_path / "f.parquet")
    with pytest.raises(TaskError, match=r"f\.parquet row 0: missing field 'answer'"):
        load_task(TaskConfig(name=str(tmp_path / "f.parquet"), eval_size=1))
    (tmp_path / "g.parquet").write_text("not parquet")
    with pytest.raises(TaskError, match=r"g\.parquet: not a readable Parquet file"):
        load_task(TaskConfig(name=str(tmp_path / "g.parquet"), eval_size=1))
