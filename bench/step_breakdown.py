"""Where a training step's time goes: matrix products against everything else, per variant and precision.

Usage: python bench/step_breakdown.py [--threads 1] [--steps 10] [--top 12]

`iwae bench` compares whole steps with their bare matrix products; this says what the rest is. Each step of
`iwae bench`'s setup (the Trainer's own step, paper model, batch 100, k = 25) runs under a dispatch mode that
times every ATen call: the products (mm, addmm, bmm, matmul), the normal and sign draws, and the rest (the
element-wise passes: likelihood, activations, casts, KL, Adam). Per-call timing adds Python overhead to each
op, so the step under the mode is slower than a plain step, which is timed alongside; the shares, not the
absolute numbers, are the result. Prints, for each variant and precision, the step, the three shares, and the
most expensive non-product ops, all from this one run.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from iwae_core.allocator import retain_freed_memory
from iwae_core.benchmark import bare_matmul_fn, train_step_fn

PRODUCTS = ("aten.mm.", "aten.addmm.", "aten.bmm.", "aten.baddbmm.", "aten.matmul.")
DRAWS = ("aten.randn", "aten.normal", "aten.randint", "aten.bernoulli", "aten.uniform", "aten.random_")


class OpTimer(TorchDispatchMode):
    """Seconds per ATen op, keyed by (op, shapes of its first two tensor arguments, their dtypes)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        tensors = [a for a in args if isinstance(a, torch.Tensor)][:2]
        key = (str(func), tuple(tuple(a.shape) for a in tensors), tuple(str(a.dtype).removeprefix("torch.")
                                                                        for a in tensors))
        self.seconds[key] += time.perf_counter() - t0
        return out


def kind(op: str) -> str:
    return "products" if op.startswith(PRODUCTS) else "draws" if op.startswith(DRAWS) else "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per case (after 3 warm-up steps)")
    ap.add_argument("--top", type=int, default=12, help="non-product ops listed per case")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 100, k 25, {args.steps} steps per case")
    cases = [("iwae", "float32"), ("iwae", "bf16-mixed"), ("iwae-r", "float32"), ("iwae-r", "bf16-mixed")]
    for variant, precision in cases:
        step = train_step_fn(variant, precision=precision)
        bare_dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
        bare = bare_matmul_fn(variant, bare_dtype)
        for _ in range(3):
            step()
        plain, bare_times = [], []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            bare()
            bare_times.append(time.perf_counter() - t0)
        timer = OpTimer()
        t0 = time.perf_counter()
        with timer:
            for _ in range(args.steps):
                step()
        under_mode = (time.perf_counter() - t0) / args.steps
        per_kind = collections.Counter()
        for (op, _, _), s in timer.seconds.items():
            per_kind[kind(op)] += s / args.steps
        ops = sum(per_kind.values())
        print(f"\n{variant} {precision}: step {statistics.median(plain) * 1e3:.1f} ms "
              f"(the variant's bare products, all in {str(bare_dtype).removeprefix('torch.')}: "
              f"{statistics.median(bare_times) * 1e3:.1f} ms); under the op timer "
              f"{under_mode * 1e3:.1f} ms, of which inside ops {ops * 1e3:.1f} ms:")
        for name in ("products", "draws", "other"):
            print(f"  {name:9s} {per_kind[name] * 1e3:7.1f} ms  {per_kind[name] / ops:5.1%} of the time inside ops")
        print("  the largest of the rest (ms per step):")
        rest = [(s, key) for key, s in timer.seconds.items() if kind(key[0]) != "products"]
        for s, (op, shapes, dtypes) in sorted(rest, reverse=True)[:args.top]:
            print(f"    {s / args.steps * 1e3:6.2f}  {op.removeprefix('aten.'):28s} {shapes} {dtypes}")


if __name__ == "__main__":
    main()
