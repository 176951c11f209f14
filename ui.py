"""Streamlit helpers shared by the dashboard pages: the model zoo, cached models, data and results,
URL state (model, k, tau, seed) and export buttons. The maths stays in iwae_core; pages read like scripts.

Where models come from: $IWAE_ZOO_DIRS (folders of model folders, separated by os.pathsep) when set,
else the shipped pretrained/ models plus the finished runs of the Train live page (runs_dir()). Every
folder is read through iwae_core.folders: a broken one is listed with its reason, never shown on a page.

Caches are bounded in entries and time (CACHE_SECONDS), so many sessions moving sliders cannot grow the
server without limit; values a link may set are bounded too (a link asking for an expensive or impossible
value gets the nearest allowed one and a notice that names the parameter and the value used).
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import torch

from iwae_core import checkpoint, data, evaluate, explore, figures, folders
from iwae_core.maths.model import IWAE
from iwae_core.zoo import PRETRAINED_DIR, ZooEntry, scan_models

TORCH_LOCK = threading.Lock()  # seeded draws use torch's global RNG: one view computes at a time
TEST_IMAGES = 2000  # binarised test images kept in memory per dataset
ACTIVITY_IMAGES = 500  # images for the active-unit count, as in Burda et al.
TAU_MAX = 3.0
SEED_MAX = 2**31 - 1
CONFIRM_K = 1000  # from this k on, Bound vs k shows the estimated seconds and computes only on a click
URL_K_MAX = 500  # the largest k a link may ask for: k = 5000 for three models costs tens of seconds of CPU
CACHE_SECONDS = 3600  # cached results not asked for in an hour are dropped
VARIANT_ORDER = ("iwae", "iwae-r", "iwae-rrec")
PAGES = {  # page file -> what it shows, for the home page's links
    "pages/2_Samples.py": "Samples",
    "pages/3_Latent_traversals.py": "Latent traversals",
    "pages/4_Weight_variance.py": "Weight variance",
    "pages/5_Bound_vs_k.py": "Bound vs k",
}
ModelRef = tuple[str, int]  # (model folder, mtime of its weights): the cache key of everything computed from it


def page_title(path: Path) -> str:
    """'pages/3_Latent_traversals.py' -> 'Latent traversals' (the pages/ folder naming convention)."""
    stem = Path(path).stem
    return stem.split("_", 1)[1].replace("_", " ") if stem.split("_", 1)[0].isdigit() and "_" in stem else stem


# ---- the zoo -----------------------------------------------------------------------------------------

def runs_root() -> Path:
    """The Train live page's run folder (iwae_core.runs.runs_dir)."""
    from iwae_core.runs import runs_dir

    return runs_dir()


def zoo_dirs() -> list[Path] | None:
    """The folders named by $IWAE_ZOO_DIRS, or None for the default (pretrained/ + finished runs)."""
    env = os.environ.get("IWAE_ZOO_DIRS")
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p] if env else None


@st.cache_data(ttl=5, max_entries=4, show_spinner=False)
def _zoo_entries(dirs: tuple[str, ...] | None,
                 runs: str) -> tuple[list[ZooEntry], list[folders.Broken]]:
    if dirs is not None:
        return scan_models(*dirs)
    from iwae_core.runs import scan_finished_models

    shipped, broken = scan_models(PRETRAINED_DIR)
    trained, broken_runs = scan_finished_models(runs)
    return shipped + trained, broken + broken_runs


def _scan() -> tuple[list[ZooEntry], list[folders.Broken]]:
    dirs = zoo_dirs()
    return _zoo_entries(tuple(str(d) for d in dirs) if dirs is not None else None, str(runs_root()))


def _labels(items: list) -> list[str]:
    """Unique labels: the folder name, plus its parent's name where two folders share a name."""
    names = [i.name for i in items]
    return [i.name if names.count(i.name) == 1 else f"{i.name} ({i.path.parent.name})" for i in items]


def zoo() -> dict[str, ZooEntry]:
    """Every model the dashboard can show, by a unique label (the folder name, plus its parent if needed)."""
    entries, broken = _scan()
    return dict(zip(_labels(entries + broken)[: len(entries)], entries, strict=True))


def broken_models() -> dict[str, folders.Broken]:
    """The model folders that cannot be shown, by label, each with why (one line naming the file)."""
    entries, broken = _scan()
    return dict(zip(_labels(entries + broken)[len(entries):], broken, strict=True))


