"""Rung 0, supervised fine-tuning (`sft2grpo sft`, sft.py): the completion-only loss against a hand
computation and a plain forward, TRL's data formats, worked solutions that only training problems
get, bit-exact resume, a bad row stopping with one line, and the base -> SFT -> RL pipeline."""

import json
from pathlib import Path

import pytest
import torch

from sft2grpo import objective, run
from sft2grpo.cli import main
from sft2grpo.config import TaskConfig, load_config, loss_switches
from sft2grpo.models import chat_prompt_ids
from sft2grpo.sft import supervised_config
from sft2grpo.tasks import TaskError, load_task, worked_solution
from sft2grpo.trainer import Trainer

ROWS = [
    {
        "prompt": f"What is {i} + {i}?",
        "completion": f"{i} + {i} = {2 * i}. The answer is {2 * i}.",
        "answer": 2 * i,
    }
    for i in range(30)
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_sft(out: Path, *extra: str) -> list[str]:
    return [
        "model.name=tiny",
        "task.eval_size=4",
        "train.prompts_per_step=4",
        "train.micro_batch_size=3",  # 4 rows -> micro-batches of 3 and 1: accumulation is exercised
        "train.lr=1e-3",
        "train.autocast=off",  # sft0's auto is bf16 on CPUs with native bf16; the checks here are fp32
        "rollout.max_new_tokens=8",
        "log.progress=false",
        "log.plots=false",
        f"log.output_dir={out}",
        *extra,
    ]


# -- the loss ------------------------------------------------------------------------------------


def sft_trainer(cfg, run_dir):
    """A rung-0 trainer, as `sft2grpo sft` builds it."""
    return Trainer(supervised_config(cfg), run_dir)


def test_rung0_loss_by_hand():
    """Rung 0 is the cross-entropy L = -(1/N) sum log pi over the N completion tokens. Two rows of
    2 and 1 tokens with log pi -1, -2 and -3: N = 3, L = 6/3 = 2, dL/dlogp = -1/3 on each token and
    0 on padding. The ladder's loss with A = 1, no ratio, no clip, token mean has that gradient too
    (its value is the surrogate's -1): SFT and RL are one objective."""
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    logp = torch.tensor([[-1.0, -2.0], [-3.0, float("-inf")]], requires_grad=True)  # padding: anything
    ce = objective.sft_loss(logp, mask)
    ce.backward()
    assert ce.item() == pytest.approx(2.0)
    want = torch.tensor([[-1 / 3, -1 / 3], [-1 / 3, 0.0]])
    assert torch.allclose(logp.grad, want)
    # the switches `sft2grpo sft` records, as the trainer would hand them to the RL loss
    switches = loss_switches(supervised_config(load_config("sft0")).objective, default_max_len=64)
    logp2 = torch.tensor([[-1.0, -2.0], [-3.0, 0.0]], requires_grad=True)
    loss, _ = objective.policy_loss(logp2, mask, torch.ones(2), **switches)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0)
    assert torch.equal(logp2.grad, logp.grad)


def test_sft_step_is_cross_entropy_on_completion_tokens_only(tmp_path):
    """One SFT step's gradient equals autograd of the mean cross-entropy over the completion tokens
    (prompt + completion through one plain forward, tests/oracles.py), and differs from the
    cross-entropy over every token of the row: the prompt is context, never a target."""
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    cfg = load_config("sft0", tiny_sft(tmp_path / "run", f"task.name={data}", "train.steps=1"))
    tr = sft_trainer(cfg, tmp_path / "run")
    examples = tr.task.train[:4]
    batch = tr.given_of(examples)
    # the oracle: each row whole, [prompt + completion], right-padded, one forward
    rows = [
        p + c[: int(m.sum())] for p, c, m in zip(batch.prompts, batch.completion_ids.tolist(), batch.mask)
    ]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    att = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])

    def grads(loss_fn):
        tr.model.zero_grad(set_to_none=True)
        loss_fn().backward()
        return {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None}

    def completion_ce():
        """torch's cross_entropy of the next token: over the completion tokens (the prompt's and
        the padding's targets ignored), and over every real token of the row."""
        logits = tr.model(input_ids=ids, attention_mask=att).logits.float()  # [B, L, V]
        targets = ids[:, 1:].clone()  # [B, L-1]
        completion = torch.full_like(targets, -100)  # -100: ignored
        for i, (p, m) in enumerate(zip(batch.prompts, batch.mask)):
            n = int(m.sum())
            completion[i, len(p) - 1 : len(p) - 1 + n] = targets[i, len(p) - 1 : len(p) - 1 + n]
        whole = torch.where(att[:, 1:].bool(), targets, -100)
        flat = logits[:, :-1].reshape(-1, logits.shape[-1])
        ce = torch.nn.functional.cross_entropy
        return ce(flat, completion.reshape(-1)), ce(flat, whole.reshape(-1))

    tr.model.train()
    want = grads(lambda: completion_ce()[0])
    whole = grads(lambda: completion_ce()[1])
    got = grads(lambda: _sft_loss(tr, batch))
    assert want.keys() == got.keys()
    for n in want:
        assert torch.allclose(got[n], want[n], atol=1e-5, rtol=1e-4), n
    assert any(not torch.allclose(whole[n], want[n], atol=1e-5) for n in want)
    # and the logged loss is that cross-entropy's value
    with torch.no_grad():
        ce = completion_ce()[0].item()
    tr.model.zero_grad(set_to_none=True)
    state = run.start(tr)
    state.order, state.pos = list(range(len(tr.task.train))), 0  # the same 4 examples
    row, _ = tr.train_step(state)
    assert row["loss"] == row["sft_loss"] == pytest.approx(ce, rel=1e-5)


