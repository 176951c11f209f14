"""history.csv: one row per epoch of training (the bounds, the KL, sigma, seconds), written by the Trainer.

FIELDS are the columns this version writes; read() takes any history.csv, older ones included, and checks
it as the dashboard needs it (epoch and step whole numbers, every other cell a number or empty).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from .checkpoint import atomic_write
from .folders import MAX_CSV_BYTES, FileError, _show, read_text

FIELDS = ["epoch", "step", "lr", "train_bound", "kl_per_datapoint", "objective", "valid_bound",
          "mean_sigma_encoder", "mean_sigma_decoder", "seconds"]


def write(path: Path, rows: list[dict]) -> None:
    """The Trainer's rows as history.csv, atomically (a missing value is an empty cell)."""
    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS, restval="", extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    atomic_write(path, write_csv)


def read(path: Path) -> list[dict]:
    """history.csv as rows of numbers ([] when there is none); epoch and step are whole numbers, empty is None."""
    if not Path(path).exists():
        return []
    text = read_text(path, MAX_CSV_BYTES)
    rows = []
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        fields = reader.fieldnames or []
        missing = [f for f in ("epoch", "step") if f not in fields]
        if missing:
            raise FileError(f"{path} has no {' and no '.join(missing)} column (header: {_show(fields, 80)})")
        for row in reader:
            line = reader.line_num
            if None in row:
                raise FileError(f"{path}, line {line}: more values than the header has columns")
            parsed = {}
            for name, value in row.items():
                if value is None or value.strip() == "":
                    parsed[name] = None
                    continue
                try:
                    parsed[name] = float(value)
                except ValueError:
                    raise FileError(f"{path}, line {line}: {name} is {_show(value)}, not a number") from None
            for name in ("epoch", "step"):
                v = parsed[name]
                if v is None or not math.isfinite(v) or not v.is_integer() or v < 0:
                    raise FileError(f"{path}, line {line}: {name} is {_show(row[name])}, not a whole number")
                parsed[name] = int(v)
            rows.append(parsed)
    except csv.Error as err:
        raise FileError(f"{path} is not a readable CSV file: {err}") from err
    return rows
