#!/usr/bin/env bash
# Seed-to-seed variation of the paired differences between the variants, at a short budget: MNIST, paper
# preset, a 3-epoch cosine schedule, seeds 0-2, each model evaluated with S = 5000 on the first 1,000 test
# images at tau = 1. Two single-threaded workers; models go to runs/seed-study/ (not shipped); the summary
# (per seed: each variant's test LL and the paired differences) is printed and written to
# runs/seed-study/summary.json.
# Usage: IWAE_DATA_DIR=/path/to/data scripts/seed_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export IWAE=${IWAE:-.venv/bin/iwae} PYTHON=${PYTHON:-.venv/bin/python} OUT=runs/seed-study
mkdir -p "$OUT"
for seed in 0 1 2; do for variant in iwae-r iwae-rrec iwae; do echo "$variant $seed"; done; done |
  xargs -P 2 -L 1 bash -c '
    variant=$0 seed=$1 dir=$OUT/mnist-$variant-s$seed
    resume=(); [ -d "$dir/checkpoint" ] && resume=(--resume)  # a finished run resumes to no more steps
    "$IWAE" train --preset paper --dataset mnist --variant "$variant" --epochs 3 --threads 1 --seed "$seed" \
      --out "$dir" "${resume[@]}" > "$dir.train.log" 2>&1
    OMP_NUM_THREADS=1 "$IWAE" eval "$dir" --k 5000 --limit 1000 --noise-scale 1 --mc-repeats 1 > "$dir.eval.log" 2>&1'
"$PYTHON" - <<'PY'
import json, math, pathlib
from safetensors.torch import load_file
out = pathlib.Path("runs/seed-study")
summary = []
for seed in (0, 1, 2):
    ll = {v: load_file(str(out / f"mnist-{v}-s{seed}" / "test_ll.safetensors"))["tau=1"]
          for v in ("iwae", "iwae-r", "iwae-rrec")}
    row = {"seed": seed, **{v: ll[v].mean().item() for v in ll}}
    for a, b in (("iwae-r", "iwae"), ("iwae-rrec", "iwae"), ("iwae-r", "iwae-rrec")):
        d = ll[a] - ll[b]
        row[f"{a} - {b}"] = [d.mean().item(), (d.std() / math.sqrt(len(d))).item()]
    summary.append(row)
    print(json.dumps(row))
(out / "summary.json").write_text(json.dumps(summary, indent=2))
PY
