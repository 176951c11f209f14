"""Starting, queueing, stopping, resuming and deleting runs, from any process.

A global limit (IWAE_MAX_RUNS) caps concurrent workers; runs beyond it wait in a queue, and whoever
frees a slot (a worker finishing, a page starting a run) dispatches the next. A run is trained by a
detached worker process (`python -m iwae_core.runs.worker DIR`, see worker.py), never by the page.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import SOURCE_ROOT
from ..checkpoint import write_json
from ..config import RunConfig
from .store import (
    CONFIG,
    EVALUATION_BUSY,
    LOG,
    OPTIONS,
    PROGRESS,
    STOP,
    RunError,
    RunInfo,
    RunLimitError,
    dispatch_lock,
    is_locked,
    list_runs,
    max_runs,
    read_run,
    read_state,
    runs_dir,
    try_lock,
    try_lock_within,
)

RELEASE_SECONDS = 5.0  # how long Resume waits for a worker that has just finished to let go of its lock
MAX_QUEUED = 8  # more waiting runs than this is refused: many tabs cannot pile up work
VALID_POINTS = 15  # validation bounds a run started here asks for over its course (see worker.valid_every_for)


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
              data_dir: str | None = None, queue: bool = True, root: str | os.PathLike | None = None,
              valid_points: int | None = VALID_POINTS) -> RunInfo:
    """Create a run folder and start its worker now, or queue it when IWAE_MAX_RUNS runs are training.

    train_images keeps only the first N training images (a quick run); queue=False refuses instead of waiting.
    valid_points: about how many validation bounds the live curve gets; a run of fewer epochs than that
    also validates within epochs (its worker sets valid_every), unless run.train.valid_every is set already.
    """
    from ..device import pick_device

    root = Path(root) if root else runs_dir()
    if run.train.threads is None:  # one thread per worker unless asked: many runs must not overcommit the CPU
        run = RunConfig(model=run.model, train=dataclasses.replace(run.train, threads=1))
    pick_device(run.train.device)  # an unavailable device is refused here, not in the worker
    check_run_size(run)  # a run too big for the machine is refused here, not after the worker ran out of memory
    if train_images is not None and train_images < run.train.batch_size:
        raise RunError(f"train_images={train_images} is smaller than one batch ({run.train.batch_size})")
    with dispatch_lock(root):
        _check_capacity(root, queue)
        path = _new_folder(root, name or _default_name(run))
        (path / CONFIG).write_text(run.to_json())
        write_json(path / OPTIONS, {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "train_images": train_images,
                                    "data_dir": data_dir, "launches": 0, "valid_points": valid_points})
        write_json(path / PROGRESS, {"status": "queued", "message": "waiting for a free training slot",
                                     "step": 0, "total_steps": None, "points": [], "history": []})
        _dispatch_locked(root)
    return read_run(path)


def resume_run(path: str | os.PathLike, *, queue: bool = True) -> RunInfo:
    """Continue a stopped or interrupted run from its checkpoint (now, or when a slot frees up)."""
    info = read_run(path)
    if not info.resumable:
        raise RunError(f"run {info.name} is {info.status}; only stopped or interrupted runs can be resumed")
    _enqueue(info, queue, f"run {info.name} is being trained by another worker already",
             status="queued", message="waiting for a free training slot")
    return read_run(info.path)


def stop_run(path: str | os.PathLike, *, force: bool = False) -> RunInfo:
    """Ask the worker to stop after its current step (it checkpoints); a queued run is cancelled.

    force=True kills a hung worker (status unresponsive); Resume then continues from the last checkpoint.
    """
    info = read_run(path)
    if info.status == "queued":
        with dispatch_lock(info.path.parent):
            fd = try_lock(info.path)
            if fd is not None:
                try:
                    fresh = read_state(info.path / PROGRESS)
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
        _kill_worker(info.progress.get("pid"), info.path)
        time.sleep(0.2)
    return read_run(info.path)


def _kill_worker(pid: int | None, path: Path) -> None:
    """SIGKILL the training or evaluation process `pid` of the run at `path`, if it is one."""
    if not pid:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = ""
    if "iwae_core.runs" in cmdline and str(path) in cmdline:  # never kill an unrelated reused pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def delete_run(path: str | os.PathLike) -> None:
    """Remove a run folder that no worker is training."""
    info = read_run(path)
    if info.evaluation.get("status") in EVALUATION_BUSY:
        raise RunError(f"run {info.name} is being evaluated; cancel the evaluation before deleting it")
    busy = info.active or info.status == "queued"
    fd = None if busy else try_lock_within(info.path, RELEASE_SECONDS)
    if fd is None:
        raise RunError(f"run {info.name} is {info.status}; stop it before deleting it")
    os.close(fd)
    shutil.rmtree(info.path)


def dispatch(root: str | os.PathLike | None = None) -> list[str]:
    """Start queued runs, oldest first, while fewer than max_runs() are training; returns their names."""
    root = Path(root) if root else runs_dir()
    if not root.is_dir():
        return []
    with dispatch_lock(root):
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
    """Launch waiting jobs, oldest first, into the free slots: queued runs (a training worker) and finished
    runs whose evaluation is queued (an evaluation worker, see evaluation.py); both hold the run's lock."""
    free = max_runs() - len(active_runs(root))
    waiting = sorted((r for r in list_runs(root) if r.status == "queued" or _evaluation_queued(r)),
                     key=lambda r: (r.evaluation.get("requested", "") if _evaluation_queued(r)
                                    else r.options.get("created", ""), r.name))
    started = []
    for info in waiting:
        evaluation = _evaluation_queued(info)
        if free <= 0:
            ahead = waiting.index(info)
            message = (f"queued: {max_runs()} run(s) training or evaluating (IWAE_MAX_RUNS={max_runs()}), "
                       f"{ahead} ahead of this one; it starts when a slot frees up")
            if evaluation:
                _update(info.path, evaluation={**info.evaluation, "message": message})
            else:
                _update(info.path, message=message)
            continue
        if _launch_evaluation(info.path) if evaluation else _launch(info.path):
            started.append(info.name)
            free -= 1
    return started