def zoo_sources() -> list[Path]:
    return zoo_dirs() or [PRETRAINED_DIR, runs_root()]


def no_models_message() -> None:
    """Say where models were looked for and how to get one, then stop the page."""
    where = ", ".join(f"`{p}`" for p in zoo_sources())
    st.info(f"No trained model found (looked in {where}). Train one on the **Train live** page, or run "
            "`iwae train --dataset mnist --variant iwae-r --epochs 1 --out runs/my-model` and add its parent "
            "folder to IWAE_ZOO_DIRS.")
    st.stop()


def ref(entry: ZooEntry) -> ModelRef:
    path = Path(entry.path) / "model.safetensors"
    return str(entry.path), path.stat().st_mtime_ns if path.exists() else 0


@st.cache_resource(max_entries=12, ttl=CACHE_SECONDS, show_spinner="Loading model…")
def _load_model(path: str, mtime: int) -> IWAE:
    model, _ = checkpoint.load_model(path)
    return model


def load_model(model_ref: ModelRef) -> IWAE:
    """The model of a folder, loaded once per version of its weights; a folder that broke since the zoo
    read it stops the page with the reason."""
    try:
        return _load_model(*model_ref)
    except Exception as err:  # whatever the files provoke, the page says it in one line
        st.error(f"Cannot load the model in `{model_ref[0]}`: {err}")
        st.stop()


def model_name(label: str, entry: ZooEntry) -> str:
    """A zoo label with the reading of its random weights where there are any: 'mnist-iwae-r (bayes)'."""
    return label if entry.variant == "iwae" else f"{label} ({entry.run.train.objective})"


def variant_label(variant: str) -> str:
    return {"iwae": "IWAE", "iwae-r": "IWAE-R", "iwae-rrec": "IWAE-Rrec"}.get(variant, variant)


# ---- data --------------------------------------------------------------------------------------------

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


def retry_data_button(key: str) -> None:
    """After adding data, let the user drop the cached 'not found' answer."""
    if st.button("Look for the data again", key=key):
        _test_set.clear()
        st.rerun()


def data_status() -> pd.DataFrame:
    """Whether MNIST and Omniglot are present under data_root(), without loading them."""
    root = data.data_root()
    raw = root / "MNIST" / "raw"
    mnist_files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                   "t10k-labels-idx1-ubyte")
    mnist = all((raw / f).exists() for f in mnist_files)
    mats = [root / "chardata.mat", root / "omniglot" / "chardata.mat", root / "OMNIGLOT" / "chardata.mat"]
    folders = [root / "omniglot-py" / f"images_{s}" for s in ("background", "evaluation")]
    mat = next((m for m in mats if m.exists()), None)
    omniglot = mat is not None or all(f.is_dir() for f in folders)
    return pd.DataFrame([
        {"dataset": "mnist", "present": mnist, "folder": str(raw), "expected": data.MNIST_LAYOUT},
        {"dataset": "omniglot", "present": omniglot, "folder": str(mat or root / "omniglot-py"),
         "expected": data.OMNIGLOT_LAYOUT},
    ])


# ---- cached results (keyed by model version and every setting; sliders only recompute what changed) ----

# [draws <= 12, n <= 16, 784] floats: at most 0.6 MB each
@st.cache_data(max_entries=64, ttl=CACHE_SECONDS, show_spinner=False)
def samples(model_ref: ModelRef, n: int, draws: int, tau: float, seed: int) -> np.ndarray:
    """Bernoulli means for n latent draws (from the seed) under `draws` decoder draws: [draws, n, 784]."""
    model = _load_model(*model_ref)
    with TORCH_LOCK:
        z = explore.latent_draws(model.config.z_dim, n, seed)
        return explore.decoder_samples(model, z, draws, tau, seed).numpy()


@st.cache_data(max_entries=64, ttl=CACHE_SECONDS, show_spinner="Counting active units…")
def activity(model_ref: ModelRef, dataset: str, root: str) -> dict | None:
    """Burda's active units on the first ACTIVITY_IMAGES test images, or None without data."""
    test = _test_set(dataset, root)
    if "error" in test:
        return None
    model = _load_model(*model_ref)
    with TORCH_LOCK, torch.random.fork_rng():
        torch.manual_seed(0)
        return evaluate.active_units(model, test["x"][:ACTIVITY_IMAGES])


