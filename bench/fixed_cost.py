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
from iwae_core.benchmark import RATIOS, bare_matmul_fn, medians, ratios_of, round_times, train_step_fn

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeats", type=int, default=30)
args = ap.parse_args()

torch.set_num_threads(args.threads)
retain_freed_memory()
# the full-size functions under `iwae bench`'s own names, so that its RATIOS and ratios_of apply to them
SIZES = {"": {}, " at 1x1": {"batch": 1, "k": 1}}
fns = {}
for suffix, size in SIZES.items():
    fns[f"bare iwae{suffix}"] = bare_matmul_fn("iwae", **size)
    for variant in ("iwae", "iwae-r"):
        fns[f"{variant} compiled{suffix}"] = train_step_fn(variant, compile="on", **size)
        fns[f"{variant} bf16-mixed compiled{suffix}"] = train_step_fn(variant, precision="bf16-mixed", compile="on",
                                                                      **size)
rounds = round_times(fns, args.repeats)  # the warm-up compiles each step
ms = {name: t * 1e3 for name, t in medians(rounds).items()}
whole, _ = ratios_of(rounds)


def rows_part(name: str) -> float:
    return ms[name] - ms[f"{name} at 1x1"]


# the two targets missed on two threads, each with and without the fixed costs
TARGETS = ("iwae_compiled_step_over_bare_matmuls", "iwae_r_bf16_mixed_compiled_step_over_float32_compiled_step")
ratios = {name: (target, whole[name], rows_part(num) / rows_part(den))
          for name, num, den, target in RATIOS if name in TARGETS}
for name in fns:
    if not name.endswith("at 1x1"):
        print(f"{name:28s} {ms[name]:7.2f} ms   at 1 x 1: {ms[name + ' at 1x1']:6.2f} ms   "
              f"the part that grows with the rows: {rows_part(name):7.2f} ms")
for name, (target, with_fixed, without) in ratios.items():
    print(f"{name}: {with_fixed:.3f}, without the fixed costs {without:.3f} (target <= {target})")
print(json.dumps({"threads": args.threads, "ms": {k: round(v, 3) for k, v in ms.items()},
                  "ratios": {name: {"whole": round(with_fixed, 3), "without_fixed_costs": round(without, 3)}
                             for name, (_, with_fixed, without) in ratios.items()}}))