def _evaluation_queued(info: RunInfo) -> bool:
    return info.status == "finished" and info.evaluation.get("status") == "queued"


def _enqueue(info: RunInfo, queue: bool, busy: str, **changes) -> None:
    """Queue a job on a run: with the dispatch lock held and a free slot (or room to wait), take the run's lock
    (RunError `busy` when a worker holds it), clear an old stop request, record `changes` in progress.json,
    then start whatever may start."""
    root = info.path.parent
    with dispatch_lock(root):
        _check_capacity(root, queue)
        fd = try_lock_within(info.path, RELEASE_SECONDS)
        if fd is None:
            raise RunError(busy)
        try:
            (info.path / STOP).unlink(missing_ok=True)
            _update(info.path, **changes)
        finally:
            os.close(fd)
        _dispatch_locked(root)


def _update(path: Path, **changes) -> None:
    write_json(path / PROGRESS, {**read_state(path / PROGRESS), **changes})


def _launch(path: Path) -> bool:
    """Take the run's lock, then hand it to a detached worker process (so there is no unlocked gap)."""
    try:
        fd = try_lock(path)
    except OSError:  # its lock file cannot be opened: the run is reported broken, the others still start
        return False
    if fd is None:
        return False
    try:
        options = read_state(path / OPTIONS)
        options["launches"] = int(options.get("launches", 0)) + 1
        write_json(path / OPTIONS, options)
        _update(path, status="starting", message="starting the worker process", pid=None, heartbeat=time.time())
        _spawn(path, fd, "iwae_core.runs.worker", f"launch {options['launches']}")
        return True
    finally:
        os.close(fd)  # the worker keeps its own copy of the locked descriptor


