"""Training runs that live on disk: start, watch, stop, resume and queue them from any process.

A run folder under runs_dir() holds config.json (the RunConfig), run.json (how it was started),
progress.json (status and live curves, rewritten atomically about once a second by the worker),
samples.png (a sample grid from fixed z), worker.log, and, once trained a little, the model folder
files the Trainer writes (model.safetensors, history.csv, checkpoint/, metrics.json at the end).
The worker is a detached process `python -m iwae_core.runs worker DIR` that holds an exclusive
flock on DIR/worker.lock for as long as it trains, so two tabs or two workers never train one run.
A global limit (IWAE_MAX_RUNS) caps concurrent workers; runs beyond it wait in a queue.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import folders, zoo
from .checkpoint import CheckpointError, read_json, write_json
from .config import RunConfig
from .data import cache_dir
from .zoo import ZooEntry

ACTIVE = ("starting", "running", "stopping")  # a worker owns the run
RESUMABLE = ("stopped", "interrupted")
STATUSES = ("queued", *ACTIVE, "stopped", "finished", "failed", "interrupted", "unresponsive")
RELEASE_SECONDS = 5.0  # how long Resume waits for a worker that has just finished to let go of its lock
STALE_SECONDS = 60.0  # no heartbeat for this long while the lock is held: the worker is hung
MAX_QUEUED = 8  # more waiting runs than this is refused: many tabs cannot pile up work
MAX_POINTS = 1000  # per-step curve points kept in progress.json (older ones are merged pairwise)
HEARTBEAT_SECONDS = 1.0
SAMPLE_SECONDS = 3.0
GRID = 8  # samples.png is GRID x GRID images from fixed z

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
    def samples(self) -> Path | None:
        path = self.path / SAMPLES
        return path if path.exists() else None

    def curve_rows(self) -> list[dict]:
        """The live curves as rows for figures.training_curves, all against the step: per-step training
        bound and KL (merged into at most MAX_POINTS points) and the per-epoch validation bound."""
        rows = [{"step": s, "train_bound": b, "kl_per_datapoint": kl} for s, b, kl in self.progress.get("points", [])]
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


def _read(path: Path) -> dict:
    try:
        data = read_json(path) if path.exists() else {}
    except (CheckpointError, RecursionError):
        return {}  # a reader never sees half a file (atomic writes); unreadable means absent
    return data if isinstance(data, dict) else {}


def _check_worker(path: Path, progress: dict) -> dict:
    """An active status is only true while a worker holds the lock and beats; otherwise say what happened."""
    fd = _try_lock(path)
    if fd is None:  # a worker holds the lock
        age = time.time() - progress.get("heartbeat", time.time())
        if age > STALE_SECONDS:
            return {**progress, "status": "unresponsive",
                    "message": f"the worker (pid {progress.get('pid')}) holds the run but has not reported for "
                               f"{age:.0f} s; Stop kills it, then Resume continues from the last checkpoint"}
        return progress
    try:  # we hold the lock now, so no worker can write: re-read and settle
        fresh = _read(path / PROGRESS)
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


def _last_log_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in (path / LOG).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _checkpoint_step(path: Path) -> int | str:
    step = _read(path / "checkpoint" / "trainer_state.json").get("step", 0)
    return step if isinstance(step, int) else "unknown"


# ---- locks ------------------------------------------------------------------------------------------

def _try_lock(path: Path) -> int | None:
    """An fd holding the run's exclusive lock, or None when someone else holds it."""
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _try_lock_within(path: Path, seconds: float) -> int | None:
    """As _try_lock, but wait up to `seconds` for a lock that is being released.

    A worker writes its final status before it lets go of the lock, so a run can read as
    stopped a few milliseconds before its lock is free; Resume pressed in that gap should wait.
    """
    end = time.monotonic() + seconds
    while (fd := _try_lock(path)) is None and time.monotonic() < end:
        time.sleep(0.05)
    return fd


