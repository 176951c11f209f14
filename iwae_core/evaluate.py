"""Evaluation: the test log-likelihood from S joint draws per image, and the protocol of `iwae eval`.

log p^(x) = logmeanexp_s log w_s, each of the S draws (theta_s, phi_s, z_s) joint and independent, on the test
images binarised with TEST_SEED (log_likelihood). A pass over the test set can be split into shards computed
anywhere that equal it value for value (log_likelihood_range). evaluate_folder is the full protocol on a model
folder: every tau, the Monte-Carlo spread, active units and weight statistics, written to metrics.json and
test_ll.safetensors with the sha256 of the weights they are of. PAPER_TABLE: Hernandez-Lobato et al. (2016).

L_k against k and the per-image diagnostics are in curves.py; comparing evaluated models in compare.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .allocator import retain_freed_memory
from .config import SEEDINGS, check_k, check_seed
from .data import binarize, load_dataset
from .maths.model import IWAE

TEST_SEED = 2016  # the fixed seed that binarises the test set for every reported number
PAPER_TABLE = {  # Hernandez-Lobato et al. (2016), test log-likelihood (mean +- standard error)
    "mnist": {"iwae": (-95.182, 0.022), "iwae-r": (-94.346, 0.025), "iwae-rrec": (-94.709, 0.025)},
    "omniglot": {"iwae": (-118.771, 0.035), "iwae-r": (-118.540, 0.049), "iwae-rrec": (-118.647, 0.031)},
}
# (draw, image) rows held at once. 5,000 rows keep each [rows, 784] tensor at 16 MB, small enough for
# malloc to reuse (see allocator.py) and for the caches; 40,000 rows ran 1.6x slower on 2 cores.
ROWS_PER_CHUNK = 5_000
TAU_LIMIT = 1000.0  # tau * sigma; far past any scale worth looking at, and finite


def check_tau(tau, name: str = "tau") -> float:
    """Reject a weight-noise scale tau that is not a finite number from 0 to TAU_LIMIT (a NaN tau wrote
    NaN results, a negative one flipped the noise). The engine's public functions call this once on entry."""
    try:
        ok = not isinstance(tau, bool) and math.isfinite(tau) and 0 <= tau <= TAU_LIMIT
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be from 0 to {TAU_LIMIT:g}, got {tau}")
    return tau


def check_seeding(seeding: str, name: str = "seeding") -> str:
    if seeding not in SEEDINGS:
        raise ValueError(f"{name} must be one of {SEEDINGS}, got {seeding!r}")
    return seeding


def tau_label(tau: float | str) -> str:
    """tau as every results file names it: the keys of metrics.json's by_tau ("1", "0.5", "0")."""
    return f"{float(tau):g}"


def per_image_name(tau: float | str) -> str:
    """The tensor of test_ll.safetensors holding the per-image test LL at this tau."""
    return f"tau={tau_label(tau)}"


def binarized_test_images(data: dict, limit: int | None = None) -> torch.Tensor:
    """The test images binarised with the fixed seed, so every model sees the same binary images."""
    x = binarize(data["test"], seed=TEST_SEED)
    return x[:limit] if limit else x


@torch.no_grad()
def log_likelihood(model: IWAE, x: torch.Tensor, S: int = 5000, tau: float = 1.0,
                   batch_size: int | None = None, rows_per_chunk: int = ROWS_PER_CHUNK,
                   progress: Callable[[int, int], None] | None = None,
                   batch_seeds: tuple[int, int] | None = None) -> torch.Tensor:
    """log p^(x) = logmeanexp_s log w_s with S independent joint draws (theta_s, phi_s, z_s) per image.

    Weights are drawn per (draw, image) row ('sample' granularity in both networks), in chunks of
    at most rows_per_chunk rows, so memory stays bounded whatever S and the batch size. x: [n, 784] -> [n].
    The draws come from torch's global stream as the caller left it, or, with batch_seeds = (seed, first),
    from a stream per batch seeded with batch_seed(seed, first + the batch's first index in x).
    """
    check_k(S, "S")
    check_tau(tau)
    return _log_likelihood(model, x, S, tau, batch_size, rows_per_chunk, progress, batch_seeds)


