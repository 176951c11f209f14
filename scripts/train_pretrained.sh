#!/usr/bin/env bash
# Trains the six shipped models (paper preset: 784-400-40 tanh, k = 25, batch 100, Adam 1e-3 cosine
# to 1e-4), one single-threaded process each, in parallel. Rerunning it resumes every unfinished run.
# Usage: IWAE_DATA_DIR=/path/to/data scripts/train_pretrained.sh [MNIST_EPOCHS] [OMNIGLOT_EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MNIST_EPOCHS=${1:-15}
OMNIGLOT_EPOCHS=${2:-30}
for dataset in mnist omniglot; do
  epochs=$MNIST_EPOCHS; [ "$dataset" = omniglot ] && epochs=$OMNIGLOT_EPOCHS
  for variant in iwae iwae-r iwae-rrec; do
    out=pretrained/$dataset-$variant
    mkdir -p "$out"
    resume=""; [ -d "$out/checkpoint" ] && resume="--resume"
    nohup "$PY" -m iwae_core.cli train --preset paper --dataset "$dataset" --variant "$variant" \
      --epochs "$epochs" --threads 1 --seed 0 --out "$out" $resume >> "$out/train.log" 2>&1 &
  done
done
wait
