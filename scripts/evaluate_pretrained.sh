#!/usr/bin/env bash
# Evaluates the shipped models with the full protocol: S = 5000 joint draws per test image on the whole
# test set, tau = 1 for all seven models, then tau = 0 for the five with random weights (each run keeps the
# other tau's result), active units; then stores the paired per-image differences between the variants of
# each dataset in metrics.json. Two single-threaded workers (one per core), longest runs first.
# Usage: IWAE_DATA_DIR=/path/to/data [DATASETS=mnist] [VARIANTS=iwae-r] [MODELS=DIR] \
#          scripts/evaluate_pretrained.sh [LIMIT]
#   (DATASETS, VARIANTS: which models to evaluate, default every one of MODELS; iwae-r-mixture is shipped for
#   omniglot only: a folder the default VARIANTS name that MODELS lacks is skipped, one of given VARIANTS is an error;
#   MODELS: the folder holding the <dataset>-<variant> model folders, default pretrained; LIMIT: first N test
#   images only)
set -euo pipefail
cd "$(dirname "$0")/.."
export IWAE=${IWAE:-.venv/bin/iwae} LIMIT=${1:-}
named=${VARIANTS:-}
DATASETS=${DATASETS:-omniglot mnist}
VARIANTS=${VARIANTS:-iwae-r iwae-r-mixture iwae-rrec iwae}
MODELS=${MODELS:-pretrained}
tasks=()
for tau in 1 0; do
  for variant in $VARIANTS; do
    [ "$tau" = 0 ] && [ "$variant" = iwae ] && continue  # a deterministic model: tau changes nothing
    for dataset in $DATASETS; do
      dir=$MODELS/$dataset-$variant
      if [ ! -d "$dir" ]; then
        [ -z "$named" ] && continue
        echo "no model folder $dir" >&2; exit 1
      fi
      tasks+=("$dir $tau")
    done
  done
done
printf '%s\n' "${tasks[@]}" | xargs -P 2 -L 1 bash -c '
  dir=$0 tau=$1
  OMP_NUM_THREADS=1 "$IWAE" eval "$dir" --k 5000 ${LIMIT:+--limit "$LIMIT"} --noise-scale "$tau" \
    --mc-repeats 3 --mc-images 100 > "$dir/eval-tau$tau.log" 2>&1'
"$IWAE" table "$MODELS"/*/ --paired --write
