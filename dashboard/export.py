"""Exporting the dashboard's figures: PNG, SVG and PDF through kaleido and a Chromium, HTML and CSV always.

`figure_bytes(fig, fmt)` gives one format (raising ExportUnavailable, with the reason, when no Chromium
can render); `page_zip` bundles a page's figures, its tidy tables and a JSON sidecar of the view's
settings. One kaleido browser stays open for all exports. No Streamlit here.
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import os
import shutil
import threading
import warnings
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from .figures import SIDE, to_numpy

IMAGE_FORMATS = ("png", "svg", "pdf")  # need kaleido and a Chromium
TEXT_FORMATS = ("html", "csv")  # always available
FORMATS = IMAGE_FORMATS + TEXT_FORMATS
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "html": "text/html",
        "csv": "text/csv", "zip": "application/zip"}
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
RENDER_TIMEOUT = 120.0  # seconds for one static image before giving up


class ExportUnavailable(RuntimeError):
    """PNG, SVG or PDF cannot be made here (no Chromium, or it failed); the message says why and what to do."""


def find_browser() -> str:
    """The Chromium kaleido will use: $BROWSER_PATH if set, else the first Chromium/Chrome on PATH."""
    hint = "HTML and CSV export still work."
    env = os.environ.get("BROWSER_PATH")
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise ExportUnavailable(f"BROWSER_PATH={env!r} is not an executable file, so PNG, SVG and PDF export "
                                f"(kaleido) cannot run. Point BROWSER_PATH at Chromium or Chrome, or unset it. {hint}")
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise ExportUnavailable("No Chromium or Chrome found on PATH, so PNG, SVG and PDF export (kaleido) cannot run. "
                            "Install one (e.g. `apt-get install chromium`) or set BROWSER_PATH to its executable. "
                            + hint)


def export_unavailable_reason() -> str | None:
    """None when PNG/SVG/PDF export can run, else the reason (cheap: starts no browser)."""
    try:
        find_browser()
    except ExportUnavailable as err:
        return str(err)
    return None


_render_lock = threading.Lock()
_server = {"started": False, "failed": False}
_pool = {"executor": concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="figure-export")}


def _ensure_server() -> None:
    """Keep one kaleido browser open for all exports (about 0.2 s per image instead of about 2 s)."""
    if _server["started"] or _server["failed"]:
        return
    import kaleido

    try:
        kaleido.start_sync_server(silence_warnings=True)
        _server["started"] = True
    except Exception:
        _server["failed"] = True  # fall back to one browser per image


def _static_image(fig: go.Figure, fmt: str) -> bytes:
    find_browser()
    width = int(fig.layout.width or 1000)
    height = int(fig.layout.height or 500)
    with _render_lock:
        _ensure_server()

        def render() -> bytes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fig.to_image(format=fmt, width=width, height=height, scale=2 if fmt == "png" else 1)

        future = _pool["executor"].submit(render)
        try:
            return future.result(timeout=RENDER_TIMEOUT)
        except concurrent.futures.TimeoutError as err:
            _server["failed"] = True  # a hung browser: later exports start their own, in a fresh thread
            _pool["executor"] = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="figure-export")
            raise ExportUnavailable(f"{fmt.upper()} export timed out after {RENDER_TIMEOUT:.0f} s in kaleido's "
                                    "Chromium. HTML and CSV export still work.") from err
        except ExportUnavailable:
            raise
        except Exception as err:
            raise ExportUnavailable(f"{fmt.upper()} export failed in kaleido/Chromium: {err}. "
                                    "HTML and CSV export still work.") from err


def figure_html(fig: go.Figure) -> str:
    """The figure as one self-contained HTML page (plotly.js inlined, works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def figure_csv(fig: go.Figure) -> str:
    """The data of every trace in long form: trace, x, y, value (heatmaps: one row per pixel, NaN gaps left out;
    scatter/bar: one row per point, value = marker colour or error when there is one)."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["trace", "x", "y", "value"])
    for i, trace in enumerate(fig.data):
        name = trace.name or f"trace {i}"
        if getattr(trace, "z", None) is not None:
            z = np.asarray(trace.z, dtype=float)
            xs = trace.x if trace.x is not None else range(z.shape[1])
            ys = trace.y if trace.y is not None else range(z.shape[0])
            for r, y in enumerate(ys):
                for c, x in enumerate(xs):
                    if np.isfinite(z[r, c]):
                        w.writerow([name, x, y, f"{z[r, c]:.6g}"])
            continue
        xs = list(trace.x) if getattr(trace, "x", None) is not None else []
        ys = list(trace.y) if getattr(trace, "y", None) is not None else []
        extra = None
        marker = getattr(trace, "marker", None)
        if marker is not None and marker.color is not None and not isinstance(marker.color, str):
            extra = list(marker.color)
        elif getattr(trace, "customdata", None) is not None:
            extra = list(np.asarray(trace.customdata).ravel())
        for j in range(max(len(xs), len(ys))):
            x = xs[j] if j < len(xs) else ""
            y = ys[j] if j < len(ys) else ""
            value = extra[j] if extra is not None and j < len(extra) else ""
            w.writerow([name, x, y, value])
    return out.getvalue()


def figure_bytes(fig: go.Figure, fmt: str) -> bytes:
    """The figure as png, svg or pdf (kaleido + Chromium; ExportUnavailable if impossible), or html or csv."""
    fmt = fmt.lower()
    if fmt in IMAGE_FORMATS:
        return _static_image(fig, fmt)
    if fmt == "html":
        return figure_html(fig).encode()
    if fmt == "csv":
        return figure_csv(fig).encode()
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def images_csv(grids: Mapping[str, object], axes: Sequence[str] = ("draw", "z index"),
               labels: Mapping[str, Sequence] | None = None, value_name: str = "value", group: str = "model") -> str:
    """Tidy CSV of image blocks {name: [*lead, 784]} with len(lead) == len(axes): one row per pixel with the
    columns `group` (the block's name), each axis (its index, or labels[axis][index]), pixel row, column and
    `value_name`."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow([group, *axes, "pixel row", "column", value_name])
    rows, cols = np.divmod(np.arange(SIDE * SIDE), SIDE)
    labels = labels or {}
    for name, block in grids.items():
        a = to_numpy(block)
        lead = a.shape[:-1]
        if len(lead) != len(axes):
            raise ValueError(f"{name}: image block of shape {a.shape} does not have the axes {', '.join(axes)}")
        for index in np.ndindex(*lead):
            keys = [labels[ax][i] if ax in labels else i for ax, i in zip(axes, index, strict=True)]
            values = [f"{v:.6g}" for v in a[index]]
            w.writerows([name, *keys, r, c, v] for r, c, v in zip(rows, cols, values, strict=True))
    return out.getvalue()


def table_csv(rows: Sequence[Mapping]) -> str:
    """Tidy CSV of records (list of dicts with the same keys in the same order, e.g. model, k, tau, seed, mean,
    stderr): one column per key; None is an empty cell."""
    out = io.StringIO()
    columns = list(rows[0]) if rows else []
    w = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows([{c: ("" if r.get(c) is None else r.get(c)) for c in columns} for r in rows])
    return out.getvalue()


def settings_json(fig: go.Figure, settings: Mapping | None) -> str:
    """The JSON sidecar of an exported figure: its title and the settings that reproduce it."""
    title = fig.layout.title.text if fig.layout.title and fig.layout.title.text else None
    return json.dumps({"title": title, **(settings or {})}, indent=2, default=str) + "\n"


def page_zip(figures: Mapping[str, go.Figure], tables: Mapping[str, object] | None = None,
             settings: Mapping | None = None) -> bytes:
    """A zip with every figure in every available format and a README.txt saying what was skipped and why.

    tables: figure name -> its tidy CSV text, or a function making it (replaces the trace dump of figure_csv);
    settings: the view's settings (model, objective, k, tau, seed, images, link...), written beside each figure
    as NAME.json with its title."""
    buf = io.BytesIO()
    skipped: list[str] = []
    reason = export_unavailable_reason()
    tables = tables or {}
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, fig in figures.items():
            for fmt in FORMATS:
                if fmt in IMAGE_FORMATS and reason:
                    continue
                try:
                    if fmt == "csv" and name in tables:
                        table = tables[name]
                        zf.writestr(f"{name}.csv", table() if callable(table) else table)
                    else:
                        zf.writestr(f"{name}.{fmt}", figure_bytes(fig, fmt))
                except ExportUnavailable as err:
                    skipped.append(f"{name}.{fmt}: {err}")
            if settings is not None:
                zf.writestr(f"{name}.json", settings_json(fig, settings))
        lines = [f"Figures: {', '.join(figures) or 'none'}.", f"Formats tried: {', '.join(FORMATS)}.", ""]
        if reason:
            lines.append(f"Skipped PNG, SVG and PDF for every figure: {reason}")
        lines += [f"Skipped {s}" for s in skipped]
        if not reason and not skipped:
            lines.append("Nothing was skipped.")
        tidy = [n for n in figures if n in tables]
        lines += ["", (f"CSV files of {', '.join(tidy)} are tidy tables with named columns; " if tidy else "")
                  + "other CSV files hold a figure's data in long form (trace, x, y, value); "
                  "HTML files open offline in any browser."]
        if settings is not None:
            lines.append("NAME.json beside each figure holds its title and the settings that reproduce it.")
        zf.writestr("README.txt", "\n".join(lines) + "\n")
    return buf.getvalue()
