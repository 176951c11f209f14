"""L_k against k and the per-image diagnostics shown beside the test log-likelihood.

L_k = log (1/k) sum_m w_m is the IWAE bound (Burda, Grosse, Salakhutdinov 2016, arXiv:1509.00519, Sec. 3): it
rises with k towards log p(x), which evaluate.py estimates.

  bound_vs_k          mean L_k over the images for each k, one pass per k, with its standard error
  grouped_bounds      per-image L_k for every k of a grid from ONE pass of k_max draws split into groups of k;
                      write_bound_curves stores them beside a model (BOUND_CURVES, tensors named by curve_name)
                      so the Bound vs k page can show them without computing
  importance_weights  one image's k weights, their ESS and the posterior draws z they were computed at

bound_vs_k, grouped_bounds, write_bound_curves and importance_weights check k and tau before any draw; all but
write_bound_curves draw under their own seed and leave torch's global stream as they found it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .allocator import retain_freed_memory
from .config import check_k
from .evaluate import ROWS_PER_CHUNK, TEST_SEED, check_tau, model_sha256, per_image_name, summarize
from .maths.bounds import effective_sample_size, iwae_bound
from .maths.model import IWAE


@torch.no_grad()
def bound_vs_k(model: IWAE, x: torch.Tensor, ks: list[int], repeats: int = 1, tau: float = 1.0,
               seed: int = 0, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Mean L_k over the images x for each k (model's own granularities), with its standard error.
    progress(done, total) is called after each chunk of images, counted over all k and repeats."""
    for k in ks:
        check_k(k)
    check_tau(tau)
    model.eval()
    rows = []
    done, total = 0, len(ks) * repeats * len(x)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for k in ks:
            per_image = []
            for _ in range(repeats):
                b = max(1, ROWS_PER_CHUNK // k)
                chunks = []
                for xb in x.split(b):
                    chunks.append(iwae_bound(model.log_weights(xb, k, tau=tau)))
                    done += len(xb)
                    if progress:
                        progress(done, total)
                per_image.append(torch.cat(chunks))
            vals = torch.stack(per_image).mean(0)
            rows.append({"k": k, **summarize(vals)})
    return rows


@torch.no_grad()
def grouped_bounds(model: IWAE, x: torch.Tensor, ks: list[int], tau: float = 1.0, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Per-image estimates of L_k for every k of `ks` from ONE pass of k_max = max(ks) draws per image: [len(ks), n].

    The k_max log weights of an image are split into floor(k_max / k) disjoint groups of k consecutive draws
    (the remainder is unused); each group is an L_k estimate and they are averaged. Every group has the
    distribution of the k draws plain L_k uses (same call, same granularities: a 'datapoint' decoder draw is
    shared by all k_max draws of an image as it is by the k of plain L_k), so the expectation is L_k's, and
    averaging groups lowers the variance. A new k_max or tau costs one pass, not one per k.
    Draws are made with all k_max of an image in one call (so groups never straddle two weight draws), at most
    ROWS_PER_CHUNK rows per call where that allows. progress(done, total) counts images.
    """
    ks = list(ks)
    for k in ks:
        check_k(k)
    check_tau(tau)
    return _grouped_bounds(model, x, ks, tau, seed, progress)


@torch.no_grad()
def _grouped_bounds(model: IWAE, x: torch.Tensor, ks: list[int], tau: float, seed: int,
                    progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """grouped_bounds on settings already checked."""
    if not ks:
        return torch.zeros(0, len(x))
    k_max = max(ks)
    model.eval()
    retain_freed_memory()  # as the evaluation does: chunks of [5000, 784] floats, reused instead of page-faulted
    b = max(1, ROWS_PER_CHUNK // k_max)
    out = torch.empty(len(ks), len(x))
    done = 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, len(x), b):
            xb = x[start:start + b]
            lw = model.log_weights(xb, k_max, tau=tau)  # [k_max, b]
            for i, k in enumerate(ks):
                groups = k_max // k
                per_group = lw[:groups * k].reshape(groups, k, len(xb))
                out[i, start:start + len(xb)] = iwae_bound(per_group.transpose(0, 1)).mean(0)  # [groups, b]
            done += len(xb)
            if progress:
                progress(done, len(x))
    return out


BOUND_CURVES = "bound_curves.safetensors"  # precomputed grouped_bounds beside a model, for an instant first view


def curve_name(k_max: int, tau: float | str) -> str:
    """The tensor of bound_curves.safetensors holding the L_k curves up to k_max at this tau."""
    return f"k_max={k_max},{per_image_name(tau)}"


def write_bound_curves(directory: Path, x: torch.Tensor, ks: list[int], k_maxes=(100, 5000), taus=(0.0, 1.0),
                       seed: int = 0, source: str = "", keep: dict | None = None) -> Path:
    """grouped_bounds of the model in `directory` on the images x, for each largest k in k_maxes (the grid ks up
    to it) and each tau, saved as BOUND_CURVES: one [len(ks <= k_max), n] tensor 'k_max=K,tau=T' each, with what
    they were computed from: the model's sha256, ks, seed, the number of images, the test binarisation seed and
    the data source. A reader uses one only when all of these match what it would compute (see
    folders.read_bound_curves and the dashboard's compute.bound_curve). keep: tensors already computed so, kept as
    they are."""
    from safetensors.torch import save_file

    for k in ks:
        check_k(k)
    for tau in taus:
        check_tau(tau, "taus")
    directory = Path(directory)
    model, _ = ckpt.load_model(directory)
    tensors = dict(keep or {})
    for k_max in k_maxes:
        for tau in taus:
            name = curve_name(k_max, tau)
            if name not in tensors:
                tensors[name] = _grouped_bounds(model, x, [k for k in ks if k <= k_max], tau, seed).contiguous()
    meta = {"model_sha256": model_sha256(directory), "ks": ",".join(map(str, ks)), "seed": str(seed),
            "n_images": str(len(x)), "test_seed": str(TEST_SEED), "source": source}
    ckpt.atomic_write(directory / BOUND_CURVES, lambda p: save_file(tensors, str(p), metadata=meta))
    return directory / BOUND_CURVES


@torch.no_grad()
def importance_weights(model: IWAE, x: torch.Tensor, k: int, tau: float = 1.0,
                       seed: int = 0) -> dict:
    """For one image x [784]: its k log weights, normalised weights, ESS and the posterior draws z [k, z_dim]
    those weights were computed at."""
    check_k(k)
    check_tau(tau)
    model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        log_w, z = model.log_weights(x[None], k, tau=tau, return_z=True)
    log_w = log_w[:, 0]
    w = torch.softmax(log_w, 0)
    return {"log_w": log_w, "weights": w, "ess": effective_sample_size(log_w[:, None]).item(),
            "bound": iwae_bound(log_w[:, None]).item(), "z": z[:, 0]}
