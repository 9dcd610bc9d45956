#!/usr/bin/env bash
# NeRF scenes on a CPU, on posed views of ModelNet10 shapes (docs/benchmarks.md, "NeRF scenes").
#   bash bench/scenes_modelnet.sh build           # the scenes: 1,354 shapes x 50 views at 64x64 (Blender layout)
#   bash bench/scenes_modelnet.sh fit L [MIN]     # meta-learn at latent L for MIN CPU-minutes (preset scenes-cpu),
#                                                 # then PSNR of 4 novel views of 64 held-out scenes after 3 inner
#                                                 # steps, fitted to 1 context view (PixelNeRF) and to 8
#   bash bench/scenes_modelnet.sh eval L          # only the two evaluations of an existing run
#   bash bench/scenes_modelnet.sh nvs L           # encode the training scenes, fit a flow prior, single-view novel
#                                                 # view synthesis with and without it (full view and left half,
#                                                 # prior weights 1 to 0.001), turntables of two held-out scenes
# Run each pinned to one core: OMP_NUM_THREADS=1 taskset -c 1 bash bench/scenes_modelnet.sh fit 64
set -euo pipefail
SCENES=${SCENES:-/work/runs/scenes/modelnet64}
RUNS=${RUNS:-/work/runs/scenes/mn}
OUT=bench/results
NOVEL='modality.novel_views=[1,17,33,49]'
mkdir -p "$RUNS" "$OUT"
case "$1" in
build)
  functa --quiet scenes build-modelnet ../shared/data/modelnet10_vox32 -o "$SCENES" ;;
fit|eval)  # eval: only the two evaluations of an existing run
  L=$2; MIN=${3:-10}
  [ "$1" = eval ] || functa --quiet fit "$SCENES" -o "$RUNS/latent$L" --modality scene --preset scenes-cpu \
    --set field.latent_dim="$L" --set train.steps=1000000 --time-limit $((MIN * 60))
  functa --quiet eval "$SCENES" -m "$RUNS/latent$L" --split test --limit 64 --set "$NOVEL" \
    --json "$OUT/scenes_eval_latent${L}_context1.json"
  functa --quiet eval "$SCENES" -m "$RUNS/latent$L" --split test --limit 64 --set "$NOVEL" \
    --set 'modality.context_views=[0,6,12,18,24,30,36,42]' --json "$OUT/scenes_eval_latent${L}_context8.json" ;;
nvs)
  L=$2
  functa --quiet encode "$SCENES" -m "$RUNS/latent$L" -o "$RUNS/train$L.functaset" --split train
  functa --quiet flow train "$RUNS/train$L.functaset" -o "$RUNS/flow$L" --set train.steps=2000
  for RUN in full:1 full:0.1 full:0.01 full:0.001 left-half:1 left-half:0.01; do
    MASK=${RUN%%:*}; W=${RUN##*:}
    functa --quiet nvs "$SCENES" -m "$RUNS/latent$L" --prior "$RUNS/flow$L" --split test --indices 0:16 \
      --context 0 --novel 1,17,33,49 --mask "$MASK" --pixels 1024 --steps 100 --prior-weight "$W" \
      -o "$RUNS/nvs_${MASK}_w$W"
    cp "$RUNS/nvs_${MASK}_w$W/metrics.json" "$OUT/scenes_nvs_latent${L}_${MASK}_w$W.json"
  done
  functa --quiet encode "$SCENES" -m "$RUNS/latent$L" -o "$RUNS/test$L.functaset" --split test
  functa --quiet render -m "$RUNS/latent$L" --functaset "$RUNS/test$L.functaset" --indices 0:2 --turntable 36 \
    -o "$RUNS/turntable" ;;
*) echo "usage: $0 build | fit LATENT [MINUTES] | eval LATENT | nvs LATENT" >&2; exit 2 ;;
esac
