"""Reading model and run folders without trusting them: the one validating reader behind the dashboard.

Every file the dashboard shows something from is read here and checked for what the dashboard uses
(types, ranges, the weights against their config), so a bad file becomes one line naming the file and
what is wrong (FileError), never an exception on a page. zoo.py builds the model zoo from these readers;
runs/ reads the Train live page's run folders with them.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import RunConfig
from .maths.model import IWAE

MAX_JSON_BYTES = 10 << 20  # config, metrics, run options and progress are a few kB; more is not ours
MAX_CSV_BYTES = 50 << 20  # history.csv: one short row per epoch
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MAX_HIDDEN_LAYERS = 64


class FileError(RuntimeError):
    """A file is missing, unreadable or does not hold what it should; the message names the file."""


@dataclass
class Broken:
    """A model or run folder that cannot be used, with the one-line reason (naming the file)."""

    name: str
    path: Path
    error: str


def _show(value, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


# ---- files ---------------------------------------------------------------------------------------------

def read_bytes(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise FileError(f"{path} is not a file")
        if size > limit:
            raise FileError(f"{path} is {size:,} bytes, more than the {limit:,} such a file may have")
        return path.read_bytes()
    except FileNotFoundError as err:
        raise FileError(f"{path} is missing") from err
    except OSError as err:
        raise FileError(f"{path} cannot be read: {err.strerror or err}") from err


def read_text(path: Path, limit: int) -> str:
    raw = read_bytes(path, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FileError(f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})") from err


def read_json_object(path: Path) -> dict:
    """A JSON file whose top level is an object."""
    text = read_text(path, MAX_JSON_BYTES)
    try:
        data = json.loads(text)
    except RecursionError as err:  # thousands of nested brackets: the parser's stack, not our data
        raise FileError(f"{path} is nested too deeply to be a file of this tool") from err
    except ValueError as err:
        raise FileError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise FileError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def _object(d: dict, key: str, path: Path, where: str) -> dict:
    """d[key] as a dict ({} when absent; a null is replaced by {} in d, so readers of d need not check)."""
    value = d.get(key)
    if value is None:
        if key in d:
            d[key] = {}
        return d.get(key, {})
    if not isinstance(value, dict):
        raise FileError(f"{path}: {where}{key} is {_show(value)}, not an object")
    return value


def _number(d: dict, key: str, path: Path, where: str, *, integer: bool = False, minimum: float | None = None):
    """d[key] as a finite number (an integer when asked), or None when absent or null."""
    value = d.get(key)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
        value = int(value) if ok else value
    if ok and minimum is not None:
        ok = value >= minimum
    if not ok:
        kind = "a whole number" if integer else "a finite number"
        bound = f" of at least {minimum:g}" if minimum is not None else ""
        raise FileError(f"{path}: {where}{key} is {_show(value)}, not {kind}{bound}")
    return value


def _text(d: dict, key: str, path: Path, where: str = "") -> str | None:
    value = d.get(key)
    if value is not None and not isinstance(value, str):
        raise FileError(f"{path}: {where}{key} is {_show(value)}, not text")
    return value


# ---- model folders -------------------------------------------------------------------------------------

def read_run_config(path: Path) -> RunConfig:
    """config.json as a RunConfig (every key known, every value checked by the config classes)."""
    data = read_json_object(path)
    try:
        return RunConfig.from_json(json.dumps(data))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as err:
        reason = f"no {err} section" if isinstance(err, KeyError) else str(err)
        raise FileError(f"{path} is not a valid model config: {reason}") from err


def read_metrics(path: Path) -> dict:
    """metrics.json ({} when there is none), with the fields the dashboard shows checked."""
    if not Path(path).exists():
        return {}
    metrics = read_json_object(path)
    training = _object(metrics, "training", path, "")
    for key in ("epochs", "steps"):
        _number(training, key, path, "training.", integer=True, minimum=0)
    _number(training, "final_valid_bound", path, "training.")
    test = _object(metrics, "test", path, "")
    for key in ("S", "n_images", "active_units"):
        _number(test, key, path, "test.", integer=True, minimum=0)
    by_tau = _object(test, "by_tau", path, "test.")
    for tau in by_tau:
        result = _object(by_tau, tau, path, "test.by_tau.")
        _number(result, "mean", path, f"test.by_tau.{tau}.")
        _number(result, "stderr", path, f"test.by_tau.{tau}.", minimum=0)
    return metrics


def expected_tensors(run: RunConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the model of `run` stores, computed without allocating its weights."""
    with torch.device("meta"):
        return {name: tuple(t.shape) for name, t in IWAE(run.model).state_dict().items()}


