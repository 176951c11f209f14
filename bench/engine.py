"""Engine benchmark: the same as `iwae bench` (training step vs bare matmuls, IWAE-R vs IWAE, eval speed/memory)."""

import sys

from iwae_core.benchmark import run_benchmarks

if __name__ == "__main__":
    run_benchmarks(quick="--quick" in sys.argv)
