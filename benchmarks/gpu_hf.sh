#!/usr/bin/env bash
# Issue 18, item 5, on one CUDA GPU: our trainer against TRL 1.16's GRPOTrainer, both generating with
# transformers (no vLLM), on a random-weight model of SmolLM2-135M-Instruct's shape, same prompts,
# reward and settings: benchmarks/bench_trl.py, 1 and 4 prompts x 8 completions, 64 new tokens,
# beta 0.04, lr 1e-5, bf16 weights on both sides, 5 steps with the first 2 left out of the medians.
# Random weights rarely stop early, so every completion runs to 64 tokens on both sides: the same work.
#
# First, here: bash benchmarks/gpu_hf_prep.sh (fills .gpu/). Then, with the device tool:
#   run(command="bash benchmarks/gpu_hf.sh", carry=[".gpu"], timeout_s=540)
# Writes $OUT/bench_gpu_hf.json (OUT defaults to .). Stopped at 480 s. SMALL=1 shrinks the model to 2
# layers for a plumbing check on a CPU (its timings say nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
mkdir -p "$out"
PY="${PYTHON:-python3}"
if [[ ! -d .gpu/whl || ! -f .gpu/chain_sum.jsonl ]]; then
  echo "gpu_hf.sh: .gpu/ is missing: run benchmarks/gpu_hf_prep.sh here first and carry .gpu" >&2
  exit 2
fi
if ! "$PY" -c "import trl" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false
model=/tmp/sft2grpo-rand135m
"$PY" - "$model" <<'PY'
import shutil, sys
from pathlib import Path

import os
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

out = Path(sys.argv[1])
cfg = AutoConfig.from_pretrained(".gpu/model")
if os.environ.get("SMALL"):
    cfg.num_hidden_layers = 2
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg)  # random weights, SmolLM2-135M's shape
model.save_pretrained(out)
for f in Path(".gpu/model").iterdir():
    if not (out / f.name).exists():
        shutil.copy(f, out / f.name)
n = sum(p.numel() for p in model.parameters())
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (CPU: a plumbing check)"
import trl
print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; {dev}; "
      f"random model: {n / 1e6:.1f}M parameters, {cfg.num_hidden_layers} layers")
PY
start=$(date +%s)
status=0
steps="${STEPS:-5}"
warmup="${WARMUP:-2}"
timeout 480 "$PY" benchmarks/bench_trl.py --model "$model" --task .gpu/chain_sum.jsonl --engine hf \
  --dtype bfloat16 --prompts 1,4 --steps "$steps" --warmup "$warmup" --rollout-prompts 8 \
  --json "$out/bench_gpu_hf.json" "$@" || status=$?
[[ $status == 124 ]] && echo "gpu_hf.sh: stopped after 480 s; try STEPS=4 WARMUP=1 or --prompts 4" >&2
echo "gpu_hf.sh: $(( $(date +%s) - start )) s, exit $status"
exit $status
