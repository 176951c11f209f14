"""`iwae sweep GRID.toml --out runs/NAME`: every combination of a grid as its own training run, on Ray.

A grid file (TOML):

    [base]                  # settings of every trial: variant, preset ("paper"), and any field of
    dataset = "mnist"       # ModelConfig (hidden, z_dim, init_sigma, ...) or TrainConfig (k, epochs,
    preset = "paper"        # max_steps, lr, batch_size, seed, checkpoint_every, ...)
    epochs = 5

    [grid]                  # lists to cross: one trial per combination
    variant = ["iwae", "iwae-r"]
    seed = [0, 1, 2]
    k = [5, 25]

    [eval]                  # optional: evaluate each trained model (evaluate_folder's options)
    S = 5000                # joint draws of (weights, z) per test image ("k" before)
    limit = 1000            # the first N test images (default all)
    tau = [1.0]             # weight-noise scales ("noise_scale" before)
                            # also mc_repeats, mc_images, seed, batch_size, seeding

Each trial is a normal model folder RUNS/NAME/<key=value,...> written by the same Trainer as
`iwae train` (model.safetensors, config.json, metrics.json, history.csv, checkpoint/), so every tool that
reads a model folder reads a trial, and an interrupted trial resumes from its own checkpoint/.
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

import dataclasses
import json
import os
import signal
import socket
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser as a package (the scale extra installs it)
    import tomli as tomllib

from ..config import PAPER_PRESET, VARIANTS, ModelConfig, RunConfig, TrainConfig

MANIFEST = "sweep.json"
RUNNING = ".running"  # RUNS/NAME/.running/<trial>.json: the process running a trial (pid, host), while it runs
MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)} - {"random_encoder", "random_decoder"}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}
EVAL_KEYS = {"S", "limit", "tau", "mc_repeats", "mc_images", "seed", "batch_size", "seeding"}
EVAL_ALIASES = {"k": "S", "noise_scale": "tau"}  # [eval] spellings of earlier versions
# settings that say how a trial runs, not what it computes: a rerun may change them
RUNTIME_KEYS = ("threads", "device", "checkpoint_every")
STOP_CHECK_SECONDS = 0.5  # how often a running trial looks whether the sweep asked it to stop


# ---- the grid -------------------------------------------------------------------------------------------
@dataclass
class Grid:
    base: dict
    grid: dict[str, list]
    evaluation: dict | None = None

    def to_json(self) -> dict:
        return {"base": self.base, "grid": self.grid, "eval": self.evaluation}


@dataclass
class Trial:
    name: str
    params: dict  # this trial's value of each grid key
    run: RunConfig | None = None
    error: str | None = None  # settings that do not make a valid run
    status: str = "queued"
    info: dict = field(default_factory=dict)
    token: str | None = None  # names the Ray task now running the trial (in RUNS/NAME/.running/)


def load_grid(path: str | os.PathLike) -> Grid:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"grid file {path} not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from err
    return parse_grid(d, str(path))


def parse_grid(d: dict, where: str = "the grid") -> Grid:
    unknown = sorted(set(d) - {"base", "grid", "eval"})
    if unknown:
        raise ValueError(f"{where}: unknown tables {unknown}; a grid file has [base], [grid] and [eval]")
    base, grid, evaluation = dict(d.get("base", {})), dict(d.get("grid", {})), d.get("eval")
    known = MODEL_KEYS | TRAIN_KEYS | {"variant", "preset"}
    for table, keys in (("base", base), ("grid", grid)):
        bad = sorted(set(keys) - known)
        if bad:
            raise ValueError(f"{where}: unknown [{table}] keys {bad}; use variant, preset or a field of "
                             f"ModelConfig {sorted(MODEL_KEYS)} or TrainConfig {sorted(TRAIN_KEYS)}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: [grid] {key} must be a non-empty list of values, got {values!r}")
        if len({json.dumps(v) for v in values}) != len(values):
            raise ValueError(f"{where}: [grid] {key} lists a value twice: {values}")
    both = sorted(set(base) & set(grid))
    if both:
        raise ValueError(f"{where}: {both} are in both [base] and [grid]")
    if evaluation is not None:
        bad = sorted(set(evaluation) - EVAL_KEYS - set(EVAL_ALIASES))
        if bad:
            raise ValueError(f"{where}: unknown [eval] keys {bad}; choose from {sorted(EVAL_KEYS)}")
        twice = sorted(new for old, new in EVAL_ALIASES.items() if old in evaluation and new in evaluation)
        if twice:
            raise ValueError(f"{where}: [eval] gives {twice} under both spellings")
        evaluation = {"S": 5000, **canonical_evaluation(evaluation)}
    return Grid(base, grid, evaluation)


def value_label(value) -> str:
    if isinstance(value, list):
        return "x".join(value_label(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if "/" in text or text.startswith("."):
        raise ValueError(f"grid value {text!r} cannot be part of a folder name")
    return text


def trial_name(params: dict) -> str:
    """The trial's folder name: key=value for each grid key in the grid's order, joined by commas."""
    return ",".join(f"{key}={value_label(value)}" for key, value in params.items()) or "base"


def build_run(options: dict, cpus_per_trial: float = 1, gpus_per_trial: float = 0) -> RunConfig:
    """A RunConfig from a trial's settings (preset, then variant and fields), the way `iwae train` builds it.
    Unless set, threads = the CPUs a trial holds and device = cuda with a GPU per trial, else cpu."""
    options = dict(options)
    preset = options.pop("preset", None)
    if preset not in (None, "paper"):
        raise ValueError(f"unknown preset {preset!r}; the only preset is 'paper'")
    model_kw = dict(PAPER_PRESET["model"]) if preset else {}
    train_kw = dict(PAPER_PRESET["train"]) if preset else {}
    variant = options.pop("variant", "iwae")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    for key, value in options.items():
        (model_kw if key in MODEL_KEYS else train_kw)[key] = value
    train_kw.setdefault("threads", max(1, int(cpus_per_trial)))
    train_kw.setdefault("device", "cuda" if gpus_per_trial > 0 else "cpu")
    return RunConfig(model=ModelConfig.for_variant(variant, **model_kw), train=TrainConfig(**train_kw))


def plan_trials(grid: Grid, cpus_per_trial: float = 1, gpus_per_trial: float = 0) -> list[Trial]:
    """Every combination of the grid's lists, in order (the last key varies fastest)."""
    import itertools

    keys = list(grid.grid)
    trials = []
    for combo in itertools.product(*(grid.grid[k] for k in keys)):
        params = dict(zip(keys, combo, strict=True))
        trial = Trial(trial_name(params), params)
        try:
            trial.run = build_run({**grid.base, **params}, cpus_per_trial, gpus_per_trial)
        except (ValueError, TypeError) as err:
            trial.error, trial.status = f"bad settings: {err}", "failed"
        trials.append(trial)
    return trials