@torch.no_grad()
def _log_likelihood(model: IWAE, x: torch.Tensor, S: int, tau: float, batch_size: int | None,
                    rows_per_chunk: int, progress: Callable[[int, int], None] | None,
                    batch_seeds: tuple[int, int] | None = None) -> torch.Tensor:
    """log_likelihood on settings already checked."""
    model.eval()
    retain_freed_memory()
    batch_size = eval_batch_size(len(x), batch_size, rows_per_chunk)
    chunk = eval_chunk(S, batch_size, rows_per_chunk)
    out = []
    for start in range(0, len(x), batch_size):
        if batch_seeds is not None:  # per-batch seeding: (seed, index of x[0] in the whole pass)
            torch.manual_seed(batch_seed(batch_seeds[0], batch_seeds[1] + start))
        xb = x[start:start + batch_size]
        acc = torch.full((len(xb),), -math.inf, device=x.device)
        for s0 in range(0, S, chunk):
            lw = model.log_weights(xb, min(chunk, S - s0), tau=tau,
                                   encoder_granularity="sample", decoder_granularity="sample")
            acc = torch.logaddexp(acc, torch.logsumexp(lw, 0))
        out.append(acc - math.log(S))
        if progress:
            progress(min(start + batch_size, len(x)), len(x))
    return torch.cat(out)


