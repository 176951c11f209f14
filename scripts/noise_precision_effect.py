"""How much the bfloat16 noise path moves a trained IWAE-R's bound: L_25 per test image with the same
draws, the noise-path products once in float32 and once in bfloat16 (the Trainer's `auto` on a CPU with
native bfloat16 products); prints the mean and largest absolute difference.

Usage: IWAE_DATA_DIR=/path/to/data python scripts/noise_precision_effect.py [MODEL_DIR] [N]
       (defaults: pretrained/mnist-iwae-r, the first 200 test images)
"""

from __future__ import annotations

import sys

import torch

from iwae_core import checkpoint as ckpt
from iwae_core.data import load_dataset
from iwae_core.evaluate import binarized_test_images
from iwae_core.maths.bounds import iwae_bound


def main(folder: str, n: int) -> None:
    model, run = ckpt.load_model(folder)
    x = binarized_test_images(load_dataset(run.train.dataset), n)
    bounds = {}
    with torch.no_grad():
        for dtype in (None, torch.bfloat16):  # None: in the input's dtype, float32
            model.set_noise_precision(dtype)
            torch.manual_seed(0)
            bounds[dtype] = iwae_bound(model.log_weights(x, 25))
    diff = (bounds[torch.bfloat16] - bounds[None]).abs()
    print(f"{folder}, first {n} test images: L_25 {bounds[None].mean().item():.3f}; "
          f"|bfloat16 - float32| mean {diff.mean().item():.2e}, max {diff.max().item():.2e} nats")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "pretrained/mnist-iwae-r", int(args[1]) if len(args) > 1 else 200)