@st.cache_data(max_entries=256, ttl=CACHE_SECONDS, show_spinner=False)
def start_point(model_ref: ModelRef, dataset: str, root: str, index: int | None, tau: float, seed: int) -> np.ndarray:
    """The traversal's starting z: E_q[z|x] of test image `index`, or a prior draw when index is None."""
    model = _load_model(*model_ref)
    with TORCH_LOCK:
        if index is None:
            return explore.prior_draw(model.config.z_dim, seed).numpy()
        x = _test_set(dataset, root)["x"][index]
        return explore.encoded_mean(model, x, tau, weight_draws=10, seed=seed).numpy()


@st.cache_data(max_entries=256, ttl=CACHE_SECONDS, show_spinner=False)
def traversal(model_ref: ModelRef, z0: tuple[float, ...], units: tuple[int, ...], offsets: tuple[float, ...],
              tau: float, seed: int) -> np.ndarray:
    """Traversal images [units, offsets, 784]: unit u set to z0[u] + offset, the rest at z0."""
    model = _load_model(*model_ref)
    with TORCH_LOCK:
        return explore.traversal(model, torch.tensor(z0), list(units), torch.tensor(offsets), tau, seed).numpy()


@st.cache_data(max_entries=256, ttl=CACHE_SECONDS, show_spinner=False)
def reconstruction(model_ref: ModelRef, dataset: str, root: str, index: int, tau: float, seed: int) -> np.ndarray:
    """Test image `index` and its reconstruction: [2, 784]."""
    model = _load_model(*model_ref)
    x = _test_set(dataset, root)["x"][index]
    with TORCH_LOCK:
        return torch.stack([x, explore.reconstruction(model, x, tau, seed)]).numpy()


# [draws <= 12, n <= 16, 784] floats: at most 0.6 MB each
@st.cache_data(max_entries=64, ttl=CACHE_SECONDS, show_spinner=False)
def reconstructions(model_ref: ModelRef, dataset: str, root: str, first: int, n: int, draws: int, tau: float,
                    seed: int) -> np.ndarray:
    """Test images first .. first + n - 1 reconstructed under `draws` weight draws: [draws, n, 784]."""
    model = _load_model(*model_ref)
    x = _test_set(dataset, root)["x"][first:first + n]
    with TORCH_LOCK:
        return explore.reconstructions(model, x, draws, tau, seed).numpy()


# mu, sigma and |mu|/sigma of two 784 x hidden layers: about 8 MB for the shipped models
@st.cache_data(max_entries=8, ttl=CACHE_SECONDS, show_spinner=False)
def weight_maps(model_ref: ModelRef) -> dict:
    """mu / sigma rows of the first encoder and last decoder layer (numpy; sigma None when deterministic)."""
    maps = explore.weight_maps(_load_model(*model_ref))
    return {net: {q: (t.numpy() if t is not None else None) for q, t in d.items()} for net, d in maps.items()}


@st.cache_data(max_entries=8, ttl=CACHE_SECONDS, show_spinner=False)
def layer_sigmas(model_ref: ModelRef) -> dict:
    return {name: s.numpy() for name, s in explore.layer_sigmas(_load_model(*model_ref)).items()}


@st.cache_data(max_entries=32, ttl=CACHE_SECONDS, show_spinner=False)
def weight_table(model_ref: ModelRef) -> pd.DataFrame:
    return pd.DataFrame(evaluate.weight_statistics(_load_model(*model_ref)))


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


_RATES: dict[ModelRef, float] = {}  # log-weight rows per second last measured per model (for cost estimates)


def _stored_curves(model_ref: ModelRef) -> dict | str | None:
    """The model folder's precomputed curves (evaluate.BOUND_CURVES) as numpy, None when there are none, or why
    they cannot be used (one line naming the file); read again when the file changes."""
    path = Path(model_ref[0]) / evaluate.BOUND_CURVES
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    return _read_stored_curves(model_ref, mtime)


