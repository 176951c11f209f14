"""Continuing training: what a checkpoint must hold, which settings a resumed run may change, and what the
earlier stages of a run that starts from another model folder did.

A run resumes from DIR/checkpoint/ (Trainer.resume) only with the same model and dataset; of its training
settings only RESUMABLE_SETTINGS (how long, where and how fast it runs, how it is watched) may differ
unless --force is given: any other change (k, batch size, rates, ...) would continue the checkpoint as a
run it is not. check_trainer_state checks trainer_state.json's keys and JSON types before any of them is
used, so a damaged or foreign checkpoint is a CheckpointError naming the file, not a failure halfway
through resuming. A run with init_from continues a trained model folder as a new stage: read_earlier_stages
gives that folder's epochs, steps, seconds, history rows and stages, from which the run's own go on.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from . import checkpoint as ckpt
from . import history as history_csv
from .config import RunConfig, TrainConfig
from .folders import FileError

# settings a resumed run may change: how long, where and how fast it runs, and how it is watched
RESUMABLE_SETTINGS = ("epochs", "max_steps", "device", "threads", "compile", "checkpoint_every", "eval_k",
                      "eval_images", "valid_every")


def changed_settings(saved: TrainConfig, asked: TrainConfig) -> list[tuple[str, object, object]]:
    """(option, checkpoint's value, asked value) for every setting of the run that differs."""
    return [(f"--{f.name.replace('_', '-')}", getattr(saved, f.name), getattr(asked, f.name))
            for f in dataclasses.fields(TrainConfig)
            if f.name not in RESUMABLE_SETTINGS and getattr(saved, f.name) != getattr(asked, f.name)]


# what trainer_state.json must hold, and of which JSON types (bool is no int here)
TRAINER_STATE = {"step": int, "epoch": int, "batch_in_epoch": int, "seconds": (int, float), "optimizer": dict,
                 "epoch_sums": dict, "history": list, "run": str}


def check_trainer_state(state: dict, path: Path) -> dict:
    for key, kind in TRAINER_STATE.items():
        value = state.get(key)
        if value is None:
            raise ckpt.CheckpointError(f"{path} has no {key!r}: not a checkpoint this trainer wrote")
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise ckpt.CheckpointError(f"{path}: {key!r} is {value!r:.60}, not a valid value")
    sums = state["epoch_sums"]
    if not (isinstance(sums.get("bound"), int | float) and isinstance(sums.get("n"), int)) \
            or not all(isinstance(row, dict) for row in state["history"]):
        raise ckpt.CheckpointError(f"{path}: 'epoch_sums' or 'history' is not what this trainer writes")
    return state


def read_earlier_stages(folder: str | os.PathLike, run: RunConfig) -> dict:
    """Epochs, steps, seconds, history rows and stages of the model folder a run starts from."""
    folder = Path(folder)
    earlier = ckpt.load_run_config(folder)
    if earlier.model != run.model or earlier.train.dataset != run.train.dataset:
        raise ckpt.CheckpointError(
            f"{folder} holds a {earlier.train.dataset} {earlier.model.variant} model with other sizes or "
            f"settings; a run can only start from a model of the same --dataset, --variant and sizes")
    metrics_path = folder / "metrics.json"
    training = ckpt.read_json_object(metrics_path).get("training")
    if not training:
        raise ckpt.CheckpointError(f"{metrics_path} has no training record: {folder} is not a trained model folder")
    if not (folder / "history.csv").exists():
        raise ckpt.CheckpointError(f"{folder / 'history.csv'} is missing")
    try:
        history = history_csv.read(folder / "history.csv")
    except FileError as err:
        raise ckpt.CheckpointError(str(err)) from err
    if len(history) != training["epochs"]:
        raise ckpt.CheckpointError(f"{folder}/history.csv has {len(history)} epochs, its metrics.json "
                                   f"{training['epochs']}: the folder is inconsistent")
    stages = training.get("stages") or [
        {key: training.get(key) for key in ("epochs", "steps", "train_seconds", "command")}
        | {"lr": earlier.train.lr, "lr_final": earlier.train.lr_final, "batch_size": earlier.train.batch_size,
           "init_from": None}]
    return {"epochs": training["epochs"], "steps": training["steps"], "train_seconds": training["train_seconds"],
            "history": history, "stages": stages}
