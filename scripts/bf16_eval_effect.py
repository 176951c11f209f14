"""What bfloat16 evaluation would change: the test log-likelihood (S joint draws per image) of a trained
model with every product in float32 and with every product bf16-mixed (bfloat16 inputs, float32
accumulation and results; the training option --precision bf16-mixed), on the same draws, beside the
Monte-Carlo noise of the estimate itself (a second float32 estimate with other draws).

Prints the mean and largest per-image |bf16 - float32|, the mean signed difference, and the per-image
Monte-Carlo sd (the sd of the two float32 estimates' difference / sqrt 2); seconds per pass for reference
(not a benchmark: `iwae bench` is).

Usage: IWAE_DATA_DIR=/path/to/data PYTHONPATH=. python scripts/bf16_eval_effect.py [MODEL_DIR] [N] [S]
       (defaults: pretrained/mnist-iwae-r, the first 200 test images, S = 1000)
"""

from __future__ import annotations

import math
import sys
import time

import torch

from iwae_core import checkpoint as ckpt
from iwae_core.data import load_dataset
from iwae_core.evaluate import binarized_test_images, log_likelihood


def estimate(model, x: torch.Tensor, S: int, dtype: torch.dtype | None, seed: int) -> tuple[torch.Tensor, float]:
    model.set_mean_precision(dtype)
    model.set_noise_precision(dtype)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    ll = log_likelihood(model, x, S=S)
    return ll, time.perf_counter() - t0


def main(folder: str, n: int, S: int) -> None:
    model, run = ckpt.load_model(folder)
    x = binarized_test_images(load_dataset(run.train.dataset), n)
    f32, t32 = estimate(model, x, S, None, seed=0)
    bf16, t16 = estimate(model, x, S, torch.bfloat16, seed=0)  # the same draws: the RNG is used alike
    other, _ = estimate(model, x, S, None, seed=1)
    diff = bf16 - f32
    mc_sd = ((other - f32).std() / math.sqrt(2)).item()
    print(f"{folder}, first {n} test images, S = {S}, {torch.get_num_threads()} threads")
    print(f"test LL float32 {f32.mean().item():.3f}, bf16-mixed {bf16.mean().item():.3f} "
          f"(second float32 estimate, other draws: {other.mean().item():.3f})")
    print(f"per image |bf16 - float32|: mean {diff.abs().mean().item():.4f}, max {diff.abs().max().item():.4f} "
          f"nats; mean signed difference {diff.mean().item():+.4f} nats")
    print(f"Monte-Carlo sd of one image's estimate: {mc_sd:.4f} nats (of the {n}-image mean: "
          f"{mc_sd / math.sqrt(n):.4f}); seconds per pass: float32 {t32:.1f}, bf16-mixed {t16:.1f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "pretrained/mnist-iwae-r", int(args[1]) if len(args) > 1 else 200,
         int(args[2]) if len(args) > 2 else 1000)
