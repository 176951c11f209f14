"""Model folders: weights as safetensors, everything else as JSON or CSV; never pickle.

A model folder holds model.safetensors, config.json, and optionally metrics.json and history.csv.
A training checkpoint adds optimizer.safetensors and trainer_state.json in DIR/checkpoint/.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import RunConfig
from .maths.model import IWAE


class CheckpointError(RuntimeError):
    """A model folder or checkpoint is missing, corrupt or does not match its config."""


def save_model(directory: str | os.PathLike, model: IWAE, run: RunConfig) -> None:
    """Write model.safetensors and config.json into directory, each replaced atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda p: save_file(state, str(p)))
    atomic_write(directory / "config.json", lambda p: Path(p).write_text(run.to_json()))


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one short line (a hostile file can make messages huge or multi-line)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, KeyError):
        text = f"no key {text}"
    return text if len(text) <= limit else text[:limit] + "..."


def load_run_config(directory: str | os.PathLike) -> RunConfig:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{path} is missing: {directory} is not a model folder")
    try:
        return RunConfig.from_json(path.read_text())
    # RecursionError: deeply nested brackets; OverflowError: 1e400 where a size belongs
    except (ValueError, KeyError, TypeError, OSError, RecursionError, OverflowError) as err:
        raise CheckpointError(f"{path} is not a valid model config: {one_line(err)}") from err


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[IWAE, RunConfig]:
    """Rebuild the model from config.json and fill it from model.safetensors, checking every tensor.

    Any defect of either file is a CheckpointError naming the file (and the tensor); nothing is written.
    """
    directory = Path(directory)
    run = load_run_config(directory)
    try:
        # the shapes first, on the meta device: a config asking for 10^12 units allocates nothing
        with torch.device("meta"):
            shapes = {name: tuple(t.shape) for name, t in IWAE(run.model).state_dict().items()}
    except (ValueError, TypeError, RuntimeError, OverflowError) as err:
        raise CheckpointError(f"{directory / 'config.json'} describes no buildable model: {one_line(err)}") from err
    state = checked_state(directory / "model.safetensors", shapes)
    model = IWAE(run.model)
    model.load_state_dict(state)
    return model.to(device).eval(), run


# Trained weights are a few units in size; a value beyond this is a damaged or hostile file (mu = 1e30
# still evaluated to a finite, meaningless log-likelihood). rho = log(expm1(sigma)) must stay above
# MIN_RHO, where sigma = softplus(rho) underflows float32 to 0 and the KL becomes infinite.
MAX_ABS_WEIGHT = 1e4
MIN_RHO = -80.0


def checked_state(path: Path, shapes: dict[str, tuple], dtype: torch.dtype = torch.float32) -> dict:
    """The tensors of a safetensors file, each checked against the expected names and shapes, floating,
    finite and of sane size, and converted to dtype; a CheckpointError names the file and the tensor."""
    state = read_tensors(path)
    missing, extra = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    if missing or extra:
        raise CheckpointError(f"{path} does not match its config: missing {missing[:5]}, unexpected {extra[:5]}")
    out = {}
    for name, tensor in state.items():
        if tuple(tensor.shape) != shapes[name]:
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                                  f"the config needs {shapes[name]}")
        if not tensor.is_floating_point():
            raise CheckpointError(f"{path}: tensor {name} is {str(tensor.dtype).removeprefix('torch.')}, "
                                  "not a floating-point tensor")
        tensor = tensor.to(dtype)  # float64 values beyond float32's range become inf: refused below
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {name} holds NaN or infinite values")
        if tensor.numel() and tensor.abs().max() > MAX_ABS_WEIGHT:
            raise CheckpointError(f"{path}: tensor {name} holds values up to {tensor.abs().max().item():.3g}, "
                                  f"more than {MAX_ABS_WEIGHT:g} in size: not trained weights")
        if name.endswith("_rho") and tensor.numel() and tensor.min() < MIN_RHO:
            raise CheckpointError(f"{path}: tensor {name} holds rho = {tensor.min().item():.3g}, below {MIN_RHO:g} "
                                  "(sigma = softplus(rho) would be 0)")
        out[name] = tensor
    return out


def load_state(module: torch.nn.Module, path: Path) -> None:
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    module.load_state_dict(checked_state(path, expected, next(iter(module.state_dict().values())).dtype))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).exists():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError, OverflowError, MemoryError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {one_line(err)}") from err


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata in a safetensors file's header (empty when it has none)."""
    if not Path(path).exists():
        raise CheckpointError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, TypeError, OverflowError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {one_line(err)}") from err


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path} is not readable JSON: {one_line(err)}") from err


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object (metrics.json, trainer_state.json): {} when it is missing."""
    if not Path(path).exists():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def check_writable(directory: Path, what: str | None = None) -> None:
    """Create and remove a temporary file in directory (permissions alone do not tell: root ignores
    them, a read-only file system does not); a CheckpointError names the folder when it fails."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CheckpointError(f"{what or directory} is not a writable folder: {err.strerror or err}") from err


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


def finite_json(value):
    """value with every NaN or infinite float replaced by None: JSON has no NaN or Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> None:
    """Write data as strict JSON (non-finite numbers become null), replacing the file atomically."""
    text = json.dumps(finite_json(data), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda p: Path(p).write_text(text))


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
    """Swap a fully written folder into place: the old one survives until the new one is there.

    At every instant one complete folder is at `final` or at `final.old` (a kill between the two renames
    leaves only the latter; recover_dir puts it back), and `final.old` is deleted only while `final` holds
    a complete folder.
    """
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)  # left by an earlier swap killed before its clean-up; final is complete
        os.replace(final, old)
    # else: a swap was killed between its renames and old is the last good folder, kept until tmp is in
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: Path) -> str | None:
    """Undo what a killed replace_dir left behind: put `final.old` back when `final` is missing and remove
    `.final.tmp-PID` folders of processes that are gone. Returns a sentence saying what was done, or None."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    said = []
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if tmp.is_dir() and pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)
            said.append(f"removed the unfinished {tmp.name}")
    if not final.exists() and old.is_dir():
        os.replace(old, final)
        said.append(f"recovered {final} from {old.name} (a checkpoint swap had been interrupted)")
    return "; ".join(said) or None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


