#!/usr/bin/env bash
# Run HERE (the CPU machine with network to PyPI), once, before benchmarks/gpu_hf.sh runs on a lent
# GPU machine. Fills .gpu/ (ignored by git; name it in the device tool's `carry`):
#   .gpu/whl/         TRL 1.16.0 and the wheels the GPU image lacks (datasets, dill, multiprocess),
#                     for CPython 3.12 on x86-64 (what that image runs)
#   .gpu/model/       SmolLM2-135M-Instruct's config and tokenizer, no weights: gpu_hf.sh builds a
#                     random-weight model of that shape there
#   .gpu/chain_sum.jsonl  the first chain_sum training problems, so that the GPU machine needs no
#                     reasoning-gym (its dependency pycosat ships no wheels)
# About 2 MB of wheels and 3.5 MB of tokenizer.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/model
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .gpu/whl trl==1.16.0 datasets==5.2.0 dill==0.4.0 multiprocess==0.70.18 2>&1 \
  | grep -v '^WARNING: Location' || true
"$PY" - <<'PY'
import json
from pathlib import Path

from sft2grpo.config import TaskConfig
from sft2grpo.models import _resolve_folder
from sft2grpo.tasks import load_task

src = Path(_resolve_folder("smollm2-135m"))  # the converted embedded model (converts it if needed)
for f in src.iterdir():
    if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".pt")):
        (Path(".gpu/model") / f.name).write_bytes(f.read_bytes())
with open(".gpu/chain_sum.jsonl", "w") as out:
    for e in load_task(TaskConfig(size=256, eval_size=0, seed=0)).train:
        out.write(json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n")
PY
ls .gpu/whl; du -sh .gpu