@st.cache_data(max_entries=32, ttl=CACHE_SECONDS, show_spinner=False)
def _read_stored_curves(model_ref: ModelRef, mtime: int) -> dict | str:
    path = Path(model_ref[0]) / evaluate.BOUND_CURVES
    try:
        curves = folders.read_bound_curves(path)
    except folders.FileError as err:
        return str(err)
    if curves["meta"]["model_sha256"] != evaluate.model_sha256(Path(model_ref[0])):
        return f"{path} was computed for other weights than model.safetensors holds, so it is not used"
    return {name: (v.numpy() if torch.is_tensor(v) else v) for name, v in curves.items()}


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
    meta, ks, name = stored["meta"], [k for k in explore.K_GRID if k <= k_max], f"k_max={k_max},tau={tau:g}"
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
    k_max draws per image (evaluate.grouped_bounds): {'ks': [..], 'per_image': [len(ks), n] numpy}. Computed
    once per setting, or read from the model folder's precomputed curves when they hold exactly this setting;
    a computed pass's speed is kept for estimate_seconds."""
    def compute() -> dict:
        stored = _from_store(model_ref, dataset, root, k_max, tau, n_images, seed)
        if stored is not None:
            return stored
        model = _load_model(*model_ref)
        x = _test_set(dataset, root)["x"][:n_images]
        ks = [k for k in explore.K_GRID if k <= k_max]
        with TORCH_LOCK:
            start = time.perf_counter()
            per_image = evaluate.grouped_bounds(model, x, ks, noise_scale=tau, seed=seed, progress=progress)
            seconds = time.perf_counter() - start
        if seconds > 0.05:  # too short a pass says little about the speed
            _RATES[model_ref] = k_max * len(x) / seconds
        return {"ks": ks, "per_image": per_image.numpy()}

    return _BOUNDS.get((model_ref, dataset, root, k_max, float(tau), n_images, seed), compute)


def estimate_seconds(model_ref: ModelRef, rows: int) -> float:
    """Seconds for `rows` log-weight rows of a model at the speed last measured on it (a 2,000-row probe
    when none was)."""
    if model_ref not in _RATES:
        model = _load_model(*model_ref)
        x = torch.zeros(1, model.config.x_dim)
        with TORCH_LOCK, torch.no_grad(), torch.random.fork_rng():
            start = time.perf_counter()
            model.log_weights(x, 2000)
            _RATES[model_ref] = 2000 / max(time.perf_counter() - start, 1e-6)
    return rows / _RATES[model_ref]


def curve_rows(ks: list[int], per_image: np.ndarray) -> list[dict]:
    """Mean and standard error over images of per-image values [len(ks), n]: one row per k."""
    return [{"k": k, **evaluate.summarize(torch.as_tensor(v))} for k, v in zip(ks, per_image, strict=True)]


# k log weights and k posterior draws: about 1 MB at k = 5000
@st.cache_data(max_entries=32, ttl=CACHE_SECONDS, show_spinner=False)
def importance(model_ref: ModelRef, dataset: str, root: str, index: int, k: int, tau: float, seed: int) -> dict:
    """Importance weights, ESS, L_k and posterior draws z of test image `index` (numpy)."""
    model = _load_model(*model_ref)
    x = _test_set(dataset, root)["x"][index]
    with TORCH_LOCK:
        r = evaluate.importance_weights(model, x, k, noise_scale=tau, seed=seed)
    return {key: (v.numpy() if torch.is_tensor(v) else v) for key, v in r.items()}


# ---- widgets whose values live in the URL ------------------------------------------------------------

def _init(key: str, param: str, parse: Callable[[str], object], default, valid: Callable[[object], bool],
          allowed: str | Callable[[str], str]) -> None:
    """Seed a widget's state from the URL query string on first show (a shared link), else the default.

    A link's value that is not used as it stands (unreadable, out of range, off the grid, too expensive)
    leaves a notice naming the parameter, what is allowed and the value used instead (see _url_notice)."""
    if key in st.session_state and valid(st.session_state[key]):
        return
    value = default
    raw = st.query_params.get(param)
    if raw is not None:
        try:
            parsed = parse(raw)
        except (TypeError, ValueError, OverflowError):
            parsed = None
        if parsed is not None and valid(parsed):
            value = parsed
        if not _same(raw, value):
            shown = escape_markdown(raw if len(raw) <= 40 else raw[:39] + "…")
            why = escape_markdown(allowed(raw) if callable(allowed) else allowed)
            st.session_state[f"{key}:url-notice"] = (
                f"The link asked for **{param} = {shown}**, which is not allowed here ({why}); "
                f"this page uses **{param} = {escape_markdown(_url_text(value)) or 'none'}** instead.", value)
    st.session_state[key] = value


def escape_markdown(text: str) -> str:
    """Text from a link or a file, shown in markdown as it is: no link, emphasis or directive can come of it."""
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~:$])", r"\\\1", text)


