"""The dashboard's image figures as plotly Figures, built from numbers (no Streamlit calls here): image grids,
the stacked sample grids and their spread map, latent traversals and the weight tiles.

Images are tiled into one heatmap per panel (pads are NaN, so they show as gaps), on a layout built as one
dict (_image_layout); `image_grid` returns such a plotly Figure. The line, scatter, bar and histogram charts
are charts.py; exporting a figure (PNG, SVG, PDF, HTML, CSV, a page's zip) is export.py. Colour scales avoid
the few exact colours Streamlit's frontend repaints (see _colorscale).

Every dashboard figure is made on TEMPLATE and drawn as it is (widgets.chart: no Streamlit theme), so the screen
shows what an export writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch
from plotly.colors import get_colorscale

from iwae_core import explore

SIDE = 28  # images are SIDE x SIDE
MAGMA_ZERO = "#010004"  # the colour of 0 in the magma scale (see _colorscale)
# The plotly template of every figure the dashboard builds, set on each figure (Streamlit makes its own template
# plotly's default when it is imported, so the default cannot be relied on): a white background, as in a paper,
# drawn without Streamlit's theme (widgets.chart says why). Its layout part only: the trace defaults it would add
# (colour scales and styles of every trace type) are set by each figure where they matter, and would only lengthen
# every figure sent to the browser.
TEMPLATE = go.layout.Template(layout=pio.templates["plotly_white"].layout)


def to_numpy(a) -> np.ndarray:
    """A torch tensor, list or array as a float numpy array (on the CPU)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


# ---- image tiles -----------------------------------------------------------------------------------

def tile(images, ncol: int, pad: int = 1) -> np.ndarray:
    """Lay out images [n, 784] (or [n, 28, 28]) row by row, ncol per row, NaN between them: 2-D array."""
    return explore.tile(torch.as_tensor(to_numpy(images)), ncol, pad).numpy()


def _colorscale(scale) -> list:
    """A named or explicit colour scale as explicit stops, nudging colours #000001-#000099 to #01....: Streamlit's
    frontend uses those exact values as its theme's placeholders and repaints them in every plotly chart, drawn
    with the theme or not (magma starts at #000004, which came out lavender)."""
    stops = get_colorscale(scale) if isinstance(scale, str) else [list(s) for s in scale]
    return [[pos, f"#01{c[3:]}" if isinstance(c, str) and c.lower().startswith("#0000") and c[5:].isdigit() else c]
            for pos, c in stops]


def _heatmap(z: np.ndarray, colorscale="gray", zmin=0.0, zmax=1.0, showscale=False, name="", colorbar=None,
             value_label="value", customdata=None, hovertemplate: str | None = None, panel: int = 1) -> go.Heatmap:
    """Image tiles z as a heatmap on the axes of panel `panel` (see _image_layout). Values are sent rounded to
    4 decimals as float32: half the bytes of float64 for the browser to receive and parse."""
    z = np.round(z, 4).astype(np.float32)
    return go.Heatmap(z=z, colorscale=_colorscale(colorscale), zmin=zmin, zmax=zmax, showscale=showscale, name=name,
                      colorbar=colorbar, zsmooth=False, hoverongaps=False, customdata=customdata,
                      hovertemplate=hovertemplate
                      or f"{name}<br>row %{{y}}, col %{{x}}<br>{value_label} %{{z:.3g}}<extra></extra>",
                      **_axes_of(panel))


def _axes_of(panel: int) -> dict:
    """The axes a trace of panel `panel` (1, 2, ...) is drawn on."""
    suffix = "" if panel == 1 else str(panel)
    return {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}"}


def tile_index(n: int, ncol: int, first: int = 0, pad: int = 1) -> np.ndarray:
    """For the layout of `tile`: [rows, cols, 3] of (image number + first, pixel row, pixel column) per cell,
    -1 in the gaps; the heatmap's customdata, so hover names the image (unit) and pixel, not the grid cell."""
    ncol = max(1, min(ncol, n)) if n else 1
    nrow = max(1, math.ceil(n / ncol))
    step = SIDE + pad
    out = np.full((nrow * step - pad, ncol * step - pad, 3), -1, dtype=np.int64)
    rows, cols = np.meshgrid(np.arange(SIDE), np.arange(SIDE), indexing="ij")
    for i in range(n):
        r, c = divmod(i, ncol)
        out[r * step:r * step + SIDE, c * step:c * step + SIDE] = np.stack([np.full_like(rows, i + first), rows,
                                                                            cols], -1)
    return out


