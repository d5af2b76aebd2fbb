#!/usr/bin/env bash
# GPU smoke test (one GPU, no network, a few minutes): the tiny profile's train -> generate -> probe stages on CUDA in
# bf16, then step time and MFU of one LoRA SFT step of a random-init Qwen3-8B-shaped model at sequence length 1024.
#
#   bench/gpu_smoke.sh [OUT_DIR]             (default: a new temporary directory; results land in OUT_DIR/smoke.json)
#   bench/gpu_smoke.sh --mfu-only [OUT_DIR]  only the LoRA-step MFU (OUT_DIR/sft_step_mfu.json): needs torch plus the
#                                            wheels in bench/mfu_wheels.txt, not sycorec, DVC or the tiny DAG; on a
#                                            bare box: pip install --no-index --no-deps WHEEL... then run this
#
# The tiny stages run in a scratch workspace like the demo's (params.yaml = the tiny profile with bf16 switched on),
# so the checkout's outputs and dvc.lock are never touched. probe_extract@R3030-sft needs the verdicts of that probing
# run's models (base, SFT, DPO), so it brings in their tiny eval DAG; SMOKE_TARGETS (space-separated DVC stages)
# narrows or widens the run.
# Uses the environment's `sycorec`, `dvc` and `python` (the checkout's .venv if present, else the container's).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
mfu_only=0
if [[ "${1:-}" == "--mfu-only" ]]; then mfu_only=1; shift; fi
out=${1:-$(mktemp -d -t sycorec-smoke-XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
targets=${SMOKE_TARGETS:-train_sft generate@sft probe_extract@R3030-sft}
if [[ -x "$repo/.venv/bin/python" ]]; then export PATH="$repo/.venv/bin:$PATH"; fi
export HF_HUB_OFFLINE=1 PYTHONNOUSERSITE=1 TOKENIZERS_PARALLELISM=false
cd "$repo"

python - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("error: gpu_smoke.sh needs a CUDA GPU")
print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY

if ((mfu_only)); then
  python bench/sft_step_mfu.py --seq-len 1024 --batch 1 --steps 5 --json "$out/sft_step_mfu.json"
  exit 0
fi

# 1. The tiny DAG's stages on CUDA in bf16.
# shellcheck disable=SC2086  # targets is a word list on purpose
python - "$out" $targets <<'PY'
import json
import sys
from pathlib import Path

import yaml

from sycorec.config import validate
from sycorec.demo.workspace import prepare_workspace, run_pipeline

out, targets = Path(sys.argv[1]), tuple(sys.argv[2:])
work = prepare_workspace(Path.cwd(), out / "run", "tiny")
raw = yaml.safe_load((work / "params.yaml").read_text())
raw["train"]["common"]["bf16"] = True
raw["base_model"]["dtype"] = "bfloat16"
validate(raw)
(work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
print(f"dvc repro {' '.join(targets)} in {work}", flush=True)
seconds = run_pipeline(work, targets)
timings = {p.stem: json.loads(p.read_text())["seconds"] for p in sorted((work / "outputs/timings").glob("*.json"))}
(out / "tiny_dag.json").write_text(json.dumps({"targets": targets, "seconds": seconds, "stages": timings}, indent=2))
print(f"tiny {' '.join(targets)} on CUDA: {seconds:.0f} s")
PY

# 2. One LoRA SFT step at the study's shape (random init, nothing downloaded).
python bench/sft_step_mfu.py --seq-len 1024 --batch 1 --steps 5 --json "$out/sft_step_mfu.json"

python - "$out" <<'PY'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
summary = {name: json.loads((out / f"{name}.json").read_text()) for name in ("tiny_dag", "sft_step_mfu")}
(out / "smoke.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"summary: {out / 'smoke.json'}")
PY
