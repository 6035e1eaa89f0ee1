"""benchmarks/bench_sft.py without TRL or a model: its argument checks, the CPU line, the summary
of made-up steps, the ratios and loss check, and how it merges into an existing bench.json."""

from __future__ import annotations

import json

import pytest
from benchmark_module import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_sft")


def test_defaults_and_row_count(bench):
    args = bench.parse_args([])
    assert (args.batch, args.micro_batch, args.warmup, args.steps) == (16, 16, 2, 8)
    assert args.which == ["ours", "trl"] and args.trl_packing == "padding_free"
    # every step, warm-up included, reads its own rows
    args = bench.parse_args(["--batch", "8", "--micro-batch", "4", "--warmup", "2", "--steps", "3"])
    assert args.total_steps == 5 and args.rows == 40


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["--batch", "16", "--micro-batch", "6"], "--micro-batch (6)"),
        (["--batch", "0"], "--micro-batch (0)"),
        (["--steps", "0"], "--steps (0)"),
        (["--warmup", "-1"], "--warmup (-1)"),
        (["--rounds", "0"], "--rounds (0)"),
        (["--only", "ours,hf"], "--only: 'ours,hf'"),
        (["--trl-packing", "wrapped"], "--trl-packing"),
    ],
)
def test_bad_arguments_name_the_culprit(bench, capsys, argv, culprit):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert culprit in capsys.readouterr().err


def test_cpu_info_names_the_model_and_bf16(bench):
    text = (
        "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2\n"
    )
    assert bench.cpu_info(text) == {
        "model": "AMD EPYC 9R14",
        "avx2": True,
        "avx512f": True,
        "avx512_bf16": True,
        "amx_bf16": False,
    }
    older = bench.cpu_info("model name : Intel Xeon\nflags : fpu avx2 avx512f\n")
    assert older["model"] == "Intel Xeon" and not older["avx512_bf16"]
    assert bench.cpu_info("")["model"]  # no /proc/cpuinfo: still a name


def step(seconds: float, completion: int, tokens: int, rss: float = 100.0) -> dict:
    return {
        "step_s": seconds,
        "completion_tokens": completion,
        "tokens": tokens,
        "rows": 16,
        "peak_rss_mb": rss,
    }


def test_summary_drops_warmup_and_pools_rounds(bench):
    runs = [
        {"rows": [step(99.0, 1, 1), step(2.0, 200, 1000), step(4.0, 300, 1400, rss=150.0)]},
        {"rows": [step(99.0, 1, 1), step(3.0, 250, 1200, rss=120.0)]},
    ]
    s = bench.summarise(runs, warmup=1)
    assert s["steps_measured"] == 3
    assert s["step_s"] == 3.0  # median of 2, 4, 3
    assert s["completion_tokens_per_s"] == pytest.approx(750 / 9.0)  # total tokens over total time
    assert s["tokens_per_s"] == pytest.approx(3600 / 9.0)
    assert s["completion_tokens_per_step"] == 250 and s["tokens_per_step"] == 1200
    assert s["peak_rss_mb"] == 150.0  # the larger of the rounds' peaks


def test_table_ratios_and_flat_keys(bench):
    ours = {
        "step_s": 1.0,
        "completion_tokens_per_s": 300.0,
        "tokens_per_s": 1500.0,
        "completion_tokens_per_step": 300,
        "tokens_per_step": 1500,
        "peak_rss_mb": 900.0,
    }
    trl = {**ours, "step_s": 2.0, "completion_tokens_per_s": 150.0, "tokens_per_s": 750.0, "peak_rss_mb": 0.0}
    lines, ratios = bench.table(ours, trl)
    assert ratios["step_s"] == 0.5 and ratios["completion_tokens_per_s"] == 2.0
    assert ratios["peak_rss_mb"] is None  # no division by zero
    assert len(lines) == 1 + len(bench.ROWS) and lines[1].split()[-1] == "0.50x" and lines[-1].endswith("-")
    check = bench.loss_check(2.3456, 2.3459)
    assert check["agree"] and check["abs_diff"] == pytest.approx(3e-4)
    assert bench.flat_figures(ratios, check, True, 2e-7) == {
        "sft_step_time_ratio": 0.5,
        "sft_tokens_per_s_ratio": 2.0,
        "sft_all_tokens_per_s_ratio": 2.0,
        "sft_peak_rss_ratio": None,
        "sft_first_loss_abs_diff": pytest.approx(3e-4),
        "sft_step_loss_max_abs_diff": 2e-7,
        "sft_same_rows": True,
    }


def test_loss_check(bench):
    assert not bench.loss_check(2.0, 2.01)["agree"]
    assert bench.loss_check(2.0, None) == {"ours": 2.0, "trl": None, "abs_diff": None, "agree": None}


def test_trl_step_loss_from_micro_batches(bench):
    # TRL divides each micro-batch's sum by the step's completion tokens: the parts add up
    assert bench.step_loss([(0.25, 30, True), (0.5, 70, True)]) == pytest.approx(0.75)
    # per-micro-batch means (no num_items_in_batch): weighted by their tokens
    assert bench.step_loss([(1.0, 30, False), (2.0, 70, False)]) == pytest.approx(1.7)
    assert bench.step_loss([]) is None


def test_max_loss_diff_over_the_steps_both_logged(bench):
    assert bench.max_loss_diff([0.9, 0.5, 0.4], [0.9, 0.5001, None]) == pytest.approx(1e-4)
    assert bench.max_loss_diff([None], [0.3]) is None


def test_split_packed_rows(bench):
    assert bench.split_packed([5, 6, 7, 8, 9, 10], [0, 1, 2, 0, 1, 0]) == [[5, 6, 7], [8, 9], [10]]


def test_merge_keeps_other_keys(bench, tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"step_time_ratio_1x8": 0.3, "sft_step_time_ratio": 9.0}))
    bench.merge_json(path, {"sft_step_time_ratio": 0.5, "sft": {"x": 1}})
    assert json.loads(path.read_text()) == {
        "step_time_ratio_1x8": 0.3,
        "sft_step_time_ratio": 0.5,
        "sft": {"x": 1},
    }
    path.write_text("not json")
    assert bench.merge_json(path, {"a": 1}) == {"a": 1}
    assert bench.merge_json(tmp_path / "new.json", {"b": 2}) == {"b": 2}