def _url_text(value) -> str:
    """A widget value as sync_url writes it."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _same(raw: str, value) -> bool:
    """Whether a URL parameter's text says the same as the value the widget got."""
    if isinstance(value, list):
        return raw.split(",") == [str(v) for v in value]
    if isinstance(value, (int, float)):
        try:
            return float(raw) == float(value)
        except (ValueError, OverflowError):
            return False
    return raw == str(value)


def _url_notice(key: str) -> None:
    """Show the notice _init left for a link's value, for as long as the widget keeps the value used instead."""
    notice = st.session_state.get(f"{key}:url-notice")
    if notice is None:
        return
    message, value = notice
    if st.session_state.get(key) == value:
        st.warning(message, icon=":material/link:")
    else:
        del st.session_state[f"{key}:url-notice"]


def default_models(entries: dict[str, ZooEntry], limit: int = 3) -> list[str]:
    """IWAE, IWAE-R and IWAE-Rrec of the first dataset that has them (else the first models)."""
    by_dataset: dict[str, list[str]] = {}
    for label, e in entries.items():
        by_dataset.setdefault(e.dataset, []).append(label)
    for labels in by_dataset.values():
        chosen = []
        for v in VARIANT_ORDER:
            match = [lab for lab in labels if entries[lab].variant == v]
            if match:
                chosen.append(match[0])
        if len(chosen) >= 2:
            return chosen[:limit]
    return list(entries)[:limit]


def pick_models(page: str, multi: bool = True, prefer: str | None = None) -> dict[str, ZooEntry]:
    """Sidebar model picker (several or one), seeded from ?model=a,b; stops the page when the zoo is empty.
    A single picker defaults to the first model of variant `prefer` when there is one."""
    entries = zoo()
    if not entries:
        no_models_message()
    labels = list(entries)
    key = f"{page}:model"
    broken = broken_models()

    def allowed(raw: str) -> str:
        unknown = [x for x in raw.split(",") if x not in entries]
        reasons = [f"{x} cannot be loaded: {broken[x].error}" if x in broken else f"{x} is not in the model zoo"
                   for x in unknown] or ["one model only"]
        return "; ".join(reasons)

    if multi:
        _init(key, "model", lambda raw: [x for x in raw.split(",") if x in entries] or None,
              default_models(entries), lambda v: isinstance(v, list) and all(x in entries for x in v), allowed)
        chosen = st.sidebar.multiselect("Models", labels, key=key, help="Shared in the URL as ?model=a,b",
                                        format_func=lambda lab: model_name(lab, entries[lab]))
    else:
        defaults = default_models(entries)
        _init(key, "model", lambda raw: next((x for x in raw.split(",") if x in entries), None),
              next((lab for lab in defaults if entries[lab].variant == prefer), defaults[0]), lambda v: v in entries,
              allowed)
        chosen = [st.sidebar.selectbox("Model", labels, key=key, help="Shared in the URL as ?model=name",
                                       format_func=lambda lab: model_name(lab, entries[lab]))]
    _url_notice(key)
    return {label: entries[label] for label in chosen}


def tau_slider(page: str, default: float = 1.0, models: dict[str, ZooEntry] | None = None) -> float:
    """Weight-noise scale tau: sigma -> tau * sigma (0 = posterior-mean weights, 1 = learned posterior).

    With `models`, says which of them tau does nothing for (deterministic networks: variant iwae), and is
    disabled when that is all of them."""
    key = f"{page}:tau"
    _init(key, "tau", lambda raw: round(round(min(max(float(raw), 0.0), TAU_MAX) / 0.05) * 0.05, 2)
          if not math.isnan(float(raw)) else None, default, lambda v: isinstance(v, float) and 0 <= v <= TAU_MAX,
          f"τ from 0 to {TAU_MAX:g} in steps of 0.05")
    fixed = [label for label, e in (models or {}).items() if e.variant == "iwae"]
    disabled = bool(models) and len(fixed) == len(models)
    tau = st.sidebar.slider("τ (weight-noise scale)", 0.0, TAU_MAX, step=0.05, key=key, disabled=disabled,
                            help="σ is replaced by τσ: 0 = posterior-mean weights, 1 = the learned posterior, "
                                 ">1 exaggerated uncertainty.")
    if disabled:
        st.sidebar.caption(f"τ does nothing here: {', '.join(fixed)} {'has' if len(fixed) == 1 else 'have'} "
                           "deterministic weights (variant IWAE).")
    elif fixed:
        st.sidebar.caption(f"τ does nothing for {', '.join(fixed)} (deterministic weights, variant IWAE).")
    _url_notice(key)
    return tau


