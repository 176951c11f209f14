"""Whether a training run compiles its loss with torch.compile, and the compiled loss itself.

Compiling fuses the element-wise work around the matrix products (the likelihood's passes over
[k, batch, 784], tanh, the noise path's sign flips and casts, the KL) into a few generated loops; the
products stay with oneDNN/MKL (cuBLAS on CUDA). On this project's CPU, one thread, an IWAE step went from about
1.6x to 1.27-1.29x its bare matrix products (a fifth faster) and an IWAE-R step became a quarter faster
(docs/benchmarks.md, with the later changes that reached those figures). The price is the compilation, 10-30 s
in the first step (a few seconds when inductor's on-disk cache already holds the graph).

TrainConfig.compile: off, on, or auto, which compiles only where it pays: a run planned for at least
COMPILE_MIN_ROWS rows (steps x batch x k, about three MNIST epochs at k = 25), on CPU with a C++ compiler or
on CUDA, in a single process. Tests and short live runs stay uncompiled and start at once.

The compiled loss draws its random numbers from torch's own generator (inductor's fallback_random), and the
noise's Philox draws (maths/rng.py) are opaque ops of the graph keyed from it, so a compiled step draws exactly
what the plain one draws: the same run resumes exactly, and switching compilation
on or off changes the numbers only by the fused loops' rounding (tests/test_compiled.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import torch

from .maths import ops, rng

COMPILE_MIN_ROWS = 5_000_000


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would use on CPU ($CXX, else c++, g++ or clang++ on the PATH), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def compile_unavailable(device: torch.device, world_size: int = 1) -> str | None:
    """Why the training step cannot be compiled here, or None where it can."""
    if world_size > 1:
        return "a distributed run is not compiled"
    if device.type == "cpu" and cxx_compiler() is None:
        return "no C++ compiler found (set CXX, or install g++ or clang++)"
    if device.type not in ("cpu", "cuda"):
        return f"torch.compile is not used on {device.type}"
    return None


def check_compile_mode(mode: str, device: torch.device, world_size: int = 1) -> None:
    """A ValueError for compile 'on' where compiling cannot work (the Trainer checks this before it starts)."""
    if mode == "on" and (why := compile_unavailable(device, world_size)):
        raise ValueError(f"compile on: {why}; use compile auto or off")


def should_compile(mode: str, device: torch.device, planned_rows: int, world_size: int = 1) -> tuple[bool, str]:
    """(compile?, why) for TrainConfig.compile = mode and a run with planned_rows (steps x batch x k) to go;
    'on' where compiling cannot work is a ValueError."""
    if mode == "off":
        return False, "compile off"
    check_compile_mode(mode, device, world_size)
    if why := compile_unavailable(device, world_size):
        return False, why
    if mode == "on":
        return True, "compile on"
    if planned_rows < COMPILE_MIN_ROWS:
        return False, (f"{planned_rows:,} rows (steps x batch x k) to go, under the {COMPILE_MIN_ROWS:,} that "
                       "pay back the compilation")
    return True, f"{planned_rows:,} rows (steps x batch x k) to go"


def compile_loss(fn: Callable, device: torch.device) -> Callable:
    """torch.compile(fn), drawing its random numbers from torch's own generator (see the module docstring). On
    CPU the graph's wrapper (the code that allocates the buffers and calls the kernels and products in turn) is
    generated C++ rather than Python (inductor's cpp_wrapper): an IWAE step is about 1 ms faster and the first
    step compiles no slower (docs/benchmarks.md)."""
    rng.backend()  # the C++ kernels built (or known unbuildable) before tracing, so the graph calls their ops
    ops.native_elementwise()
    return torch.compile(fn, options={"fallback_random": True, "cpp_wrapper": device.type == "cpu"})
