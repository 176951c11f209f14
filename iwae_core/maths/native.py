"""The package's C++ kernels, built together on first use: philox.cpp (the noise's draws, rng.py),
elementwise.cpp (tanh, softplus and the Bernoulli log-likelihood on CPU, ops.py) and flipout.cpp (the passes
around an uncompiled Flipout layer's bfloat16 products, ops.py).

torch's extension loader compiles them at this CPU's vector capability with the flags ATen builds its own
vectorised code with, and caches the build per machine (about a minute once on two cores; `make install` does
it). Each module that uses an op decides what to do without it (rng.py draws the same numbers in torch ops, ops.py
uses torch's functions): no compiler, or a failed build, makes the package slower, never wrong.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import torch

SOURCES = ("philox.cpp", "elementwise.cpp", "flipout.cpp")

# compiler flags for ATen's vectorised float maths (at::vec) at this CPU's capability, as ATen builds its own
_CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY_AVX512",
               "-DCPU_CAPABILITY=AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
}

_lock = threading.Lock()
_module = None  # the built module, once built
_error: Exception | None = None  # why the build failed, once it has


def capability() -> str:
    """The vector capability the kernels are built for: ATen's own ("AVX512", "AVX2", "DEFAULT", ...)."""
    return torch.backends.cpu.get_cpu_capability()


def _build():
    from torch.utils import cpp_extension  # imported here: it is slow to import and only needed once

    flags = _CAPABILITY_FLAGS.get(capability(), [])
    # named by capability, torch's version and the sources' contents, so that machines sharing a build cache do
    # not load each other's instructions, an upgraded torch a module built against the old one's headers, nor two
    # checkouts with different kernels rebuild over each other (or wait on each other's build)
    version = "".join(c if c.isalnum() else "_" for c in torch.__version__)
    sources = [Path(__file__).with_name(s) for s in SOURCES]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    return cpp_extension.load(name=f"iwae_kernels_{capability().lower()}_torch{version}_{digest}",
                              sources=[str(p) for p in sources],
                              extra_cflags=["-O3", "-fopenmp", *flags], extra_ldflags=["-fopenmp"], verbose=False)


def load():
    """The built module, building it on the first call; a failed build raises its error, on every call."""
    global _module, _error
    with _lock:
        if _module is None and _error is None:
            try:
                _module = _build()
            except Exception as err:  # no compiler, a failed build: the callers fall back
                _error = err
    if _error is not None:
        raise _error
    return _module