def k_slider(page: str, default: int = 100, options: tuple[int, ...] = explore.K_GRID, label: str = "k") -> int:
    """Number of importance samples, one of `options`. ?k= picks the nearest option up to URL_K_MAX: a link
    never starts a computation of tens of seconds (a larger k is one slider move away)."""
    key = f"{page}:k"
    linkable = [o for o in options if o <= URL_K_MAX] or [min(options)]

    def parse(raw: str) -> int | None:
        k = float(raw)
        if math.isnan(k):
            return None
        return min(linkable, key=lambda o: abs(math.log(o) - math.log(min(max(k, 1.0), 1e300))))

    def allowed(raw: str) -> str:
        grid = ", ".join(map(str, linkable))
        try:
            too_big = float(raw) > max(linkable)
        except ValueError:
            too_big = False
        return (f"a link may ask for k up to {max(linkable)}, since larger k cost tens of seconds of server time; "
                f"choose a larger k with the slider" if too_big else f"k is one of {grid} in a link")

    _init(key, "k", parse, default, lambda v: v in options, allowed)
    k = st.sidebar.select_slider(label, options=list(options), key=key)
    _url_notice(key)
    return k


def seed_input(page: str, default: int = 0) -> int:
    key = f"{page}:seed"
    _init(key, "seed", lambda raw: int(raw) if 0 <= int(raw) <= SEED_MAX else None, default,
          lambda v: isinstance(v, int) and 0 <= v <= SEED_MAX, f"a whole number from 0 to {SEED_MAX}")
    seed = int(st.sidebar.number_input("Seed", 0, SEED_MAX, step=1, key=key,
                                       help="Same seed, same latent and weight draws: shared in the URL."))
    _url_notice(key)
    return seed


def int_input(page: str, param: str, label: str, lo: int, hi: int, default: int, step: int = 1,
              key: str | None = None, sidebar: bool = True, help: str | None = None) -> int:
    """A whole number from lo to hi whose value lives in the URL as ?param=; a link's value outside that
    range (or not a whole number) gets the default and a notice."""
    key = key or f"{page}:{param}"
    default = min(max(default, lo), hi)
    _init(key, param, lambda raw: int(raw) if lo <= int(raw) <= hi else None, default,
          lambda v: isinstance(v, int) and lo <= v <= hi, f"a whole number from {lo} to {hi}")
    where = st.sidebar if sidebar else st
    value = int(where.number_input(label, lo, hi, step=step, key=key, help=help or f"Shared in the URL as ?{param}="))
    _url_notice(key)
    return value


def int_slider(page: str, param: str, label: str, lo: int, hi: int, default: int, step: int = 1,
               key: str | None = None, help: str | None = None) -> int:
    """A sidebar slider of whole numbers lo..hi (on the step grid from lo) whose value lives in the URL as ?param=;
    a link's value off the range or the grid gets the default and a notice."""
    key = key or f"{page}:{param}"
    default = min(max(default, lo), hi)
    valid = lambda v: isinstance(v, int) and lo <= v <= hi and (v - lo) % step == 0  # noqa: E731
    _init(key, param, lambda raw: int(raw) if valid(int(raw)) else None, default, valid,
          f"a whole number from {lo} to {hi}" + (f" in steps of {step}" if step > 1 else ""))
    value = int(st.sidebar.slider(label, lo, hi, step=step, key=key, help=help or f"Shared in the URL as ?{param}="))
    _url_notice(key)
    return value


def bool_input(page: str, param: str, label: str, default: bool, key: str | None = None,
               help: str | None = None) -> bool:
    """A sidebar checkbox whose value lives in the URL as ?param=1 or 0; any other value in a link gets the
    default and a notice."""
    key = key or f"{page}:{param}"
    _init(key, param, lambda raw: {"1": True, "0": False}.get(raw), default, lambda v: isinstance(v, bool),
          "1 (on) or 0 (off)")
    value = st.sidebar.checkbox(label, key=key, help=help or f"Shared in the URL as ?{param}=1 or 0")
    _url_notice(key)
    return value


