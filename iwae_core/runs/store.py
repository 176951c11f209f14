"""Run folders on disk: their layout, reading a run's state, and the locks that say a worker owns it.

A run folder under runs_dir() holds config.json (the RunConfig), run.json (how it was started),
progress.json (status and live curves, rewritten atomically about once a second by the worker),
samples.png (a sample grid from fixed z), worker.log, and, once trained a little, the model folder
files the Trainer writes (model.safetensors, history.csv, checkpoint/, metrics.json at the end).
A worker holds an exclusive flock on DIR/worker.lock for as long as it trains, so two tabs or two
workers never train one run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import folders, zoo
from ..checkpoint import CheckpointError, read_json, write_json
from ..config import RunConfig
from ..data import cache_dir
from ..zoo import ZooEntry

ACTIVE = ("starting", "running", "stopping")  # a worker owns the run
RESUMABLE = ("stopped", "interrupted")
STATUSES = ("queued", *ACTIVE, "stopped", "finished", "failed", "interrupted", "unresponsive")
# a finished run's evaluation job (progress.json's "evaluation"); the middle three: its worker holds the lock.
# "unresponsive" is never written: read_run reports it for a job that holds the lock without reporting.
EVALUATION_STATUSES = ("queued", "starting", "running", "stopping", "done", "failed", "cancelled", "interrupted",
                       "unresponsive")
EVALUATION_RUNNING = EVALUATION_STATUSES[1:4]  # its worker holds the run's lock
EVALUATION_BUSY = ("queued", *EVALUATION_RUNNING, "unresponsive")  # a job exists or is waiting for a slot
STALE_SECONDS = 60.0  # no heartbeat for this long while the lock is held: the worker is hung
CONFIG, OPTIONS, PROGRESS, SAMPLES = "config.json", "run.json", "progress.json", "samples.png"
LOCK, STOP, LOG = "worker.lock", "stop", "worker.log"


class RunError(RuntimeError):
    """A run cannot be started, resumed or stopped as asked; the message says why and what to do."""


class RunLimitError(RunError):
    """Too many runs are training or waiting already."""


def runs_dir() -> Path:
    """Where runs live: $IWAE_RUNS_DIR, else the user's cache folder /runs."""
    env = os.environ.get("IWAE_RUNS_DIR")
    return Path(env).expanduser() if env else cache_dir() / "runs"