# ---- one trial ------------------------------------------------------------------------------------------
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


def canonical_evaluation(evaluation: dict) -> dict:
    """[eval] settings under today's names (S joint draws, tau), whichever spelling they were written in."""
    return {EVAL_ALIASES.get(key, key): value for key, value in evaluation.items()}


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


# ---- the sweep ------------------------------------------------------------------------------------------
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


# ---- the table ------------------------------------------------------------------------------------------
def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    import statistics

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _pm(sd: float | None) -> str:
    return f"± {sd:.3f}" if sd is not None else ""


def sweep_table(folder: str | os.PathLike, tau: str = "1", seed_key: str = "seed") -> str:
    """The trials grouped by configuration (every grid key but the seed): mean ± sd across seeds of the
    test log-likelihood, and the paired differences between configurations: per seed, the mean over the
    test images of a's minus b's per-image log-likelihood; then their mean over seeds ± the seed-to-seed sd."""
    import math

    from ..checkpoint import CheckpointError, read_tensors
    from ..compare import stale_evaluation
    from ..evaluate import per_image_name

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder} is not a sweep folder (no {MANIFEST})")
    from ..zoo import find_models

    entries = {e.path.name: e for e in find_models(folder)}  # a sweep's entries are named SWEEP/TRIAL
    groups: dict[str, dict] = {}
    for t in manifest["trials"]:
        config = {k: v for k, v in t["params"].items() if k != seed_key}
        label = trial_name(config) if config else "all"
        seed = t["params"].get(seed_key)
        g = groups.setdefault(label, {"trials": {}, "missing": []})
        e = entries.get(t["folder"])
        test = (e.metrics.get("test") or {}).get("by_tau", {}).get(tau) if e else None
        if e is None or test is None or stale_evaluation(e):
            g["missing"].append(f"{t['folder']} ({t['status']})")
            continue
        try:
            per_image = read_tensors(e.path / "test_ll.safetensors").get(per_image_name(tau))
        except CheckpointError:
            per_image = None
        g["trials"][seed] = {"mean": test["mean"], "stderr": test.get("stderr"), "per_image": per_image,
                             "n": test["n_images"]}
    lines = [f"sweep {folder}: test log-likelihood (tau = {tau}), mean ± sd across {seed_key}s"]
    width = max([len(label) for label in groups] + [13])
    lines.append(f"{'configuration':{width}}  {'mean':>9} {'± sd':>7}  {seed_key}s  images  per seed")
    for label, g in groups.items():
        trials = g["trials"]
        if trials:
            mean, sd = _mean_sd([r["mean"] for r in trials.values()])
            n = sorted({r["n"] for r in trials.values()})
            per_seed = "  ".join(f"{s}: {r['mean']:.3f}" for s, r in trials.items())
            lines.append(f"{label:{width}}  {mean:9.3f} {_pm(sd):>7}  "
                         f"{len(trials):>5}  {'/'.join(map(str, n)):>6}  {per_seed}")
        else:
            lines.append(f"{label:{width}}  {'-':>9}")
        if g["missing"]:
            lines.append(f"{'':{width}}  not evaluated: {', '.join(g['missing'])}")
    labels = [label for label in groups if groups[label]["trials"]]
    rows = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            diffs = []
            for seed, ra in groups[a]["trials"].items():
                rb = groups[b]["trials"].get(seed)
                if rb is None or ra["per_image"] is None or rb["per_image"] is None:
                    continue
                if ra["per_image"].shape != rb["per_image"].shape:
                    continue
                d = (ra["per_image"].double() - rb["per_image"].double())
                diffs.append((d.mean().item(), (d.std() / math.sqrt(len(d))).item() if len(d) > 1 else None))
            if diffs:
                mean, sd = _mean_sd([d for d, _ in diffs])
                se = [s for _, s in diffs if s is not None]
                rows.append((a, b, mean, sd, len(diffs), sum(se) / len(se) if se else None))
    if rows:
        lines.append("")
        lines.append(f"paired differences a - b of per-image test LL, same {seed_key} and images; mean over "
                     f"{seed_key}s ± {seed_key}-to-{seed_key} sd (and the mean within-{seed_key} paired SE)")
        for a, b, mean, sd, n, se in rows:
            lines.append(f"{a:>{width}} - {b:<{width}} {mean:+8.3f} {_pm(sd):>8}"
                         f"  ({n} {seed_key}{'s' if n != 1 else ''}"
                         + (f", paired SE {se:.3f})" if se is not None else ")"))
    return "\n".join(lines)


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
