#!/usr/bin/env bash
# Evaluates the shipped models (S = 5000 joint draws per test image, tau = 1 and tau = 0, active units)
# and stores the paired per-image differences between the variants of each dataset in metrics.json.
# Usage: IWAE_DATA_DIR=/path/to/data scripts/evaluate_pretrained.sh [LIMIT]   (LIMIT: first N test images;
# the shipped numbers used 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
IWAE=${IWAE:-.venv/bin/iwae}
limit=()
[ -n "${1:-}" ] && limit=(--limit "$1")
for dir in pretrained/*/; do
  OMP_NUM_THREADS=1 "$IWAE" eval "${dir%/}" --k 5000 "${limit[@]}" --mc-repeats 3 --mc-images 100 > "${dir%/}/eval.log"
done
"$IWAE" table pretrained/*/ --paired --write
