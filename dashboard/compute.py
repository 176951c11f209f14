"""The views' computations, cached: keyed by the model's version and every setting, so a slider only
recomputes what it changed. Caches are bounded in entries and time (CACHE_SECONDS), so many sessions
moving sliders cannot grow the server without limit. The maths is iwae_core.explore, iwae_core.evaluate and
iwae_core.curves.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import torch

from iwae_core import curves, data, evaluate, explore, folders

from .zoo import CACHE_SECONDS, ModelRef, model_at

K_GRID = (1, 2, 5, 10, 25, 50, 100, 500, 1000, 5000)  # the k values of the Bound vs k view
TORCH_LOCK = threading.Lock()  # seeded draws use torch's global RNG: one view computes at a time


TEST_IMAGES = 2000  # binarised test images kept in memory per dataset


ACTIVITY_IMAGES = 500  # images for the active-unit count, as in Burda et al.


CONFIRM_K = 1000  # from this k on, Bound vs k shows the estimated seconds and computes only on a click


def data_key() -> str:
    """The data folder, part of every cache key so a changed IWAE_DATA_DIR is seen."""
    return str(data.data_root())


@st.cache_resource(max_entries=4, ttl=CACHE_SECONDS, show_spinner="Loading test images…")
def _test_set(dataset: str, root: str) -> dict:
    try:
        d = data.load_dataset(dataset, root, download=False)
    except (data.DataNotFoundError, data.DataCorruptError) as err:
        return {"error": str(err)}
    return {"x": evaluate.binarized_test_images(d, TEST_IMAGES), "source": d["source"]}


def test_set(dataset: str) -> dict:
    """The first TEST_IMAGES test images of a dataset, binarised with the evaluation seed, or {'error': why}."""
    return _test_set(dataset, data_key())


def _tau_for(model_ref: ModelRef, tau: float, encoder: bool = False, decoder: bool = False) -> float:
    """The tau a view of these networks (the encoder's, the decoder's) computes with: tau itself when one of them
    has random weights, else 0.0. A deterministic network ignores tau (its layers return their means and draw
    nothing), so its images are the same for every tau: keyed at 0.0, one cache entry serves every tau and a tau
    move recomputes nothing for it."""
    config = model_at(*model_ref).config
    return float(tau) if (encoder and config.random_encoder) or (decoder and config.random_decoder) else 0.0


def samples(model_ref: ModelRef, n: int, draws: int, tau: float, seed: int) -> np.ndarray:
    """Bernoulli means for n latent draws (from the seed) under `draws` decoder draws: [draws, n, 784]."""
    return _samples(model_ref, n, draws, _tau_for(model_ref, tau, decoder=True), seed)


# [draws <= 12, n <= 16, 784] floats: at most 0.6 MB each
@st.cache_data(max_entries=64, ttl=CACHE_SECONDS, show_spinner=False)
def _samples(model_ref: ModelRef, n: int, draws: int, tau: float, seed: int) -> np.ndarray:
    model = model_at(*model_ref)
    with TORCH_LOCK:
        z = explore.latent_draws(model.config.z_dim, n, seed)
        return explore.decoder_samples(model, z, draws, tau, seed).numpy()


@st.cache_data(max_entries=64, ttl=CACHE_SECONDS, show_spinner="Counting active units…")
def activity(model_ref: ModelRef, dataset: str, root: str) -> dict | None:
    """Burda's active units on the first ACTIVITY_IMAGES test images, or None without data."""
    test = _test_set(dataset, root)
    if "error" in test:
        return None
    model = model_at(*model_ref)
    with TORCH_LOCK, torch.random.fork_rng():
        torch.manual_seed(0)
        return evaluate.active_units(model, test["x"][:ACTIVITY_IMAGES])


def start_point(model_ref: ModelRef, dataset: str, root: str, index: int | None, tau: float, seed: int) -> np.ndarray:
    """The traversal's starting z: E_q[z|x] of test image `index`, or a prior draw when index is None (which no
    tau changes)."""
    return _start_point(model_ref, dataset, root, index,
                        _tau_for(model_ref, tau, encoder=True) if index is not None else 0.0, seed)