def _spawn(path: Path, fd: int, module: str, what: str) -> None:
    """Start `python -m module DIR --lock-fd FD` detached, handing it the locked fd, its output in worker.log."""
    threads = str(RunConfig.from_json((path / CONFIG).read_text()).train.threads or 1)
    package_parent = str(SOURCE_ROOT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)}
    with open(path / LOG, "a") as log:
        log.write(f"--- {what} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", module, str(path), "--lock-fd", str(fd)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=(fd,),
            start_new_session=True, cwd=str(path))
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it when it ends: no zombies


# ---- evaluating a finished run (a job of its own: evaluation.py) ------------------------------------

def start_evaluation(path: str | os.PathLike, *, S: int, images: int, queue: bool = True) -> RunInfo:
    """Estimate a finished run's test log-likelihood (evaluate.evaluate_folder, S joint draws per image on the
    first `images` test images) in a detached process, now or when a slot frees up; it takes a slot like a
    training run. Its state is progress.json's "evaluation"; the result goes to metrics.json, as `iwae eval`."""
    from ..config import check_k
    from ..data import locate

    info = read_run(path)
    if info.status != "finished":
        raise RunError(f"run {info.name} is {info.status}; only a finished run can be evaluated")
    if info.evaluation.get("status") in EVALUATION_BUSY:
        raise RunError(f"run {info.name} is being evaluated already ({info.evaluation.get('status')}); "
                       "cancel that first")
    try:
        check_k(S, "S")
    except ValueError as err:
        raise RunError(str(err)) from err
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise RunError(f"the number of test images must be at least 1, got {images!r}")
    dataset = info.run.train.dataset
    found, where = locate(dataset, info.options.get("data_dir"))
    if not found:
        raise RunError(f"no {dataset} test images: the data is not in {where} (set IWAE_DATA_DIR to the folder "
                       "holding it)")
    _enqueue(info, queue, f"run {info.name} is in use by another worker; try again when it is done",
             evaluation={"status": "queued", "message": "waiting for a free slot", "S": S, "images": images,
                         "requested": time.strftime("%Y-%m-%d %H:%M:%S")})
    return read_run(info.path)


def cancel_evaluation(path: str | os.PathLike) -> RunInfo:
    """Stop a queued or running evaluation; metrics.json keeps what it had (the result is written at the end).
    A running job stops at its next batch; an unresponsive one (hung: no report for STALE_SECONDS) is killed."""
    info = read_run(path)
    status = info.evaluation.get("status")
    if status == "queued":
        with dispatch_lock(info.path.parent):
            fd = try_lock(info.path)
            if fd is not None:
                try:
                    fresh = read_state(info.path / PROGRESS)
                    evaluation = fresh.get("evaluation") or {}
                    if evaluation.get("status") == "queued":
                        fresh["evaluation"] = {**evaluation, "status": "cancelled",
                                               "message": "cancelled before it started"}
                        write_json(info.path / PROGRESS, fresh)
                finally:
                    os.close(fd)
    elif status in EVALUATION_BUSY:
        (info.path / STOP).touch()
        if status == "unresponsive":
            _kill_worker(info.evaluation.get("pid"), info.path)
            time.sleep(0.2)
    return read_run(info.path)


def _launch_evaluation(path: Path) -> bool:
    """As _launch, for a queued evaluation: take the run's lock, mark the job starting, hand both to the worker."""
    try:
        fd = try_lock(path)
    except OSError:
        return False
    if fd is None:
        return False
    try:
        evaluation = read_state(path / PROGRESS).get("evaluation") or {}
        _update(path, evaluation={**evaluation, "status": "starting", "message": "starting the evaluation process",
                                  "pid": None, "heartbeat": time.time()})
        _spawn(path, fd, "iwae_core.runs.evaluation", f"evaluation with S = {evaluation.get('S')}")
        return True
    finally:
        os.close(fd)


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
