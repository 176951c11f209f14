"""The noise's standard normals and Flipout's signs: Philox4x32-10 on every CPU thread, keyed from torch's stream.

Why not torch.randn: on CPU, torch's generator (mt19937) fills a tensor on one thread at about 2.8 ns per normal,
and an IWAE-R training step draws about 1.75 million of them (the encoder's local reparameterisation alone 1.2
million): 6 ms of a 40 ms bf16-mixed step, serial while the second core waits, and a third of a test
log-likelihood pass (docs/benchmarks.md). A counter-based generator has no serial state: block i of the output is
a pure function of (key, i), so the blocks are drawn on all of torch's threads, vectorised, and the result does
not depend on the thread count.

Philox4x32-10: Salmon, Moraes, Dror and Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3" (SC11, 2011); it
passes TestU01's BigCrush, and it is the generator of torch's and JAX's GPU streams. Each call takes one 64-bit
key from torch's global generator (torch.randint), so torch.manual_seed, fork_rng, a checkpoint's saved RNG state
and a compiled step's graph (which draws that key with torch's generator too) govern these draws exactly as they
govern torch.randn's; a call moves torch's stream by one draw, whatever its size. Within a call, counter i gives
four words and entries 4i..4i+3 are two Box-Muller pairs from them (philox.cpp's header).

Two implementations of the same numbers: philox.cpp, built on first use with torch's C++ extension loader (cached;
about 30 s once per machine) and the torch one below, used where no C++ compiler is found or the build fails (a
warning says which), about 40x slower. They agree word for word and, after the transcendental functions' rounding,
to within a few float32 ulps (tests/test_rng.py). On CUDA the draws stay torch.randn (cuRAND's Philox, already
parallel). float32 draws only: other dtypes get float32 normals cast, as the bf16 paths want.

A model chooses its generator (ModelConfig.draws): "philox", or "torch" for torch.randn and torch.randint exactly as
before this module existed, which every model saved before it keeps, so that its runs resume bit for bit and its
shipped numbers reproduce.
"""

from __future__ import annotations

import math
import threading
import warnings

import torch

from ..config import check_draws
from . import native

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32's multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # the key schedule's Weyl constants
_MASK = 0xFFFFFFFF
_TWO_POW_M24 = 2.0**-24

_lock = threading.Lock()
_extension = None  # the built philox.cpp module, once built
_backend: str | None = None  # "C++ (<capability>)" or "torch (<why>)", once decided

