"""The training-step ratios of `iwae bench` alone, without its evaluation and memory runs, for comparing commits.

Usage: python bench/step_ratios.py [--threads 1] [--repeats 30] [--source DIR] [--compiled]

Times the bare float32 products of an IWAE step and the Trainer's IWAE, IWAE-R and IWAE-Rrec steps in float32 and
(IWAE, IWAE-R) bf16-mixed, interleaved round by round (`benchmark.median_times`), and prints one JSON line of
medians (ms) and ratios. --source imports iwae_core from another checkout (e.g. `git worktree add /tmp/old HEAD~1`);
alternate runs of two checkouts so that a slow spell of a shared machine does not favour either. --compiled adds
the same steps with the loss compiled (--compile on; each compiles in the warm-up, 10-30 s) and their ratios.
"""

from __future__ import annotations

import argparse
import json
import sys

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--repeats", type=int, default=30)
ap.add_argument("--source", help="a checkout whose iwae_core is timed (default: the installed one)")
ap.add_argument("--compiled", action="store_true", help="also time the steps with the loss compiled")
args = ap.parse_args()
if args.source:
    sys.path.insert(0, args.source)

import torch  # noqa: E402

import iwae_core  # noqa: E402
from iwae_core.allocator import retain_freed_memory  # noqa: E402
from iwae_core.benchmark import bare_matmul_fn, median_times, train_step_fn  # noqa: E402

torch.set_num_threads(args.threads)
retain_freed_memory()
fns = {"bare iwae": bare_matmul_fn("iwae"), "iwae": train_step_fn("iwae"),
       "iwae bf16-mixed": train_step_fn("iwae", precision="bf16-mixed"), "iwae-r": train_step_fn("iwae-r"),
       "iwae-r bf16-mixed": train_step_fn("iwae-r", precision="bf16-mixed"), "iwae-rrec": train_step_fn("iwae-rrec")}
if args.compiled:
    for v in ("iwae", "iwae-r"):
        fns[f"{v} compiled"] = train_step_fn(v, compile="on")
        fns[f"{v} bf16-mixed compiled"] = train_step_fn(v, precision="bf16-mixed", compile="on")
ms = {name: t * 1e3 for name, t in median_times(fns, args.repeats).items()}
ratios = {"iwae_step_over_bare_matmuls": ms["iwae"] / ms["bare iwae"],
          "iwae_r_step_over_iwae_step": ms["iwae-r"] / ms["iwae"],
          "iwae_bf16_mixed_step_over_float32_step": ms["iwae bf16-mixed"] / ms["iwae"],
          "iwae_r_bf16_mixed_step_over_float32_step": ms["iwae-r bf16-mixed"] / ms["iwae-r"]}
if args.compiled:
    ratios.update({"iwae_compiled_step_over_bare_matmuls": ms["iwae compiled"] / ms["bare iwae"],
                   "iwae_r_compiled_step_over_iwae_compiled_step": ms["iwae-r compiled"] / ms["iwae compiled"],
                   "iwae_bf16_mixed_compiled_over_float32_compiled":
                       ms["iwae bf16-mixed compiled"] / ms["iwae compiled"],
                   "iwae_r_bf16_mixed_compiled_over_float32_compiled":
                       ms["iwae-r bf16-mixed compiled"] / ms["iwae-r compiled"]})
source = str(iwae_core.__file__).removesuffix("/iwae_core/__init__.py")
print(json.dumps({"source": source, "threads": args.threads, "ms": {k: round(v, 2) for k, v in ms.items()},
                  "ratios": {k: round(v, 3) for k, v in ratios.items()}}))