@st.cache_data(max_entries=256, ttl=CACHE_SECONDS, show_spinner=False)
def _start_point(model_ref: ModelRef, dataset: str, root: str, index: int | None, tau: float,
                 seed: int) -> np.ndarray:
    model = model_at(*model_ref)
    with TORCH_LOCK:
        if index is None:
            return explore.prior_draw(model.config.z_dim, seed).numpy()
        x = _test_set(dataset, root)["x"][index]
        return explore.encoded_mean(model, x, tau, weight_draws=10, seed=seed).numpy()


def traversal(model_ref: ModelRef, z0: tuple[float, ...], units: tuple[int, ...], offsets: tuple[float, ...],
              tau: float, seed: int) -> np.ndarray:
    """Traversal images [units, offsets, 784]: unit u set to z0[u] + offset, the rest at z0; one decoder weight
    draw for all units, so ask for all of them in one call."""
    return _traversal(model_ref, z0, units, offsets, _tau_for(model_ref, tau, decoder=True), seed)


# [units <= z_dim, steps <= 15, 784] floats: at most 1.9 MB each for the shipped models (z_dim 40), usually
# 0.2 MB (8 units, 9 steps)
@st.cache_data(max_entries=64, ttl=CACHE_SECONDS, show_spinner=False)
def _traversal(model_ref: ModelRef, z0: tuple[float, ...], units: tuple[int, ...], offsets: tuple[float, ...],
               tau: float, seed: int) -> np.ndarray:
    model = model_at(*model_ref)
    with TORCH_LOCK:
        return explore.traversal(model, torch.tensor(z0), list(units), torch.tensor(offsets), tau, seed).numpy()


def reconstruction(model_ref: ModelRef, dataset: str, root: str, index: int, tau: float, seed: int) -> np.ndarray:
    """Test image `index` and its reconstruction: [2, 784]."""
    return _reconstruction(model_ref, dataset, root, index, _tau_for(model_ref, tau, encoder=True, decoder=True),
                           seed)


@st.cache_data(max_entries=256, ttl=CACHE_SECONDS, show_spinner=False)
def _reconstruction(model_ref: ModelRef, dataset: str, root: str, index: int, tau: float, seed: int) -> np.ndarray:
    model = model_at(*model_ref)
    x = _test_set(dataset, root)["x"][index]
    with TORCH_LOCK:
        return torch.stack([x, explore.reconstruction(model, x, tau, seed)]).numpy()


def reconstructions(model_ref: ModelRef, dataset: str, root: str, first: int, n: int, draws: int, tau: float,
                    seed: int) -> np.ndarray:
    """Test images first .. first + n - 1 reconstructed under `draws` weight draws: [draws, n, 784]."""
    return _reconstructions(model_ref, dataset, root, first, n, draws,
                            _tau_for(model_ref, tau, encoder=True, decoder=True), seed)


# [draws <= 12, n <= 16, 784] floats: at most 0.6 MB each
@st.cache_data(max_entries=64, ttl=CACHE_SECONDS, show_spinner=False)
def _reconstructions(model_ref: ModelRef, dataset: str, root: str, first: int, n: int, draws: int, tau: float,
                     seed: int) -> np.ndarray:
    model = model_at(*model_ref)
    x = _test_set(dataset, root)["x"][first:first + n]
    with TORCH_LOCK:
        return explore.reconstructions(model, x, draws, tau, seed).numpy()


# mu, sigma and |mu|/sigma of two 784 x hidden layers: about 8 MB for the shipped models
@st.cache_data(max_entries=8, ttl=CACHE_SECONDS, show_spinner=False)
def weight_maps(model_ref: ModelRef) -> dict:
    """mu / sigma rows of the first encoder and last decoder layer (numpy; sigma None when deterministic)."""
    maps = explore.weight_maps(model_at(*model_ref))
    return {net: {q: (t.numpy() if t is not None else None) for q, t in d.items()} for net, d in maps.items()}


