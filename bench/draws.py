"""What the training step's random draws cost, and what the ways around torch's one serial generator would save.

Usage: python bench/draws.py [--threads 2] [--repeats 100]

An IWAE-R step of the paper model (batch 100, k = 25) draws about 1.75 million standard normals: the encoder's local
reparameterisation 25 x 100 x (400 + 80), the decoder's Flipout weight noise 40 x 400 + 400 x 784 and bias noise,
and the latents 25 x 100 x 40. torch's CPU generator (mt19937) draws them on one thread whatever the thread count.
For the sizes of those draws this times, in one run:
- torch.randn, and its parts: uniforms (torch.rand) and raw 32-bit words (random_), so what Box-Muller adds;
- the same draw split in two halves drawn on two generators by two Python threads at once (torch releases the GIL
  inside the op), the way a parallel draw would work, with the hand-over included;
- the two-thread draw of a million right after an element-wise op that ran on torch's OpenMP threads, as it would
  come in a step or an evaluation pass: libgomp's idle workers spin for a while after each parallel region and
  hold the core the second drawing thread needs;
- a compiled `mean + std * randn` with inductor's own counter-based generator (fallback_random=False) against the
  same with torch's generator, on the encoder's first layer's [25, 100, 400];
- the project's own draws (iwae_core/maths/rng.py: Philox4x32-10, vectorised, on torch's OpenMP threads), what the
  model draws since, beside torch.randn, alone and right after a parallel region.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import torch

from iwae_core.benchmark import median_times
from iwae_core.maths import rng

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeats", type=int, default=100)
args = ap.parse_args()
torch.set_num_threads(args.threads)


def ms(fn) -> float:
    """Median milliseconds per call over --repeats calls, after five warm-up calls."""
    return median_times({"fn": fn}, args.repeats, warmup=5)["fn"] * 1e3


pool = ThreadPoolExecutor(2)
generators = [torch.Generator().manual_seed(seed) for seed in (1, 2)]


def two_threads(out: torch.Tensor) -> torch.Tensor:
    halves = out.view(-1).chunk(2)
    futures = [pool.submit(half.normal_, generator=g) for half, g in zip(halves, generators, strict=True)]
    for f in futures:
        f.result()
    return out


SIZES = {"encoder layer 1, 25 x 100 x 400": 1_000_000, "decoder weight noise, 784 x 400": 313_600,
         "encoder layer 2, 25 x 100 x 80": 200_000, "latents, 25 x 100 x 40": 100_000,
         "decoder bias noise, 100 x 400": 40_000}
print(f"{args.threads} threads; ms per draw (median of {args.repeats}); the project's draws: {rng.backend()}")
print(f"{'draw':36s} {'randn':>7s} {'rand':>7s} {'words':>7s} {'2 gens':>7s} {'philox':>7s}   ns per normal: "
      "randn, philox")
for name, n in SIZES.items():
    buf, words = torch.empty(n), torch.empty(n, dtype=torch.int32)
    t = {"randn": ms(lambda n=n: torch.randn(n)), "rand": ms(lambda n=n: torch.rand(n)),
         "words": ms(lambda w=words: w.random_()), "2 gens": ms(lambda b=buf: two_threads(b)),
         "philox": ms(lambda n=n: rng.randn(n))}
    print(f"{name:36s} " + " ".join(f"{v:7.3f}" for v in t.values())
          + f"   {t['randn'] * 1e6 / n:.2f}, {t['philox'] * 1e6 / n:.2f}")


other = torch.randn(1_000_000)
buf = torch.empty(1_000_000)
alone, after = ms(lambda: two_threads(buf)), ms(lambda: (other.add_(1.0), two_threads(buf)))
region = ms(lambda: other.add_(1.0))
print(f"a million on two generators: {alone:.3f} ms alone, {after - region:.3f} ms right after a parallel add_ "
      f"({region:.3f} ms, subtracted); on torch's one generator {ms(lambda: buf.normal_()):.3f} ms; philox "
      f"{ms(lambda: (other.add_(1.0), rng.randn(1_000_000))) - region:.3f} ms right after the add_")


def reparameterised(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return mean + std * torch.randn(25, *mean.shape[1:])


mean, std = torch.randn(1, 100, 400), torch.rand(1, 100, 400)
for fallback in (True, False):
    fn = torch.compile(reparameterised, options={"fallback_random": fallback, "cpp_wrapper": True})
    which = "torch's generator" if fallback else "inductor's own generator"
    print(f"compiled mean + std * randn on [25, 100, 400], {which}: {ms(lambda f=fn: f(mean, std)):.3f} ms")
