#!/usr/bin/env bash
# GPU smoke test (one GPU, no network, a few minutes): the tiny profile's train -> generate -> probe stages on CUDA in
# bf16, then step time and MFU of one LoRA SFT step of a random-init Qwen3-8B-shaped model at sequence length 1024.
#
#   bench/gpu_smoke.sh [OUT_DIR]      (default: a new temporary directory; results land in OUT_DIR/smoke.json)
#
# Runs in a scratch copy of the repository, so the checkout's outputs and dvc.lock are never touched. Uses the
# environment's `sycorec`, `dvc` and `python` (the .venv, or the container's /opt/venv).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$(mktemp -d -t sycorec-smoke-XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [[ -x "$repo/.venv/bin/python" ]]; then export PATH="$repo/.venv/bin:$PATH"; fi
export HF_HUB_OFFLINE=1 PYTHONNOUSERSITE=1 TOKENIZERS_PARALLELISM=false

python - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("error: gpu_smoke.sh needs a CUDA GPU")
print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

# 1. Tiny DAG on CUDA/bf16: a scratch copy whose params.yaml is the tiny profile with bf16 switched on.
scratch="$out/run"
rm -rf "$scratch" && mkdir -p "$scratch"
tar -C "$repo" --exclude=./.venv --exclude=./.git --exclude=./outputs --exclude=./results --exclude=./.demo \
  --exclude=./data/prepared --exclude='*.sif' -cf - . | tar -C "$scratch" -xf -
cd "$scratch"
python - <<'EOF'
import yaml

from sycorec.config import resolve_raw, validate

raw = resolve_raw("params.yaml", "tiny")
raw["train"]["common"]["bf16"] = True
raw["base_model"]["dtype"] = "bfloat16"
validate(raw)
with open("params.yaml", "w", encoding="utf-8") as fh:
    yaml.safe_dump(raw, fh, sort_keys=False)
EOF
git init -q && git add -A && git -c user.name=smoke -c user.email=smoke@localhost commit -qm "gpu smoke scratch copy"
start=$(date +%s)
CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} dvc repro train_sft generate@sft probe_extract@sft
dag_s=$(($(date +%s) - start))
echo "tiny train -> generate -> probe on CUDA: ${dag_s} s"

# 2. One LoRA SFT step at the study's shape (random init, nothing downloaded).
cd "$repo"
python bench/sft_step_mfu.py --seq-len 1024 --batch 1 --steps 5 --json "$out/sft_step_mfu.json"

python - "$out" "$dag_s" "$scratch" <<'EOF'
import json
import sys
from pathlib import Path

out, dag_s, scratch = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
timings = {p.stem: json.loads(p.read_text())["seconds"] for p in sorted((scratch / "outputs/timings").glob("*.json"))}
summary = {"tiny_dag_seconds": dag_s, "stage_seconds": timings, "sft_step": json.loads((out / "sft_step_mfu.json").read_text())}
(out / "smoke.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"summary: {out / 'smoke.json'}")
EOF
