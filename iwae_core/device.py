"""Where and in what precision a training step runs, and whether it fits in this machine's memory.

pick_device resolves TrainConfig.device (auto = cuda, then mps, then cpu) and refuses a device that is not
there. matmul_dtype and noise_dtype turn TrainConfig.precision and noise_precision into the input dtype of
the step's matrix products (None: float32); under auto they choose bfloat16 only where the device
multiplies it natively, where it is fast (docs/precision.md). check_training_memory refuses a k x batch
size whose step cannot fit, before anything is allocated, instead of letting the system kill the process.
subnormals_flushed is the CPU mode a training step runs in (subnormal floats read and written as zero).

The Trainer calls all of them as it starts; the run queue calls pick_device to refuse a run before its
worker starts, and the benchmark reports the noise precision auto picks on this machine.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .config import RunConfig


def native_bfloat16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (oneDNN with AVX512-BF16 or AMX)."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def noise_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype of the noise-path products for a TrainConfig.noise_precision (None: float32 like the rest).

    auto picks bfloat16 only where it is fast, a CPU with native bfloat16 products, where it halves the
    noise path's product time; the weight means, the mean path and everything else stay float32.
    """
    if precision == "bfloat16" or (precision == "auto" and device.type == "cpu" and native_bfloat16_matmul()):
        return torch.bfloat16
    return None


def matmul_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The input dtype of every matrix product of a training step for a TrainConfig.precision (None: float32).

    bf16-mixed: bfloat16 inputs, float32 accumulation and float32 results, for the mean and the noise path,
    encoder and decoder, forward and backward; parameters, Adam's state, the eps draws, sigma, the
    log-likelihood terms, logsumexp and the bound stay float32. auto chooses it where the device multiplies
    bfloat16 natively: a CPU with AVX512-BF16 or AMX (oneDNN), a CUDA GPU with bfloat16 support.

    The products go through hand-written casts (ops.low_precision_linear and the noise-path ops), not
    torch.autocast, on every device. Measured on this CPU (scripts/bf16_mechanism.py, docs/precision.md) the
    two run the step equally fast, so the choice rests on the contract: autocast returns each product in
    bfloat16, so every following op (tanh, the Bernoulli log-likelihood) would run in bfloat16 unless each
    layer widened its output again by hand; the hand-written backward passes of the noise path's autograd
    functions run outside autocast's reach, so their products need the casts written out anyway; and it is
    a context that must enclose the forward pass wherever the model is called. The casts do the same products (bfloat16
    inputs, float32 accumulation: oneDNN on CPU, cuBLAS on CUDA) with float32 results, and run unchanged on
    CUDA, where they stand in for bf16 autocast.
    """
    if precision == "bf16-mixed":
        return torch.bfloat16
    if precision == "auto":
        if device.type == "cpu" and native_bfloat16_matmul():
            return torch.bfloat16
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
    return None


SMALLEST_NORMAL = torch.finfo(torch.float32).tiny  # 1.18e-38: below it float32 numbers are subnormal


def flushing_subnormals() -> bool:
    """Whether this thread's CPU flushes subnormal floats to zero now (torch can set the mode, not read it)."""
    return torch.tensor(SMALLEST_NORMAL / 4, dtype=torch.float32).mul(1.0).item() == 0.0


@contextmanager
def subnormals_flushed() -> Iterator[None]:
    """Run the block with subnormal floats (|v| < 1.18e-38) read and written as zero, in this thread and in the
    threads of its parallel ops (set_flush_in_all_threads).

    Why: the gradient of the logits is each pixel's residual x - sigmoid(logit), tiny for a confidently
    predicted pixel, times its sample's normalised importance weight, which can be tiny too; their product
    underflows. In a step of the shipped MNIST IWAE-R, continued on real batches, 106,570 entries of its
    tensors were subnormal, and x86 CPUs multiply subnormal operands through a microcode assist: the step
    took 270 ms with them and 185 ms flushed (bench/subnormals.py, one thread; the shipped IWAE and
    IWAE-Rrec had none or almost none and ran at the same speed either way). Flushing changes each such
    value by less than 1.18e-38, below float32's resolution of any sum it enters: the gradients of the shipped
    MNIST IWAE and IWAE-R on a real batch came out bit for bit the same, and tests/test_device.py checks them
    to 1e-30 where the importance weights do underflow. TensorFlow runs its CPU kernels flushed for the same
    reason. Every thread's mode is restored after the block; evaluation runs without it (no change in its speed
    or results was measurable).
    """
    if flushing_subnormals() or not set_flush_in_all_threads(True):  # already on, or no such mode here
        yield
        return
    try:
        yield
    finally:
        set_flush_in_all_threads(False)