def is_locked(path: str | os.PathLike) -> bool:
    """Whether a worker is training this run right now (False for a folder whose lock file cannot be opened)."""
    try:
        fd = _try_lock(Path(path))
    except OSError:
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


@contextlib.contextmanager
def _dispatch_lock(root: Path):
    """Serialises queue decisions across processes (tabs, workers) so the limit is never overshot."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".dispatch.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---- how big a run may be ---------------------------------------------------------------------------

def step_memory_bytes(run: RunConfig) -> int:
    """A generous estimate of the memory one training step of `run` needs.

    Autograd keeps several [k, batch, width] float32 tensors per layer for the backward pass (inputs, means,
    noise, activations; Flipout and the local reparameterisation add their own), so the step grows with
    k x batch x (pixels + hidden units): about 8 floats per pixel, 12 per hidden unit (encoder and decoder)
    and 8 per latent for every one of the k x batch rows. That is 1.2-2x what a step was measured to take;
    the weights add their means, spreads, gradients and Adam moments (8 floats each)."""
    m, t = run.model, run.train
    rows = t.k * t.batch_size
    per_row = 8 * m.x_dim + 12 * sum(m.hidden) + 8 * m.z_dim
    sizes = [m.x_dim, *m.hidden, 2 * m.z_dim] + [m.z_dim, *reversed(m.hidden), m.x_dim]
    weights = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return 4 * (rows * per_row + 8 * weights)


def step_memory_limit() -> int:
    """Bytes a run's training step may take: $IWAE_MAX_STEP_GB, else a quarter of the machine's memory
    (several runs may train at once, beside the dashboard)."""
    env = os.environ.get("IWAE_MAX_STEP_GB")
    if env:
        try:
            value = float(env)
        except ValueError:
            value = float("nan")
        if not (value > 0 and math.isfinite(value)):
            raise RunError(f"IWAE_MAX_STEP_GB must be a positive number of gigabytes, got {env!r}")
        return int(value * 2**30)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    return total // 4


def _gb(n: float) -> str:
    return f"{n / 2**30:,.1f} GB" if n >= 2**30 / 10 else f"{n / 2**20:,.0f} MB"


def check_run_size(run: RunConfig) -> None:
    """Refuse a run whose training step would need more memory than step_memory_limit(), saying what to lower."""
    need, limit = step_memory_bytes(run), step_memory_limit()
    if need <= limit:
        return
    m, t = run.model, run.train
    source = ("IWAE_MAX_STEP_GB" if os.environ.get("IWAE_MAX_STEP_GB")
              else "a quarter of this machine's memory; IWAE_MAX_STEP_GB changes it")
    raise RunError(f"too big: k = {t.k:,} × batch {t.batch_size:,} = {t.k * t.batch_size:,} rows of "
                   f"{m.x_dim} pixels, {' + '.join(map(str, m.hidden))} hidden units and {m.z_dim} latents need "
                   f"about {_gb(need)} per training step, more than the {_gb(limit)} a run may use ({source}). "
                   f"Lower k, the batch size or the hidden units.")


# ---- starting, queueing, stopping -------------------------------------------------------------------

def start_run(run: RunConfig, *, name: str | None = None, train_images: int | None = None,
              data_dir: str | None = None, queue: bool = True, root: str | os.PathLike | None = None) -> RunInfo:
    """Create a run folder and start its worker now, or queue it when IWAE_MAX_RUNS runs are training.

    train_images keeps only the first N training images (a quick run); queue=False refuses instead of waiting.
    """
    from .train import pick_device

    root = Path(root) if root else runs_dir()
    if run.train.threads is None:  # one thread per worker unless asked: many runs must not overcommit the CPU
        run = RunConfig(model=run.model, train=dataclasses.replace(run.train, threads=1))
    pick_device(run.train.device)  # an unavailable device is refused here, not in the worker
    check_run_size(run)  # a run too big for the machine is refused here, not after the worker ran out of memory
    if train_images is not None and train_images < run.train.batch_size:
        raise RunError(f"train_images={train_images} is smaller than one batch ({run.train.batch_size})")
    with _dispatch_lock(root):
        _check_capacity(root, queue)
        path = _new_folder(root, name or _default_name(run))
        (path / CONFIG).write_text(run.to_json())
        write_json(path / OPTIONS, {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "train_images": train_images,
                                    "data_dir": data_dir, "launches": 0})
        write_json(path / PROGRESS, {"status": "queued", "message": "waiting for a free training slot",
                                     "step": 0, "total_steps": None, "points": [], "history": []})
        _dispatch_locked(root)
    return read_run(path)


def resume_run(path: str | os.PathLike, *, queue: bool = True) -> RunInfo:
    """Continue a stopped or interrupted run from its checkpoint (now, or when a slot frees up)."""
    info = read_run(path)
    if not info.resumable:
        raise RunError(f"run {info.name} is {info.status}; only stopped or interrupted runs can be resumed")
    root = info.path.parent
    with _dispatch_lock(root):
        _check_capacity(root, queue)
        fd = _try_lock_within(info.path, RELEASE_SECONDS)
        if fd is None:
            raise RunError(f"run {info.name} is being trained by another worker already")
        try:
            (info.path / STOP).unlink(missing_ok=True)
            _update(info.path, status="queued", message="waiting for a free training slot")
        finally:
            os.close(fd)
        _dispatch_locked(root)
    return read_run(info.path)


def stop_run(path: str | os.PathLike, *, force: bool = False) -> RunInfo:
    """Ask the worker to stop after its current step (it checkpoints); a queued run is cancelled.

    force=True kills a hung worker (status unresponsive); Resume then continues from the last checkpoint.
    """
    info = read_run(path)
    if info.status == "queued":
        with _dispatch_lock(info.path.parent):
            fd = _try_lock(info.path)
            if fd is not None:
                try:
                    fresh = _read(info.path / PROGRESS)
                    if fresh.get("status") == "queued":
                        fresh.update(status="stopped", message="stopped before it started")
                        write_json(info.path / PROGRESS, fresh)
                finally:
                    os.close(fd)
        return read_run(info.path)
    if not info.active:
        return info
    (info.path / STOP).touch()
    if force or info.status == "unresponsive":
        _kill_worker(info)
        time.sleep(0.2)
    return read_run(info.path)


def _kill_worker(info: RunInfo) -> None:
    pid = info.progress.get("pid")
    if not pid:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = ""
    if "iwae_core.runs" in cmdline and str(info.path) in cmdline:  # never kill an unrelated reused pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def delete_run(path: str | os.PathLike) -> None:
    """Remove a run folder that no worker is training."""
    info = read_run(path)
    busy = info.active or info.status == "queued"
    fd = None if busy else _try_lock_within(info.path, RELEASE_SECONDS)
    if fd is None:
        raise RunError(f"run {info.name} is {info.status}; stop it before deleting it")
    os.close(fd)
    shutil.rmtree(info.path)


def dispatch(root: str | os.PathLike | None = None) -> list[str]:
    """Start queued runs, oldest first, while fewer than max_runs() are training; returns their names."""
    root = Path(root) if root else runs_dir()
    if not root.is_dir():
        return []
    with _dispatch_lock(root):
        return _dispatch_locked(root)


def active_runs(root: Path) -> list[str]:
    """Names of the runs whose worker holds its lock."""
    return [d.name for d in root.iterdir() if d.is_dir() and (d / OPTIONS).exists() and is_locked(d)]


def _check_capacity(root: Path, queue: bool) -> None:
    active = active_runs(root)
    limit = max_runs()
    if len(active) < limit:
        return
    if not queue:
        raise RunLimitError(f"{len(active)} run(s) are training already (limit {limit}, set by IWAE_MAX_RUNS); "
                            f"stop one or try again when one finishes")
    waiting = [r for r in list_runs(root) if r.status == "queued"]
    if len(waiting) >= MAX_QUEUED:
        raise RunLimitError(f"{len(active)} run(s) are training (limit {limit}) and {len(waiting)} are waiting; "
                            f"no more runs are queued: stop or delete one first")


def _dispatch_locked(root: Path) -> list[str]:
    free = max_runs() - len(active_runs(root))
    waiting = sorted((r for r in list_runs(root) if r.status == "queued"),
                     key=lambda r: (r.options.get("created", ""), r.name))
    started = []
    for info in waiting:
        if free <= 0:
            ahead = waiting.index(info)
            _update(info.path, message=f"queued: {max_runs()} run(s) training (IWAE_MAX_RUNS={max_runs()}), "
                                       f"{ahead} ahead of this one; it starts when a slot frees up")
            continue
        if _launch(info.path):
            started.append(info.name)
            free -= 1
    return started


def _update(path: Path, **changes) -> None:
    write_json(path / PROGRESS, {**_read(path / PROGRESS), **changes})


def _launch(path: Path) -> bool:
    """Take the run's lock, then hand it to a detached worker process (so there is no unlocked gap)."""
    try:
        fd = _try_lock(path)
    except OSError:  # its lock file cannot be opened: the run is reported broken, the others still start
        return False
    if fd is None:
        return False
    try:
        options = _read(path / OPTIONS)
        options["launches"] = int(options.get("launches", 0)) + 1
        write_json(path / OPTIONS, options)
        _update(path, status="starting", message="starting the worker process", pid=None, heartbeat=time.time())
        threads = str(RunConfig.from_json((path / CONFIG).read_text()).train.threads or 1)
        package_parent = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)}
        with open(path / LOG, "a") as log:
            log.write(f"--- launch {options['launches']} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            log.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "iwae_core.runs", "worker", str(path), "--lock-fd", str(fd)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=(fd,),
                start_new_session=True, cwd=str(path))
        threading.Thread(target=proc.wait, daemon=True).start()  # reap it when it ends: no zombies
        return True
    finally:
        os.close(fd)  # the worker keeps its own copy of the locked descriptor


