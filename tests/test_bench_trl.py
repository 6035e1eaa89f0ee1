"""benchmarks/bench_trl.py without TRL: its argument checks, and the flat ratio keys and targets it
writes to bench.json, from made-up summaries."""

from __future__ import annotations

import pytest
from benchmark_module import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_trl")


def test_prompts_take_a_comma_list(bench):
    args = bench.parse_args(["--prompts", "1,4"])
    assert args.prompt_list == [1, 4] and args.prompts == 4
    # a worker's line ends with the setting's own --prompts, which wins
    assert bench.parse_args(["--prompts", "1,4", "--prompts", "1"]).prompts == 1


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["--prompts", "1,x"], "--prompts: '1,x'"),
        (["--prompts", "3", "--micro-batch", "16"], "--prompts 3"),
        (["--prompts", "0"], "--prompts 0"),
        (["--steps", "1", "--warmup", "1"], "--steps (1)"),
        (["--rollout-dtype", "int4"], "--rollout-dtype"),
    ],
)
def test_bad_arguments_name_the_culprit(bench, capsys, argv, culprit):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert culprit in capsys.readouterr().err


def setting(prompts: int, step: float, tokens_per_s: float, rss: float, per_token: float = 0.5) -> dict:
    return {
        "prompts": prompts,
        "gpu": False,
        "ratio": {
            "step_s": step,
            "step_ms_per_token": per_token,
            "gen_tokens_per_s": tokens_per_s,
            "peak_rss_mb": rss,
            "peak_gpu_mb": None,
        },
    }


def test_flat_keys_and_targets(bench):
    rollout = {
        "fast": {"tokens_per_s": 40.0},
        "hf": {"tokens_per_s": 16.0},
        "fast:int8": {"tokens_per_s": 60.0},
        "fast/hf": 2.5,
    }
    flat = bench.flat_figures([setting(1, 0.38, 2.0, 0.85), setting(4, 0.36, 3.0, 0.95, 0.45)], rollout, 8)
    assert flat == {
        "step_time_ratio_1x8": 0.38,
        "step_time_per_token_ratio_1x8": 0.5,
        "gen_tokens_per_s_ratio_vs_trl_1x8": 2.0,
        "peak_rss_ratio_1x8": 0.85,
        "step_time_ratio_4x8": 0.36,
        "step_time_per_token_ratio_4x8": 0.45,
        "gen_tokens_per_s_ratio_vs_trl_4x8": 3.0,
        "peak_rss_ratio_4x8": 0.95,
        # unsuffixed: the least favourable setting
        "gen_tokens_per_s_ratio_vs_trl": 2.0,
        "peak_rss_ratio": 0.95,
        "fast_vs_hf_tokens_per_s": 2.5,
        "fast_int8_vs_fast_tokens_per_s": 1.5,
    }
    assert bench.check_targets(flat) == {
        "step_time_ratio_1x8_le_0.4": True,
        "step_time_ratio_4x8_le_0.33": False,
        "gen_tokens_per_s_ratio_vs_trl_ge_2.5": False,
        "fast_vs_hf_tokens_per_s_ge_3.0": False,
        "peak_rss_ratio_le_0.9": False,
    }
    # one trainer only: no ratios, no targets
    assert bench.flat_figures([{"prompts": 1, "summary": {}}], None, 8) == {}


def test_clock_times_and_counts_a_recursive_generate_once(bench):
    # the hf engine's generate calls self.generate per prompt: the wrapper again, on the instance
    class Engine:
        def generate(self, prompts):
            if len(prompts) > 1:
                return sum(self.generate([p]) for p in prompts)
            return 16  # tokens of one prompt

    eng, clock = Engine(), bench.Clock()
    eng.generate = clock.timed("rollout_s", eng.generate, count=lambda out, *a, **k: out)
    assert eng.generate(["a", "b", "c"]) == 48
    assert clock.acc["tokens"] == 48  # not 96: the inner calls are the outer call's work
    clock.end_step()
    row = clock.rows[0]
    assert row["rollout_s"] <= row["step_s"] and row["update_s"] >= 0


def test_summary_medians_and_per_token_cost(bench):
    def row(step, rollout, tokens):
        return {
            "step_s": step,
            "rollout_s": rollout,
            "reward_s": 0.0,
            "ref_s": 1.0,
            "update_s": step - rollout - 1.0,
            "tokens": tokens,
            "peak_rss_mb": 100.0,
            "peak_gpu_mb": 0.0,
        }

    # the warm-up step (first of each run) is left out; two rounds pool their measured steps
    runs = [
        {"rows": [row(99.0, 9.0, 1), row(10.0, 4.0, 200), row(12.0, 6.0, 400)]},
        {"rows": [row(99.0, 9.0, 1), row(14.0, 5.0, 400)]},
    ]
    s = bench.summarise(runs, warmup=1)
    assert s["step_s"] == 12.0 and s["tokens_per_step"] == 400 and s["steps_measured"] == 3
    assert s["gen_tokens_per_s"] == pytest.approx(1000 / 15.0)  # all tokens over all rollout time
    assert s["step_ms_per_token"] == pytest.approx(1000 * 36.0 / 1000)  # 36 s of steps, 1000 tokens
