"""What bf16-mixed buys a real training run: float32 and bf16-mixed steps on MNIST batches, timed as a run takes them.

Usage: python bench/train_ratio.py [--threads 2] [--variants iwae iwae-r] [--compile off on] [--block 20] [--blocks 20]
                                   [--data-dir DIR]

`iwae bench` times each step on one fixed batch, one call per function per round, its seventeen functions in a
shuffled order, so every step starts with the caches full of another model's buffers. A training run repeats one
step over fresh batches. Here, per variant and compile setting, a float32 and a bf16-mixed Trainer (paper preset:
batch 100, k = 25, the KL over the 59,600 training images) train on the same real binarised batches, in alternating
blocks of `--block` consecutive steps (the first step of each block untimed, the order of the two swapped every
block); each block gives one ratio, bf16-mixed over float32, of mean step times. Prints the ratio of the medians,
the quartiles of the per-block ratios, and one JSON line. Compiled Trainers compile in the warm-up (10-30 s each).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch

from iwae_core.benchmark import paper_trainer
from iwae_core.data import load_dataset
from iwae_core.train import Trainer

PRECISIONS = ("float32", "bf16-mixed")


def batches(t: Trainer):
    """The Trainer's own binarised batches, epoch after epoch."""
    while True:
        for _, _, x in t.batches.epoch():
            yield x


def block_ratios(variant: str, compile: str, data: dict, threads: int, block: int, blocks: int) -> dict:
    trainers = {p: paper_trainer(variant, data, threads=threads, precision=p, compile=compile) for p in PRECISIONS}
    feeds = {p: batches(t) for p, t in trainers.items()}
    for p, t in trainers.items():  # warm-up (and compilation)
        for x in itertools.islice(feeds[p], 5):
            t.train_step(x)
    ms = {p: [] for p in PRECISIONS}
    for b in range(blocks):
        for p in PRECISIONS if b % 2 == 0 else PRECISIONS[::-1]:
            xs = list(itertools.islice(feeds[p], block))
            trainers[p].train_step(xs[0])  # the block's first step refills the caches: untimed
            t0 = time.perf_counter()
            for x in xs[1:]:
                trainers[p].train_step(x)
            ms[p].append((time.perf_counter() - t0) / (block - 1) * 1e3)
    per_block = [b / f for f, b in zip(ms["float32"], ms["bf16-mixed"], strict=True)]
    q1, _, q3 = statistics.quantiles(per_block, n=4)
    median = {p: statistics.median(v) for p, v in ms.items()}
    return {"float32_ms": round(median["float32"], 2), "bf16_mixed_ms": round(median["bf16-mixed"], 2),
            "ratio": round(median["bf16-mixed"] / median["float32"], 3), "quartiles": [round(q1, 3), round(q3, 3)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["iwae", "iwae-r"], choices=["iwae", "iwae-r", "iwae-rrec"])
    ap.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    ap.add_argument("--block", type=int, default=20, help="consecutive steps per block (the first untimed)")
    ap.add_argument("--blocks", type=int, default=20, help="blocks per precision")
    ap.add_argument("--data-dir", help="the datasets' folder (default: IWAE_DATA_DIR)")
    args = ap.parse_args()
    if args.block < 2 or args.blocks < 2:
        ap.error("--block and --blocks must be at least 2")
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", args.data_dir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MNIST batches, paper preset, "
          f"{args.blocks} blocks of {args.block} steps per precision")
    results = {}
    for variant, compile in itertools.product(args.variants, args.compile):
        mode = "compiled" if compile == "on" else "plain"
        r = results[f"{variant} {mode}"] = block_ratios(variant, compile, data, args.threads, args.block, args.blocks)
        print(f"{variant:9s} {mode:8s} float32 {r['float32_ms']:6.1f} ms, "
              f"bf16-mixed {r['bf16_mixed_ms']:6.1f} ms: bf16-mixed / float32 {r['ratio']:.3f} "
              f"(per block {r['quartiles'][0]:.3f}-{r['quartiles'][1]:.3f})", flush=True)
    print(json.dumps({"threads": args.threads, "block": args.block, "blocks": args.blocks, "results": results}))


if __name__ == "__main__":
    main()
