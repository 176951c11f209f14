"""Where does test-time weight noise cost an IWAE-R? Switch off the noise of the output weights of the
rarely inked pixels and see how much of the gap between tau = 1 and tau = 0 comes back.

For the model's last decoder layer, groups the output pixels by their mean ink on the training set and
prints the mean sigma of each group's weights; then estimates the test LL (S joint draws, the first N
binarised test images, the same seed for every estimate) at tau = 1, at tau = 0, and at tau = 1 with
sigma set to 0 for the weights and biases of the pixels with mean ink below 0.001 and below 0.05.
Differences are paired (same images), mean +- paired standard error.

Usage: IWAE_DATA_DIR=/path/to/data python scripts/decoder_noise_diagnostic.py [MODEL_DIR] [N] [S]
       (defaults: pretrained/mnist-iwae-r, 1000 images, S = 5000)
"""

from __future__ import annotations

import math
import sys

import torch

from iwae_core import checkpoint as ckpt
from iwae_core.data import load_dataset
from iwae_core.evaluate import binarized_test_images, log_likelihood

OFF = -40.0  # a rho whose softplus (sigma) is about 4e-18


def estimate(folder: str, x: torch.Tensor, S: int, tau: float, quiet: torch.Tensor | None = None) -> torch.Tensor:
    model, _ = ckpt.load_model(folder)
    if quiet is not None:
        last = model.decoder.layers[-1]
        with torch.no_grad():
            last.weight_rho[quiet] = OFF
            last.bias_rho[quiet] = OFF
    torch.manual_seed(0)
    return log_likelihood(model, x, S=S, tau=tau).double()


def paired(a: torch.Tensor, b: torch.Tensor) -> str:
    d = a - b
    return f"{d.mean().item():+.3f} ± {d.std().item() / math.sqrt(len(d)):.3f}"


def main(folder: str, n: int, S: int) -> None:
    model, run = ckpt.load_model(folder)
    if not run.model.random_decoder:
        raise SystemExit(f"{folder} has no random decoder weights")
    data = load_dataset(run.train.dataset)
    ink = data["train"].float().mean(0)
    sigma = model.decoder.layers[-1].weight_sigma.detach()
    for lo, hi in [(0, 0.001), (0.001, 0.05), (0.05, 0.2), (0.2, 1.01)]:
        rows = (ink >= lo) & (ink < hi)
        print(f"pixels with mean ink in [{lo}, {hi}): {int(rows.sum())}, mean sigma of their weights "
              f"{sigma[rows].mean().item():.4f}")
    x = binarized_test_images(data, n)
    one, zero = estimate(folder, x, S, 1.0), estimate(folder, x, S, 0.0)
    print(f"first {n} test images, S = {S}: tau = 1 {one.mean().item():.3f}, tau = 0 {zero.mean().item():.3f}")
    print(f"tau = 0 - tau = 1: {paired(zero, one)}")
    for below in (0.001, 0.05):
        quiet = ink < below
        off = estimate(folder, x, S, 1.0, quiet)
        print(f"tau = 1 with sigma 0 for the {int(quiet.sum())} pixels with mean ink < {below}, "
              f"minus tau = 1: {paired(off, one)}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "pretrained/mnist-iwae-r", int(args[1]) if len(args) > 1 else 1000,
         int(args[2]) if len(args) > 2 else 5000)