_OMP: dict = {}  # the OpenMP runtime's GOMP_parallel and the callback it runs, found once (see below)


def _omp_parallel():
    """GOMP_parallel(fn, data, threads, flags) of the OpenMP runtime torch's parallel ops run on, or None.

    GNU libgomp exports it, and LLVM's and Intel's runtimes export it for compatibility; it runs fn in each thread
    of a team taken from the same pool of threads that torch's parallel regions (and MKL's and oneDNN's) use."""
    if "run" not in _OMP:
        _OMP["run"] = None
        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return None
        try:
            maps = Path("/proc/self/maps").read_text()  # Linux: the runtime torch loaded
            torch_lib = str(Path(torch.__file__).parent / "lib")  # torch's own runtime first, if another is loaded
            libs = sorted({line.split()[-1] for line in maps.splitlines()
                           if any(name in line for name in ("libgomp", "libomp", "libiomp"))},
                          key=lambda path: (not path.startswith(torch_lib), path))
            run = ctypes.CDLL(libs[0]).GOMP_parallel
            run.argtypes, run.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint], None
            _OMP["run"] = run
        except (OSError, IndexError, AttributeError):
            pass
    return _OMP["run"]


def set_flush_in_all_threads(on: bool) -> bool:
    """torch.set_flush_denormal(on) in this thread and in each thread its parallel ops run on; whether this CPU has
    the mode. The mode belongs to a CPU thread: set in the calling thread alone, it left the other thread of every
    parallel op on two threads reading and writing subnormals (a parallel multiply of 4 million subnormal numbers
    under the flush left 2 million of them subnormal). Without an OpenMP runtime to reach, only this thread."""
    if not torch.set_flush_denormal(on):
        return False
    threads, run = torch.get_num_threads(), _omp_parallel()
    if threads > 1 and run is not None:
        # a ctypes callback takes the GIL in each thread; the call itself releases it, so the team can run
        callback = _OMP.setdefault(on, ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: torch.set_flush_denormal(on)))
        run(ctypes.cast(callback, ctypes.c_void_p), None, threads, 0)
    return True


def pick_device(name: str = "auto") -> torch.device:
    """auto = cuda, then mps, then cpu; an explicit device that is not available is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device 'mps' was requested but Apple's MPS backend is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    return torch.device(name)


def training_memory_bytes(run: RunConfig) -> int:
    """About the peak memory of one training step: the [k * batch, width] activations autograd keeps.

    Measured at 13-26 bytes per row and unit of x_dim + 2 * sum(hidden) + 4 * z_dim (float32, IWAE to
    IWAE-R); 32 bytes leave room. Plus the weights, their gradients and Adam's two moments.
    """
    m = run.model
    width = m.x_dim + 2 * sum(m.hidden) + 4 * m.z_dim
    sizes = [m.x_dim, *m.hidden, 2 * m.z_dim]
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True)) * 2 * 2  # mu and rho, both nets
    return 32 * run.train.k * run.train.batch_size * width + 4 * 4 * params


def physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_training_memory(run: RunConfig, available: int | None = None) -> None:
    """Refuse a k x batch size that cannot fit in this machine's memory, before anything is allocated
    (k = 100,000 with batch 100 otherwise allocates until the system kills the process)."""
    available = available or physical_memory_bytes()
    need = training_memory_bytes(run)
    if available and need > 0.8 * available:
        raise ValueError(f"--k {run.train.k} x --batch-size {run.train.batch_size} with these layer sizes needs "
                         f"about {need / 2**30:,.1f} GiB per training step, more than this machine's "
                         f"{available / 2**30:,.1f} GiB of memory can hold; use a smaller --k or --batch-size")
