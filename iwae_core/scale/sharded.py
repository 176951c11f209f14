"""`iwae eval --workers N`: the test log-likelihood passes of one or more models, sharded across Ray workers.

Each pass (one model, one noise scale tau, one seed, the first n test images) is cut into N contiguous
shards on batch boundaries; a Ray task computes one shard with evaluate.log_likelihood_range, which
reproduces exactly what the single-process pass computes for those images, so the concatenated shards
equal `iwae eval` without --workers value for value (tests/test_sweep.py checks it). How:

  stream seeding (the default, and how every shipped number was computed): the pass is one random
  stream; a shard replays the draws of the images before it (recorded from one real log_weights call
  and checked to move the stream exactly as the call does) without computing anything else. The replay
  costs a share f of those images' evaluation time (measured by bench/sweep.py: 28-49% for IWAE-R, 22-27%
  for IWAE-Rrec, 7-8% for IWAE, whose deterministic networks draw only z), so the last of N shards does
  1/N of the work plus f (N-1)/N of replay: IWAE-R gains about 1.5x on 2 workers and at most 2-3x.
  per-batch seeding (--seeding per-batch): every batch of images has its own seed, so shards need no
  replay and scale with the workers; its per-image values are other draws than the stream's (the same
  estimator, equally valid), which is why it is opt-in and recorded as "seeding" in metrics.json.

The driver loads each dataset once, ships the binarised test images and each model's two files through
Ray's object store (no shared storage is needed for evaluation), and then finishes each model with
evaluate_folder (active units, weight statistics, metrics.json, test_ll.safetensors) on the gathered
per-image values.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .cluster import cluster_cpus, ray_session, say


def shard_bounds(n: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """[start, stop) of up to `shards` contiguous pieces of n images, each starting on a batch boundary."""
    n_batches = -(-n // batch_size)
    shards = max(1, min(shards, n_batches))
    cuts = [round(i * n_batches / shards) * batch_size for i in range(shards + 1)]
    return [(a, min(b, n)) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if a < min(b, n)]


def _piece(model_files: dict, x: torch.Tensor, S: int, tau: float, batch_size: int | None, seed: int,
           seeding: str, start: int, stop: int, threads: int, counter=None) -> tuple[torch.Tensor, float, float]:
    """One shard in a Ray worker: (per-image log-likelihoods, start time, end time)."""
    from safetensors.torch import load

    from ..config import RunConfig
    from ..evaluate import log_likelihood_range
    from ..maths.model import IWAE

    torch.set_num_threads(threads)
    t0 = time.time()
    run = RunConfig.from_json(model_files["config"])
    model = IWAE(run.model)
    model.load_state_dict(load(model_files["weights"]))
    state = {"reported": start, "last": time.monotonic()}

    def progress(done: int, total: int) -> None:  # images of this shard done, reported every few seconds
        if counter is not None and (time.monotonic() - state["last"] > 2 or done == total):
            counter.add.remote(start + done - state["reported"])
            state["reported"], state["last"] = start + done, time.monotonic()

    ll = log_likelihood_range(model, x, S, tau=tau, batch_size=batch_size, seed=seed, seeding=seeding,
                              start=start, stop=stop, progress=progress)
    return ll, t0, time.time()


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> None:
        self.n += k

    def value(self) -> int:
        return self.n


def evaluate_sharded(dirs, workers: int, S: int = 5000, limit: int | None = None, taus=None,
                     batch_size: int | None = None, data_dir=None, write: bool = True, mc_repeats: int = 3,
                     mc_images: int = 500, seed: int = 0, seeding: str = "stream", address: str | None = None,
                     threads_per_worker: int = 1, show_progress: bool = True) -> dict[str, dict]:
    """evaluate_folder on each model folder with the log-likelihood passes of all of them sharded into
    `workers` pieces each, run as Ray tasks (a local Ray with `workers` CPUs unless an address is given).
    Returns {folder: result}."""
    from tqdm import tqdm

    from .. import checkpoint as ckpt
    from ..data import load_dataset
    from ..evaluate import (
        binarized_test_images,
        check_evaluation_settings,
        eval_batch_size,
        evaluate_folder,
        evaluation_passes,
        taus_for,
    )

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    # before the passes run on Ray, not when evaluate_folder gathers their results
    check_evaluation_settings(S=S, limit=limit, taus=taus, batch_size=batch_size,
                              mc_repeats=mc_repeats, mc_images=mc_images, seed=seed, seeding=seeding)
    dirs = [Path(d) for d in dirs]
    runs = {d: ckpt.load_model(d)[1] for d in dirs}  # fail early and clearly on a bad folder
    datasets = {}
    for d in dirs:
        name = runs[d].train.dataset
        if name not in datasets:
            datasets[name] = load_dataset(name, data_dir)
    results = {}
    with ray_session(address, num_cpus=None if address else workers * threads_per_worker) as (ray, where):
        say(f"evaluating {len(dirs)} model{'s' if len(dirs) != 1 else ''} in {workers} shards each on {where} "
            f"({cluster_cpus(ray)} CPUs)")
        piece = ray.remote(_piece).options(num_cpus=threads_per_worker, max_retries=3)
        counter = ray.remote(_Counter).options(num_cpus=0).remote()
        test_images = {name: binarized_test_images(data, limit) for name, data in datasets.items()}
        images = {name: ray.put(x) for name, x in test_images.items()}
        futures, total = {}, 0  # (folder, tau, seed, n) -> [(ref, size)]
        for d in dirs:
            run = runs[d]
            files = ray.put({"config": run.to_json(), "weights": (d / "model.safetensors").read_bytes()})
            n = len(test_images[run.train.dataset])
            for tau, pass_seed, n_pass in evaluation_passes(n, taus_for(run, taus), seed,
                                                            mc_repeats, mc_images):
                x = images[run.train.dataset] if n_pass == n else ray.put(test_images[run.train.dataset][:n_pass])
                bs = eval_batch_size(n_pass, batch_size)
                futures[(d, tau, pass_seed, n_pass)] = [
                    (piece.remote(files, x, S, tau, bs, pass_seed, seeding, a, b, threads_per_worker, counter),
                     b - a) for a, b in shard_bounds(n_pass, bs, workers)]
                total += n_pass
        refs = [ref for pieces in futures.values() for ref, _ in pieces]
        bar = tqdm(total=total, desc="test LL (sharded)", unit="img", mininterval=2, disable=not show_progress)
        pending = list(refs)
        try:
            while pending:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=2.0)
                bar.update(ray.get(counter.value.remote()) - bar.n)
        finally:
            bar.close()
        gathered = {}
        for key, pieces in futures.items():
            outs = ray.get([ref for ref, _ in pieces])
            gathered[key] = (torch.cat([o[0] for o in outs]), max(o[2] for o in outs) - min(o[1] for o in outs))
        for d in dirs:
            def passes(tau, pass_seed, n, d=d):
                return gathered[(d, tau, pass_seed, n)]
            results[str(d)] = evaluate_folder(
                d, S=S, limit=limit, taus=taus, batch_size=batch_size, write=write,
                mc_repeats=mc_repeats, mc_images=mc_images, seed=seed, data=datasets[runs[d].train.dataset],
                seeding=seeding, passes=passes, workers=workers)
    return results