def _sft_loss(tr, batch):
    """The update's loss as one differentiable value (the update itself steps the optimizer)."""
    B = len(batch.texts)
    logp = tr.logprobs(None, batch, list(range(B)))
    t = logp.shape[1]
    return objective.sft_loss(logp, batch.mask[:, :t])


def test_given_rows_end_each_completion_with_eos(tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    cfg = load_config("sft0", tiny_sft(tmp_path / "run", f"task.name={data}"))
    tr = sft_trainer(cfg, tmp_path / "run")
    tok = tr.tokenizer
    ex = tr.task.train[:2]
    batch = tr.given_of(ex)
    assert batch.prompts == chat_prompt_ids(tok, [e.chat for e in ex])
    for i, e in enumerate(ex):
        n = int(batch.mask[i].sum())
        ids = batch.completion_ids[i, :n].tolist()
        assert ids == tok(e.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert batch.mask[i, n:].sum() == 0


# -- data ----------------------------------------------------------------------------------------


def test_worked_solutions_for_training_problems_only():
    task = load_task(TaskConfig(size=300, eval_size=50, val_size=50), supervised=True)
    assert all(e.completion for e in task.train)
    assert all(e.completion is None for e in task.eval + task.val)
    for e in task.train:  # every solution ends with the right answer, as the reward reads it
        assert e.completion.endswith(f"The answer is {e.answer}.")
        assert task.scorer(e.completion.split()[-1].rstrip("."), e) == 1.0
    assert worked_solution("chain_sum", {"expression": "74 + 30 - 91"}) == (
        "74 + 30 = 104, 104 - 91 = 13. The answer is 13."
    )
    assert worked_solution("chain_sum", {"expression": "5 - 9"}) == "5 - 9 = -4. The answer is -4."
    assert worked_solution("basic_arithmetic", {"expression": "1 + 1"}) is None


def test_a_task_without_completions_is_refused_for_sft():
    with pytest.raises(TaskError, match="basic_arithmetic has no solution writer"):
        load_task(TaskConfig(name="basic_arithmetic", size=10, eval_size=5), supervised=True)


CONVERSATIONAL = [
    {
        "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
        "completion": [{"role": "assistant", "content": f"It is {2 * i}."}],
    }
    for i in range(30)
]
MESSAGES = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": f"It is {2 * i}."},
        ]
    }
    for i in range(30)
]


@pytest.mark.parametrize("fmt", ["strings", "conversational", "messages", "parquet", "datasets"])
def test_data_formats(tmp_path, fmt):
    """TRL's SFT formats: prompt/completion strings or conversations, `messages` rows (the last,
    assistant turn is the completion), in JSONL, Parquet and a datasets folder."""
    rows = {"strings": ROWS, "conversational": CONVERSATIONAL, "messages": MESSAGES}.get(fmt, ROWS)
    if fmt == "parquet":
        pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
        name = tmp_path / "rows.parquet"
        pq.write_table(pa.Table.from_pylist(rows), name)
    elif fmt == "datasets":
        datasets = pytest.importorskip("datasets")
        name = tmp_path / "rows"
        datasets.Dataset.from_list(rows).save_to_disk(str(name))
    else:
        name = write_jsonl(tmp_path / "rows.jsonl", rows)
    task = load_task(TaskConfig(name=str(name), eval_size=4, instruction=""), supervised=True)
    assert len(task.train) == 26 and len(task.eval) == 4
    first = task.train[0]
    if fmt == "messages":
        assert first.messages == MESSAGES[0]["messages"][:2]
        assert first.completion == "It is 0."
        assert first.answer == ""  # no answer column: evaluated by loss
    elif fmt == "conversational":
        assert first.messages == CONVERSATIONAL[0]["prompt"] and first.completion == "It is 0."
    else:
        assert first.prompt == "What is 0 + 0?"
        assert first.completion == "0 + 0 = 0. The answer is 0."
        assert first.answer == "0"
    assert "completion" not in first.meta and "messages" not in first.meta


