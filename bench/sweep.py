"""Scaling-out benchmark: Ray's start-up cost, a sweep against the same runs one after another, and sharded
evaluation's images per second with 1 and 2 workers.

Usage: IWAE_DATA_DIR=DIR python bench/sweep.py [--steps 300] [--S 1000] [--images 100]

1. Ray start-up: ray.init with 2 CPUs (no dashboard), the first round trip of a trivial task on each of two
   workers, and ray.shutdown.
2. A 4-trial sweep (IWAE and IWAE-R, seeds 0 and 1; 784-200-20 models trained for --steps steps on MNIST,
   batch 20, k 5, one thread each) on a local Ray with 2 CPUs, against the same four runs trained one after
   another in this process (one thread, the data loaded once). The ratio is sequential / sweep wall time;
   the sweep's time includes starting Ray and the workers' imports and data loading.
3. The test log-likelihood of the shipped MNIST IWAE-R on --images test images with S = --S: one process
   without Ray, then sharded on 1 and 2 Ray workers (stream seeding, and per-batch seeding with 2), in
   images per second of the pass itself (first shard started to last shard done); plus, for each variant,
   the share of a pass's time that replaying its random draws costs (what limits stream-seeded sharding).
Every number comes from this one run; the machine's other load shows in them. Ray runs its workers at
niceness 15, which on a busy machine hands their CPU time to every other process and makes any comparison
with this (niceness 0) process meaningless: the benchmark starts its Rays with RAY_worker_niceness=0
unless that is set already.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from iwae_core.checkpoint import load_model  # noqa: E402
from iwae_core.data import load_dataset  # noqa: E402
from iwae_core.evaluate import binarized_test_images, eval_batch_size, log_likelihood, skip_stream  # noqa: E402
from iwae_core.zoo import PRETRAINED_DIR

GRID = """
[base]
dataset = "mnist"
hidden = [200]
z_dim = 20
k = 5
batch_size = 20
epochs = 1
max_steps = {steps}

[grid]
variant = ["iwae", "iwae-r"]
seed = [0, 1]
"""


def ray_startup() -> dict:
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t1 = time.perf_counter()

    @ray.remote
    def pid() -> int:
        time.sleep(0.2)
        return os.getpid()
    pids = ray.get([pid.remote() for _ in range(2)])
    t2 = time.perf_counter()
    ray.shutdown()
    t3 = time.perf_counter()
    return {"init": t1 - t0, "first tasks": t2 - t1, "shutdown": t3 - t2, "workers": len(set(pids))}


def sweep_vs_sequential(steps: int, root: Path) -> dict:
    from iwae_core.scale.grid import load_grid, plan_trials
    from iwae_core.scale.sweep import run_sweep
    from iwae_core.scale.trial import run_trial

    grid_file = root / "grid.toml"
    grid_file.write_text(GRID.format(steps=steps))
    t0 = time.perf_counter()
    manifest = run_sweep(grid_file, root / "sweep", num_cpus=2, show_progress=False)
    sweep = time.perf_counter() - t0
    trial_seconds = [t["seconds"] for t in manifest["trials"]]
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    data = load_dataset("mnist")
    for trial in plan_trials(load_grid(grid_file)):
        run_trial(trial.run, root / "sequential" / trial.name, data=data)
    sequential = time.perf_counter() - t0
    torch.set_num_threads(threads)
    return {"sweep": sweep, "sequential": sequential, "trials": trial_seconds}


def sharded_eval(S: int, images: int, root: Path) -> dict:
    import ray

    from iwae_core.scale.sharded import evaluate_sharded

    folder = root / "mnist-iwae-r"
    shutil.copytree(PRETRAINED_DIR / "mnist-iwae-r", folder)
    model, _ = load_model(folder)
    x = binarized_test_images(load_dataset("mnist"), images)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    log_likelihood(model, x, S)
    single = images / (time.perf_counter() - t0)
    out = {"one process, no Ray": single}
    common = {"S": S, "limit": images, "taus": [1.0], "mc_repeats": 1, "write": False, "show_progress": False}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        @ray.remote(num_cpus=1)
        def warm_up() -> int:  # two at once: both worker processes start and import torch before the timing
            import iwae_core.scale.sharded  # noqa: F401

            time.sleep(2)
            return os.getpid()
        assert len(set(ray.get([warm_up.remote() for _ in range(2)]))) == 2
        evaluate_sharded([folder], 2, **{**common, "limit": 20})
        for label, workers, seeding in (("1 worker", 1, "stream"), ("2 workers, stream seeding", 2, "stream"),
                                        ("2 workers, per-batch seeding", 2, "per-batch")):
            result = evaluate_sharded([folder], workers, seeding=seeding, **common)[str(folder)]
            out[label] = images / result["by_tau"]["1"]["seconds"]
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)
    return out


def replay_share(S: int, images: int) -> dict:
    """Seconds of replaying a pass's draws / seconds of the pass, per shipped MNIST variant (one thread)."""
    x = binarized_test_images(load_dataset("mnist"), images)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    shares = {}
    try:
        for variant in ("iwae", "iwae-rrec", "iwae-r"):
            model, _ = load_model(PRETRAINED_DIR / f"mnist-{variant}")
            bs = eval_batch_size(len(x))
            torch.manual_seed(0)
            t0 = time.perf_counter()
            log_likelihood(model, x, S)
            full = time.perf_counter() - t0
            torch.manual_seed(0)
            t0 = time.perf_counter()
            skip_stream(model, len(x) // bs, S, bs)
            shares[variant] = (time.perf_counter() - t0) / full
    finally:
        torch.set_num_threads(threads)
    return shares


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps of each sweep trial")
    p.add_argument("--S", type=int, default=1000, help="joint draws per test image")
    p.add_argument("--images", type=int, default=100, help="test images evaluated")
    args = p.parse_args()
    os.environ.setdefault("RAY_worker_niceness", "0")  # read by the local Rays started below
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = ray_startup()
        print(f"Ray start-up (2 CPUs): init {start['init']:.1f} s, first task on each of {start['workers']} "
              f"workers {start['first tasks']:.1f} s, shutdown {start['shutdown']:.1f} s")
        times = sweep_vs_sequential(args.steps, root)
        print(f"4 trials of {args.steps} steps: sweep on 2 CPUs {times['sweep']:.1f} s, one after another "
              f"{times['sequential']:.1f} s: sequential / sweep = {times['sequential'] / times['sweep']:.2f}; "
              f"the trials' own seconds in the sweep (a worker's first includes its imports and data loading): "
              + ", ".join(f"{t:.1f}" for t in times["trials"]))
        speeds = sharded_eval(args.S, args.images, root)
        base = speeds["1 worker"]
        print(f"test LL of MNIST IWAE-R, S = {args.S}, {args.images} images:")
        for label, v in speeds.items():
            print(f"  {label:30} {v:7.1f} images/s  ({v / base:.2f}x one worker)")
        shares = replay_share(args.S, args.images)
        print("replaying a pass's random draws / computing the pass (stream-seeded sharding's overhead): "
              + ", ".join(f"{v} {s:.0%}" for v, s in shares.items()))
    print(f"load average {os.getloadavg()[0]:.1f} at the end (other processes share the cores)")


if __name__ == "__main__":
    main()
