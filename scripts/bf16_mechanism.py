"""Which way to run the mean path's products in bfloat16: torch.autocast or hand-written casts?

Times one paper-preset training step (batch 100, k = 25, Adam, KL) of IWAE and IWAE-R on this CPU in
float32, with hand-written casts (BayesLinear.mean_dtype, ops.low_precision_linear) and with
torch.autocast("cpu", bfloat16) around the forward, each layer's bfloat16 output widened to float32 so the
activations and the log-likelihood stay float32 as they must. Medians, interleaved rounds (bench's timer).

    PYTHONPATH=. python scripts/bf16_mechanism.py [--repeats 20]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from iwae_core.benchmark import median_times, train_step_fn
from iwae_core.maths import layers

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=20)
args = parser.parse_args()

plain_linear = layers.BayesLinear.__dict__["_linear"]  # the staticmethod itself


def autocast_linear(x, w, b, dtype):
    return F.linear(x, w, b).float()  # inside autocast: bfloat16 inputs and output, widened here


def autocast_step(variant: str):
    step = train_step_fn(variant, precision="float32")

    def run():
        layers.BayesLinear._linear = staticmethod(autocast_linear)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return step()
        finally:
            layers.BayesLinear._linear = plain_linear
    return run


fns = {}
for variant in ("iwae", "iwae-r"):
    fns[f"{variant} float32"] = train_step_fn(variant, precision="float32")
    fns[f"{variant} hand-written casts"] = train_step_fn(variant, precision="bf16-mixed")
    fns[f"{variant} autocast"] = autocast_step(variant)
times = median_times(fns, args.repeats)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
for name, t in times.items():
    base = times[name.split()[0] + " float32"]
    print(f"{name:28s} {t * 1e3:7.1f} ms  / float32 step = {t / base:.2f}")