def weight_count(run: RunConfig) -> int:
    """How many numbers the model of `run` stores (means, and spreads of its random layers), by arithmetic."""
    m = run.model
    count = 0
    for sizes, random in (([m.x_dim, *m.hidden, 2 * m.z_dim], m.random_encoder),
                          ([m.z_dim, *reversed(m.hidden), m.x_dim], m.random_decoder)):
        count += sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)) * (2 if random else 1)
    return count


def check_weights_header(path: Path, run: RunConfig) -> None:
    """model.safetensors names exactly the config's tensors, with their shapes, as floating-point numbers.

    Only the header is read, and a config describing more layers or numbers than the file can hold is refused
    by arithmetic first, so an absurd config.json costs nothing (not even the modules of an empty model).
    """
    path = Path(path)
    if not path.is_file():
        raise FileError(f"{path} is missing" if not path.exists() else f"{path} is not a file")
    config = path.parent / "config.json"
    if len(run.model.hidden) > MAX_HIDDEN_LAYERS:
        raise FileError(f"{config} describes {len(run.model.hidden):,} hidden layers; the dashboard shows models "
                        f"of at most {MAX_HIDDEN_LAYERS}")
    size, needed = path.stat().st_size, 2 * weight_count(run)  # at least 2 bytes a number (float16)
    if needed > size:
        raise FileError(f"{path} is {size:,} bytes, too small for the {weight_count(run):,} weights {config.name} "
                        f"describes (hidden {list(run.model.hidden)[:8]}, z_dim {run.model.z_dim})")
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise FileError(f"{path} is not a readable safetensors file: {err}") from err
    expected = expected_tensors(run)
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        raise FileError(f"{path} does not match config.json: missing tensors {_show(missing, 80)}, "
                        f"unexpected {_show(extra, 80)}")
    for name, (shape, dtype) in found.items():
        if shape != expected[name]:
            raise FileError(f"{path}: tensor {name} has shape {shape}, config.json needs {expected[name]}")
        if dtype not in FLOAT_DTYPES:
            raise FileError(f"{path}: tensor {name} holds {dtype} values, not floating-point numbers")


# ---- run folders ---------------------------------------------------------------------------------------

def read_options(path: Path) -> dict:
    """A run's run.json: how it was started."""
    options = read_json_object(path)
    _text(options, "created", path)
    _text(options, "data_dir", path)
    _number(options, "train_images", path, "", integer=True, minimum=1)
    _number(options, "launches", path, "", integer=True, minimum=0)
    _number(options, "valid_points", path, "", integer=True, minimum=1)
    return options


