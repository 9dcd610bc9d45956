#!/usr/bin/env bash
# NeRF scenes on a CPU, end to end, on posed views of ModelNet10 shapes (docs/benchmarks.md, "NeRF scenes").
#   1. build the scenes (50 views at 64x64 per shape, Blender layout) if they are not there;
#   2. meta-learn at latent 64, 128 and 256 for MINUTES CPU-minutes each (preset scenes-cpu) and score the
#      novel views of held-out scenes after 3 inner steps (PixelNeRF protocol: 1 context view in);
#   3. at latent 128: encode the training scenes, fit a flow prior, and run single-view novel view
#      synthesis (full view, and left half) on test scenes with and without the prior.
# Usage: OMP_NUM_THREADS=1 taskset -c 1 bash bench/scenes_modelnet.sh [SCENES_DIR] [RUNS_DIR] [MINUTES]
set -euo pipefail
SCENES=${1:-/work/runs/scenes/modelnet64}
RUNS=${2:-/work/runs/scenes/mn}
MINUTES=${3:-10}
OUT=bench/results
mkdir -p "$RUNS" "$OUT"
[ -f "$SCENES/builder.json" ] || functa --quiet scenes build-modelnet ../shared/data/modelnet10_vox32 -o "$SCENES"
for L in 64 128 256; do
  functa --quiet fit "$SCENES" -o "$RUNS/latent$L" --modality scene --preset scenes-cpu \
    --set field.latent_dim=$L --set train.steps=1000000 --time-limit $((MINUTES * 60))
  functa --quiet eval "$SCENES" -m "$RUNS/latent$L" --split test --limit 64 --json "$OUT/scenes_eval_latent$L.json"
done
functa --quiet encode "$SCENES" -m "$RUNS/latent128" -o "$RUNS/train128.functaset" --split train
functa --quiet flow train "$RUNS/train128.functaset" -o "$RUNS/flow128" --set train.steps=2000
for MASK in full left-half; do
  functa --quiet nvs "$SCENES" -m "$RUNS/latent128" --prior "$RUNS/flow128" --split test --indices 0:8 \
    --context 0 --mask $MASK --steps 100 -o "$RUNS/nvs_$MASK"
  cp "$RUNS/nvs_$MASK/metrics.json" "$OUT/scenes_nvs_$MASK.json"
done
functa --quiet encode "$SCENES" -m "$RUNS/latent128" -o "$RUNS/test128.functaset" --split test
functa --quiet render -m "$RUNS/latent128" --functaset "$RUNS/test128.functaset" --indices 0:2 --turntable 36 \
  -o "$RUNS/turntable"
