#!/bin/bash
# The prepared device check (issue 16): on a machine with a CUDA GPU, in at most ~8 minutes,
#   1. the CUDA tests (tests/test_device.py, with CUDA present) and a CPU-vs-CUDA meta-learning run,
#   2. meta-learning throughput of C1/C2 against the measured fp32 and TF32 matmul peaks (bench/gpu_check.py),
#   3. a short paper-scale CIFAR-10 meta-learning run with the coinpp preset (MINUTES, default 3),
# writing JSON and logs to OUT_DIR.  Usage: bash bench/gpu_check.sh OUT_DIR
# Where no GPU is present it says so and exits with code 2.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
MINUTES=${MINUTES:-3}
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: no CUDA GPU here (torch.cuda.is_available() is False); nothing measured" >&2
  exit 2
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia_smi.csv" 2>&1 || true
python -m pytest -q tests/test_device.py > "$OUT/cuda_tests.log" 2>&1
echo "{\"cuda_tests_rc\": $?}" > "$OUT/cuda_tests.json"
timeout 300 python bench/gpu_check.py --json "$OUT/gpu_throughput.json" > "$OUT/gpu_throughput.log" 2>&1
timeout $((MINUTES * 60 + 120)) functa --device cuda fit ../shared/data/cifar10/cifar10_jpeg_q75_train.npz \
  -o "$OUT/coinpp_cifar" --preset coinpp --time-limit $((MINUTES * 60)) > "$OUT/coinpp_cifar.log" 2>&1
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
state = out / "coinpp_cifar" / "train_state.json"
summary = {"coinpp_cifar": json.loads(state.read_text())["history"][-1:] if state.exists() else None}
for name in ("cuda_tests.json", "gpu_throughput.json"):
    p = out / name
    summary[name] = json.loads(p.read_text()) if p.exists() else None
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
PY
