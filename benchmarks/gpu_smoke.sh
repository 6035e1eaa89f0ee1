#!/usr/bin/env bash
# GPU smoke check, for a machine with one CUDA GPU and torch + transformers installed (no network):
# the whole trainer (fast rollouts, shared-prompt update, reference model, evaluation, saving) on
# CUDA with the tiny random model and a toy reward it can learn, in fp32 and with bf16 autocast.
# Prints the reward of the first and last steps of each run; writes metrics to $OUT if set.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out="${OUT:-/tmp/sft2grpo-gpu}"
mkdir -p "$out" /tmp/sft2grpo-gpu-runs
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU: running on CPU')"
python3 - <<'PY'
import json
with open("/tmp/sft2grpo-gpu-runs/toy.jsonl", "w") as f:
    for i in range(64):
        f.write(json.dumps({"prompt": f"Write something about {i}.", "answer": "x"}) + "\n")
PY
for run in grpo no_kl grpo+bf16; do
  preset=${run%+*}
  extra=""
  [[ $run == *bf16 ]] && extra="train.autocast=bf16"
  rm -rf "/tmp/sft2grpo-gpu-runs/$run"
  python3 -m sft2grpo train --config "$preset" model.name=tiny task.name=/tmp/sft2grpo-gpu-runs/toy.jsonl \
    task.eval_size=8 "reward.functions=[tests/toy_reward.py:lowercase_share]" train.steps=25 train.lr=3e-3 \
    train.mu=1 rollout.group_size=8 train.prompts_per_step=4 train.micro_batch_size=32 rollout.max_new_tokens=8 \
    log.progress=false log.plots=false "log.output_dir=/tmp/sft2grpo-gpu-runs/$run" $extra 2>/dev/null | tail -4
  cp "/tmp/sft2grpo-gpu-runs/$run/metrics.jsonl" "$out/${run/+/_}_metrics.jsonl"
  python3 - "$out/${run/+/_}_metrics.jsonl" "$run" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
first = sum(r["reward_mean"] for r in rows[:5]) / 5
last = sum(r["reward_mean"] for r in rows[-5:]) / 5
step = sorted(r["time_step"] for r in rows[1:])[len(rows) // 2 - 1]
print(f"{sys.argv[2]}: reward {first:.2f} -> {last:.2f}, median step {step:.3f} s, "
      f"max engine/trainer log-prob gap {max(r['logprob_gap_max'] for r in rows):.2e}")
PY
done
