"""Training steps with subnormal floats kept against flushed to zero (the Trainer's mode), on trained models.

Usage: IWAE_DATA_DIR=DIR python bench/subnormals.py [--threads 1] [--steps 40] [--batch-size 100]

Each shipped MNIST model (pretrained/mnist-*) continues training on real, dynamically binarised MNIST batches,
its own settings but the batch size; its steps alternate between the step as it ran before
(Trainer._train_step, subnormals kept) and the Trainer's step (train_step, inside device.subnormals_flushed),
on the same trainer, so both see the same model as it moves. Prints the median of each, their ratio, and how
many entries of a step's tensors were subnormal (counted on one extra step, kept). The first four steps are
not timed. Every number comes from this one run; the machine's other load shows in them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from iwae_core import checkpoint as ckpt
from iwae_core import data
from iwae_core.device import SMALLEST_NORMAL
from iwae_core.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("mnist-iwae", "mnist-iwae-rrec", "mnist-iwae-r")


class CountSubnormals(TorchDispatchMode):
    """Counts the subnormal entries of every floating-point result of the ops run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.subnormal = self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(o) and o.is_floating_point() and o.numel():
                self.subnormal += int(((o != 0) & (o.abs() < SMALLEST_NORMAL)).sum())
                self.total += o.numel()
        return out


def bench(folder: Path, train: torch.Tensor, steps: int, batch_size: int) -> dict:
    model, _ = ckpt.load_model(folder)
    run = ckpt.load_run_config(folder)
    run.train.batch_size, run.train.init_from = batch_size, None
    trainer = Trainer(run, data={"train": train, "valid": train[:100]})
    trainer.model.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"kept": [], "flushed": []}
    for i in range(steps + 4):
        x = data.binarize(train[torch.randint(len(train), (batch_size,), generator=generator)])
        mode = "flushed" if i % 2 else "kept"
        t0 = time.perf_counter()
        (trainer.train_step if mode == "flushed" else trainer._train_step)(x)
        if i >= 4:
            times[mode].append(time.perf_counter() - t0)
    with CountSubnormals() as count:
        trainer._train_step(x)
    return {**{mode: statistics.median(ts) for mode, ts in times.items()}, "subnormal": count.subnormal,
            "total": count.total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per model, half of them each way")
    ap.add_argument("--batch-size", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = data.load_dataset("mnist")["train"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} timed steps per model, alternating")
    for name in MODELS:
        r = bench(ROOT / "pretrained" / name, train, args.steps, args.batch_size)
        print(f"  {name:16s} kept {r['kept'] * 1e3:7.1f} ms   flushed {r['flushed'] * 1e3:7.1f} ms   "
              f"kept / flushed = {r['kept'] / r['flushed']:.2f}   subnormal entries of one step's tensors: "
              f"{r['subnormal']:,} of {r['total']:,}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