IMAGE_X = {"showticklabels": False, "showgrid": False, "zeroline": False, "ticks": ""}
IMAGE_Y = {**IMAGE_X, "autorange": "reversed", "constrain": "domain"}  # row 0 at the top


def _image_layout(domains: Sequence[tuple[list[float], list[float]]], titles: Sequence[str] = ()) -> dict:
    """The layout of image panels as one dict: panel i (1, 2, ...) at (x domain, y domain) in paper coordinates,
    ticks hidden, row 0 at the top, square pixels, and each title above its panel as make_subplots places it.

    Figures are built from one such dict (go.Figure(data, layout)): plotly validates it once, where
    make_subplots and update calls validated the layout again at every step, most of the time a rerun with a
    new tau spent on the Samples page."""
    layout = {"template": TEMPLATE, "plot_bgcolor": "white", "paper_bgcolor": "white", "annotations": []}
    for i, (x_domain, y_domain) in enumerate(domains, start=1):
        suffix = "" if i == 1 else str(i)
        layout[f"xaxis{suffix}"] = {**IMAGE_X, "anchor": f"y{suffix}", "domain": x_domain}
        layout[f"yaxis{suffix}"] = {**IMAGE_Y, "anchor": f"x{suffix}", "domain": y_domain, "scaleanchor": f"x{suffix}"}
        if i <= len(titles):
            layout["annotations"].append({"text": titles[i - 1], "x": (x_domain[0] + x_domain[1]) / 2,
                                          "y": y_domain[1], "xref": "paper", "yref": "paper", "xanchor": "center",
                                          "yanchor": "bottom", "showarrow": False, "font": {"size": 16}})
    return layout


TITLE_CHARS = 90  # about 770 px of plotly's 17 px title font: the page's column, narrower than an export's 1100 px
TITLE_LINE_PX = 22


def wrapped_title(title: str, chars: int = TITLE_CHARS) -> tuple[str, int]:
    """(title in lines of at most `chars` characters, the number of lines): plotly never wraps a title, and a long
    one ran past the figure's edge. A line ends after its last '; ' or ', ' in its final 30 %, else after its last
    space (else at `chars`), so the breaks fall between phrases without costing a line."""
    breaks = (("; ", int(0.7 * chars)), (", ", int(0.7 * chars)), (" ", 1))  # (after what, from where in a line)
    lines, rest = [], title
    while len(rest) > chars:
        cut = next((i + len(sep) for sep, start in breaks if (i := rest.rfind(sep, start, chars)) > 0), chars)
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:]
    return "<br>".join([*lines, rest]), len(lines) + 1


def title_and_room(title: str | None) -> tuple[str | None, int]:
    """(the title wrapped, the pixels its extra lines need above the plot)."""
    text, lines = wrapped_title(title) if title else (title, 1)
    return text, TITLE_LINE_PX * (lines - 1)


def _titled(layout: dict, title: str | None, top: int, height: int) -> dict:
    """layout with `title` wrapped, the top margin `top` and the figure `height` grown by its extra lines."""
    text, extra = title_and_room(title)
    margin = {**layout.get("margin", {}), "t": top + extra}
    return {**layout, "title": text, "margin": margin, "height": height + extra}


def _panel_height(rows: int, cols_total: int, width: int = 1100, min_h: int = 220, extra: int = 90) -> int:
    """Figure height that keeps square tiles for panels totalling cols_total tiles across `width` pixels."""
    tile_px = min(60.0, width / max(cols_total, 1))
    return int(max(min_h, rows * tile_px + extra))


def image_grid(images, nrow: int = 8, title: str | None = None) -> go.Figure:
    """A grid of images [n, 784] in [0, 1], `nrow` images per row (torchvision's meaning), white ink on black."""
    n = len(to_numpy(images).reshape(-1, SIDE * SIDE))
    z = tile(images, nrow)
    rows = max(1, math.ceil(n / max(nrow, 1)))
    layout = _image_layout([([0.0, 1.0], [0.0, 1.0])])
    # wide enough for the images and for the title (about 9 px a character at plotly's title size)
    width = max(200, min(700, 40 * min(nrow, n or 1) + 60), min(700, 9 * len(title or "") + 40))
    return go.Figure(_heatmap(z, name=title or "images", value_label="p(pixel on)"),
                     {**layout, "title": title, "height": _panel_height(rows, min(nrow, n) or 1, width=500, min_h=160),
                      "width": width, "margin": {"l": 10, "r": 10, "t": 40, "b": 10}})