@st.cache_data(max_entries=8, ttl=CACHE_SECONDS, show_spinner=False)
def layer_sigmas(model_ref: ModelRef) -> dict:
    return {name: s.numpy() for name, s in explore.layer_sigmas(model_at(*model_ref)).items()}


@st.cache_data(max_entries=32, ttl=CACHE_SECONDS, show_spinner=False)
def weight_table(model_ref: ModelRef) -> pd.DataFrame:
    return pd.DataFrame(evaluate.weight_statistics(model_at(*model_ref)))


class ResultCache:
    """A small thread-safe LRU cache shared by all sessions, for results whose computation reports progress
    to the page: st.cache_data replays the elements a cached function touches, so it cannot drive a bar."""

    def __init__(self, size: int) -> None:
        self.size, self.data, self.lock = size, OrderedDict(), threading.Lock()

    def contains(self, key) -> bool:
        with self.lock:
            return key in self.data

    def get(self, key, compute: Callable[[], object]):
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        value = compute()
        with self.lock:
            self.data[key] = value
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return value


_BOUNDS = ResultCache(256)  # curves of [10 k, <= 2,000 images] floats: at most 80 kB each


_RATES: dict[tuple[ModelRef, int], float] = {}  # draws per second last measured per (model, k_max), for estimates


def _stored_curves(model_ref: ModelRef) -> dict | str | None:
    """The model folder's precomputed curves (curves.BOUND_CURVES) as numpy, None when there are none, or why
    they cannot be used (one line naming the file); read again when the file changes."""
    path = Path(model_ref[0]) / curves.BOUND_CURVES
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    return _read_stored_curves(model_ref, mtime)


@st.cache_data(max_entries=32, ttl=CACHE_SECONDS, show_spinner=False)
def _read_stored_curves(model_ref: ModelRef, mtime: int) -> dict | str:
    path = Path(model_ref[0]) / curves.BOUND_CURVES
    try:
        stored = folders.read_bound_curves(path)
    except folders.FileError as err:
        return str(err)
    if stored["meta"]["model_sha256"] != evaluate.model_sha256(Path(model_ref[0])):
        return f"{path} was computed for other weights than model.safetensors holds, so it is not used"
    return {name: (v.numpy() if torch.is_tensor(v) else v) for name, v in stored.items()}


def stored_curves_problem(model_ref: ModelRef) -> str | None:
    """Why a model's precomputed curves cannot be used, or None (none there, or fine)."""
    stored = _stored_curves(model_ref)
    return stored if isinstance(stored, str) else None


def _from_store(model_ref: ModelRef, dataset: str, root: str, k_max: int, tau: float, n_images: int,
                seed: int) -> dict | None:
    """The curve from the precomputed file when it was computed exactly as bound_curve would compute it (same
    weights, k grid up to k_max, seed, tau and test images, as many of them: the draws of an image depend on how
    many images share a call), else None."""
    stored = _stored_curves(model_ref)
    if not isinstance(stored, dict):
        return None
    meta, ks, name = stored["meta"], [k for k in K_GRID if k <= k_max], curves.curve_name(k_max, tau)
    test = _test_set(dataset, root)
    if ([k for k in meta["ks"] if k <= k_max] != ks or meta["seed"] != seed or meta["test_seed"] != evaluate.TEST_SEED
            or "error" in test or meta["source"] != test["source"] or n_images != meta["n_images"]
            or name not in stored):
        return None
    return {"ks": ks, "per_image": stored[name], "precomputed": True}


def bound_curve_cached(model_ref: ModelRef, dataset: str, root: str, k_max: int, tau: float, n_images: int,
                       seed: int) -> bool:
    """Whether bound_curve has this setting already, computed or precomputed (then showing it costs nothing and
    needs no click)."""
    return _BOUNDS.contains((model_ref, dataset, root, k_max, float(tau), n_images, seed)) or \
        _from_store(model_ref, dataset, root, k_max, tau, n_images, seed) is not None


