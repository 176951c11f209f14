#!/usr/bin/env bash
# Trains the shipped models with the paper preset (784-400-40 tanh, k = 25, Adam) at batch 20 (as
# Burda et al.), one single-threaded process per model, in parallel; rerunning it resumes unfinished runs.
#   stage 1, both datasets: 20 epochs, lr 1e-3 with a cosine decay to 1e-4, seed 0
#     (59,600 steps on MNIST, 23,000 on Omniglot) -> $RUNS/<dataset>-b20/<variant>
#   stage 2, both datasets: 20 more epochs from the stage-1 weights (--init-from), a fresh Adam and a
#     second cosine from 5e-4 to 5e-5, seed 1 (a new shuffle) -> $RUNS/<dataset>-s2/<variant>
#   stage 3, MNIST only: stage 2 again from the stage-2 weights, seed 2 -> $RUNS/mnist-s3/<variant>
# All stages keep the noise-path products in float32 (--noise-precision float32), as the first stages
# ran before the bfloat16 option existed, and draw the noise with torch's generator (--draws torch), as all
# stages did before Philox existed.
# The last stage of each model is copied into $SHIP/<dataset>-<variant>; metrics.json records every
# stage's command. The paper preset's batch 100 learned far more slowly per epoch here (2-epoch cosine
# schedules, MNIST valid L_100: -105.3 at batch 20, -117.5 at batch 100).
# Usage: IWAE_DATA_DIR=/path/to/data scripts/train_pretrained.sh
#   VARIANTS (default: iwae iwae-r iwae-rrec) picks variants, DATASETS (default: mnist omniglot) datasets, RUNS (default
#   runs) the folder of the stages' runs, SHIP (default pretrained) where the finished models go; e.g.
#   retraining the random-weight models beside the shipped ones:
#   VARIANTS="iwae-r iwae-rrec" RUNS=runs/retrain SHIP=runs/retrain/models scripts/train_pretrained.sh
#   The variant iwae-r-mixture is IWAE-R read as a mixture (--objective mixture), with the initial sigma of the
#   study's mixture arm (1e-2; see results/mixture_sigma_pilot.md), on the same schedule; it is shipped for
#   Omniglot only (DATASETS=omniglot VARIANTS=iwae-r-mixture; docs/results.md says why).
set -euo pipefail
cd "$(dirname "$0")/.."
IWAE=${IWAE:-.venv/bin/iwae}
VARIANTS=${VARIANTS:-iwae iwae-r iwae-rrec}
DATASETS=${DATASETS:-mnist omniglot}
RUNS=${RUNS:-runs}
SHIP=${SHIP:-pretrained}

options() {  # options VARIANT: the training options that make a variant
  if [ "$1" = iwae-r-mixture ]; then echo "--variant iwae-r --objective mixture --init-sigma 1e-2"
  else echo "--variant $1"; fi
}

train() {  # train OUT ARGS...: start or resume a run in OUT, logging to OUT/train.log
  local out=$1; shift
  mkdir -p "$out"
  # --resume starts from scratch in a new folder (a train.log alone counts as empty), and continues a run
  # whose checkpoint swap a kill interrupted (checkpoint.old, no checkpoint/)
  "$IWAE" train --preset paper --batch-size 20 --threads 1 --noise-precision float32 --draws torch --out "$out" --resume "$@" >> "$out/train.log" 2>&1
}

ship() {  # ship RUN DIR: the model folder of a finished run, without its checkpoint and logs
  cmp -s "$1/model.safetensors" "$2/model.safetensors" && return 0  # shipped already (and maybe evaluated)
  mkdir -p "$2"
  cp "$1"/{model.safetensors,config.json,metrics.json,history.csv} "$2"/
  rm -f "$2/test_ll.safetensors"  # per-image results of the model shipped before, if any
  if [ -f "$1/test_ll.safetensors" ]; then cp "$1/test_ll.safetensors" "$2"/; fi
}

again() {  # again DATASET FROM TO SEED: one more 20-epoch stage with the second cosine
  train "$RUNS/$1-$3/$variant" --dataset "$1" $(options "$variant") --epochs 20 --lr 5e-4 --lr-final 5e-5 \
    --seed "$4" --init-from "$RUNS/$1-$2/$variant"
}

for variant in $VARIANTS; do
  case " $DATASETS " in *" mnist "*) (
    train "$RUNS/mnist-b20/$variant" --dataset mnist $(options "$variant") --epochs 20 --seed 0
    again mnist b20 s2 1
    again mnist s2 s3 2
    ship "$RUNS/mnist-s3/$variant" "$SHIP/mnist-$variant"
  ) & ;; esac
  case " $DATASETS " in *" omniglot "*) (
    train "$RUNS/omniglot-b20/$variant" --dataset omniglot $(options "$variant") --epochs 20 --seed 0
    again omniglot b20 s2 1
    ship "$RUNS/omniglot-s2/$variant" "$SHIP/omniglot-$variant"
  ) & ;; esac
done
wait
