#!/bin/bash
# GASP against functa + DDPM on Fashion-MNIST at the same CPU budget (one core each), then FD-CNN.
#
#   bash bench/gasp_vs_ddpm.sh functa [RUNS]   # base network (15 min), encode, DDPM, samples, pixel CNN; timed
#   bash bench/gasp_vs_ddpm.sh gasp [RUNS]     # GASP for the functa stages' total seconds, samples, FD-CNN
#
# RUNS defaults to runs/gasp_vs_ddpm; CORE (default 1) is the core both stages are pinned to.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
R=${2:-runs/gasp_vs_ddpm}
D=../shared/data/fashion_mnist
CORE=${CORE:-1}
mkdir -p "$R"
timed() {  # timed NAME FILE command...: run pinned, append {"stage", "seconds"} to FILE
  local name=$1 file=$2; shift 2
  local s; s=$(date +%s.%N)
  taskset -c "$CORE" "$@"
  python -c "import sys, json; print(json.dumps({'stage': sys.argv[1], 'seconds': float(sys.argv[3]) - float(sys.argv[2])}))" \
    "$name" "$s" "$(date +%s.%N)" >> "$file"
}
F="functa --threads 1 --quiet"
case "${1:-}" in
functa)
  rm -f "$R/functa_times.jsonl"
  timed fit "$R/functa_times.jsonl" $F fit $D -o "$R/fm_functa" --time-limit 900
  timed encode "$R/functa_times.jsonl" $F encode $D -m "$R/fm_functa" -o "$R/fm_functa_train" --split train
  timed ddpm_train "$R/functa_times.jsonl" $F diffusion train "$R/fm_functa_train" -o "$R/fm_ddpm" --set train.steps=4000
  timed ddpm_sample "$R/functa_times.jsonl" $F diffusion sample "$R/fm_ddpm" -o "$R/fm_ddpm_samples" -n 1000 --method ddim --steps 100
  taskset -c "$CORE" $F diffusion sample "$R/fm_ddpm" -o "$R/fm_ddpm_samples_x4" -n 32 --method ddim --steps 100 --no-neighbours --scale 4
  taskset -c "$CORE" $F classify baseline $D -o "$R/fm_cnn"  # the feature network of FD-CNN (not in the budget)
  ;;
gasp)
  BUDGET=$(python -c "
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(int(sum(r['seconds'] for r in rows if r['stage'] in ('fit', 'encode', 'ddpm_train', 'ddpm_sample'))))" "$R/functa_times.jsonl")
  echo "budget $BUDGET s"
  rm -f "$R/gasp_times.jsonl"
  timed gasp_train "$R/gasp_times.jsonl" $F gasp train $D -o "$R/fm_gasp" --time-limit "$BUDGET" \
    --set train.steps=100000 --set train.batch_size=32 --set discriminator.channels=[32,64,128] \
    --set train.sample_every=200 --set train.save_every=200
  timed gasp_sample "$R/gasp_times.jsonl" $F gasp sample "$R/fm_gasp" -o "$R/fm_gasp_samples" -n 1000
  taskset -c "$CORE" $F gasp sample "$R/fm_gasp" -o "$R/fm_gasp_samples_x4" -n 32 --scale 4 --no-neighbours
  taskset -c "$CORE" python bench/spatial_fd.py --cnn "$R/fm_cnn/seed0" --reference $D \
    gasp="$R/fm_gasp_samples/sample.npz" ddpm="$R/fm_ddpm_samples/sample.npz" | tee "$R/fd_fmnist.json"
  ;;
*)
  echo "usage: bash bench/gasp_vs_ddpm.sh functa|gasp [RUNS]" >&2; exit 2 ;;
esac
