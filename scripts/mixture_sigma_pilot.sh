#!/usr/bin/env bash
# Which initial sigma lets the weight noise matter? One epoch of MNIST at the paper's settings (batch 20,
# k = 25, lr 1e-3 cosine to 1e-4, seed 0) for IWAE-R at init sigma 1e-3, 1e-2 and 1e-1 in both readings
# (mixture and Bayesian), beside IWAE, and the mixture at 1e-2 and 1e-1 with ten times the learning rate
# on rho (sigma = softplus(rho)); each evaluated on the first 500 test images (S = 1000, tau = 1 and 0).
# Two runs at a time, one thread each; resumable (train --resume finishes a stopped run, skips a finished one).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/mixture-sigma-pilot}
IWAE=${IWAE:-iwae}
common=(--dataset mnist --preset paper --batch-size 20 --epochs 1 --seed 0 --threads 1 --noise-precision float32 --draws torch)
one() {  # name, options...
  local name=$1; shift
  # --resume finishes an interrupted run and does nothing for a finished one
  $IWAE train "${common[@]}" "$@" --out "$OUT/$name" --resume >> "$OUT/$name.log" 2>&1
  grep -q '"test"' "$OUT/$name/metrics.json" ||
    $IWAE eval "$OUT/$name" --k 1000 --limit 500 --mc-repeats 1 --threads 1 >> "$OUT/$name.log" 2>&1
}
mkdir -p "$OUT"
one iwae --variant iwae &
one mixture-s1e-1 --variant iwae-r --objective mixture --init-sigma 0.1 &
wait
one mixture-s1e-2 --variant iwae-r --objective mixture --init-sigma 0.01 &
one mixture-s1e-3 --variant iwae-r --objective mixture --init-sigma 0.001 &
wait
one bayes-s1e-3 --variant iwae-r &
one bayes-s1e-2 --variant iwae-r --init-sigma 0.01 &
wait
one bayes-s1e-1 --variant iwae-r --init-sigma 0.1 &
one mixture-s1e-2-rho10 --variant iwae-r --objective mixture --init-sigma 0.01 --rho-lr-scale 10 &
wait
one mixture-s1e-1-rho10 --variant iwae-r --objective mixture --init-sigma 0.1 --rho-lr-scale 10 &
wait
$IWAE table "$OUT"/*/
