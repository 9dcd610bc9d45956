#!/usr/bin/env bash
# Vector vs spatial functa on CIFAR-10 at equal total latent size (issue 13): meta-learn each field for
# MINUTES CPU minutes on the exact-pixel subset, encode TRAIN (JPEG q75 images) and the 10 000 JPEG test
# images, and train the classifier `functa classify train` picks for each (MLP for vectors, Transformer
# for grids). One pinned core, one thread.
#
#   bash bench/spatial_cifar.sh RUNS TRAIN_NPZ NAME "FIELD OVERRIDES" [MINUTES] [CLASSIFY OVERRIDES]
#   bash bench/spatial_cifar.sh runs/sf runs/sf/cifar_jpeg_train20k.npz vec256 "--latent 256" 10
#   bash bench/spatial_cifar.sh runs/sf runs/sf/cifar_jpeg_train20k.npz sp4x4x16 \
#       "--set field.name=spatial --set field.grid=4 --set field.channels=16" 10
#
# TRAIN_NPZ: the first 20 000 training images of cifar10_jpeg_q75_train.npz (same keys, offsets re-based).
set -euo pipefail
RUNS=$1; TRAIN=$2; NAME=$3; FIELD=$4; MINUTES=${5:-10}; CLS=${6:-}
DATA=${DATA:-../shared/data/cifar10}
CORE=${CORE:-1}
export OMP_NUM_THREADS=1
PIN="taskset -c $CORE"
mkdir -p "$RUNS"
# shellcheck disable=SC2086
[ -f "$RUNS/$NAME/model.safetensors" ] || $PIN python bench/quality_time.py "$DATA/cifar10_lossless_subset.npz" $FIELD \
    --minutes "$MINUTES" --threads 1 --eval-items 1000 --save "$RUNS/$NAME" --json "$RUNS/$NAME.quality.json"
$PIN functa --threads 1 encode "$TRAIN" -m "$RUNS/$NAME" -o "$RUNS/${NAME}_train" --split train
$PIN functa --threads 1 encode "$DATA/cifar10_jpeg_q75_test.npz" -m "$RUNS/$NAME" -o "$RUNS/${NAME}_test" --split test
$PIN functa --threads 1 info "$RUNS/${NAME}_train"
# shellcheck disable=SC2086
$PIN functa --threads 1 classify train "$RUNS/${NAME}_train" --test "$RUNS/${NAME}_test" -o "$RUNS/${NAME}_clf" $CLS
