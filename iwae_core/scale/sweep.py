"""`iwae sweep GRID.toml --out runs/NAME`: every combination of a grid as its own training run, on Ray.

The grid file's format and its trials are in grid.py, one trial's training and evaluation (what a Ray task
runs) in trial.py, and the table over a sweep's trials (`iwae table RUNS/NAME`) in sweep_table.py.
RUNS/NAME/sweep.json records the grid and each trial's folder, status, error and result.

Why plain Ray tasks and not Ray Tune: the unit of state here is the run folder, and its checkpoint/ already
makes resumption exact (tests/test_train.py). Tune keeps its own experiment state and trial directories
(named by Tune, holding its params.json/result.json/progress.csv) and resumes through Tuner.restore and
its Checkpoint objects, which it copies into its storage: a second copy of the same state that can disagree
with the run folder, and folders that are not what `iwae train` writes. A task per trial
(ray.remote, one CPU and one torch thread by default) is all the scheduling a grid needs; whether a trial
is done, half done or new is read from its folder each time the command starts, so rerunning the command
after a crash, a kill or Ctrl-C skips the finished trials and resumes the others from their checkpoints.
A worker that dies (SIGKILL, a lost node) has its trial retried by Ray up to --max-retries times, each
retry resuming from the checkpoint; a trial that fails (NaN, bad settings) is reported with its error and
the others go on.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

from .grid import Grid, Trial, load_grid, plan_trials
from .trial import _read_json, _trial_task, evaluation_done, training_state

MANIFEST = "sweep.json"
RUNNING = ".running"  # RUNS/NAME/.running/<trial>.json: the process running a trial (pid, host), while it runs


def read_manifest(folder: str | os.PathLike) -> dict | None:
    return _read_json(Path(folder) / MANIFEST)


def is_sweep(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def _check_same_grid(old: dict, grid: Grid, folder: Path) -> None:
    """A sweep folder can be rerun with the same grid, or one whose lists have gained values."""
    old_grid = old.get("grid", {})
    if old_grid.get("base") != grid.base:
        raise ValueError(f"{folder} holds a sweep with other [base] settings ({old_grid.get('base')}); "
                         "rerun it with its own grid file, or choose another --out")
    if list(old_grid.get("grid", {})) != list(grid.grid):
        raise ValueError(f"{folder} holds a sweep over {list(old_grid.get('grid', {}))}, not {list(grid.grid)}; "
                         "choose another --out")


def _write_manifest(folder: Path, grid: Grid, grid_file: str, trials: list[Trial], extra: dict) -> None:
    from ..checkpoint import write_json

    write_json(folder / MANIFEST, {
        "format": 1, "grid_file": grid_file, "grid": grid.to_json(), **extra,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "trials": [{"name": t.name, "folder": t.name, "params": t.params, "status": t.status,
                    **({"error": t.error} if t.error else {}), **t.info} for t in trials]})


def run_sweep(grid_file: str | os.PathLike, out: str | os.PathLike, address: str | None = None,
              num_cpus: int | None = None, cpus_per_trial: float = 1, gpus_per_trial: float = 0,
              max_retries: int = 3, data_dir: str | None = None, show_progress: bool = True) -> dict:
    """Run (or resume) the sweep; returns the manifest it wrote. See the module docstring."""
    from tqdm import tqdm

    from .cluster import cluster_cpus, ray_session, say

    grid = load_grid(grid_file)
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise ValueError("--cpus-per-trial must be positive and --gpus-per-trial at least 0")
    out = Path(out).resolve()
    old = read_manifest(out)
    if old is not None:
        _check_same_grid(old, grid, out)
    elif out.exists() and any(p.name != RUNNING for p in out.iterdir()):
        raise ValueError(f"{out} exists and is not a sweep folder (no {MANIFEST}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    old_info = {t["name"]: t for t in (old or {}).get("trials", [])}
    trials = plan_trials(grid, cpus_per_trial, gpus_per_trial)
    data_dir = str(Path(data_dir).resolve()) if data_dir else os.environ.get("IWAE_DATA_DIR")
    command = f"iwae sweep {grid_file} --out {out}"
    todo = []
    for t in trials:
        if t.run is None:
            continue
        state = training_state(out / t.name, t.run)
        evaluated_with = old_info.get(t.name, {}).get("evaluated_with")
        if state == "other":
            t.status, t.error = "failed", f"{out / t.name} holds a run with other settings than this trial's"
        elif state == "trained" and evaluation_done(out / t.name, grid.evaluation, evaluated_with):
            t.status = "done"
            t.info = {k: v for k, v in old_info.get(t.name, {}).items()
                      if k not in ("name", "folder", "params", "status", "error")}
        else:
            t.status = "queued"
            todo.append(t)
    extra = {"ray": {"address": address or os.environ.get("RAY_ADDRESS"), "cpus_per_trial": cpus_per_trial,
                     "gpus_per_trial": gpus_per_trial}}
    _write_manifest(out, grid, str(grid_file), trials, extra)
    n_done = sum(t.status == "done" for t in trials)
    say(f"sweep {out}: {len(trials)} trials, {n_done} done already, {len(todo)} to run"
        + (f", {sum(t.status == 'failed' for t in trials)} with bad settings" if n_done + len(todo) < len(trials)
           else ""))
    if not todo:
        _report(trials)
        return read_manifest(out)

    interrupted = False
    stop_file = out / RUNNING / "STOP"
    stop_file.unlink(missing_ok=True)  # left by a sweep that was killed while stopping
    with ray_session(address, num_cpus=num_cpus,
                     num_gpus=None if gpus_per_trial else 0) as (ray, where):
        say(f"running on {where}: {cluster_cpus(ray)} CPUs, {cpus_per_trial:g} per trial"
            + (f", {gpus_per_trial:g} GPU per trial" if gpus_per_trial else ""))

        def on_sigterm(*_):
            raise KeyboardInterrupt
        previous = signal.getsignal(signal.SIGTERM)  # Ray's, which would end the process on the spot
        try:
            signal.signal(signal.SIGTERM, on_sigterm)  # `kill` stops the sweep as Ctrl-C does
        except ValueError:  # not the main thread
            previous = None
        task = ray.remote(_trial_task).options(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial,
                                               max_retries=max_retries)
        refs = {}
        for t in todo:
            token = t.token = uuid.uuid4().hex
            refs[task.remote({"run": t.run.to_json(), "out": str(out / t.name), "data_dir": data_dir,
                              "eval": grid.evaluation, "command": f"{command}  # trial {t.name}",
                              "token": token, "running_file": str(out / RUNNING / f"{t.name}.json"),
                              "stop_file": str(stop_file)})] = t
        bar = tqdm(total=len(trials), initial=len(trials) - len(todo), desc="sweep", unit="trial",
                   disable=None if show_progress else True, dynamic_ncols=True)  # None: only on a terminal
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in ready:
                    t = refs[ref]
                    _finish_trial(ray, ref, t, grid)
                    bar.update(1)
                    if t.status == "failed":
                        bar.write(f"trial {t.name} failed: {t.error}", file=sys.stderr)
                    _write_manifest(out, grid, str(grid_file), trials, extra)
                running = _running(out, [refs[r] for r in pending])
                for t in (refs[r] for r in pending):
                    t.status = "running" if t.name in running else "queued"
                bar.set_postfix_str(f"running {len(running)}, queued {len(pending) - len(running)}, "
                                    f"failed {sum(t.status == 'failed' for t in trials)}", refresh=True)
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted: the running trials stop after a checkpoint ...")
            stop_file.parent.mkdir(parents=True, exist_ok=True)
            stop_file.write_text("stop\n")  # the trials look for it twice a second (run_trial's should_stop)
            running = _running(out, [refs[r] for r in pending])
            for ref in pending:
                if refs[ref].name not in running:
                    ray.cancel(ref)  # not started: it never will
            deadline = time.time() + 60
            while pending and time.time() < deadline:
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
                for ref in ready:
                    _finish_trial(ray, ref, refs[ref], grid)
            for t in (refs[r] for r in refs):
                if t.status in ("queued", "running"):
                    t.status = "interrupted"
            _write_manifest(out, grid, str(grid_file), trials, extra)
            stop_file.unlink(missing_ok=True)
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if interrupted:
                say("stopping Ray ...")
    _write_manifest(out, grid, str(grid_file), trials, extra)
    _report(trials)
    if interrupted:
        say(f"rerun the same command to resume: {command}")
        raise KeyboardInterrupt
    return read_manifest(out)


def _running(out: Path, trials: list[Trial]) -> set[str]:
    """The trials whose task has started (its worker wrote RUNS/NAME/.running/<trial>.json)."""
    try:
        present = {p.removesuffix(".json") for p in os.listdir(out / RUNNING)}
    except OSError:
        return set()
    names = set()
    for t in trials:
        if t.name in present:
            info = _read_json(out / RUNNING / f"{t.name}.json")
            if info and info.get("token") == t.token:
                names.add(t.name)
    return names


def _finish_trial(ray, ref, t: Trial, grid: Grid) -> None:
    try:
        outcome = ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        t.status = "interrupted"
        return
    except ray.exceptions.RayError as err:  # the worker died (and Ray's retries are used up)
        t.status, t.error = "interrupted", f"{type(err).__name__}: {str(err).splitlines()[0]}"
        return
    t.status = outcome.pop("status")
    t.error = outcome.pop("error", None)
    outcome.pop("traceback", None)
    t.info.update(outcome)
    if t.status == "done" and grid.evaluation:
        t.info["evaluated_with"] = grid.evaluation


def _report(trials: list[Trial]) -> None:
    from .cluster import say

    counts = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    say("trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for t in trials:
        if t.status in ("failed", "interrupted") and t.error:
            say(f"  {t.name}: {t.status}: {t.error}")


def sweep_status(folder: str | os.PathLike) -> dict:
    """{status: count} of the trials in a sweep folder's manifest."""
    counts = {}
    for t in (read_manifest(folder) or {}).get("trials", []):
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return counts


def exit_code(manifest: dict) -> int:
    return 0 if all(t["status"] == "done" for t in manifest.get("trials", [])) else 1


def main_sweep(args) -> int:
    """The `iwae sweep` subcommand."""
    try:
        manifest = run_sweep(args.grid, args.out, address=args.address, num_cpus=args.num_cpus,
                             cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                             max_retries=args.max_retries, data_dir=args.data_dir,
                             show_progress=not args.no_progress)
    except KeyboardInterrupt:
        return 130
    statuses = {t["status"] for t in manifest.get("trials", [])}
    if "interrupted" in statuses:
        print("some trials were interrupted: rerun the same command to resume them", file=sys.stderr)
    if "failed" in statuses:
        print(f"some trials failed (their errors are above and in {Path(args.out) / MANIFEST}); a rerun "
              "retries them", file=sys.stderr)
    return exit_code(manifest)
