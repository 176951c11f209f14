"""One trial of `iwae sweep`: train (or resume, or skip when finished) one run into its model folder, then
evaluate it; what a Ray task of the sweep runs (sweep.py).

Each trial is a normal model folder RUNS/NAME/<key=value,...> written by the same Trainer as
`iwae train` (model.safetensors, config.json, metrics.json, history.csv, checkpoint/), so every tool that
reads a model folder reads a trial, and an interrupted trial resumes from its own checkpoint/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import traceback
from pathlib import Path

from ..config import RunConfig
from .grid import canonical_evaluation

# settings that say how a trial runs, not what it computes: a rerun may change them
RUNTIME_KEYS = ("threads", "device", "checkpoint_every")
STOP_CHECK_SECONDS = 0.5  # how often a running trial looks whether the sweep asked it to stop


def same_run(a: RunConfig, b: RunConfig) -> bool:
    """Whether two runs compute the same thing (threads, device and checkpoint frequency aside)."""
    ta, tb = dataclasses.asdict(a.train), dataclasses.asdict(b.train)
    for key in RUNTIME_KEYS:
        ta.pop(key), tb.pop(key)
    return a.model == b.model and ta == tb


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def training_state(folder: Path, run: RunConfig) -> str:
    """'new', 'partial' (a checkpoint to resume), 'trained' (finished: metrics.json has its record), or
    'other' (the folder holds a run with other settings)."""
    from ..checkpoint import CheckpointError, load_run_config

    state = _read_json(folder / "checkpoint" / "trainer_state.json")
    saved = None
    if state is not None:
        try:
            saved = RunConfig.from_json(state["run"])
        except (KeyError, ValueError, TypeError):
            saved = None
    elif (folder / "config.json").exists():
        try:
            saved = load_run_config(folder)
        except CheckpointError:
            saved = None
    if saved is not None and not same_run(saved, run):
        return "other"
    if state is None:
        return "new"
    cfg = run.train
    done = state.get("epoch", 0) >= cfg.epochs or (cfg.max_steps is not None and state.get("step", 0) >= cfg.max_steps)
    metrics = _read_json(folder / "metrics.json") or {}
    return "trained" if done and metrics.get("training") else "partial"


def evaluation_done(folder: Path, evaluation: dict | None, evaluated_with: dict | None) -> bool:
    """Whether the folder's metrics.json holds an evaluation of its current weights with these settings."""
    if not evaluation:
        return True
    if evaluated_with is None or canonical_evaluation(evaluated_with) != evaluation:
        return False
    from ..evaluate import model_sha256

    test = (_read_json(folder / "metrics.json") or {}).get("test") or {}
    return bool(test) and (folder / "test_ll.safetensors").exists() and test.get("model_sha256") == model_sha256(folder)


def evaluation_kwargs(evaluation: dict) -> dict:
    e = canonical_evaluation(evaluation)
    out = {"S": e.pop("S")}
    if "tau" in e:
        out["taus"] = [float(t) for t in e.pop("tau")]
    out.update(e)
    return out


class TrialStopped(Exception):
    """The sweep asked a trial to stop (Ctrl-C or kill of `iwae sweep`); its checkpoint is saved."""


def run_trial(run: RunConfig, out: str | os.PathLike, data_dir: str | None = None, evaluation: dict | None = None,
              command: str | None = None, data: dict | None = None, should_stop=None) -> dict:
    """Train (or resume, or skip when finished) one trial into its model folder, then evaluate it if asked:
    what `iwae train --resume` then `iwae eval` do. When should_stop() turns true the run stops after a
    checkpoint (Trainer.request_stop) and TrialStopped is raised; so does KeyboardInterrupt, after one.
    Returns what happened: resumed_at (step), trained_steps (this call), evaluated, test_ll."""
    import torch

    from ..train import Hooks, Trainer

    out = Path(out)
    info = {"resumed_at": None, "trained_steps": 0, "evaluated": False}
    state = training_state(out, run)
    if state == "other":
        raise RuntimeError(f"{out} holds a run with other settings than this trial's; move it away or use "
                           "another sweep folder")
    checked = {"at": time.monotonic()}

    def stop_requested() -> bool:  # asked at most every STOP_CHECK_SECONDS: a file test on shared storage
        if should_stop is None or time.monotonic() - checked["at"] < STOP_CHECK_SECONDS:
            return False
        checked["at"] = time.monotonic()
        return should_stop()

    if state != "trained":
        hooks = Hooks(on_step=[lambda trainer, _: stop_requested() and trainer.request_stop()])
        trainer = Trainer(run, out=out, data=data, data_dir=data_dir, hooks=hooks)
        if trainer.resume():
            info["resumed_at"] = trainer.step
        start = trainer.step
        if not trainer.done:
            try:
                reason = trainer.fit()
            except KeyboardInterrupt:
                trainer.save_checkpoint()
                raise
            if reason == "stopped":
                raise TrialStopped(f"stopped at step {trainer.step} after a checkpoint")
        info["trained_steps"] = trainer.step - start
        trainer.finish({"command": command})
    if evaluation:
        from ..evaluate import evaluate_folder

        def progress(done: int, total: int) -> None:
            if stop_requested():
                raise TrialStopped("stopped during the evaluation (nothing of it written)")
        if run.train.threads:
            torch.set_num_threads(run.train.threads)
        result = evaluate_folder(out, data_dir=data_dir, data=data, progress=progress,
                                 **evaluation_kwargs(evaluation))
        info["evaluated"], info["test_ll"] = True, result.get("test_ll")
    return info


_DATA_CACHE: dict = {}


def _trial_task(spec: dict) -> dict:
    """A trial in a Ray worker: records which process runs it, runs it, and returns its outcome; errors
    come back as a 'failed' outcome with their message (Ray itself retries only dead workers)."""
    from ..train import TrainingDiverged

    running = Path(spec["running_file"])
    running.parent.mkdir(parents=True, exist_ok=True)
    running.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": spec["token"],
                                   "started": time.time()}))
    run = RunConfig.from_json(spec["run"])
    key = (run.train.dataset, spec["data_dir"])
    t0 = time.time()
    where = {"host": socket.gethostname()}
    stop_file = Path(spec["stop_file"])
    try:
        if stop_file.exists():
            raise TrialStopped("the sweep was stopping when this trial came to start")
        if key not in _DATA_CACHE:  # a worker process keeps the dataset for its next trials
            from ..data import load_dataset

            _DATA_CACHE.clear()
            _DATA_CACHE[key] = load_dataset(run.train.dataset, spec["data_dir"])
        info = run_trial(run, spec["out"], spec["data_dir"], spec["eval"], spec["command"], data=_DATA_CACHE[key],
                         should_stop=stop_file.exists)
        return {"status": "done", **info, **where, "seconds": round(time.time() - t0, 1)}
    except (TrialStopped, KeyboardInterrupt) as err:
        return {"status": "interrupted", "error": str(err) or "interrupted", **where}
    except TrainingDiverged as err:
        return {"status": "failed", "error": str(err), **where}
    except Exception as err:  # noqa: BLE001 - any error of one trial is reported, and the others go on
        return {"status": "failed", "error": f"{type(err).__name__}: {err}", **where,
                "traceback": traceback.format_exc(limit=8)}
    finally:
        try:
            if json.loads(running.read_text()).get("token") == spec["token"]:
                running.unlink()
        except (OSError, ValueError):
            pass
