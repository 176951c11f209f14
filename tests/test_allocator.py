"""allocator.retain_freed_memory: tensor-sized blocks come from malloc's heap and are reused when freed,
instead of being mapped afresh from the kernel (and page-faulted in again) on every training step."""

import platform
import subprocess
import sys

import pytest

CODE = """
import ctypes, resource, sys, torch
from iwae_core.allocator import retain_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
active = retain_freed_memory() if sys.argv[1] == "tuned" else None
mapped_before = libc.mallinfo2().hblkhd
t = torch.empty(4_000_000)  # 16 MB, the size of an evaluation chunk
mapped = libc.mallinfo2().hblkhd - mapped_before
del t
for _ in range(10):  # warm up: the heap settles after a few rounds
    a = torch.ones(2_000_000); b = torch.ones(2_000_000); del a, b
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # two 8 MB tensors allocated, written and freed per round, as in a training step
    a = torch.ones(2_000_000); b = torch.ones(2_000_000); del a, b
print(active, mapped, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run(mode: str) -> tuple[str, int, int]:
    out = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, check=True)
    active, mapped, faults = out.stdout.split()
    return active, int(mapped), int(faults)


def glibc_version() -> tuple[int, ...]:
    name, version = platform.libc_ver()
    return tuple(int(p) for p in version.split(".")[:2]) if name == "glibc" and version else (0,)


@pytest.mark.skipif(glibc_version() < (2, 33), reason="tunes glibc's malloc (mallinfo2 needs glibc 2.33)")
def test_tensor_blocks_come_from_the_heap_and_are_reused():
    active, mapped, faults = run("tuned")
    assert active == "True"
    assert mapped == 0  # served from the heap, where a freed block stays for the next step
    assert faults < 200, faults  # 20 rounds x 2 tensors x 1,954 pages would be 78,000 if none were reused
    _, mapped_default, _ = run("default")
    assert mapped_default >= 16_000_000  # glibc's default maps a fresh 16 MB block from the kernel