def float_slider(page: str, param: str, label: str, lo: float, hi: float, default: float, step: float,
                 key: str | None = None, help: str | None = None) -> float:
    """A sidebar slider lo..hi on the step grid whose value lives in the URL as ?param=; a link's value off the
    range or the grid gets the default and a notice."""
    key = key or f"{page}:{param}"

    def on_grid(v) -> bool:
        return isinstance(v, float) and lo <= v <= hi and abs((v - lo) / step - round((v - lo) / step)) < 1e-9

    _init(key, param, lambda raw: float(raw) if on_grid(float(raw)) else None, float(default), on_grid,
          f"from {lo:g} to {hi:g} in steps of {step:g}")
    value = float(st.sidebar.slider(label, lo, hi, step=step, key=key, help=help or f"Shared in the URL as ?{param}="))
    _url_notice(key)
    return value


def choice_input(page: str, param: str, label: str, options: list, default=None, key: str | None = None,
                 sidebar: bool = True, help: str | None = None, format_func: Callable | None = None,
                 radio: bool = False):
    """A selectbox (or radio) over `options` whose value lives in the URL as ?param= (the option's text); a link
    naming no option gets the default (the first option when None) and a notice listing the options."""
    key = key or f"{page}:{param}"
    default = default if default in options else options[0]
    by_text = {str(o): o for o in options}
    shown = ", ".join(list(by_text)[:12]) + (", …" if len(by_text) > 12 else "")
    _init(key, param, lambda raw: by_text.get(raw), default, lambda v: v in options, f"one of {shown}")
    where = st.sidebar if sidebar else st
    value = (where.radio if radio else where.selectbox)(label, options, key=key, format_func=format_func or str,
                                                        help=help or f"Shared in the URL as ?{param}=")
    _url_notice(key)
    return value


def sync_url(**params) -> None:
    """Write the page's current settings into the URL, so the address reproduces the view."""
    for name, value in params.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, float):
            value = f"{value:g}"
        st.query_params[name] = str(value)


# ---- export ------------------------------------------------------------------------------------------

def view_settings(models: dict[str, ZooEntry], **settings) -> dict:
    """What an exported figure was made with: each model's variant, objective (bayes or mixture; '-' for the
    deterministic IWAE), dataset and folder, the given settings (k, tau, seed, images, ...) and the page's link
    parameters, which reopen the view."""
    return {"models": [{"model": label, "variant": e.variant,
                        "objective": e.run.train.objective if e.variant != "iwae" else "-",
                        "dataset": e.dataset, "folder": Path(e.path).name} for label, e in models.items()],
            **settings, "link": {name: st.query_params.get(name) for name in st.query_params}}


def objectives_text(models: dict[str, ZooEntry]) -> str:
    """'; objective bayes' (one for all random-weight models) or '; objectives a: bayes, b: mixture', for a title;
    '' when every model is deterministic (IWAE has no such reading)."""
    random = {label: e.run.train.objective for label, e in models.items() if e.variant != "iwae"}
    if not random:
        return ""
    if len(set(random.values())) == 1:
        return f"; objective {next(iter(random.values()))}"
    return "; objectives " + ", ".join(f"{label}: {o}" for label, o in random.items())


def final_link(settings: dict) -> dict:
    """The settings with the page's link as it stands now (call after the last control): the same dict, so
    export buttons made earlier on the page write the whole link too."""
    settings["link"] = {name: st.query_params.get(name) for name in st.query_params}
    return settings


def export_buttons(fig, name: str, table: Callable[[], str] | None = None, settings: dict | None = None) -> None:
    """Download buttons for one figure (files made only when clicked); PNG/SVG/PDF need a Chromium. `table`
    makes the tidy CSV (else the figure's traces in long form); `settings` adds a JSON of them."""
    reason = figures.export_unavailable_reason()
    with st.popover(f"Export {name}", icon=":material/download:"):
        formats = figures.TEXT_FORMATS if reason else figures.FORMATS
        cols = st.columns(len(formats) + (settings is not None))
        for col, fmt in zip(cols, formats, strict=False):
            data = (lambda: table().encode()) if fmt == "csv" and table is not None else \
                (lambda fmt=fmt: figures.figure_bytes(fig, fmt))
            col.download_button(fmt.upper(), data=data, file_name=f"{name}.{fmt}", mime=figures.MIME[fmt],
                                key=f"export:{name}:{fmt}", on_click="ignore")
        if settings is not None:
            cols[-1].download_button("JSON", data=lambda: figures.settings_json(fig, settings).encode(),
                                     file_name=f"{name}.json", mime="application/json", key=f"export:{name}:json",
                                     on_click="ignore", help="The figure's title and the settings that reproduce it")
        if reason:
            st.caption(reason)