def _default_name(run: RunConfig) -> str:
    return f"{run.train.dataset}-{run.model.variant}-k{run.train.k}-{time.strftime('%Y%m%d-%H%M%S')}"


def _new_folder(root: Path, name: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    for i in range(1000):
        path = root / (name if i == 0 else f"{name}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RunError(f"cannot create a run folder named {name} in {root}")


# ---- the worker --------------------------------------------------------------------------------------

class Worker:
    """Trains one run folder with the Trainer and reports progress, samples and status on disk."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path, self.lock_fd = path, lock_fd
        self.run = RunConfig.from_json((path / CONFIG).read_text())
        self.options = _read(path / OPTIONS)
        old = _read(path / PROGRESS)
        self.state = {"status": "running", "message": "loading data", "pid": os.getpid(), "heartbeat": time.time(),
                      "started_at": time.time(), "step": 0, "total_steps": None, "epoch": 0,
                      "epochs": self.run.train.epochs, "steps_per_epoch": None,
                      "points": old.get("points", []), "stride": old.get("stride", 1), "history": [],
                      "samples_step": None, "steps_per_second": None}
        self.lock = threading.Lock()
        self.trainer = None
        self._sums = [0.0, 0.0, 0]  # bound, KL, count since the last stored point
        self._last_sample = 0.0
        self._rate = (time.monotonic(), 0)
        self._done = threading.Event()

    # progress.json is written by the heartbeat thread only (and once at the end), from self.state.
    def write(self) -> None:
        with self.lock:
            self.state["heartbeat"] = time.time()
            snapshot = json.loads(json.dumps(self.state))
        write_json(self.path / PROGRESS, snapshot)

    def set(self, **changes) -> None:
        with self.lock:
            self.state.update(changes)

    def heartbeat(self) -> None:
        while not self._done.wait(HEARTBEAT_SECONDS):
            if (self.path / STOP).exists() and self.trainer is not None:
                self.trainer.request_stop()
                with self.lock:
                    if self.state["status"] == "running":
                        self.state.update(status="stopping",
                                          message="stopping after the current step (saving a checkpoint)")
            self.write()

    def on_step(self, trainer, m: dict) -> None:
        sums = self._sums
        sums[0] += m["bound"]
        # no KL term in the objective (beta = 0): the curve has none
        sums[1] = None if m["kl_per_datapoint"] is None else sums[1] + m["kl_per_datapoint"]
        sums[2] += 1
        with self.lock:
            st = self.state
            if m["step"] % st["stride"] == 0:
                st["points"].append([m["step"], sums[0] / sums[2], None if sums[1] is None else sums[1] / sums[2]])
                self._sums = [0.0, 0.0, 0]
                if len(st["points"]) > MAX_POINTS:
                    st["points"] = _halve(st["points"])
                    st["stride"] *= 2
            st.update(step=m["step"], epoch=m["epoch"], batch=m["batch"], lr=m["lr"])
            t0, s0 = self._rate
            now = time.monotonic()
            if now - t0 > 2.0:
                st["steps_per_second"] = round((m["step"] - s0) / (now - t0), 2)
                self._rate = (now, m["step"])
            if st["status"] == "running":
                st["message"] = f"epoch {m['epoch'] + 1} of {st['epochs']}, step {m['step']}"
        if time.monotonic() - self._last_sample > SAMPLE_SECONDS:
            self.write_samples()

    def on_epoch(self, trainer, row: dict) -> None:
        self.set(history=list(trainer.history), epoch=trainer.epoch)

    def write_samples(self) -> None:
        """A GRID x GRID grid of p(x|z) means from fixed z and a fixed weight draw, so only training changes it."""
        import torch

        model = self.trainer.model
        ref = next(model.parameters())
        devices = [] if ref.device.type == "cpu" else [ref.device]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            z = torch.randn(GRID * GRID, model.config.z_dim, device=ref.device, dtype=ref.dtype)
            images = model.sample(z=z)[0].float().cpu()
        save_grid(images, self.path / SAMPLES)
        self._last_sample = time.monotonic()
        self.set(samples_step=self.trainer.step)

    def load_data(self) -> dict:
        from .data import load_dataset

        data = load_dataset(self.run.train.dataset, self.options.get("data_dir"))
        n = self.options.get("train_images")
        if n:
            data = {**data, "train": data["train"][:n],
                    "source": f"{data['source']}; this run used only the first {n:,} training images"}
        return data

    def main(self) -> int:
        from .train import Hooks, Trainer, TrainingDiverged

        beat = threading.Thread(target=self.heartbeat, daemon=True)
        beat.start()
        signal.signal(signal.SIGTERM, lambda *_: (self.path / STOP).touch())
        code, final = 0, {}
        try:
            self.write()
            hooks = Hooks(on_step=[self.on_step], on_epoch=[self.on_epoch])
            self.trainer = t = Trainer(self.run, out=self.path, data=self.load_data(), hooks=hooks)
            resumed = t.resume()
            with self.lock:
                self.state["points"] = [p for p in self.state["points"] if p[0] <= t.step] if resumed else []
                if not resumed:
                    self.state["stride"] = 1
            total = t.total_steps if t.cfg.max_steps is None else min(t.cfg.max_steps, t.total_steps)
            self.set(total_steps=total, steps_per_epoch=t.steps_per_epoch, step=t.step, epoch=t.epoch,
                     history=list(t.history), resumed_from=t.step if resumed else None, device=str(t.device),
                     message=f"{'resumed at' if resumed else 'started at'} step {t.step}")
            self._rate = (time.monotonic(), t.step)
            self.write_samples()
            if (self.path / STOP).exists():
                t.request_stop()
                reason = "stopped"
            else:
                reason = t.fit()
            self.write_samples()
            if reason == "stopped":
                if not (self.path / "checkpoint").exists():
                    t.save_checkpoint()
                final = {"status": "stopped",
                         "message": f"stopped at step {t.step}; the checkpoint is kept, Resume continues"}
            else:
                t.finish({"run_folder": self.path.name, "train_images": self.options.get("train_images")})
                final = {"status": "finished", "message": f"finished: {t.step} steps, {t.epoch} epochs",
                         "step": t.step, "history": list(t.history)}
        except TrainingDiverged as err:
            final = {"status": "failed", "message": str(err)}
            code = 3
        except Exception as err:  # any failure becomes a status with a message, and a traceback in worker.log
            traceback.print_exc()
            final = {"status": "failed", "message": f"{type(err).__name__}: {err}"}
            code = 1
        finally:
            self._done.set()
            beat.join()
            (self.path / STOP).unlink(missing_ok=True)
            self.set(**(final or {"status": "failed", "message": "the worker was interrupted"}))
            self.write()
            os.close(self.lock_fd)  # release the run, then let a queued run take the slot
            with contextlib.suppress(Exception):
                dispatch(self.path.parent)
        return code


def _halve(points: list) -> list:
    """Merge neighbouring curve points pairwise (mean values, later step) to keep the list short."""
    def mean(u, v):
        return None if u is None or v is None else (u + v) / 2
    merged = [[b[0], mean(a[1], b[1]), mean(a[2], b[2])] for a, b in zip(points[0::2], points[1::2], strict=False)]
    return merged + ([points[-1]] if len(points) % 2 else [])


def save_grid(images, path: Path, grid: int = GRID, pad: int = 2, scale: int = 2) -> None:
    """Write [n, 784] grey values in [0, 1] as a grid x grid PNG (white ink on black, white gaps), atomically."""
    import numpy as np
    from PIL import Image

    from .checkpoint import atomic_write

    side = 28
    cell = side + pad
    canvas = np.ones((grid * cell + pad, grid * cell + pad), dtype=np.float32)
    arr = images.reshape(-1, side, side).clamp(0, 1).numpy()
    for i, img in enumerate(arr[: grid * grid]):
        r, c = divmod(i, grid)
        canvas[pad + r * cell: pad + r * cell + side, pad + c * cell: pad + c * cell + side] = img
    pil = Image.fromarray(np.rint(canvas * 255).astype(np.uint8), mode="L")
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    atomic_write(Path(path), lambda p: pil.save(p, format="PNG"))


def run_worker(path: str | os.PathLike, lock_fd: int | None = None) -> int:
    """Entry point of the worker process: take (or inherit) the run's lock, then train."""
    path = Path(path).resolve()
    if lock_fd is None:
        for _ in range(20):  # a reader may hold the lock for a moment while it checks the status
            lock_fd = _try_lock(path)
            if lock_fd is not None:
                break
            time.sleep(0.05)
        else:
            pid = _read(path / PROGRESS).get("pid")
            print(f"error: run {path.name} is being trained by another worker (pid {pid}); "
                  "two workers never train one run", file=sys.stderr)
            return 4
    status = _read(path / PROGRESS).get("status")
    if status in ("finished", "failed"):
        os.close(lock_fd)
        print(f"error: run {path.name} is {status}; start a new run instead", file=sys.stderr)
        return 4
    import torch

    cfg = RunConfig.from_json((path / CONFIG).read_text()).train
    torch.set_num_threads(cfg.threads or 1)
    return Worker(path, lock_fd).main()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iwae_core.runs", description="training runs of the dashboard")
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="train one run folder (started by the run manager)")
    w.add_argument("path")
    w.add_argument("--lock-fd", type=int, default=None, help="an inherited fd that already holds the run's lock")
    ls = sub.add_parser("list", help="the runs and their status")
    ls.add_argument("--root", default=None)
    args = p.parse_args(argv)
    if args.command == "worker":
        return run_worker(args.path, args.lock_fd)
    for info in list_runs(args.root):
        s = info.summary()
        print(f"{s['run']:50s} {s['status']:12s} {s['step']}/{s['of']} {info.message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