def read_progress(path: Path, statuses: tuple[str, ...]) -> dict:
    """A run's progress.json ({} when there is none yet), with every field the Train live page shows checked."""
    if not Path(path).exists():
        return {}
    p = read_json_object(path)
    status = p.get("status", statuses[0])
    if status not in statuses:
        raise FileError(f"{path}: status is {_show(status)}, not one of {', '.join(statuses)}")
    _text(p, "message", path)
    for key in ("step", "total_steps", "epoch", "epochs", "samples_step", "steps_per_epoch", "pid"):
        _number(p, key, path, "", integer=True, minimum=0)
    _number(p, "stride", path, "", integer=True, minimum=1)
    for key in ("steps_per_second", "heartbeat", "started_at"):
        _number(p, key, path, "")
    points = p.get("points") or []
    if not isinstance(points, list):
        raise FileError(f"{path}: points is {_show(points)}, not a list")
    for i, point in enumerate(points):
        # [step, bound, kl]; the bound and KL of a diverging run may be NaN or infinite (JSON NaN); the KL is
        # null for an objective without one (beta = 0, the mixture objective)
        if (not isinstance(point, list) or len(point) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point[:2])
                or not (point[2] is None or isinstance(point[2], (int, float)) and not isinstance(point[2], bool))):
            raise FileError(f"{path}: points[{i}] is {_show(point)}, not [step, bound, KL]")
    history = p.get("history") or []
    if not isinstance(history, list):
        raise FileError(f"{path}: history is {_show(history)}, not a list")
    for i, row in enumerate(history):
        if not isinstance(row, dict):
            raise FileError(f"{path}: history[{i}] is {_show(row)}, not an object")
        step = _number(row, "step", path, f"history[{i}].", integer=True, minimum=0)
        if _number(row, "valid_bound", path, f"history[{i}].") is not None and step is None:
            raise FileError(f"{path}: history[{i}] has a valid_bound but no step")
    _number(p, "valid_every", path, "", integer=True, minimum=0)
    valid = p.get("valid") or []
    if not isinstance(valid, list):
        raise FileError(f"{path}: valid is {_show(valid)}, not a list")
    for i, point in enumerate(valid):  # [step, validation bound]
        if (not isinstance(point, list) or len(point) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)):
            raise FileError(f"{path}: valid[{i}] is {_show(point)}, not [step, bound]")
    evaluation = _object(p, "evaluation", path, "")  # a test log-likelihood job on the finished run
    for key in ("status", "message", "requested"):
        _text(evaluation, key, path, "evaluation.")
    for key in ("S", "images", "done", "total", "pid"):
        _number(evaluation, key, path, "evaluation.", integer=True, minimum=0)
    for key in ("heartbeat", "started_at", "test_ll", "stderr", "seconds"):
        _number(evaluation, key, path, "evaluation.")
    return p


def read_png(path: Path, limit: int = 20 << 20) -> bytes:
    """The bytes of a PNG image that decodes (a run's sample grid)."""
    from PIL import Image

    raw = read_bytes(path, limit)
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.format != "PNG":
                raise FileError(f"{path} is a {image.format} image, not a PNG")
            image.load()
    except FileError:
        raise
    except Exception as err:  # PIL raises many kinds (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise FileError(f"{path} is not a readable PNG image: {err}") from err
    return raw


MAX_CURVE_BYTES = 16 << 20  # bound_curves.safetensors: [10 k, <= 2,000 images] floats per tau, a few hundred kB


def read_bound_curves(path: Path) -> dict:
    """A model folder's precomputed L_k curves (curves.write_bound_curves) checked before use:
    {'meta': {model_sha256, ks: [..], seed, n_images, test_seed, source},
     'k_max=K,tau=T': [len(ks <= K), n_images] tensor, ...}.
    A FileError names the file and what is wrong: not a safetensors file, too big, a missing or unreadable
    metadata key, a tensor of another shape or with values that are not finite."""
    path = Path(path)
    if path.stat().st_size > MAX_CURVE_BYTES:
        raise FileError(f"{path} is {path.stat().st_size:,} bytes, more than precomputed curves can be")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError, OverflowError) as err:
        raise FileError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        checked = {"model_sha256": meta["model_sha256"], "ks": [int(k) for k in meta["ks"].split(",")],
                   "seed": int(meta["seed"]), "n_images": int(meta["n_images"]), "test_seed": int(meta["test_seed"]),
                   "source": meta["source"]}
    except (KeyError, ValueError) as err:
        raise FileError(f"{path}: its metadata lacks a readable {err} (needs model_sha256, ks, seed, n_images, "
                        "test_seed, source)") from err
    out = {"meta": checked}
    for name, t in tensors.items():
        try:
            k_max = int(name.split(",")[0].removeprefix("k_max="))
        except ValueError:
            k_max = None
        rows = len([k for k in checked["ks"] if k <= (k_max or 0)])
        if k_max is None or not name.startswith("k_max=") or ",tau=" not in name \
                or tuple(t.shape) != (rows, checked["n_images"]) or not t.is_floating_point() \
                or not torch.isfinite(t).all():
            raise FileError(f"{path}: tensor {name} of shape {tuple(t.shape)} is not 'k_max=K,tau=T' holding "
                            f"[k <= K of the {len(checked['ks'])} k, {checked['n_images']} images] finite L_k values")
        out[name] = t.float()
    return out