def eval_batch_size(n: int, batch_size: int | None = None, rows_per_chunk: int = ROWS_PER_CHUNK) -> int:
    """Images per batch of a pass over n images: by default about 500 draws of 10 images per chunk (few
    Python round trips, small tensors). A property of the whole pass: a shard of it must use the same."""
    return min(batch_size or max(1, min(n, rows_per_chunk // 500)), rows_per_chunk)


def eval_chunk(S: int, batch_size: int, rows_per_chunk: int = ROWS_PER_CHUNK) -> int:
    """Draws per log_weights call for a batch of batch_size images."""
    return max(1, min(S, rows_per_chunk // batch_size))


def batch_seed(seed: int, first_image: int) -> int:
    """The seed of the batch starting at image first_image under per-batch seeding (a 64-bit mix of both)."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(first_image)]).generate_state(1, np.uint64)[0])


# torch functions that draw from the global stream; a log_weights call's draws are recorded among these
_RNG_FUNCTIONS = {torch.randn, torch.rand, torch.randint, torch.randn_like, torch.rand_like, torch.randint_like,
                  torch.bernoulli, torch.normal, torch.randperm, torch.multinomial, torch.poisson,
                  torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.bernoulli_, torch.Tensor.random_,
                  torch.Tensor.exponential_, torch.Tensor.geometric_, torch.Tensor.log_normal_,
                  torch.Tensor.cauchy_, torch.Tensor.bernoulli, torch.Tensor.multinomial}


class _RecordDraws(torch.overrides.TorchFunctionMode):
    """Records the random draws (function, arguments) made while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RNG_FUNCTIONS:
            keep = lambda a: a.detach().clone() if torch.is_tensor(a) else a  # noqa: E731
            self.calls.append((func, tuple(keep(a) for a in args), {k: keep(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


def _replay(calls: list[tuple]) -> None:
    for func, args, kwargs in calls:
        func(*[a.clone() if torch.is_tensor(a) else a for a in args], **kwargs)


@torch.no_grad()
def stream_draws(model: IWAE, batch_size: int, k: int, tau: float) -> list[tuple]:
    """The random draws of one log_weights call on batch_size images with k draws, as log_likelihood
    makes it; checked here: replaying them moves torch's stream exactly as the real call does."""
    model.eval()
    x = torch.zeros(batch_size, model.config.x_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(20_160_101)
        with _RecordDraws() as rec:
            model.log_weights(x, k, tau=tau, encoder_granularity="sample",
                              decoder_granularity="sample")
        after_call = torch.get_rng_state()
        torch.manual_seed(20_160_101)
        _replay(rec.calls)
        if not torch.equal(torch.get_rng_state(), after_call):
            raise RuntimeError("cannot skip ahead in the evaluation's random stream: the draws of log_weights "
                               "were not all recorded; evaluate in one process, or use per-batch seeding")
    return rec.calls


def skip_stream(model: IWAE, n_batches: int, S: int, batch_size: int, tau: float = 1.0,
                rows_per_chunk: int = ROWS_PER_CHUNK) -> None:
    """Advance torch's global stream past the draws log_likelihood makes for n_batches full batches,
    without computing them: a shard of a stream-seeded pass starts where the whole pass would be."""
    if n_batches <= 0:
        return
    chunk = eval_chunk(S, batch_size, rows_per_chunk)
    ks = [min(chunk, S - s0) for s0 in range(0, S, chunk)]
    draws = {k: stream_draws(model, batch_size, k, tau) for k in set(ks)}
    for _ in range(n_batches):
        for k in ks:
            _replay(draws[k])


def log_likelihood_range(model: IWAE, x: torch.Tensor, S: int, tau: float = 1.0,
                         batch_size: int | None = None, seed: int = 0, seeding: str = "stream",
                         start: int = 0, stop: int | None = None, rows_per_chunk: int = ROWS_PER_CHUNK,
                         progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Images start..stop of the pass `log_likelihood` makes over all of x with this seed, exactly as that
    whole pass computes them (start on a batch boundary): so shards computed anywhere, concatenated, equal
    the pass in one process value for value. With stream seeding the shard first replays the draws of the
    images before it (about a third of their evaluation time for IWAE-R); per-batch seeding needs none.
    Uses torch's global stream and leaves it at the end of the shard."""
    check_k(S, "S")
    check_tau(tau)
    check_seeding(seeding)
    return _log_likelihood_range(model, x, S, tau, batch_size, seed, seeding, start, stop, rows_per_chunk,
                                 progress)


def _log_likelihood_range(model: IWAE, x: torch.Tensor, S: int, tau: float, batch_size: int | None,
                          seed: int, seeding: str, start: int = 0, stop: int | None = None,
                          rows_per_chunk: int = ROWS_PER_CHUNK,
                          progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """log_likelihood_range on settings already checked."""
    stop = len(x) if stop is None else stop
    batch_size = eval_batch_size(len(x), batch_size, rows_per_chunk)
    if start % batch_size and start != len(x):
        raise ValueError(f"a shard must start on a batch boundary: {start} is not a multiple of {batch_size}")
    if seeding == "stream":
        torch.manual_seed(seed)
        skip_stream(model, start // batch_size, S, batch_size, tau, rows_per_chunk)
        return _log_likelihood(model, x[start:stop], S, tau, batch_size, rows_per_chunk, progress)
    return _log_likelihood(model, x[start:stop], S, tau, batch_size, rows_per_chunk, progress,
                           batch_seeds=(seed, start))


def summarize(values: torch.Tensor) -> dict:
    n = len(values)
    return {"mean": values.mean().item(), "stderr": (values.std() / math.sqrt(n)).item() if n > 1 else None,
            "n_images": n}


@torch.no_grad()
def active_units(model: IWAE, x: torch.Tensor, threshold: float = 0.01, weight_draws: int = 10,
                 tau: float = 1.0) -> dict:
    """Burda et al.'s activity Var_x E_q[z_j|x] per latent unit; active where it exceeds threshold."""
    draws = weight_draws if model.config.random_encoder else 1
    activity = model.posterior_mean(x, draws, tau).var(0)
    return {"count": int((activity > threshold).sum()), "activity": activity.tolist(), "threshold": threshold}


@torch.no_grad()
def weight_statistics(model: IWAE) -> list[dict]:
    """Per layer: shape, mean sigma, median sigma, mean |mu|/sigma and KL (random layers only)."""
    rows = []
    for net_name, net in (("encoder", model.encoder), ("decoder", model.decoder)):
        for i, layer in enumerate(net.layers):
            row = {"layer": f"{net_name}.{i}", "shape": list(layer.weight_mu.shape), "random": layer.random,
                   "mean_abs_mu": layer.weight_mu.abs().mean().item()}
            if layer.random:
                sigma = layer.weight_sigma
                row.update(mean_sigma=sigma.mean().item(), median_sigma=sigma.median().item(),
                           mean_snr=(layer.weight_mu.abs() / sigma).mean().item(),
                           kl=layer.kl_divergence().item())
            rows.append(row)
    return rows


def taus_for(run, taus=None) -> list[float]:
    """The weight-noise scales tau an evaluation covers: the given ones, else 1 and 0 for random-weight models."""
    random = run.model.random_encoder or run.model.random_decoder
    return list(taus) if taus else ([1.0, 0.0] if random else [1.0])


def evaluation_passes(n_images: int, taus: list[float], seed: int = 0, mc_repeats: int = 3,
                      mc_images: int = 500) -> list[tuple[float, int, int]]:
    """The log-likelihood passes evaluate_folder makes, as (tau, seed, number of leading test images):
    the whole test set per tau, then the Monte-Carlo repeats on the first mc_images images."""
    passes = []
    for tau in taus:
        passes.append((tau, seed, n_images))
        passes += [(tau, seed + 1000 * r, min(mc_images, n_images)) for r in range(1, mc_repeats)]
    return passes


def evaluate_folder(directory, S: int = 5000, limit: int | None = None, taus=None,
                    batch_size: int | None = None, data_dir=None, write: bool = True, mc_repeats: int = 3,
                    mc_images: int = 500, seed: int = 0, progress: Callable | None = None,
                    data: dict | None = None, seeding: str = "stream",
                    passes: Callable[[float, int, int], tuple[torch.Tensor, float]] | None = None,
                    workers: int | None = None) -> dict:
    """The full protocol on a model folder; writes metrics.json["test"] and test_ll.safetensors.

    The settings, the model and the files it will write are checked before minutes of computing.

    passes(tau, seed, n) may supply the per-image log-likelihoods of the first n test images (and the
    seconds they took) computed elsewhere, e.g. sharded across Ray workers (sharded.py); they must equal
    log_likelihood_range's. `workers` is then recorded beside the timing.
    """

    directory = Path(directory)
    check_evaluation_settings(S=S, limit=limit, taus=taus, batch_size=batch_size,
                              mc_repeats=mc_repeats, mc_images=mc_images, seed=seed, seeding=seeding)
    model, run = ckpt.load_model(directory)
    metrics = check_evaluation_target(directory, write)
    data = data if data is not None else load_dataset(run.train.dataset, data_dir)
    x = binarized_test_images(data, limit)
    taus = taus_for(run, taus)

    def compute(tau: float, pass_seed: int, n: int, pass_progress=None) -> tuple[torch.Tensor, float]:
        if passes is not None:
            return passes(tau, pass_seed, n)
        t0 = time.perf_counter()
        ll = _log_likelihood_range(model, x[:n], S, tau, batch_size, pass_seed, seeding, progress=pass_progress)
        return ll, time.perf_counter() - t0

    result = {"S": S, "n_images": len(x), "test_seed": TEST_SEED, "source": data.get("source"),
              "model_sha256": model_sha256(directory), "seeding": seeding, "draws": run.model.draws,
              "batch_size": eval_batch_size(len(x), batch_size),
              "by_tau": {}}
    per_image = {}
    for tau in taus:
        ll, seconds = compute(tau, seed, len(x), progress)
        # Monte-Carlo spread: repeat the estimate on the first mc_images images with other seeds.
        sub = x[:mc_images]
        reps = [ll[:mc_images]]
        for r in range(1, mc_repeats):
            reps.append(compute(tau, seed + 1000 * r, len(sub))[0])
        mc_sd = torch.stack(reps).std(0).pow(2).mean().sqrt().item() if mc_repeats > 1 else None
        per_image[per_image_name(tau)] = ll
        result["by_tau"][tau_label(tau)] = {
            **summarize(ll), "mc_sd_per_image": mc_sd,
            "mc_sd_of_mean": mc_sd / math.sqrt(len(x)) if mc_sd is not None else None,
            "mc_repeats": mc_repeats, "mc_images": len(sub), "seconds": round(seconds, 1),
            "images_per_second": round(len(x) / seconds, 2) if seconds > 0 else None,
            **({"workers": workers} if workers else {})}
    torch.manual_seed(seed)
    au_x = binarize(data["train"][:500], seed=TEST_SEED)
    result["active_units"] = active_units(model, au_x)["count"]
    result["weights"] = weight_statistics(model)
    metrics_path = directory / "metrics.json"
    with contextlib.suppress(ckpt.CheckpointError):  # what was written meanwhile (read and checked above)
        metrics = ckpt.read_json_object(metrics_path)
    kept = _comparable_taus(metrics.get("test"), result, directory / "test_ll.safetensors")
    result["by_tau"] = {**{tau: entry for tau, (entry, _) in kept.items()}, **result["by_tau"]}
    per_image = {**{per_image_name(tau): ll for tau, (_, ll) in kept.items()}, **per_image}
    result["test_ll"] = result["by_tau"]["1"]["mean"] if "1" in result["by_tau"] else None
    if write:
        from safetensors.torch import save_file

        ckpt.atomic_write(directory / "test_ll.safetensors",
                          lambda p: save_file({k: v.contiguous() for k, v in per_image.items()}, str(p),
                                              metadata={"model_sha256": result["model_sha256"]}))
        metrics["test"] = result
        ckpt.write_json(metrics_path, metrics)
    return result


def check_evaluation_settings(names: dict | None = None, **settings) -> None:
    """Reject settings that would evaluate something else than asked (a limit of -3 evaluated 9,997
    images, a NaN noise scale wrote NaN); names maps a setting to the option the user typed."""
    names = names or {}
    name = lambda key: names.get(key, key)  # noqa: E731
    check_k(settings["S"], name("S"))
    for key in ("limit", "batch_size", "mc_repeats", "mc_images"):
        value = settings.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name(key)} must be at least 1, got {value}")
    for tau in settings.get("taus") or []:
        check_tau(tau, name("taus"))
    check_seed(settings.get("seed", 0), name("seed"))
    if "seeding" in settings:
        check_seeding(settings["seeding"], name("seeding"))


def check_evaluation_target(directory: Path, write: bool = True) -> dict:
    """metrics.json as an object ({} when missing), checked before an evaluation; when the evaluation
    will write, the folder must be writable and metrics.json valid, else a CheckpointError names them.
    Without writing, an unreadable metrics.json is ignored: nothing of it is needed."""
    metrics_path = Path(directory) / "metrics.json"
    if not write:
        try:
            return ckpt.read_json_object(metrics_path)
        except ckpt.CheckpointError:
            return {}
    metrics = ckpt.read_json_object(metrics_path)
    for name in ("metrics.json", "test_ll.safetensors"):
        if (Path(directory) / name).exists() and not (Path(directory) / name).is_file():
            raise ckpt.CheckpointError(f"{Path(directory) / name} is not a file; the evaluation writes it")
    ckpt.check_writable(directory)
    return metrics


def _comparable_taus(old: dict | None, new: dict, per_image_path: Path) -> dict:
    """Results for other noise scales from an earlier evaluation of the same weights with the same S,
    the same test images and seed, kept so that evaluating tau = 0 later does not discard tau = 1."""
    if not isinstance(old, dict) or not isinstance(old.get("by_tau"), dict):
        return {}
    if not old or not per_image_path.exists() or any(old.get(key) != new[key]
                                                     for key in ("S", "n_images", "test_seed", "source",
                                                                 "model_sha256")):
        return {}
    if old.get("seeding", "stream") != new["seeding"]:  # results written before seeding was recorded: stream
        return {}
    if old.get("draws", "torch") != new["draws"]:  # and before draws was: torch's generator
        return {}
    try:
        stored = ckpt.read_tensors(per_image_path)
    except ckpt.CheckpointError:
        return {}
    return {tau: (entry, stored[per_image_name(tau)]) for tau, entry in old.get("by_tau", {}).items()
            if tau not in new["by_tau"] and per_image_name(tau) in stored}


def model_sha256(directory: Path) -> str:
    """The hash that ties test results to the weights they were computed with."""
    return hashlib.sha256((Path(directory) / "model.safetensors").read_bytes()).hexdigest()
