"""The training-step ratios of `iwae bench` alone, without its evaluation and memory runs, for comparing commits.

Usage: python bench/step_ratios.py [--threads 1] [--repeats 30] [--source DIR] [--compiled]

Times the bare float32 products of an IWAE step and the Trainer's IWAE, IWAE-R and IWAE-Rrec steps in float32 and
(IWAE, IWAE-R) bf16-mixed, interleaved round by round (`benchmark.median_times`), and prints one JSON line of
medians (ms) and ratios. --source imports iwae_core from another checkout (e.g. `git worktree add /tmp/old HEAD~1`);
alternate runs of two checkouts so that a slow spell of a shared machine does not favour either. --compiled adds
the same steps with the loss compiled (--compile on; each compiles in the warm-up, 10-30 s) and their ratios.
A checkout from before the precision option or the compiled loss gets the steps and ratios it can time (its float32
steps, uncompiled), so the step of the code a target was set on can be timed beside today's on the same host.
"""

from __future__ import annotations

import argparse
import inspect
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
options = inspect.signature(train_step_fn).parameters
# (name, variant, precision, compile) of each step: the plain steps, and with --compiled IWAE's and IWAE-R's compiled
STEPS = [("iwae", "iwae", "float32", "off"), ("iwae bf16-mixed", "iwae", "bf16-mixed", "off"),
         ("iwae-r", "iwae-r", "float32", "off"), ("iwae-r bf16-mixed", "iwae-r", "bf16-mixed", "off"),
         ("iwae-rrec", "iwae-rrec", "float32", "off"),
         ("iwae compiled", "iwae", "float32", "on"), ("iwae bf16-mixed compiled", "iwae", "bf16-mixed", "on"),
         ("iwae-r compiled", "iwae-r", "float32", "on"), ("iwae-r bf16-mixed compiled", "iwae-r", "bf16-mixed", "on")]
fns = {"bare iwae": bare_matmul_fn("iwae")}
for name, variant, precision, compile in STEPS:
    settings = {"precision": precision, "compile": compile}
    predates = any(key not in options and value not in ("float32", "off") for key, value in settings.items())
    if compile == "on" and not args.compiled or predates:
        continue  # not asked for, or needs an option this checkout predates (whose steps were float32, uncompiled)
    fns[name] = train_step_fn(variant, **{key: value for key, value in settings.items() if key in options})
ms = {name: t * 1e3 for name, t in median_times(fns, args.repeats).items()}
# (ratio, numerator, denominator), each given where both were timed
RATIOS = (("iwae_step_over_bare_matmuls", "iwae", "bare iwae"),
          ("iwae_r_step_over_iwae_step", "iwae-r", "iwae"),
          ("iwae_bf16_mixed_step_over_float32_step", "iwae bf16-mixed", "iwae"),
          ("iwae_r_bf16_mixed_step_over_float32_step", "iwae-r bf16-mixed", "iwae-r"),
          ("iwae_compiled_step_over_bare_matmuls", "iwae compiled", "bare iwae"),
          ("iwae_r_compiled_step_over_iwae_compiled_step", "iwae-r compiled", "iwae compiled"),
          ("iwae_bf16_mixed_compiled_over_float32_compiled", "iwae bf16-mixed compiled", "iwae compiled"),
          ("iwae_r_bf16_mixed_compiled_over_float32_compiled", "iwae-r bf16-mixed compiled", "iwae-r compiled"))
ratios = {name: ms[num] / ms[den] for name, num, den in RATIOS if num in ms and den in ms}
source = str(iwae_core.__file__).removesuffix("/iwae_core/__init__.py")
print(json.dumps({"source": source, "threads": args.threads, "ms": {k: round(v, 2) for k, v in ms.items()},
                  "ratios": {k: round(v, 3) for k, v in ratios.items()}}))
