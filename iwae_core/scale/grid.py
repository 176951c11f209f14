"""The grid of `iwae sweep`: a grid file parsed into its trials, each a RunConfig built as `iwae train` builds it.

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

Each trial is named by its grid values (key=value,... in the grid's order, or "base" for an empty grid):
its folder in the sweep. trial.py trains and evaluates one trial; sweep.py runs them all on Ray.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser as a package (the scale extra installs it)
    import tomli as tomllib

from ..config import PAPER_PRESET, VARIANTS, ModelConfig, RunConfig, TrainConfig

MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)} - {"random_encoder", "random_decoder"}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}
EVAL_KEYS = {"S", "limit", "tau", "mc_repeats", "mc_images", "seed", "batch_size", "seeding"}
EVAL_ALIASES = {"k": "S", "noise_scale": "tau"}  # [eval] spellings of earlier versions


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


def canonical_evaluation(evaluation: dict) -> dict:
    """[eval] settings under today's names (S joint draws, tau), whichever spelling they were written in."""
    return {EVAL_ALIASES.get(key, key): value for key, value in evaluation.items()}


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
