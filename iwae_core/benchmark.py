"""`iwae bench`: speed and memory of the paper model on this machine, printed as ratios from one run.

- training step (batch 100, k = 25) / the bare matrix products of the same step, per variant;
- IWAE-R step / IWAE step;
- test log-likelihood (S = 5000): images per second, and peak memory for several batch sizes, each
  measured in a fresh process so peaks do not mask each other.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import torch

from .bounds import surrogate_objective
from .config import ModelConfig
from .model import IWAE

BATCH, K = 100, 25


def median_time(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_step_fn(variant: str):
    torch.manual_seed(0)
    model = IWAE(ModelConfig.for_variant(variant))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.bernoulli(torch.full((BATCH, 784), 0.13))

    def step():
        loss = -surrogate_objective(model.log_weights(x, K)).mean() + model.kl_divergence(encoder=False) / 60000
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def bare_matmul_fn():
    """The matrix products of one deterministic IWAE step: forward, and both backward products per layer."""
    shapes = [(BATCH, 784, 400), (BATCH, 400, 80), (BATCH * K, 40, 400), (BATCH * K, 400, 784)]
    mats = [(torch.randn(m, k), torch.randn(k, n), torch.randn(m, n)) for m, k, n in shapes]

    def step():
        for i, (a, w, g) in enumerate(mats):
            a @ w  # forward
            a.T @ g  # weight gradient
            if i != 0:
                g @ w.T  # input gradient (none needed for the data)
    return step


def eval_memory(batch_size: int, S: int, seconds: float | None = None) -> dict:
    """Peak resident memory of log_likelihood on one batch, in a fresh interpreter. With `seconds`, the
    batch is too big to finish: the peak is read after that long (memory is bounded per chunk of rows)."""
    code = f"""
import json, os, resource, threading, time, torch
from iwae_core.config import ModelConfig
from iwae_core.model import IWAE
from iwae_core.evaluate import log_likelihood
m = IWAE(ModelConfig.for_variant('iwae-r'))
x = torch.bernoulli(torch.full(({batch_size}, 784), 0.13))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def report(rate):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({{'base_mb': base, 'peak_mb': peak, 'images_per_s': rate}}), flush=True)
    os._exit(0)
if {seconds!r} is not None:
    threading.Timer({seconds!r}, report, args=(None,)).start()
t = time.perf_counter()
log_likelihood(m, x, S={S}, batch_size={batch_size})
report({batch_size} / (time.perf_counter() - t))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_benchmarks(quick: bool = False) -> dict:
    repeats = 5 if quick else 20
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, paper model 784-400-40, "
          f"batch {BATCH}, k {K}")
    bare = median_time(bare_matmul_fn(), repeats)
    steps = {v: median_time(train_step_fn(v), repeats) for v in ("iwae", "iwae-rrec", "iwae-r")}
    print(f"bare matrix products of one step: {bare * 1e3:.1f} ms")
    for v, t in steps.items():
        print(f"train step {v:10s} {t * 1e3:7.1f} ms   step / bare matmuls = {t / bare:.2f}")
    print(f"iwae-r step / iwae step = {steps['iwae-r'] / steps['iwae']:.2f}   "
          f"iwae-rrec step / iwae step = {steps['iwae-rrec'] / steps['iwae']:.2f}")
    S = 5000
    mem = {}
    for b, seconds in ([(1, None), (100, None)] if quick else [(1, None), (100, None), (1000, 20.0),
                                                                (100_000, 20.0)]):
        mem[b] = m = eval_memory(b, S, seconds)
        rate = f"{m['images_per_s']:.2f} images/s" if m["images_per_s"] else f"stopped after {seconds:.0f} s"
        print(f"test LL S={S}, iwae-r, batch {b:>6}: peak RSS {m['peak_mb']:7.0f} MB "
              f"(+{m['peak_mb'] - m['base_mb']:.0f} MB over the loaded interpreter), {rate}")
    return {"bare_s": bare, "steps_s": steps, "eval": mem}