def zip_button(figs: dict, page: str, tables: dict | None = None, settings: dict | None = None) -> None:
    """One button for the whole page: every figure in every available format, tidy CSVs where given and the
    settings as a JSON sidecar per figure, in a zip."""
    reason = figures.export_unavailable_reason()
    st.download_button("Download all figures (zip)", data=lambda: figures.page_zip(figs, tables, settings),
                       file_name=f"{page}.zip", mime=figures.MIME["zip"], key=f"export:{page}:zip", on_click="ignore",
                       icon=":material/folder_zip:",
                       help="PNG, SVG, PDF, HTML and CSV of every figure on this page, and its settings as JSON"
                            + (" (no PNG/SVG/PDF here: see README.txt in the zip)" if reason else ""))


# ---- the home page's tables --------------------------------------------------------------------------

def _fmt(r: dict | None) -> str:
    if not r or r.get("mean") is None:
        return "not evaluated yet"
    se = r.get("stderr")
    return f"{r['mean']:.3f} ± {se:.3f}" if se is not None else f"{r['mean']:.3f}"


INT_COLUMNS = ("train k", "epochs", "steps", "test images", "S", "active units")


def zoo_table(entries: dict[str, ZooEntry],
              broken: dict[str, folders.Broken] | None = None) -> pd.DataFrame:
    """One row per model: what it is, how long it trained, its test log-likelihood and the paper's; a broken
    folder is one row with its folder and the problem. Missing numbers are empty, never '' in a number column
    (Arrow cannot store a column that mixes text and numbers)."""
    rows = []
    for label, e in entries.items():
        test = e.metrics.get("test") or {}
        by_tau = test.get("by_tau") or {}
        training = e.metrics.get("training") or {}
        last = e.last_history
        paper = evaluate.PAPER_TABLE.get(e.dataset, {}).get(e.variant)
        valid = training.get("final_valid_bound")
        valid = valid if valid is not None else last.get("valid_bound")
        rows.append({
            "model": label, "dataset": e.dataset, "variant": variant_label(e.variant),
            "objective": e.run.train.objective if e.run.model.variant != "iwae" else "—",
            "layers": f"784-{'-'.join(map(str, e.run.model.hidden))}-{e.run.model.z_dim}", "train k": e.run.train.k,
            "epochs": training.get("epochs", last.get("epoch")),
            "steps": training.get("steps", last.get("step")),
            "valid L_k": round(valid, 2) if valid is not None else None,
            "test LL (τ=1)": _fmt(by_tau.get("1")), "test LL (τ=0)": _fmt(by_tau.get("0")),
            "paper test LL": f"{paper[0]:.3f} ± {paper[1]:.3f}" if paper else "—",
            "test images": test.get("n_images"), "S": test.get("S"),
            "active units": test.get("active_units"), "folder": str(e.path), "problem": e.problem,
        })
    for label, b in (broken or {}).items():
        rows.append({"model": label, "dataset": "—", "variant": "—", "objective": "—", "layers": "—",
                     "test LL (τ=1)": "cannot load",
                     "test LL (τ=0)": "cannot load", "paper test LL": "—", "folder": str(b.path), "problem": b.error})
    table = pd.DataFrame(rows)
    for column in INT_COLUMNS:
        if column in table:
            table[column] = table[column].astype("Int64")
    return table


def paper_table(entries: dict[str, ZooEntry]) -> pd.DataFrame:
    """The paper's table with, beside each number, the best evaluated model of that dataset and variant."""
    rows = []
    for dataset, variants in evaluate.PAPER_TABLE.items():
        for variant, (mean, se) in variants.items():
            ours = [(label, e) for label, e in entries.items() if e.dataset == dataset and e.variant == variant]
            scored = [(e.metrics["test"]["by_tau"]["1"]["mean"], label, e) for label, e in ours
                      if ((e.metrics.get("test") or {}).get("by_tau") or {}).get("1", {}).get("mean") is not None]
            if scored:
                best, label, e = max(scored, key=lambda s: s[0])
                value, who = _fmt(e.metrics["test"]["by_tau"]["1"]), label
                diff = f"{best - mean:+.3f}"
            else:
                value = "not evaluated yet" if ours else "no model"
                who, diff = (", ".join(label for label, _ in ours) or "—"), ""
            rows.append({"dataset": dataset, "variant": variant_label(variant), "paper": f"{mean:.3f} ± {se:.3f}",
                         "ours (τ=1)": value, "ours − paper": diff, "model": who})
    return pd.DataFrame(rows)
