#!/usr/bin/env bash
# A longer MNIST budget for the three variants: the paper preset with a 100-epoch cosine schedule, seed 0,
# one single-threaded process per variant, into runs/mnist-long/<variant> (not shipped until evaluated).
# Checkpoints every minute; rerunning the script resumes each unfinished run where it stopped.
# Usage: IWAE_DATA_DIR=/path/to/data scripts/train_long_mnist.sh
set -euo pipefail
cd "$(dirname "$0")/.."
IWAE=${IWAE:-.venv/bin/iwae}
for variant in iwae iwae-r iwae-rrec; do
  out=runs/mnist-long/$variant
  mkdir -p "$out"
  resume=(); [ -d "$out/checkpoint" ] && resume=(--resume)
  nohup "$IWAE" train --preset paper --dataset mnist --variant "$variant" --epochs 100 --threads 1 --seed 0 \
    --out "$out" "${resume[@]}" >> "$out/train.log" 2>&1 &
done
wait
