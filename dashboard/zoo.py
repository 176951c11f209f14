"""The models the dashboard shows: the zoo (where models come from), loading a model once per version.

Where models come from: $IWAE_ZOO_DIRS (folders of model folders, separated by os.pathsep) when set,
else the shipped pretrained/ models plus the finished runs of the Train live page. Every folder is read
through iwae_core.zoo: a broken one is listed with its reason, never shown on a page.

Samples and Weight variance can also show a run's snapshots (iwae_core.runs.snapshots: the model at steps of
a training run, kept while it trains): such an entry's path is the snapshot file, and everything computed
from it is keyed on that file and its mtime as it is on a model folder's weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from iwae_core import checkpoint, folders
from iwae_core.maths.model import IWAE
from iwae_core.runs.snapshots import SNAPSHOTS, list_snapshots, read_snapshot
from iwae_core.zoo import IMAGE_PIXELS, PRETRAINED_DIR, ZooEntry, scan_models

CACHE_SECONDS = 3600  # cached results not asked for in an hour are dropped


VARIANT_ORDER = ("iwae", "iwae-r", "iwae-rrec")


ModelRef = tuple[str, int]  # (model folder or snapshot file, mtime of its weights): the cache key of what is
# computed from it


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


def entries() -> dict[str, ZooEntry]:
    """Every model the dashboard can show, by a unique label (the folder name, plus its parent if needed)."""
    entries, broken = _scan()
    return dict(zip(_labels(entries + broken)[: len(entries)], entries, strict=True))


def broken() -> dict[str, folders.Broken]:
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
    path = Path(entry.path) if is_snapshot(entry.path) else Path(entry.path) / "model.safetensors"
    return str(entry.path), path.stat().st_mtime_ns if path.exists() else 0


@st.cache_resource(max_entries=12, ttl=CACHE_SECONDS, show_spinner="Loading model…")
def model_at(path: str, mtime: int) -> IWAE:
    if is_snapshot(path):
        return read_snapshot(path)[0]
    model, _ = checkpoint.load_model(path)
    return model


def load_model(model_ref: ModelRef) -> IWAE:
    """The model of a folder, loaded once per version of its weights; a folder that broke since the zoo
    read it stops the page with the reason."""
    try:
        return model_at(*model_ref)
    except Exception as err:  # whatever the files provoke, the page says it in one line
        st.error(f"Cannot load the model in `{model_ref[0]}`: {err}")
        st.stop()


def model_name(label: str, entry: ZooEntry) -> str:
    """A zoo label with the reading of its random weights where there are any: 'mnist-iwae-r (bayes)'."""
    return label if entry.variant == "iwae" else f"{label} ({entry.run.train.objective})"


def variant_label(variant: str) -> str:
    return {"iwae": "IWAE", "iwae-r": "IWAE-R", "iwae-rrec": "IWAE-Rrec"}.get(variant, variant)


# ---- a run's snapshots -----------------------------------------------------------------------------------

def is_snapshot(path: str | os.PathLike) -> bool:
    """Whether a model path is a run's snapshot file (else it is a model folder)."""
    return Path(path).suffix == ".safetensors" and Path(path).parent.name == SNAPSHOTS


@st.cache_data(ttl=2, max_entries=4, show_spinner=False)
def _snapshot_runs(runs: str) -> list:
    from iwae_core.runs import scan_runs

    return [info for info in scan_runs(runs)[0] if list_snapshots(info.path)]


def snapshot_runs() -> dict:
    """The Train live page's runs that have snapshots (running, stopped or finished), newest first, by name:
    {name: iwae_core.runs.RunInfo} (read again every few seconds, so a new run and its status show up)."""
    return {info.name: info for info in _snapshot_runs(str(runs_root()))}


def snapshot_files(run_path: str | os.PathLike) -> dict[int, Path]:
    """step -> snapshot file of a run, by step (read from disk every time: the series grows while it trains)."""
    return dict(list_snapshots(run_path))


def snapshot_entry(info, step: int, path: Path) -> ZooEntry:
    """A run's snapshot as a zoo entry labelled 'RUN @ step N', whose path is the snapshot file."""
    return ZooEntry(f"{info.name} @ step {step:,}", Path(path), info.run, {})


def snapshot_problem(path: str | os.PathLike, run) -> str | None:
    """Why a snapshot cannot be shown (one line naming the file), or None: the header is checked against the run's
    config here, the values as the model loads."""
    try:
        folders.check_weights_header(Path(path), run)
    except folders.FileError as err:
        return str(err)
    except Exception as err:  # whatever the file provokes stays a notice
        return f"{path}: {type(err).__name__}: {err}"
    if run.model.x_dim != IMAGE_PIXELS:
        return (f"{path}: the run's model has x_dim {run.model.x_dim}; the dashboard shows 28x28 images "
                f"({IMAGE_PIXELS} pixels)")
    return None
