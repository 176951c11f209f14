"""Model folders: weights as safetensors, everything else as JSON or CSV; never pickle.

A model folder holds model.safetensors, config.json, and optionally metrics.json and history.csv.
A training checkpoint adds optimizer.safetensors and trainer_state.json in DIR/checkpoint/.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import RunConfig
from .model import IWAE

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"


class CheckpointError(RuntimeError):
    """A model folder or checkpoint is missing, corrupt or does not match its config."""


def save_model(directory: str | os.PathLike, model: IWAE, run: RunConfig) -> None:
    """Write model.safetensors and config.json into directory, each replaced atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda p: save_file(state, str(p)))
    atomic_write(directory / "config.json", lambda p: Path(p).write_text(run.to_json()))


def load_run_config(directory: str | os.PathLike) -> RunConfig:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{path} is missing: {directory} is not a model folder")
    try:
        return RunConfig.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is not a valid model config: {err}") from err


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[IWAE, RunConfig]:
    """Rebuild the model from config.json and fill it from model.safetensors, checking every tensor."""
    directory = Path(directory)
    run = load_run_config(directory)
    model = IWAE(run.model)
    load_state(model, directory / "model.safetensors")
    return model.to(device).eval(), run


def load_state(module: torch.nn.Module, path: Path) -> None:
    state = read_tensors(path)
    expected = module.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path} does not match its config: missing {missing}, unexpected {extra}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                                  f"the config needs {tuple(expected[name].shape)}")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {name} holds NaN or infinite values")
    module.load_state_dict(state)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).exists():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata in a safetensors file's header (empty when it has none)."""
    if not Path(path).exists():
        raise CheckpointError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not readable JSON: {err}") from err


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) then rename over path, so readers never see a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(data, indent=2) + "\n"))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into tensors (for safetensors) and plain values (for JSON)."""
    sd = optimizer.state_dict()
    tensors, plain = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain["state"].setdefault(str(idx), {})[name] = value
    return tensors, plain


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, plain: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in plain.get("state", {}).items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder into place: the old one survives until the new one is there."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def select_models(dirs=None) -> list[ZooEntry]:
    """The model folders named (in their order on disk), or all shipped pretrained models when none are."""
    if not dirs:
        return find_models()
    wanted = {Path(d).resolve() for d in dirs}
    return [e for e in find_models(*{p.parent for p in wanted}) if e.path.resolve() in wanted]


@dataclass
class ZooEntry:
    """A model folder found on disk, with what its JSON files say about it."""

    name: str
    path: Path
    run: RunConfig
    metrics: dict
    last_history: dict = field(default_factory=dict)  # the last row of history.csv, as numbers (dashboard)
    problem: str = ""  # why some of its numbers are missing (an unreadable metrics.json or history.csv)

    @property
    def dataset(self) -> str:
        return self.run.train.dataset

    @property
    def variant(self) -> str:
        return self.run.model.variant


def find_models(*roots: str | os.PathLike) -> list[ZooEntry]:
    """Every model folder directly under the given roots (default: the shipped pretrained models)."""
    entries = []
    for root in roots or (PRETRAINED_DIR,):
        root = Path(root)
        if not root.is_dir():
            continue
        for d in sorted(p for p in root.iterdir() if (p / "model.safetensors").exists()):
            try:
                run = load_run_config(d)
            except CheckpointError:
                continue
            metrics_path = d / "metrics.json"
            try:
                metrics = read_json(metrics_path) if metrics_path.exists() else {}
            except CheckpointError as err:
                metrics = {"error": str(err)}  # the weights are still usable; say why numbers are missing
            entries.append(ZooEntry(d.name, d, run, metrics))
    return entries
