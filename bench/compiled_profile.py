"""Where a compiled training step's time goes that its generated graphs do not take, on N threads.

Usage: python bench/compiled_profile.py [--threads 2] [--variant iwae] [--precision float32] [--steps 20] [--kernels]

`iwae bench` times the compiled step against its bare matrix products; `bench/step_breakdown.py` splits the
uncompiled step by ATen call. This profiles the compiled step (`iwae bench`'s setup: the Trainer's own step, paper
model, batch 100, k = 25) with torch.profiler: the time inside the compiled forward and backward graphs (their
products and generated loops) against each ATen call and Python region outside them (Adam, the draws, the opaque
tanh, the NaN guard, dynamo's guard check), per step. The bare products and the whole step are timed first, in
the same run, so the remainder has a scale. With --kernels, the graphs' own items are listed too: each generated
loop by name and the products (aoti_torch_cpu_mm_out, _addmm_out), from inductor's kernel profile.
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from iwae_core.allocator import retain_freed_memory
from iwae_core.benchmark import bare_matmul_fn, median_times, train_step_fn

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--variant", default="iwae", choices=["iwae", "iwae-r", "iwae-rrec"])
ap.add_argument("--precision", default="float32", choices=["float32", "bf16-mixed"])
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--top", type=int, default=12)
ap.add_argument("--kernels", action="store_true", help="also list the items inside the compiled graphs")
args = ap.parse_args()
if args.kernels:
    torch._inductor.config.cpp.enable_kernel_profile = True  # each generated loop and product a profiler event

torch.set_num_threads(args.threads)
retain_freed_memory()
step = train_step_fn(args.variant, precision=args.precision, compile="on")  # compiles in median_times' warm-up
ms = {name: t * 1e3 for name, t in median_times({"bare": bare_matmul_fn("iwae"), "step": step}, args.steps).items()}
print(f"{args.variant}, {args.precision}, compiled, {args.threads} threads: step {ms['step']:.2f} ms, bare float32 "
      f"IWAE products {ms['bare']:.2f} ms, ratio {ms['step'] / ms['bare']:.3f}")

with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(args.steps):
        step()
self_ms = collections.Counter()
for event in prof.key_averages():
    self_ms[event.key] += event.self_cpu_time_total / 1e3 / args.steps
INSIDE = ("## Call CompiledFxGraph", "graph_", "aoti_torch_")  # the graphs' wrapper, generated loops, products
graphs = sum(v for k, v in self_ms.items() if k.startswith(INSIDE))
outside = {k: v for k, v in self_ms.items() if not k.startswith(INSIDE)}
print(f"per step under the profiler: {sum(self_ms.values()):.2f} ms, of it in the compiled graphs {graphs:.2f} ms "
      f"and outside them {sum(outside.values()):.2f} ms; the largest items outside (self time, ms per step):")
for name, v in sorted(outside.items(), key=lambda kv: -kv[1])[:args.top]:
    print(f"  {v:6.3f}  {name}")
if args.kernels:
    inside = {k: v for k, v in self_ms.items() if k.startswith(INSIDE)}
    print("the largest items inside the compiled graphs (ms per step):")
    for name, v in sorted(inside.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {v:6.3f}  {name[:100]}")