TILE_PX = 96  # the largest on-screen width of one 28x28 image in the stacked grids


def _stacked(names: list[str], rows: list[int], cols: int, width: int = 1100) -> tuple[dict, int]:
    """One panel per model, stacked top to bottom (each as wide as the figure, so tiles are big), panel i
    `rows[i]` tiles high and `cols` wide: the layout (_image_layout; the panels' heights and gaps as
    make_subplots gives them for these row heights) and the figure's height."""
    tile_px = min(TILE_PX, (width - 20) / max(cols, 1))
    heights = [max(r, 1) * tile_px + 40 for r in rows] or [tile_px]
    spacing = min(0.3 / max(len(names), 1), 0.06)
    usable = 1 - spacing * (len(heights) - 1)
    domains, top = [], 1.0
    for h in heights:
        bottom = max(0.0, top - h / sum(heights) * usable)
        domains.append(([0.0, 1.0], [bottom, top]))
        top = bottom - spacing
    return _image_layout(domains, names), int(sum(heights) + 80)


def sample_grids(samples: Mapping[str, object], title: str | None = None) -> go.Figure:
    """Models stacked top to bottom, each a block of images [draws, n, 784]: row d = weight draw d,
    column i = latent draw z_i (or test image i)."""
    names = list(samples)
    arrays = [to_numpy(samples[m]) for m in names]
    n = max((a.shape[1] for a in arrays), default=1)
    layout, height = _stacked(names, [a.shape[0] for a in arrays], n)
    traces = [_heatmap(tile(a.reshape(a.shape[0] * a.shape[1], -1), a.shape[1]), name=name,
                       value_label="p(pixel on)", panel=i)
              for i, (name, a) in enumerate(zip(names, arrays, strict=True), start=1)]
    return go.Figure(traces, _titled({**layout, "width": 1100, "margin": {"l": 10, "r": 10, "b": 10}},
                                     title or "Samples: rows are weight draws θ ~ q(θ), columns the same latent "
                                              "draws z", top=70, height=height))


def spread_map(samples: Mapping[str, object], title: str | None = None) -> go.Figure:
    """Per-pixel standard deviation across weight draws for each latent draw, models stacked,
    one colour scale for all (0 everywhere for a deterministic decoder)."""
    names = list(samples)
    spreads = []
    for m in names:
        a = to_numpy(samples[m])
        same = a.shape[0] < 2 or (a.max(0) == a.min(0)).all()  # exactly 0, not a rounding residue
        spreads.append(np.zeros_like(a[0]) if same else a.std(0, ddof=1))
    top = max((float(s.max()) for s in spreads), default=0.0)
    top = top if top > 0 else 1e-3
    layout, height = _stacked(names, [1] * len(names), max((len(s) for s in spreads), default=1))
    bar_panel = next((i for i, s in enumerate(spreads, start=1) if s.max() > 0), None)
    traces = []
    for i, (name, s) in enumerate(zip(names, spreads, strict=True), start=1):
        flat = not s.max() > 0
        # A constant panel gets a one-colour scale: some plotly.js versions paint constant z mid-scale.
        scale = [[0, MAGMA_ZERO], [1, MAGMA_ZERO]] if flat else "magma"
        traces.append(_heatmap(tile(s, len(s)), colorscale=scale, zmin=0.0, zmax=top, showscale=(i == bar_panel),
                               name=name, value_label="std", colorbar=dict(title="std", thickness=12), panel=i))
        if flat:
            axes = _axes_of(i)
            layout["annotations"].append({"text": "no spread: every weight draw gives the same image",
                                          "showarrow": False, "xref": f"{axes['xaxis']} domain",
                                          "yref": f"{axes['yaxis']} domain", "x": 1.0, "y": 1.02,
                                          "xanchor": "right", "yanchor": "bottom",
                                          "font": {"size": 11, "color": "#555"}})
    return go.Figure(traces, _titled({**layout, "width": 1100, "margin": {"l": 10, "r": 10, "b": 10}},
                                     title or "Per-pixel spread of p(x|z) across weight draws", top=70, height=height))