def max_runs() -> int:
    """How many runs may train at once: $IWAE_MAX_RUNS, else half the CPU cores (at least one)."""
    env = os.environ.get("IWAE_MAX_RUNS")
    if env:
        try:
            value = int(env)
        except ValueError as err:
            raise RunError(f"IWAE_MAX_RUNS must be a positive integer, got {env!r}") from err
        if value < 1:
            raise RunError(f"IWAE_MAX_RUNS must be a positive integer, got {env!r}")
        return value
    return max(1, (os.cpu_count() or 1) // 2)


def available_devices() -> list[str]:
    """Device choices for a run on this machine: auto and cpu, plus cuda or mps when present."""
    import torch

    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return found


# ---- reading runs ---------------------------------------------------------------------------------

@dataclass
class RunInfo:
    """One run as seen from outside: its config, options and current (checked) progress."""

    name: str
    path: Path
    run: RunConfig
    options: dict
    progress: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.progress.get("status", "queued")

    @property
    def message(self) -> str:
        return self.progress.get("message", "")

    @property
    def fraction(self) -> float:
        """Share of the planned steps done, in [0, 1] (0 while the total is not known yet)."""
        total = self.progress.get("total_steps") or 0
        return min(1.0, self.progress.get("step", 0) / total) if total else 0.0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE or self.status == "unresponsive"

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE

    @property
    def evaluation(self) -> dict:
        """The state of the test log-likelihood job on this (finished) run: {} when none was asked for."""
        return self.progress.get("evaluation") or {}

    @property
    def samples(self) -> Path | None:
        path = self.path / SAMPLES
        return path if path.exists() else None

    def curve_rows(self) -> list[dict]:
        """The live curves as rows for charts.training_curves, all against the step: per-step training
        bound and KL (merged into at most MAX_POINTS points) and the validation bound, per epoch and every
        valid_every steps (progress.json's valid; a worker that wrote none: history's per-epoch bounds)."""
        rows = [{"step": s, "train_bound": b, "kl_per_datapoint": kl} for s, b, kl in self.progress.get("points", [])]
        if self.progress.get("valid"):
            rows += [{"step": s, "valid_bound": v} for s, v in self.progress["valid"]]
        else:
            rows += [{"step": r["step"], "valid_bound": r["valid_bound"]} for r in self.progress.get("history", [])
                     if r.get("valid_bound") is not None]
        return rows

    def summary(self) -> dict:
        """A flat row for a table of runs."""
        points = self.progress.get("points") or []
        return {"run": self.name, "status": self.status, "dataset": self.run.train.dataset,
                "variant": self.run.model.variant, "k": self.run.train.k,
                "step": self.progress.get("step", 0), "of": self.progress.get("total_steps"),
                "progress": round(100 * self.fraction, 1),
                "bound": round(points[-1][1], 2) if points else None,
                "created": self.options.get("created", "")}


def read_run(path: str | os.PathLike) -> RunInfo:
    """Load one run folder, every file checked, and settle its status (a dead or hung worker is detected here).
    A file that cannot be read or does not hold what it should is a RunError naming the file."""
    path = Path(path)
    if not (path / OPTIONS).exists():
        raise RunError(f"{path} is not a run folder (no {OPTIONS})")
    try:
        run = folders.read_run_config(path / CONFIG)
        options = folders.read_options(path / OPTIONS)
        progress = folders.read_progress(path / PROGRESS, STATUSES)
    except folders.FileError as err:
        raise RunError(str(err)) from err
    info = RunInfo(path.name, path, run, options, progress)
    if info.status in ACTIVE:
        info.progress = _check_worker(path, info.progress)
    status = info.evaluation.get("status")
    if status is not None and status not in EVALUATION_STATUSES:
        raise RunError(f"{path / PROGRESS}: evaluation.status is {status!r:.40}, not one of "
                       f"{', '.join(EVALUATION_STATUSES)}")
    if status in EVALUATION_RUNNING:
        info.progress = _check_evaluation(path, info.progress)
    return info


def scan_runs(root: str | os.PathLike | None = None) -> tuple[list[RunInfo], list[folders.Broken]]:
    """Every run folder under root (default runs_dir()), newest first, and those that cannot be read, each
    with its reason: one bad folder is reported, never in the way of the others."""
    root = Path(root) if root else runs_dir()
    found, broken = [], []
    try:
        candidates = [d for d in root.iterdir() if d.is_dir() and (d / OPTIONS).exists()] if root.is_dir() else []
    except OSError:
        candidates = []
    for d in candidates:
        try:
            found.append(read_run(d))
        except RunError as err:
            broken.append(folders.Broken(d.name, d, str(err)))
        except Exception as err:  # anything a file can provoke stays that run's problem
            broken.append(folders.Broken(d.name, d, f"{d}: {type(err).__name__}: {err}"))
    found.sort(key=lambda r: (r.options.get("created") or "", r.name), reverse=True)
    return found, sorted(broken, key=lambda b: b.name)


def list_runs(root: str | os.PathLike | None = None) -> list[RunInfo]:
    """Every readable run folder under root (default runs_dir()), newest first."""
    return scan_runs(root)[0]


def scan_finished_models(root: str | os.PathLike | None = None) -> tuple[list[ZooEntry], list[folders.Broken]]:
    """The model folders of the runs that trained to the end (runs in progress are left out), and the broken
    ones: finished runs whose model files do not load, and unreadable run folders that hold weights."""
    root = Path(root) if root else runs_dir()
    found, broken_runs = scan_runs(root)
    entries, broken = [], []
    for info in sorted(found, key=lambda r: r.name):
        if info.status == "finished":
            item = zoo.entry_or_broken(info.path)
            (broken if isinstance(item, folders.Broken) else entries).append(item)
    broken += [b for b in broken_runs if (b.path / "model.safetensors").exists()]
    return entries, sorted(broken, key=lambda b: b.name)


def finished_models(root: str | os.PathLike | None = None) -> list[ZooEntry]:
    """Zoo entries (zoo.ZooEntry) of the runs that trained to the end; runs in progress are left out."""
    return scan_finished_models(root)[0]


def read_state(path: Path) -> dict:
    try:
        data = read_json(path) if path.exists() else {}
    except (CheckpointError, RecursionError):
        return {}  # a reader never sees half a file (atomic writes); unreadable means absent
    return data if isinstance(data, dict) else {}


def _check_worker(path: Path, progress: dict) -> dict:
    """An active status is only true while a worker holds the lock and beats; otherwise say what happened."""
    fd = try_lock(path)
    if fd is None:  # a worker holds the lock
        age = time.time() - progress.get("heartbeat", time.time())
        if age > STALE_SECONDS:
            return {**progress, "status": "unresponsive",
                    "message": f"the worker (pid {progress.get('pid')}) holds the run but has not reported for "
                               f"{age:.0f} s; Stop kills it, then Resume continues from the last checkpoint"}
        return progress
    try:  # we hold the lock now, so no worker can write: re-read and settle
        fresh = read_state(path / PROGRESS)
        if fresh.get("status") not in ACTIVE:
            return fresh
        last = _last_log_line(path)
        fresh.update(status="interrupted",
                     message=(f"the worker (pid {fresh.get('pid')}) ended without finishing"
                              + (f" (last log line: {last})" if last else "")
                              + f"; Resume continues from the last checkpoint (step {_checkpoint_step(path)})"))
        write_json(path / PROGRESS, fresh)
        return fresh
    finally:
        os.close(fd)


def _check_evaluation(path: Path, progress: dict) -> dict:
    """As _check_worker, for the evaluation job: a worker that holds the lock but has not reported for
    STALE_SECONDS is said to be unresponsive; one that is gone leaves the evaluation interrupted."""
    fd = try_lock(path)
    if fd is None:
        evaluation = progress.get("evaluation") or {}
        age = time.time() - evaluation.get("heartbeat", time.time())
        if age > STALE_SECONDS:
            return {**progress, "evaluation": {
                **evaluation, "status": "unresponsive",
                "message": f"the evaluation process (pid {evaluation.get('pid')}) has not reported for {age:.0f} s; "
                           "cancelling it ends the process"}}
        return progress
    try:
        fresh = read_state(path / PROGRESS)
        evaluation = fresh.get("evaluation") or {}
        if evaluation.get("status") not in EVALUATION_RUNNING:
            return fresh
        last = _last_log_line(path)
        fresh["evaluation"] = {**evaluation, "status": "interrupted",
                               "message": f"the evaluation process (pid {evaluation.get('pid')}) ended without "
                                          f"finishing" + (f" (last log line: {last})" if last else "")
                                          + "; metrics.json is as it was"}
        write_json(path / PROGRESS, fresh)
        return fresh
    finally:
        os.close(fd)


def _last_log_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in (path / LOG).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _checkpoint_step(path: Path) -> int | str:
    step = read_state(path / "checkpoint" / "trainer_state.json").get("step", 0)
    return step if isinstance(step, int) else "unknown"


# ---- locks ------------------------------------------------------------------------------------------

def try_lock(path: Path) -> int | None:
    """An fd holding the run's exclusive lock, or None when someone else holds it."""
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def try_lock_within(path: Path, seconds: float) -> int | None:
    """As try_lock, but wait up to `seconds` for a lock that is being released.

    A worker writes its final status before it lets go of the lock, so a run can read as
    stopped a few milliseconds before its lock is free; Resume pressed in that gap should wait.
    """
    end = time.monotonic() + seconds
    while (fd := try_lock(path)) is None and time.monotonic() < end:
        time.sleep(0.05)
    return fd


def is_locked(path: str | os.PathLike) -> bool:
    """Whether a worker is training this run right now (False for a folder whose lock file cannot be opened)."""
    try:
        fd = try_lock(Path(path))
    except OSError:
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


@contextlib.contextmanager
def dispatch_lock(root: Path):
    """Serialises queue decisions across processes (tabs, workers) so the limit is never overshot."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".dispatch.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
