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
    # --resume: a new folder starts from scratch, a finished run resumes to no more steps; --draws torch: the
    # generator the documented results were drawn with
    "$IWAE" train --preset paper --dataset mnist --variant "$variant" --epochs 3 --threads 1 --seed "$seed" \
      --draws torch --out "$dir" --resume > "$dir.train.log" 2>&1
    OMP_NUM_THREADS=1 "$IWAE" eval "$dir" --k 5000 --limit 1000 --noise-scale 1 --mc-repeats 1 > "$dir.eval.log" 2>&1'
"$PYTHON" - <<'PY'
import json, pathlib
from iwae_core.zoo import find_models
from iwae_core.compare import paired_differences
out = pathlib.Path("runs/seed-study")
models = find_models(out)
summary = []
for seed in (0, 1, 2):
    group = [e for e in models if e.name.endswith(f"-s{seed}")]
    variant = {e.name: e.variant for e in group}
    row = {"seed": seed, **{e.variant: e.metrics["test"]["by_tau"]["1"]["mean"] for e in group}}
    for p in paired_differences(group):  # names sort as iwae-r < iwae-rrec < iwae: a - b as in the README
        row[f"{variant[p['a']]} - {variant[p['b']]}"] = [p["mean_difference"], p["paired_stderr"]]
    summary.append(row)
    print(json.dumps(row))
(out / "summary.json").write_text(json.dumps(summary, indent=2))
PY
