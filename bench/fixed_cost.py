"""How much of a compiled training step is paid once per step whatever the batch, and whether the issue's two-thread
targets could be met by removing it.

Usage: python bench/fixed_cost.py [--threads 2] [--repeats 30]

Each compiled step (the Trainer's own, `iwae bench`'s setup) is timed twice in the same rounds: at the paper's
batch of 100 images with k = 25, and at one image with k = 1. The second is the step's fixed cost: Python and
dispatch (dynamo's guards, autograd, Adam's loop), the work on the weights themselves (Adam, the KL and sigma,
the casts of the weights, the weight-sized outputs of the weight-gradient products) and the draws of weight
noise. The difference is what grows with the rows. The bare float32 products are timed at both sizes too, so

    (step - step at 1 x 1) / (bare - bare at 1 x 1)

is the IWAE ratio the step would have with no fixed cost at all, and the same difference of the bf16-mixed and
float32 IWAE-R steps is their ratio with no fixed cost: a bound on what any cut of the fixed cost can reach.
"""

from __future__ import annotations

import argparse
import json

import torch

from iwae_core.allocator import retain_freed_memory
from iwae_core.benchmark import bare_matmul_fn, median_times, train_step_fn

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeats", type=int, default=30)
args = ap.parse_args()

torch.set_num_threads(args.threads)
retain_freed_memory()
SIZES = {"": {}, " at 1x1": {"batch": 1, "k": 1}}
fns = {}
for suffix, size in SIZES.items():
    fns[f"bare iwae{suffix}"] = bare_matmul_fn("iwae", **size)
    for variant in ("iwae", "iwae-r"):
        for precision in ("float32", "bf16-mixed"):
            fns[f"{variant} {precision}{suffix}"] = train_step_fn(variant, precision=precision, compile="on", **size)
ms = {name: t * 1e3 for name, t in median_times(fns, args.repeats).items()}  # the warm-up compiles each step


def rows_part(name: str) -> float:
    return ms[name] - ms[f"{name} at 1x1"]


ratios = (  # (what, target, with the fixed costs, without them)
    ("compiled IWAE step / bare float32 products", 1.3, ms["iwae float32"] / ms["bare iwae"],
     rows_part("iwae float32") / rows_part("bare iwae")),
    ("compiled IWAE-R step, bf16-mixed / float32", 0.7, ms["iwae-r bf16-mixed"] / ms["iwae-r float32"],
     rows_part("iwae-r bf16-mixed") / rows_part("iwae-r float32")),
)
for name in fns:
    if not name.endswith("at 1x1"):
        print(f"{name:20s} {ms[name]:7.2f} ms   at 1 x 1: {ms[name + ' at 1x1']:6.2f} ms   "
              f"the part that grows with the rows: {rows_part(name):7.2f} ms")
for what, target, whole, without in ratios:
    print(f"{what}: {whole:.3f}, without the fixed costs {without:.3f} (target <= {target})")
print(json.dumps({"threads": args.threads, "ms": {k: round(v, 3) for k, v in ms.items()},
                  "ratios": {what: {"whole": round(whole, 3), "without_fixed_costs": round(without, 3)}
                             for what, _, whole, without in ratios}}))