@pytest.mark.parametrize(
    "row,expected",
    [
        ({"prompt": "hi", "answer": "1"}, "rows.jsonl:3: missing field 'completion'"),
        ({"prompt": "hi", "completion": ""}, "rows.jsonl:3: field 'completion' is empty"),
        ({"prompt": "hi", "completion": 5}, "rows.jsonl:3: field 'completion' must be a string"),
        (
            {"prompt": "hi", "completion": [{"role": "user", "content": "x"}]},
            "rows.jsonl:3: field 'completion' as a list must hold one message with role 'assistant'",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}]},
            "rows.jsonl:3: field 'messages': the last message must be the assistant's",
        ),
        (
            {"messages": [{"role": "assistant", "content": "x"}]},
            "rows.jsonl:3: field 'messages' has no user message before the assistant's",
        ),
        ({"text": "hi"}, "rows.jsonl:3: missing field 'prompt' or 'messages'"),
    ],
)
def test_a_bad_row_stops_sft_with_one_line_and_writes_nothing(tmp_path, capsys, row, expected):
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS[:2] + [row] + ROWS[2:])
    out = tmp_path / "out"
    code = main(["sft", *tiny_sft(out, f"task.name={data}", "train.steps=3")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("sft2grpo: error: ")
    assert expected in err
    assert not out.exists()


# -- runs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [ROWS, MESSAGES], ids=["prompt_completion", "messages"])
def test_sft_writes_a_model_that_train_starts_from(tmp_path, capsys, rows):
    """The issue's commands: `sft2grpo sft ... train.steps=3 log.output_dir=DIR` writes an HF folder
    to DIR/model, and `sft2grpo train --config no_kl model.name=DIR/model` starts from it."""
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "sft"
    args = ["sft", "model.name=tiny", f"task.name={data}", "train.steps=3", f"log.output_dir={out}"]
    # 30 rows, fewer than twice the default eval_size (200): a tenth of them are held out instead
    with pytest.warns(UserWarning, match="30 rows; holding out 3"):
        assert main([*args, "log.progress=false"]) == 0
    assert (out / "model" / "config.json").is_file() and (out / "model" / "model.safetensors").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["preset"] == "sft0"
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(x > 0 for x in losses)
    if rows is MESSAGES:  # no answers: judged by the held-out completions' loss
        assert summary["heldout_loss"]["after"] > 0 and "after" not in summary
    else:
        assert "accuracy" in summary["after"] and summary["heldout_loss"]["before"] > 0
    capsys.readouterr()
    rl = tmp_path / "rl"
    code = main(
        [
            "train",
            "--config",
            "no_kl",
            f"model.name={out / 'model'}",
            "task.size=8",
            "task.eval_size=2",
            "train.steps=1",
            "train.prompts_per_step=2",
            "rollout.group_size=2",
            "rollout.max_new_tokens=4",
            "eval.before=false",
            "eval.after=false",
            "log.progress=false",
            f"log.output_dir={rl}",
        ]
    )
    assert code == 0 and (rl / "model" / "model.safetensors").is_file()
    assert load_config(str(rl / "config.yaml")).model.name == str(out / "model")


def test_sft_resume_is_bit_exact(tmp_path):
    """4 steps in one go vs 2 steps, a checkpoint, then `--resume` to 4: same weights, same log."""
    from test_resume import assert_same_run

    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    common = [f"task.name={data}", "checkpoint.every=2", "eval.before=false", "eval.after=false"]
    common.append("train.schedule=constant")  # cosine's length is train.steps, which the pieces change
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    assert main(["sft", *tiny_sft(whole, *common, "train.steps=4")]) == 0
    assert main(["sft", *tiny_sft(pieces, *common, "train.steps=2")]) == 0
    assert main(["sft", "--resume", str(pieces), "train.steps=4"]) == 0
    assert_same_run(whole, pieces)


def pipeline_args(out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--config",
        "no_kl",
        "model.name=tiny",
        "task.size=40",
        "task.eval_size=6",
        "task.val_size=4",
        "sft_stage.steps=2",
        "sft_stage.batch_size=4",
        "train.steps=2",
        "train.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=8",
        "eval.every=1",
        "log.progress=false",
        "log.plots=false",
        f"log.output_dir={out}",
        *extra,
    ]


def test_pipeline_interrupted_in_the_sft_stage_resumes_to_the_same_run(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the supervised stage: the step finishes, a checkpoint is written, the command
    says how to continue; `--resume <run>` then finishes both stages with the weights and logs of an
    uninterrupted pipeline."""
    import os
    import signal

    from test_resume import assert_same_run

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(pipeline_args(whole)) == 0
    original = Trainer.train_step

    def train_step(self, state):
        if self.given_only and state.step == 1:  # the SFT stage's last step: interrupted, no "after"
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, state)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    capsys.readouterr()
    assert main(pipeline_args(cut)) == 0
    assert json.loads((cut / "sft" / "summary.json").read_text())["interrupted"]
    assert f"interrupted in the sft stage; continue with --resume {cut}" in capsys.readouterr().out
    assert not (cut / "rl").exists() and not (cut / "summary.json").exists()
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main(["train", "--resume", str(cut)]) == 0
    assert_same_run(whole / "sft", cut / "sft")
    assert_same_run(whole / "rl", cut / "rl")
    for name in ("sft/eval_after.jsonl", "rl/eval_before.jsonl", "rl/eval_after.jsonl"):
        assert (cut / name).read_text() == (whole / name).read_text(), name
    assert (
        json.loads((cut / "summary.json").read_text())["accuracy"]
        == json.loads((whole / "summary.json").read_text())["accuracy"]
    )


def test_pipeline_runs_both_stages_and_prints_the_table(tmp_path, capsys):
    """sft_stage.steps > 0: base -> SFT (<run>/sft) -> RL (<run>/rl) from the SFT model, with held-out
    accuracy at each stage; the RL stage's "before" is the SFT stage's "after", scored once."""
    out = tmp_path / "pipe"
    code = main(pipeline_args(out, "eval.draws=2", "eval.val_draws=2"))  # sampled too, 2 answers a problem
    printed = capsys.readouterr().out
    assert code == 0
    rl_cfg = load_config(str(out / "rl" / "config.yaml"))
    assert rl_cfg.model.name == str(out / "sft" / "model") and rl_cfg.sft_stage.steps == 0
    assert load_config(str(out / "sft" / "config.yaml")).objective.aggregation == "token_mean"
    assert (out / "rl" / "eval_before.jsonl").read_text() == (out / "sft" / "eval_after.jsonl").read_text()
    # the RL stage's validation curve starts with the SFT stage's last score, not a second scoring
    sft_val = [json.loads(x) for x in (out / "sft" / "evals.jsonl").read_text().splitlines()]
    rl_val = [json.loads(x) for x in (out / "rl" / "evals.jsonl").read_text().splitlines()]
    last = [r for r in sft_val if r["tag"] == "val"][-1]
    assert rl_val[0] == {**last, "step": 0}
    assert [r["step"] for r in rl_val if r["tag"] == "val"] == [0, 1, 2]
    # and its sampled validation curve (eval.val_draws) with the SFT stage's last sampled score
    last = [r for r in sft_val if r["tag"] == "val_sampled"][-1]
    assert rl_val[1] == {**last, "step": 0} and last["samples_per_problem"] == 2
    assert [r["step"] for r in rl_val if r["tag"] == "val_sampled"] == [0, 1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["accuracy"]) == {"base", "sft", "rl"}
    assert set(summary["changes"]) == {"base->sft", "sft->rl", "base->rl"}
    # sampled accuracy at each stage, the RL stage's "before" carried from the SFT stage's "after"
    assert set(summary["sampled_accuracy"]) == {"base", "sft", "rl"}
    assert set(summary["sampled_changes"]) == {"base->sft", "sft->rl", "base->rl"}
    after_sft = (out / "sft" / "eval_after_sampled.jsonl").read_text()
    assert (out / "rl" / "eval_before_sampled.jsonl").read_text() == after_sft
    assert all(len(json.loads(x)["correct"]) == 2 for x in after_sft.splitlines())
    assert "(sampled: 2 answers a problem)" in printed and "after RL (sampled):" in printed
    # pass@2 from the same 2 answers: the share of problems with a right one, in the table beside them
    rows = [json.loads(x) for x in after_sft.splitlines()]
    assert summary["sampled_pass"]["sft"] == sum(any(r["correct"]) for r in rows) / len(rows)
    assert "pass@2" in printed and f"{100 * summary['sampled_pass']['sft']:7.1f}%" in printed
    for line in ("base model", "after SFT", "after RL", "base model -> after RL"):
        assert line in printed
    # a finished pipeline resumes to nothing new: both stages are skipped
    assert main(["train", "--resume", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["accuracy"] == summary["accuracy"]


def test_stage_table_shows_pass_at_k_beside_sampled_accuracy():
    """pass@k counts a problem once any of its k answers is right: 3 problems with 0, 1 and 4 of 4
    right give sampled accuracy 5/12 but pass@4 2/3; each stage's row prints both."""
    from sft2grpo.pipeline import format_pipeline, stage_pass

    rows = [{"correct": [0, 0, 0, 0]}, {"correct": [0, 1, 0, 0]}, {"correct": [1, 1, 1, 1]}]
    assert stage_pass(rows) == pytest.approx(2 / 3)
    summary = {
        "run_dir": "r",
        "model_dir": "r/rl/model",
        "accuracy": {"base": 0.1, "sft": 0.3},
        "sampled_accuracy": {"base": 0.05, "sft": 5 / 12},
        "sampled_pass": {"base": 0.2, "sft": stage_pass(rows)},
        "rl": {"after_sampled": {"samples_per_problem": 4}},
    }
    table = format_pipeline(summary).splitlines()
    assert table[2].split() == ["greedy", "sampled", "pass@4"]
    assert table[4].split() == ["after", "SFT", "30.0%", "41.7%", "66.7%"]


def test_train_with_given_rows_is_rung_0_as_sft_is(capsys):
    """`train --config sft0` (train.rows: given) runs what `sft` runs: the same resolved config."""
    assert main(["train", "--config", "sft0", "--print-config", "model.name=tiny"]) == 0
    via_train = capsys.readouterr().out
    assert main(["sft", "--print-config", "model.name=tiny"]) == 0
    assert capsys.readouterr().out == via_train
    assert "rows: given" in via_train


def test_sample_keeps_right_answers_and_writes_the_heldout_beside(tmp_path, monkeypatch, capsys):
    """Offline rejection sampling: n draws a problem, the ones the reward marks right kept (at most
    `keep`, distinct), the task's held-out problems in the .eval.jsonl sibling; the file then loads
    for `sft2grpo sft`, scored on those held-out problems."""
    from sft2grpo import rewards

    original = rewards.RewardFn.__call__

    def every_other_right(self, completions, examples, **kw):  # draws 0, 2, ... of each group are "right"
        res = original(self, completions, examples, **kw)
        res.correct = torch.tensor([i % 2 == 0 for i in range(len(completions))])
        return res

    monkeypatch.setattr(rewards.RewardFn, "__call__", every_other_right)
    out = tmp_path / "rows.jsonl"
    argv = ["sample", "--n", "4", "--keep", "2", "--problems", "6", "--output", str(out)]
    argv += [
        "model.name=tiny",
        "task.size=20",
        "task.eval_size=5",
        "rollout.max_new_tokens=8",
        "log.progress=false",
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    held = [json.loads(line) for line in out.with_name("rows.eval.jsonl").read_text().splitlines()]
    task = load_task(TaskConfig(size=20, eval_size=5, val_size=0))
    assert len(held) == 5 and [h["answer"] for h in held] == [e.answer for e in task.eval]
    prompts = [e.prompt for e in task.train[:6]]
    assert 0 < len(rows) <= 12 and all(r["prompt"] in prompts for r in rows)
    for p in prompts:  # at most `keep` a problem, never the same text twice
        mine = [r["completion"] for r in rows if r["prompt"] == p]
        assert len(mine) <= 2 and len(set(mine)) == len(mine)
    assert f"{len(rows)} completions" in capsys.readouterr().out
    loaded = load_task(TaskConfig(name=str(out), eval_size=5), supervised=True)
    assert [e.completion for e in loaded.train] == [r["completion"] for r in rows]
    assert [e.answer for e in loaded.eval] == [h["answer"] for h in held]
    assert all(e.completion is None for e in loaded.eval)


def test_a_pipeline_with_bad_data_writes_nothing(tmp_path, capsys):
    out = tmp_path / "pipe"
    assert main(pipeline_args(out, "task.name=/no/such.jsonl")) == 2
    assert "/no/such.jsonl" in capsys.readouterr().err
    assert not out.exists()