def bound_curve(model_ref: ModelRef, dataset: str, root: str, k_max: int, tau: float, n_images: int, seed: int,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """L_k per image of the first n_images test images for every k of the grid up to k_max, from one pass of
    k_max draws per image (curves.grouped_bounds): {'ks': [..], 'per_image': [len(ks), n] numpy}. Computed
    once per setting, or read from the model folder's precomputed curves when they hold exactly this setting;
    a computed pass's speed is kept for estimate_seconds."""
    def compute() -> dict:
        stored = _from_store(model_ref, dataset, root, k_max, tau, n_images, seed)
        if stored is not None:
            return stored
        model = model_at(*model_ref)
        x = _test_set(dataset, root)["x"][:n_images]
        ks = [k for k in K_GRID if k <= k_max]
        with TORCH_LOCK:
            start = time.perf_counter()
            per_image = curves.grouped_bounds(model, x, ks, tau=tau, seed=seed, progress=progress)
            seconds = time.perf_counter() - start
        if seconds > 0.05:  # too short a pass says little about the speed
            _RATES[(model_ref, k_max)] = k_max * len(x) / seconds
        return {"ks": ks, "per_image": per_image.numpy()}

    return _BOUNDS.get((model_ref, dataset, root, k_max, float(tau), n_images, seed), compute)


def estimate_seconds(model_ref: ModelRef, k_max: int, n_images: int) -> float:
    """Seconds for bound_curve's pass of k_max draws on n_images images, at the speed last measured for this model
    and k_max; when none was, from a probe of the pass itself on one (blank) image, timed on its second call (the
    first pays one-off allocations). The speed per draw depends on k_max: small passes pay more per draw."""
    if (model_ref, k_max) not in _RATES:
        model = model_at(*model_ref)
        x = torch.zeros(1, model.config.x_dim)
        with TORCH_LOCK, torch.random.fork_rng():
            for _ in range(2):
                start = time.perf_counter()
                curves.grouped_bounds(model, x, [k_max])
                seconds = time.perf_counter() - start
        _RATES[(model_ref, k_max)] = k_max / max(seconds, 1e-6)
    return k_max * n_images / _RATES[(model_ref, k_max)]


def curve_rows(ks: list[int], per_image: np.ndarray) -> list[dict]:
    """Mean and standard error over images of per-image values [len(ks), n]: one row per k."""
    return [{"k": k, **evaluate.summarize(torch.as_tensor(v))} for k, v in zip(ks, per_image, strict=True)]


# k log weights and k posterior draws: about 1 MB at k = 5000
@st.cache_data(max_entries=32, ttl=CACHE_SECONDS, show_spinner=False)
def importance(model_ref: ModelRef, dataset: str, root: str, index: int, k: int, tau: float, seed: int) -> dict:
    """Importance weights, ESS, L_k and posterior draws z of test image `index` (numpy)."""
    model = model_at(*model_ref)
    x = _test_set(dataset, root)["x"][index]
    with TORCH_LOCK:
        r = curves.importance_weights(model, x, k, tau=tau, seed=seed)
    return {key: (v.numpy() if torch.is_tensor(v) else v) for key, v in r.items()}


def retry_data_button(key: str) -> None:
    """After adding data, let the user drop the cached 'not found' answer."""
    if st.button("Look for the data again", key=key):
        _test_set.clear()
        st.rerun()


def figure(build: Callable, *args, **kwargs):
    """build(*args, **kwargs), a dashboard.figures or dashboard.charts builder, made once per value of its
    arguments: building a plotly figure (its validation) was most of a rerun whose numbers were all cached, e.g.
    moving back to a k or tau seen before. The figure is shared by every session showing the same view, so it must
    not be changed after (st.plotly_chart and the exports only read it)."""
    return _figure(f"{build.__module__}.{build.__qualname__}", build, args, kwargs)


# plotly figures: up to about 5 MB for Samples at 12 weight draws of 16 images in four panels, usually below 1 MB
@st.cache_resource(max_entries=32, ttl=CACHE_SECONDS, show_spinner=False)
def _figure(name: str, _build: Callable, args: tuple, kwargs: dict):
    return _build(*args, **kwargs)