def traversal_grid(images, units: Sequence[int], values: Sequence[float], title: str | None = None) -> go.Figure:
    """Latent traversals [units, steps, 784]: row r moves unit units[r] through `values`, the rest fixed."""
    a = to_numpy(images)
    n_units, steps = (a.shape[0], a.shape[1]) if a.size else (0, len(values))
    z = tile(a.reshape(n_units * steps, -1), steps) if n_units else np.full((SIDE, SIDE), np.nan)
    step = SIDE + 1
    layout = _image_layout([([0.0, 1.0], [0.0, 1.0])])
    layout["yaxis"] |= {"showticklabels": True, "tickmode": "array", "ticktext": [f"z{u}" for u in units],
                        "tickvals": [r * step + SIDE / 2 for r in range(n_units)]}
    layout["xaxis"] |= {"showticklabels": True, "tickmode": "array", "ticktext": [f"{v:+.3g}" for v in values],
                        "tickvals": [c * step + SIDE / 2 for c in range(steps)], "side": "top"}
    return go.Figure(_heatmap(z, name="traversal", value_label="p(pixel on)"),
                     _titled({**layout, "width": max(400, 60 * steps + 120), "margin": {"l": 50, "r": 10, "b": 10}},
                             title or "Latent traversals", top=90,
                             height=_panel_height(max(n_units, 1), steps, width=800)))


def weight_tiles(maps: Mapping[str, object], ncol: int = 8, log10: bool = True, colorscale: str = "viridis",
                 value_label: str = "σ", shared_scale: bool = False, title: str | None = None,
                 zrange: tuple[float, float] | None = None, range_text: str | None = None,
                 first_unit: int = 0) -> go.Figure:
    """Panels side by side, each a set of units' 784 weights [units, 784] as 28x28 tiles, coloured by
    log10 of the values when log10=True; each panel has its own colour scale unless shared_scale, or all use
    the fixed `zrange` (in the coloured values' units; values outside take the end colours), whose meaning
    `range_text` writes on the colour bar. Hover names the unit (first_unit + tile number) and the pixel."""
    names = list(maps)
    arrays = [to_numpy(maps[m]) for m in names]
    if log10:
        arrays = [np.log10(np.maximum(a, 1e-12)) for a in arrays]

    def limits(values: list[np.ndarray]) -> tuple[float, float]:
        if zrange is not None:
            return zrange
        finite = np.concatenate([a[np.isfinite(a)].ravel() for a in values]) if values else np.zeros(1)
        finite = finite if finite.size else np.zeros(1)
        lo, hi = float(np.percentile(finite, 0.5)), float(np.percentile(finite, 99.5))
        return lo, hi if hi > lo else lo + 1e-6

    label = f"log10 {value_label}" if log10 else value_label
    shared = shared_scale or zrange is not None
    bar_title = f"{label}<br>{range_text}" if range_text else label
    gap = 0.12 if not shared else 0.04
    panels = max(1, len(names))
    width = (1 - gap * (panels - 1)) / panels  # side by side as make_subplots spaces them
    domains = [([j * (width + gap), j * (width + gap) + width], [0.0, 1.0]) for j in range(panels)]
    traces = []
    for i, (name, a) in enumerate(zip(names, arrays, strict=True), start=1):
        lo, hi = limits(arrays) if shared else limits([a])
        traces.append(_heatmap(tile(a, ncol), colorscale=colorscale, zmin=lo, zmax=hi,
                               showscale=(i == 1) or not shared, name=name, value_label=label,
                               colorbar=dict(title=bar_title, thickness=12, len=0.9,
                                             x=1.02 if shared else domains[i - 1][0][1] + 0.01),
                               customdata=tile_index(len(a), ncol, first_unit),
                               hovertemplate=f"{name}<br>unit %{{customdata[0]}}, pixel (%{{customdata[1]}}, "
                                             f"%{{customdata[2]}})<br>{label} %{{z:.4g}}<extra></extra>", panel=i))
    rows = max((math.ceil(len(a) / ncol) for a in arrays), default=1)
    return go.Figure(traces, _titled({**_image_layout(domains, names), "width": 1100,
                                      "margin": {"l": 10, "r": 60, "b": 10}}, title, top=70,
                                     height=_panel_height(rows, ncol * panels, width=1000, extra=100)))
