"""Continuing training: writing and reading a trainer's checkpoint, what it must hold, which settings a resumed
run may change, and what the earlier stages of a run that starts from another model folder did.

write_checkpoint puts the model folder and DIR/checkpoint/ (optimizer state, generator states, the epoch's
permutation, the position in the schedule) on disk atomically, so a kill at any moment leaves the previous
checkpoint or the new one. A run resumes from it (read_checkpoint, through Trainer.resume) only with the same
model and dataset; of its training settings only RESUMABLE_SETTINGS (how long, where and how fast it runs, how
it is watched) may differ unless --force is given: any other change (k, batch size, rates, ...) would continue
the checkpoint as a run it is not. check_trainer_state checks trainer_state.json's keys and JSON types before
any of them is used, and check_rng the generator states, so a damaged or foreign checkpoint is a
CheckpointError naming the file, not a failure halfway through resuming. A run with init_from continues a
trained model folder as a new stage: read_earlier_stages gives that folder's epochs, steps, seconds, history
rows and stages, from which the run's own go on.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from . import checkpoint as ckpt
from . import history as history_csv
from .config import RunConfig, TrainConfig
from .folders import FileError

if TYPE_CHECKING:
    from .train import Trainer

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


def write_checkpoint(trainer: Trainer) -> bool:
    """Write the trainer's model folder and DIR/checkpoint/ (optimizer, RNG, position) atomically; only rank 0
    writes, and only a run with a folder: returns whether it wrote."""
    if not trainer.out or trainer.rank != 0:
        return False
    trainer.out.mkdir(parents=True, exist_ok=True)
    ckpt.save_model(trainer.out, trainer.model, trainer.run)
    history_csv.write(trainer.out / "history.csv", trainer.history)
    tmp = trainer.out / f".checkpoint.tmp-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    opt_tensors, opt_plain = ckpt.optimizer_tensors(trainer.optimizer)
    shutil.copyfile(trainer.out / "model.safetensors", tmp / "model.safetensors")  # just written above
    rng = {"torch_rng": torch.get_rng_state(), "batches_rng": trainer.batches.generator.get_state()}
    if trainer.perm is not None:
        rng["perm"] = trainer.perm
    if trainer.device.type == "cuda":
        rng["cuda_rng"] = torch.cuda.get_rng_state(trainer.device)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    save_file(rng, str(tmp / "rng.safetensors"))
    ckpt.write_json(tmp / "trainer_state.json", {
        "step": trainer.step, "epoch": trainer.epoch, "batch_in_epoch": trainer.batch_in_epoch,
        "seconds": trainer.seconds, "optimizer": opt_plain, "epoch_sums": trainer.epoch_sums,
        "history": trainer.history, "run": trainer.run.to_json()})
    ckpt.replace_dir(tmp, trainer.out / "checkpoint")
    return True


def read_checkpoint(trainer: Trainer, allow_changes: bool = False) -> bool:
    """Continue from DIR/checkpoint if it exists; returns whether there was one to resume.

    A checkpoint that a kill during the swap left at checkpoint.old is put back first, and unfinished
    .checkpoint.tmp-PID folders are removed (trainer.recovered says what was done). The checkpoint must
    be of the same model and dataset; training settings that differ (k, batch size, rates, ...) are
    refused with their names unless allow_changes (then trainer.changed lists them). Every file is
    checked before it is used: a bad one is a CheckpointError naming it.
    """
    trainer.recovered, trainer.changed = None, []
    if not trainer.out:
        return False
    folder = trainer.out / "checkpoint"
    if trainer.rank == 0:
        trainer.recovered = ckpt.recover_dir(folder)
        for name in ("model.safetensors", "config.json", "history.csv"):  # atomic writes a kill cut short
            for tmp in trainer.out.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
    if trainer.world_size > 1:
        torch.distributed.barrier()  # the other processes read the checkpoint once rank 0 has put it back
    if not folder.exists():
        return False
    state_path = folder / "trainer_state.json"
    if not state_path.exists():
        raise ckpt.CheckpointError(f"{state_path} is missing: {folder} is not a complete checkpoint")
    state = check_trainer_state(ckpt.read_json_object(state_path), state_path)
    try:
        saved = RunConfig.from_json(state["run"])
    except (ValueError, KeyError, TypeError, RecursionError, OverflowError) as err:
        raise ckpt.CheckpointError(f"{state_path}: its run settings are not valid: {ckpt.one_line(err)}") from err
    if saved.model != trainer.run.model or saved.train.dataset != trainer.cfg.dataset:
        raise ckpt.CheckpointError(
            f"{folder} holds a {saved.train.dataset} {saved.model.variant} model with other settings; "
            "resume it with the same --dataset/--variant/sizes or choose another --out")
    trainer.changed = changed_settings(saved.train, trainer.cfg)
    if trainer.changed and not allow_changes:
        raise ckpt.CheckpointError(
            f"{folder} was trained with {', '.join(f'{o} {a}' for o, a, _ in trainer.changed)}; this run asks "
            f"for {', '.join(f'{o} {b}' for o, _, b in trainer.changed)}: resume with the checkpoint's settings, "
            "or pass --force to continue with the new ones")
    shapes = {name: tuple(t.shape) for name, t in trainer.model.state_dict().items()}
    weights = ckpt.checked_state(folder / "model.safetensors", shapes)
    opt_path, rng_path = folder / "optimizer.safetensors", folder / "rng.safetensors"
    opt_tensors = ckpt.read_tensors(opt_path)
    for name, t in opt_tensors.items():
        if not torch.isfinite(t).all():
            raise ckpt.CheckpointError(f"{opt_path}: tensor {name} holds NaN or infinite values")
    rng = ckpt.read_tensors(rng_path)
    check_rng(trainer, rng, rng_path)
    try:
        ckpt.restore_optimizer(trainer.optimizer, opt_tensors, state["optimizer"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as err:
        raise ckpt.CheckpointError(f"{opt_path} and {state_path} hold no optimizer state of this model: "
                                   f"{ckpt.one_line(err)}") from err
    trainer.model.load_state_dict(weights)
    try:
        torch.set_rng_state(rng["torch_rng"])
        trainer.batches.generator.set_state(rng["batches_rng"])
        if "cuda_rng" in rng and trainer.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda_rng"], trainer.device)
    except RuntimeError as err:
        raise ckpt.CheckpointError(f"{rng_path} holds no valid random generator state: "
                                   f"{ckpt.one_line(err)}") from err
    trainer.perm = rng.get("perm")
    trainer.step, trainer.epoch = state["step"], state["epoch"]
    trainer.batch_in_epoch, trainer.seconds = state["batch_in_epoch"], state["seconds"]
    trainer.epoch_sums, trainer.history = state["epoch_sums"], state["history"]
    return True


def check_rng(trainer: Trainer, rng: dict, path: Path) -> None:
    """The generator states and the epoch's permutation in rng must be what the trainer would save."""
    expected = {"torch_rng": torch.get_rng_state(), "batches_rng": trainer.batches.generator.get_state()}
    for name, like in expected.items():
        t = rng.get(name)
        if t is None or t.dtype != like.dtype or t.shape != like.shape:
            raise ckpt.CheckpointError(
                f"{path}: tensor {name} is " + ("missing" if t is None else f"{t.dtype} {tuple(t.shape)}")
                + f", a generator state is {like.dtype} {tuple(like.shape)}")
    perm, n = rng.get("perm"), len(trainer.batches.x)
    if perm is not None and (perm.dtype != torch.int64 or perm.shape != (n,)
                             or not torch.equal(perm.sort().values, torch.arange(n))):
        raise ckpt.CheckpointError(f"{path}: tensor perm is not a permutation of the {n} training images")
