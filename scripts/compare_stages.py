"""Follow the three variants of one dataset across training stages, on the same binarised test images.

Each STAGE folder holds iwae/, iwae-r/ and iwae-rrec/, each evaluated with `iwae eval` (test_ll.safetensors
with per-image estimates at tau = 1, and tau = 0 for IWAE-R). Prints, per stage, each variant's test LL,
the paired differences between the variants, IWAE-R's tau = 0 - tau = 1 gap and the mean sigma of its
second decoder layer; then each variant's paired gain from one stage to the next. Differences are
mean +- paired standard error over the images.

Usage: python scripts/compare_stages.py runs/mnist-b20 runs/mnist-s2 runs/mnist-s3
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from iwae_core import checkpoint as ckpt
from iwae_core import zoo
from iwae_core.compare import stale_evaluation
from iwae_core.evaluate import per_image_name

VARIANTS = ("iwae", "iwae-r", "iwae-rrec")


def per_image(stage: Path, variant: str, tau: str = "1") -> torch.Tensor:
    folder = stage / variant
    if stale_evaluation(zoo.select_models([folder])[0]):
        raise SystemExit(f"{folder}: its test results are of other weights; run iwae eval {folder} again")
    stored = ckpt.read_tensors(folder / "test_ll.safetensors")
    if per_image_name(tau) not in stored:
        raise SystemExit(f"{folder} has no per-image results at tau = {tau}; "
                         f"run iwae eval {folder} --noise-scale {tau}")
    return stored[per_image_name(tau)].double()


def paired(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape:
        raise SystemExit("the stages were evaluated on different test images")
    d = a - b
    se = d.std().item() / math.sqrt(len(d))
    return f"{d.mean().item():+.3f} ± {se:.3f} ({d.mean().item() / se:+.1f} SE)"


def decoder_sigma(stage: Path) -> float | None:
    weights = ckpt.read_json(stage / "iwae-r" / "metrics.json").get("test", {}).get("weights", [])
    random = [w for w in weights if w.get("random") and w["layer"].startswith("decoder")]
    return random[-1]["mean_sigma"] if random else None


def main(stages: list[Path]) -> None:
    for stage in stages:
        ll = {v: per_image(stage, v) for v in VARIANTS}
        r0 = per_image(stage, "iwae-r", "0")
        print(f"== {stage}  ({len(ll['iwae'])} test images)")
        means = ", ".join(f"{v} {x.mean().item():.3f}" for v, x in ll.items())
        print(f"   {means}, iwae-r at tau=0 {r0.mean().item():.3f}")
        print(f"   iwae-r - iwae        {paired(ll['iwae-r'], ll['iwae'])}")
        print(f"   iwae-rrec - iwae     {paired(ll['iwae-rrec'], ll['iwae'])}")
        print(f"   iwae-r - iwae-rrec   {paired(ll['iwae-r'], ll['iwae-rrec'])}")
        print(f"   iwae-r tau=0 - tau=1 {paired(r0, ll['iwae-r'])}")
        print(f"   iwae-r mean sigma of the last decoder layer {decoder_sigma(stage)}")
    for before, after in zip(stages, stages[1:], strict=False):
        for v in VARIANTS:
            print(f"gain {before} -> {after}, {v}: {paired(per_image(after, v), per_image(before, v))}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main([Path(a) for a in sys.argv[1:]])
