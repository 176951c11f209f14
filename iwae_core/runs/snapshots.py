"""Snapshots: a bounded series of a run's model weights, kept while it trains, for views that follow or replay it.

The worker writes DIR/snapshots/step-NNNNNNNNN.safetensors (the model's weights only, as model.safetensors holds
them; the run's config.json describes them) when training starts, at the end of every epoch, every
SNAPSHOT_SECONDS in between, and when the run stops or finishes. Each file is written atomically, so a reader
never sees half of one. At most MAX_SNAPSHOTS are kept: when one more arrives, the snapshot whose removal leaves
the most even spacing of steps goes (never the first or the latest), so a long run keeps an evenly thinned
history (older stretches grow sparser) and a bounded footprint. A resumed run first drops the snapshots beyond
its checkpoint's step: they belong to steps it is about to train again.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from .. import folders
from ..checkpoint import CheckpointError, atomic_write, checked_state
from ..config import RunConfig
from ..maths.model import IWAE
from .store import CONFIG

SNAPSHOTS = "snapshots"  # the folder in a run folder
MAX_SNAPSHOTS = 30
SNAPSHOT_SECONDS = 30.0  # between epoch ends, a snapshot at most this often
_NAME = re.compile(r"step-(\d{9})\.safetensors")


def snapshot_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / SNAPSHOTS / f"step-{step:09d}.safetensors"


def list_snapshots(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, file) of every snapshot of a run, by step; [] when it has none (or its folder cannot be read)."""
    folder = Path(run_dir) / SNAPSHOTS
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted((int(m[1]), folder / name) for name in names if (m := _NAME.fullmatch(name)))


def write_snapshot(run_dir: str | os.PathLike, model: IWAE, step: int, keep: int = MAX_SNAPSHOTS) -> Path:
    """Write the model's weights as the snapshot of `step` (atomically, replacing one of that step), then thin
    the series to `keep` snapshots."""
    path = snapshot_path(run_dir, step)
    path.parent.mkdir(exist_ok=True)
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda p: save_file(state, str(p), metadata={"step": str(step)}))
    thin(run_dir, keep)
    return path


def thin(run_dir: str | os.PathLike, keep: int = MAX_SNAPSHOTS) -> list[int]:
    """Delete snapshots until at most `keep` (at least 2) are left, never the first or the latest; each time the
    one whose removal leaves the most even steps: the smallest largest gap, then the largest smallest gap, then
    the earliest. Returns the steps deleted."""
    if keep < 2:
        raise ValueError(f"a run keeps at least 2 snapshots (the first and the latest), not {keep}")
    found = list_snapshots(run_dir)
    removed = []
    while len(found) > keep:
        steps = [s for s, _ in found]
        i = min(range(1, len(steps) - 1), key=lambda j: _spacing(steps[:j] + steps[j + 1:]) + (j,))
        step, path = found.pop(i)
        path.unlink(missing_ok=True)
        removed.append(step)
    return removed


def _spacing(steps: list[int]) -> tuple[int, int]:
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    return max(gaps), -min(gaps)


def drop_after(run_dir: str | os.PathLike, step: int) -> list[int]:
    """Delete the snapshots of steps after `step` and what a killed write left behind (a resumed run trains
    those steps again); returns the steps deleted."""
    folder = Path(run_dir) / SNAPSHOTS
    removed = []
    for s, path in list_snapshots(run_dir):
        if s > step:
            path.unlink(missing_ok=True)
            removed.append(s)
    for tmp in folder.glob(".step-*.tmp") if folder.is_dir() else []:
        tmp.unlink(missing_ok=True)
    return removed


def read_snapshot(path: str | os.PathLike, run: RunConfig | None = None) -> tuple[IWAE, RunConfig]:
    """The model of a snapshot file, checked as a model folder is: the run's config.json (unless given), the
    file's header against it (names, shapes, floating-point types), then every value (finite, of sane size).
    Whatever is wrong is a folders.FileError naming the file."""
    path = Path(path)
    if run is None:
        run = folders.read_run_config(path.parent.parent / CONFIG)
    folders.check_weights_header(path, run)
    try:
        state = checked_state(path, folders.expected_tensors(run))
    except CheckpointError as err:
        raise folders.FileError(str(err)) from err
    model = IWAE(run.model)
    model.load_state_dict(state)
    return model.eval(), run


class Keeper:
    """The worker's side: a snapshot when training starts (after a resume has dropped the snapshots beyond its
    checkpoint), at every epoch's end, every `seconds` in between, and at the end. A snapshot that cannot be
    written is said once in the worker's log; training goes on without it."""

    def __init__(self, run_dir: str | os.PathLike, seconds: float = SNAPSHOT_SECONDS,
                 keep: int = MAX_SNAPSHOTS) -> None:
        self.run_dir, self.seconds, self.keep = Path(run_dir), seconds, keep
        self._last, self._step, self._warned = time.monotonic(), None, False

    def start(self, trainer) -> None:
        drop_after(self.run_dir, trainer.step)
        self.save(trainer)

    def on_step(self, trainer, metrics: dict) -> None:
        if time.monotonic() - self._last >= self.seconds:
            self.save(trainer)

    def on_epoch(self, trainer, row: dict) -> None:
        self.save(trainer)

    def save(self, trainer) -> None:
        if trainer.step == self._step:
            return
        try:
            write_snapshot(self.run_dir, trainer.model, trainer.step, self.keep)
        except OSError as err:
            if not self._warned:
                print(f"warning: cannot write a snapshot in {self.run_dir / SNAPSHOTS} ({err}); training goes on "
                      "without snapshots", file=sys.stderr)
                self._warned = True
        self._last, self._step = time.monotonic(), trainer.step