def philox_words(counter: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Philox4x32-10 of counters [n, 4] (int64 holding uint32 values) under key (k0, k1): [n, 4] words, int64.
    In torch integer ops; products of two 32-bit words wrap in int64, and their low and high halves are the
    wrapped value's bits, which masking recovers."""
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key
    for _ in range(10):
        p0, p1 = c0 * _M0, c2 * _M1
        c0, c1, c2, c3 = ((p1 >> 32) & _MASK) ^ c1 ^ k0, p1 & _MASK, ((p0 >> 32) & _MASK) ^ c3 ^ k1, p0 & _MASK
        k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
    return torch.stack([c0, c1, c2, c3], dim=-1)


def split_key(key: int) -> tuple[int, int]:
    """A 64-bit key (as torch.int64 holds it) as Philox's two 32-bit key words."""
    key &= (1 << 64) - 1
    return key & _MASK, key >> 32


def _block_words(blocks: int, key: int) -> torch.Tensor:
    """The words of counters 0..blocks-1 under key, [blocks, 4] int64 (counter i is (i mod 2^32, i / 2^32, 0, 0))."""
    i = torch.arange(blocks, dtype=torch.int64)
    counter = torch.stack([i & _MASK, i >> 32, torch.zeros_like(i), torch.zeros_like(i)], dim=-1)
    return philox_words(counter, split_key(key))


def torch_normal(n: int, key: int) -> torch.Tensor:
    """n standard normals [n] float32 under key, in torch ops (philox.cpp's layout)."""
    w = _block_words((n + 3) // 4, key)
    u1 = ((w[:, 0::2] >> 8) + 1).to(torch.float32) * _TWO_POW_M24  # (0, 1]: words 0 and 2
    u2 = (w[:, 1::2] >> 8).to(torch.float32) * _TWO_POW_M24  # [0, 1): words 1 and 3
    r = (-2.0 * u1.log()).sqrt()
    theta = 2 * torch.pi * u2  # float32, as the scalar joins a float32 tensor
    z = torch.stack([r * theta.cos(), r * theta.sin()], dim=-1)  # [blocks, pair, cos|sin]
    return z.reshape(-1)[:n]


def torch_signs(n: int, key: int) -> torch.Tensor:
    """n random signs +-1 [n] float32 under key, in torch ops (philox.cpp's layout: 128 per counter)."""
    w = _block_words((n + 127) // 128, key)  # [blocks, 4]
    bits = (w.unsqueeze(-1) >> torch.arange(32)) & 1  # [blocks, word, bit]
    return (1 - 2 * bits).to(torch.float32).reshape(-1)[:n]


_TORCH_DRAWS = {"normal": torch_normal, "signs": torch_signs}


def _build():
    return native.load(), native.capability()


def backend() -> str:
    """Which implementation draws on CPU, building philox.cpp on the first call: "C++ (AVX512)" or the like, or
    "torch (why the C++ one is not used)"."""
    global _extension, _backend
    with _lock:
        if _backend is None:
            try:
                _extension, capability = _build()
                torch.library.register_fake("iwae_core::philox_cpu")(_fake_draw)  # the op philox.cpp defines
                _backend = f"C++ ({capability})"
            except Exception as err:  # no compiler, a failed build: the same numbers, drawn slower
                why = " ".join(str(err).split())[:300] or type(err).__name__
                _backend = f"torch (building philox.cpp failed: {why})"
                warnings.warn(f"the noise is drawn by the torch implementation of Philox (the same numbers, about 40x "
                              f"slower): building philox.cpp failed: {why}", RuntimeWarning, stacklevel=3)
    return _backend


def _draw(kind: str, key: int, size: list[int]) -> torch.Tensor:
    """Standard normals ("normal") or random signs ("signs") of the given size under key, float32."""
    if _backend is None:  # decided once; no lock on every draw after that
        backend()
    if _extension is None:
        return _TORCH_DRAWS[kind](math.prod(size), key).reshape(size)
    out = torch.empty(size, dtype=torch.float32)
    getattr(_extension, f"{kind}_")(out, key)
    return out


# Under torch.compile a draw is an opaque op of the graph, its key drawn in the graph by torch's generator:
# philox.cpp's own op (iwae_core::philox_cpu) once it is built, which the compiled graph calls without Python (an
# IWAE-R step draws 11 times), else this one. Eager calls skip both: a custom op's first call costs about a second.
@torch.library.custom_op("iwae_core::philox", mutates_args=())
def _draw_op(key: torch.Tensor, size: list[int], kind: str) -> torch.Tensor:
    return _draw(kind, int(key), size)


@_draw_op.register_fake
def _fake_draw(key: torch.Tensor, size: list[int], kind: str) -> torch.Tensor:
    return key.new_empty(size, dtype=torch.float32)


def _generator(generator: torch.Generator | None) -> dict:
    """generator= for torch's random functions, left out when None: a compiled graph (cpp_wrapper) cannot call
    randint with an explicit generator argument, even None, and its compilation would fail."""
    return {} if generator is None else {"generator": generator}


def _keyed(kind: str, size: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator | None) -> torch.Tensor:
    key = torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, **_generator(generator))  # one draw
    if not torch.compiler.is_compiling():
        z = _draw(kind, int(key), list(size))
    elif _extension is not None:  # built before tracing: compiled.compile_loss asks for backend() first
        z = torch.ops.iwae_core.philox_cpu(key, list(size), kind)
    else:
        z = _draw_op(key, list(size), kind)
    return z if dtype == torch.float32 else z.to(dtype)


def _torch_or_cpu(device: torch.device | str | None, dtype: torch.dtype | None,
                  draws: str) -> tuple[torch.device, torch.dtype, bool]:
    """(device, dtype, whether torch's generator draws) for randn's and signs' arguments."""
    check_draws(draws)
    device = torch.device(device if device is not None else "cpu")
    return device, dtype or torch.get_default_dtype(), draws == "torch" or device.type != "cpu"


def randn(*size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
          generator: torch.Generator | None = None, draws: str = "philox") -> torch.Tensor:
    """Standard normals of the given size, like torch.randn(*size, device=, dtype=, generator=): with draws
    "philox", Philox on CPU (the module docstring) and torch.randn elsewhere, taking one 64-bit key from torch's
    global generator or the one given; with draws "torch", torch.randn itself, as every run before this module."""
    device, dtype, by_torch = _torch_or_cpu(device, dtype, draws)
    if by_torch:
        return torch.randn(*size, device=device, dtype=dtype, **_generator(generator))
    return _keyed("normal", size, dtype, generator)


def signs(*size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
          generator: torch.Generator | None = None, draws: str = "philox") -> torch.Tensor:
    """Random signs +-1, each with probability 1/2, of the given size (Flipout's sign vectors): Philox's bits on
    CPU with draws "philox", else torch.randint(0, 2) * 2 - 1 as before."""
    device, dtype, by_torch = _torch_or_cpu(device, dtype, draws)
    if by_torch:
        return torch.randint(0, 2, size, device=device, **_generator(generator)).to(dtype) * 2 - 1
    return _keyed("signs", size, dtype, generator)


def randn_like(t: torch.Tensor, draws: str = "philox") -> torch.Tensor:
    """randn of t's size, device and dtype."""
    return randn(*t.shape, device=t.device, dtype=t.dtype, draws=draws)
