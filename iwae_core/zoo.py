"""The model zoo: finding model folders on disk and reading each one, checked, into a ZooEntry.

A model folder holds model.safetensors (the weights), config.json (the RunConfig) and metrics.json (what
training and evaluation measured); history.csv when it was trained here. The shipped models live in
pretrained/; the dashboard adds the Train live page's finished runs, and a sweep folder (`iwae sweep`)
contributes its trials as SWEEP/TRIAL. Every folder is read through folders' checked readers: a folder
that cannot be used is returned as a folders.Broken with the reason, never raised at the caller.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import SOURCE_ROOT, history
from .checkpoint import CheckpointError, load_model
from .config import RunConfig
from .folders import Broken, FileError, check_weights_header, read_metrics, read_run_config

PRETRAINED_DIR = SOURCE_ROOT / "pretrained"
MODEL_FILES = ("model.safetensors", "config.json", "metrics.json")  # any of them makes a folder a model folder
IMAGE_PIXELS = 784  # the dashboard draws 28x28 images


@dataclass
class ZooEntry:
    """A model folder found on disk, with what its JSON files say about it."""

    name: str
    path: Path
    run: RunConfig
    metrics: dict
    last_history: dict = field(default_factory=dict)  # the last row of history.csv, as numbers (dashboard)
    problem: str = ""  # why some of its numbers are missing (an unreadable metrics.json or history.csv)

    @property
    def dataset(self) -> str:
        return self.run.train.dataset

    @property
    def variant(self) -> str:
        return self.run.model.variant


def find_models(*roots: str | os.PathLike) -> list[ZooEntry]:
    """The usable model folders directly under the roots (default: the shipped pretrained models)."""
    return scan_models(*(roots or (PRETRAINED_DIR,)))[0]


def select_models(dirs=None) -> list[ZooEntry]:
    """The model folders named (in their order on disk), or all shipped pretrained models when none are."""
    if not dirs:
        return find_models()
    wanted = {Path(d).resolve() for d in dirs}
    return [e for e in find_models(*{p.parent for p in wanted}) if e.path.resolve() in wanted]


def read_model_folder(folder: Path) -> ZooEntry:
    """A model folder as a usable ZooEntry, or FileError with the reason it cannot be used.

    Its config and weights must load (the header is checked first, then every value, as the pages will
    load them); an unreadable metrics.json or history.csv only becomes the entry's `problem`."""
    folder = Path(folder)
    run = read_run_config(folder / "config.json")
    if run.model.x_dim != IMAGE_PIXELS:
        raise FileError(f"{folder / 'config.json'}: x_dim is {run.model.x_dim}; the dashboard shows "
                        f"28x28 images ({IMAGE_PIXELS} pixels)")
    check_weights_header(folder / "model.safetensors", run)
    error = _weights_error(str(folder), _signature(folder))
    if error:
        raise FileError(error)
    problems, metrics, last = [], {}, {}
    try:
        metrics = read_metrics(folder / "metrics.json")
    except FileError as err:
        problems.append(str(err))
    try:
        rows = history.read(folder / "history.csv")
        last = rows[-1] if rows else {}
    except FileError as err:
        problems.append(str(err))
    return ZooEntry(folder.name, folder, run, metrics, last_history=last, problem="; ".join(problems))


def entry_or_broken(folder: Path) -> ZooEntry | Broken:
    """read_model_folder, with whatever goes wrong turned into a Broken folder (never an exception)."""
    folder = Path(folder)
    try:
        return read_model_folder(folder)
    except FileError as err:
        return Broken(folder.name, folder, str(err))
    except Exception as err:  # a folder never takes the others down with it
        return Broken(folder.name, folder, f"{folder}: {type(err).__name__}: {err}")


@functools.lru_cache(maxsize=256)
def _weights_error(folder: str, signature: tuple) -> str | None:
    """Why the weights of a folder cannot be loaded (None when they can); cached per version of its files."""
    try:
        load_model(folder)
    except CheckpointError as err:
        return str(err)
    except Exception as err:  # anything else a file can provoke stays this folder's problem
        return f"{Path(folder) / 'model.safetensors'} cannot be loaded: {type(err).__name__}: {err}"
    return None


def _signature(folder: Path) -> tuple:
    stats = []
    for name in ("model.safetensors", "config.json"):
        s = (folder / name).stat()
        stats.append((s.st_size, s.st_mtime_ns, s.st_ino))
    return tuple(stats)


SWEEP_MANIFEST = "sweep.json"  # marks a folder of `iwae sweep` trials (see sweep.py)


def scan_models(*roots: str | os.PathLike) -> tuple[list[ZooEntry], list[Broken]]:
    """The model folders directly under the roots: (usable entries, broken folders), each in name order.

    A folder counts as a model folder when it holds any of model.safetensors, config.json, metrics.json.
    The trials of a sweep (a root that is a sweep folder, or a sweep folder directly under a root) are
    named SWEEP/TRIAL, so that they group together and apart from other models."""
    entries, broken = [], []
    for root in roots:
        root = Path(root)
        try:
            subfolders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        except OSError:
            continue
        sweeps = [root] if (root / SWEEP_MANIFEST).is_file() else []
        sweeps += [p for p in subfolders if (p / SWEEP_MANIFEST).is_file()]
        groups = [(folder, None) for folder in subfolders if root not in sweeps and _is_model_folder(folder)]
        for sweep in sweeps:
            try:
                groups += [(p, sweep.name) for p in sorted(sweep.iterdir()) if p.is_dir() and _is_model_folder(p)]
            except OSError:
                continue
        for folder, sweep in groups:
            found = entry_or_broken(folder)
            if sweep is not None:
                found = dataclasses.replace(found, name=f"{sweep}/{folder.name}")
            (broken if isinstance(found, Broken) else entries).append(found)
    return entries, broken


def _is_model_folder(folder: Path) -> bool:
    return any((folder / f).exists() for f in MODEL_FILES)
