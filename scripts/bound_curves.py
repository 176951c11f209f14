"""Precompute the Bound vs k curves of model folders, so the dashboard's view of k up to 5000 is instant.

Usage: IWAE_DATA_DIR=DIR python scripts/bound_curves.py pretrained/mnist-iwae pretrained/mnist-iwae-r ...
Writes bound_curves.safetensors into each folder: L_k per image for every k of the grid up to the largest k of
100 (the page's default) and of 5000 (one pass of k_max draws per image, grouped as the page groups them), tau = 0
and 1, the first 100 test images, seed 0: the page's defaults. The page reads them only for exactly these
settings and these weights; retraining makes them unused.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dashboard.compute import K_GRID
from iwae_core import checkpoint, curves, data, evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--images", type=int, default=100, help="the first N test images (the page's default: 100)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for folder in args.folders:
        _, run = checkpoint.load_model(folder)
        d = data.load_dataset(run.train.dataset, download=False)
        x = evaluate.binarized_test_images(d, args.images)
        t0 = time.perf_counter()
        path = curves.write_bound_curves(folder, x, list(K_GRID), seed=args.seed, source=d["source"])
        print(f"{path}: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
