"""Every figure of the dashboard as a plotly Figure, built from numbers (no Streamlit calls here).

Images are tiled into one heatmap per panel (pads are NaN, so they show as gaps); `image_grid`
returns such a plotly Figure. Exporting a figure (PNG, SVG, PDF, HTML, CSV, a page's zip) is export.py.
Colour scales avoid the few exact colours Streamlit's plotly theme repaints (see _colorscale).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.colors import get_colorscale
from plotly.subplots import make_subplots

from iwae_core import explore

SIDE = 28  # images are SIDE x SIDE
MAGMA_ZERO = "#010004"  # the colour of 0 in the magma scale (see _colorscale)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


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
    plotly theme uses those exact values as placeholders and repaints them (magma starts at #000004)."""
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
    layout = {"plot_bgcolor": "white", "paper_bgcolor": "white", "annotations": []}
    for i, (x_domain, y_domain) in enumerate(domains, start=1):
        suffix = "" if i == 1 else str(i)
        layout[f"xaxis{suffix}"] = {**IMAGE_X, "anchor": f"y{suffix}", "domain": x_domain}
        layout[f"yaxis{suffix}"] = {**IMAGE_Y, "anchor": f"x{suffix}", "domain": y_domain, "scaleanchor": f"x{suffix}"}
        if i <= len(titles):
            layout["annotations"].append({"text": titles[i - 1], "x": (x_domain[0] + x_domain[1]) / 2,
                                          "y": y_domain[1], "xref": "paper", "yref": "paper", "xanchor": "center",
                                          "yanchor": "bottom", "showarrow": False, "font": {"size": 16}})
    return layout


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
    return go.Figure(_heatmap(z, name=title or "images", value_label="p(pixel on)"),
                     {**layout, "title": title, "height": _panel_height(rows, min(nrow, n) or 1, width=500, min_h=160),
                      "width": max(200, min(700, 40 * min(nrow, n or 1) + 60)),
                      "margin": {"l": 10, "r": 10, "t": 40, "b": 10}})


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
    return go.Figure(traces, {**layout, "height": height, "width": 1100, "margin": {"l": 10, "r": 10, "t": 70, "b": 10},
                              "title": title or "Samples: rows are weight draws θ ~ q(θ), columns the same latent "
                                                "draws z"})


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
    return go.Figure(traces, {**layout, "height": height, "width": 1100, "margin": {"l": 10, "r": 10, "t": 70, "b": 10},
                              "title": title or "Per-pixel spread of p(x|z) across weight draws"})


def traversal_grid(images, units: Sequence[int], values: Sequence[float], title: str | None = None) -> go.Figure:
    """Latent traversals [units, steps, 784]: row r moves unit units[r] through `values`, the rest fixed."""
    a = to_numpy(images)
    n_units, steps = (a.shape[0], a.shape[1]) if a.size else (0, len(values))
    z = tile(a.reshape(n_units * steps, -1), steps) if n_units else np.full((SIDE, SIDE), np.nan)
    step = SIDE + 1
    layout = _image_layout([([0.0, 1.0], [0.0, 1.0])])
    layout["yaxis"] |= {"showticklabels": True, "tickmode": "array", "ticktext": [f"z{u}" for u in units],
                        "tickvals": [r * step + SIDE / 2 for r in range(n_units)]}
    layout["xaxis"] |= {"showticklabels": True, "tickmode": "array", "ticktext": [f"{v:+.2g}" for v in values],
                        "tickvals": [c * step + SIDE / 2 for c in range(steps)], "side": "top"}
    return go.Figure(_heatmap(z, name="traversal", value_label="p(pixel on)"),
                     {**layout, "title": title or "Latent traversals",
                      "height": _panel_height(max(n_units, 1), steps, width=800), "width": max(400, 60 * steps + 120),
                      "margin": {"l": 50, "r": 10, "t": 90, "b": 10}})


def activity_bar(activity: Sequence[float], threshold: float = 0.01, title: str | None = None) -> go.Figure:
    """Burda's activity Var_x E_q[z_j|x] per latent unit (log scale) with the 'active' threshold."""
    act = to_numpy(activity)
    colors = [PALETTE[0] if a > threshold else "#bbbbbb" for a in act]
    fig = go.Figure(go.Bar(x=[f"z{j}" for j in range(len(act))], y=np.maximum(act, 1e-8), marker_color=colors,
                           name="activity", hovertemplate="%{x}: %{y:.3g}<extra></extra>"))
    fig.add_hline(y=threshold, line_dash="dash", annotation_text=f"active above {threshold:g}")
    fig.update_yaxes(type="log", title="Var_x E_q[z_j | x]", dtick=1, exponentformat="power")
    n_active = int((act > threshold).sum())
    fig.update_layout(title=title or f"Active units: {n_active} of {len(act)}", height=320, width=900,
                      margin=dict(l=60, r=10, t=50, b=40), showlegend=False)
    return fig


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
    return go.Figure(traces, {**_image_layout(domains, names), "title": title, "width": 1100,
                              "height": _panel_height(rows, ncol * panels, width=1000, extra=100),
                              "margin": {"l": 10, "r": 60, "t": 70, "b": 10}})


def sigma_histograms(sigmas: Mapping[str, object], prior_std: float = 1.0, bins: int = 60,
                     title: str | None = None) -> go.Figure:
    """Distribution of the weight sigmas of each random layer (log x axes): on the left zoomed to the
    sigmas, on the right on an axis that reaches the prior's std (dashed line)."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=("σ per layer (zoomed to the data)", f"against the prior std {prior_std:g}"))
    arrays = {m: to_numpy(s).ravel() for m, s in sigmas.items()}
    arrays = {m: a[a > 0] for m, a in arrays.items() if a.size and (a > 0).any()}
    if arrays:
        lo = min(np.log10(a.min()) for a in arrays.values())
        hi = max(np.log10(a.max()) for a in arrays.values())
        hi = hi if hi > lo else lo + 0.01
        zoom = np.linspace(lo, hi, bins + 1)
        wide = np.linspace(min(lo, np.log10(prior_std)) - 0.1, max(hi, np.log10(prior_std)) + 0.1, bins + 1)
        for i, (name, a) in enumerate(arrays.items()):
            color = PALETTE[i % len(PALETTE)]
            for col, edges in ((1, zoom), (2, wide)):
                counts, _ = np.histogram(np.log10(a), bins=edges)
                x = np.repeat(10 ** edges, 2)[1:-1]
                y = np.repeat(counts / counts.sum(), 2)
                fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"{name} ({a.size:,} weights)",
                                         legendgroup=name, showlegend=(col == 1), fill="tozeroy", opacity=0.6,
                                         line=dict(color=color, width=2),
                                         hovertemplate="σ %{x:.3g}: %{y:.3f}<extra></extra>"), row=1, col=col)
    fig.add_vline(x=prior_std, line_dash="dash", line_color="black", annotation_text=f"prior std {prior_std:g}",
                  row=1, col=2)
    fig.update_xaxes(type="log", title_text="weight σ", exponentformat="power")
    fig.update_yaxes(title_text="share of the layer's weights", row=1, col=1)
    fig.update_layout(title=title or "Posterior weight σ per layer against the prior", height=400, width=1100,
                      margin=dict(l=60, r=10, t=70, b=50), legend=dict(orientation="h", y=-0.3))
    return fig


def bound_vs_k(curves: Mapping[str, Sequence[Mapping]], references: Mapping[str, float | tuple] | None = None,
               band: float = 1.0, k_max: int | None = None, title: str | None = None,
               y_title: str = "mean L_k (nats)", zero_line: bool = False,
               colors: Mapping[str, str] | None = None) -> go.Figure:
    """Mean L_k against k (log x axis) per model, with a band of ± `band` standard errors over images;
    optional dotted lines (references: label -> value, or label -> (value, curve name, k)), e.g. the paper's
    test log-likelihood: with a curve name it is drawn in that curve's colour, with k a marker sits at that k.
    k_max fixes the x axis to [1, k_max]; colors (curve name -> colour) keeps a model's colour across figures;
    y_title and zero_line serve the paired view (differences to a reference model)."""
    fig = go.Figure()
    color_of = {name: (colors or {}).get(name, PALETTE[i % len(PALETTE)]) for i, name in enumerate(curves)}
    for name, rows in curves.items():
        rows = sorted(rows, key=lambda r: r["k"])
        if not rows:
            continue
        color = color_of[name]
        k = [r["k"] for r in rows]
        mean = np.array([r["mean"] for r in rows])
        se = np.array([r.get("stderr") or 0.0 for r in rows])
        fig.add_trace(go.Scatter(x=k + k[::-1], y=np.concatenate([mean + band * se, (mean - band * se)[::-1]]),
                                 fill="toself", fillcolor=color, opacity=0.2, line=dict(width=0),
                                 name=f"{name} ± {band:g} s.e.", showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=k, y=mean, mode="lines+markers", name=name, line=dict(color=color),
                                 error_y=None, customdata=se,
                                 hovertemplate=f"{name}<br>k=%{{x}}<br>%{{y:.3f}} ± %{{customdata:.3f}}"
                                               "<extra></extra>"))
    ks = sorted({r["k"] for rows in curves.values() for r in rows})
    lo, hi = (ks[0], ks[-1]) if ks else (1, k_max or 10)
    hi = k_max or hi
    for j, (label, ref) in enumerate((references or {}).items()):
        value, owner, at_k = (tuple(ref) + (None, None))[:3] if isinstance(ref, (tuple, list)) else (ref, None, None)
        color = color_of.get(owner, PALETTE[(len(curves) + j) % len(PALETTE)])
        fig.add_trace(go.Scatter(x=[lo, max(hi, at_k or hi)], y=[value, value], mode="lines", name=label,
                                 opacity=0.8, line=dict(dash="dot", color=color),
                                 hovertemplate=f"{label}: {value:.3f}<extra></extra>"))
        if at_k:
            fig.add_trace(go.Scatter(x=[at_k], y=[value], mode="markers", name=f"{label} (marker)",
                                     showlegend=False, marker=dict(symbol="star", size=11, color=color),
                                     hovertemplate=f"{label}: {value:.3f}<extra></extra>"))
    if zero_line:
        fig.add_hline(y=0, line_color="black", line_width=1)
    fig.update_xaxes(type="log", title="k (importance samples)", tickvals=ks or None)
    if k_max:
        fig.update_xaxes(range=[math.log10(lo) - 0.1, math.log10(max(k_max, 1)) + 0.1])
    fig.update_yaxes(title=y_title)
    fig.update_layout(title=title or f"L_k against k (band: ± {band:g} standard error over images)",
                      height=450, width=900, margin=dict(l=60, r=10, t=50, b=50))
    return fig


STUDY_ARMS = {"iwae": "IWAE", "iwae-r": "IWAE-R (Bayesian)", "iwae-r-mixture": "IWAE-R (mixture)",
              "iwae-rrec": "IWAE-Rrec"}


def study_curves(summary: Sequence[Mapping], rows: Sequence[Mapping], paper: Mapping[str, tuple] | None = None,
                 title: str | None = None) -> go.Figure:
    """The study for one dataset and tau: test LL against training epochs per arm (mean across seeds, a band
    of ± one seed-to-seed sd, each seed a faint dot), and the paired difference to the same seed's IWAE
    against epochs (band ± seed sd, error bars ± paired s.e.). `summary` and `rows` as iwae_core.study's
    summarize and collect give them, for one dataset and tau; paper: variant -> (mean, s.e.), drawn as
    dotted lines in the colour of the arm of that variant (the mixture arm has no paper number of its own)."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("test log-likelihood (mean across seeds ± sd)",
                                        "paired difference to IWAE (± seed sd; bars ± paired s.e.)"))
    arms = list(STUDY_ARMS) + sorted({s["arm"] for s in summary} - set(STUDY_ARMS))  # a sweep's arms by name
    colours = {arm: PALETTE[i % len(PALETTE)] for i, arm in enumerate(arms)}
    for arm in arms:
        name = STUDY_ARMS.get(arm, arm)
        points = sorted((s for s in summary if s["arm"] == arm), key=lambda s: s["epochs"])
        if not points:
            continue
        colour, epochs = colours[arm], [s["epochs"] for s in points]
        for col, key, sd_key in ((1, "test_ll", "test_ll_sd"), (2, "diff", "diff_sd")):
            mean = np.array([s[key] if s[key] is not None else np.nan for s in points], dtype=float)
            if np.isnan(mean).all():
                continue
            sd = np.array([s[sd_key] or 0.0 for s in points], dtype=float)
            fig.add_trace(go.Scatter(x=epochs + epochs[::-1], y=np.concatenate([mean + sd, (mean - sd)[::-1]]),
                                     fill="toself", fillcolor=colour, opacity=0.15, line=dict(width=0),
                                     showlegend=False, hoverinfo="skip", legendgroup=arm), row=1, col=col)
            error = dict(type="data", array=[s["paired_se"] or 0.0 for s in points]) if col == 2 else None
            fig.add_trace(go.Scatter(x=epochs, y=mean.tolist(), mode="lines+markers", name=name, legendgroup=arm,
                                     showlegend=col == 1, line=dict(color=colour), error_y=error,
                                     customdata=np.stack([sd, [s["seeds"] for s in points]], -1),
                                     hovertemplate=f"{name}<br>%{{x}} epochs<br>%{{y:.3f}} ± %{{customdata[0]:.3f}} "
                                                   "(sd over %{customdata[1]} seeds)<extra></extra>"),
                          row=1, col=col)
        seeds = [r for r in rows if r["arm"] == arm]
        fig.add_trace(go.Scatter(x=[r["epochs"] for r in seeds], y=[r["test_ll"] for r in seeds], mode="markers",
                                 marker=dict(color=colour, size=5, opacity=0.45), showlegend=False,
                                 legendgroup=arm, customdata=[r["seed"] for r in seeds],
                                 hovertemplate=f"{name}, seed %{{customdata}}: %{{y:.3f}}<extra></extra>"),
                      row=1, col=1)
    all_epochs = sorted({s["epochs"] for s in summary}) or [1]
    lo, hi = all_epochs[0], all_epochs[-1]
    for variant, (value, se) in (paper or {}).items():
        arm = variant  # the paper's IWAE, IWAE-R and IWAE-Rrec
        fig.add_trace(go.Scatter(x=[lo, hi], y=[value, value], mode="lines", legendgroup=arm, showlegend=False,
                                 line=dict(dash="dot", color=colours.get(arm, "grey")),
                                 hovertemplate=f"paper, {STUDY_ARMS.get(arm, arm)}: {value:.3f} ± {se:.3f}"
                                               "<extra></extra>"), row=1, col=1)
    fig.add_hline(y=0, line=dict(color="grey", width=1), row=1, col=2)
    fig.update_xaxes(title="training epochs", type="log", tickvals=all_epochs)
    fig.update_yaxes(title="test LL (nats)", row=1, col=1)
    fig.update_yaxes(title="difference to IWAE (nats)", row=1, col=2)
    fig.update_layout(title=title or "Test log-likelihood across training budgets and seeds", height=480,
                      width=1200, margin=dict(l=60, r=10, t=80, b=50))
    return fig


FLOOR = 1e-15  # smallest normalised weight the importance-weight axis shows


MARKERS_UP_TO = 25  # draws per curve drawn with markers: beyond, a sorted weight curve is a line, and markers
# cost the browser about 0.2 s per redraw at k = 500


def importance_weights(results: Mapping[str, Mapping], title: str | None = None) -> go.Figure:
    """Normalised importance weights of one image, sorted, per model (log y), ESS in the legend.

    results: name -> {"weights": [k], "ess": float}.
    """
    fig = go.Figure()
    smallest = 1.0
    for i, (name, r) in enumerate(results.items()):
        w = np.sort(to_numpy(r["weights"]))[::-1]
        smallest = min(smallest, float(w[w > 0].min()) if (w > 0).any() else FLOOR)
        fig.add_trace(go.Scatter(x=np.arange(1, len(w) + 1), y=np.maximum(w, 1e-300),
                                 mode="lines+markers" if len(w) <= MARKERS_UP_TO else "lines",
                                 marker=dict(size=4), line=dict(color=PALETTE[i % len(PALETTE)]),
                                 name=f"{name}: ESS {r['ess']:.1f} of {len(w)}",
                                 hovertemplate="rank %{x}: %{y:.3g}<extra></extra>"))
    fig.update_xaxes(type="log", title="rank of the weight")
    fig.update_yaxes(type="log", title="normalised weight w_m / Σ w", exponentformat="power",
                     range=[math.log10(max(smallest, FLOOR)) - 0.3, 0.2])
    cut = " (axis cut at 10⁻¹⁵)" if smallest < FLOOR else ""
    fig.update_layout(title=title or f"Importance weights of the chosen image (sorted){cut}", height=380, width=900,
                      margin=dict(l=60, r=10, t=50, b=50))
    return fig


TOP_SHOWN = 200  # posterior draws drawn as markers per model, the largest weights: each SVG marker costs the
# browser time on every redraw (1,500 of them about 0.2 s), while all k draws are shown as a density behind them
DENSITY_BINS = 30  # bins per axis of that density
# empty bins transparent, any draw at least a light grey, the densest bin dark grey
DENSITY_SCALE = [[0, "rgba(0,0,0,0)"], [1e-6, "rgba(110,110,110,0.3)"], [1, "rgba(30,30,30,0.9)"]]


def posterior_scatter(results: Mapping[str, Mapping], dims: tuple[int, int] = (0, 1),
                      title: str | None = None) -> go.Figure:
    """The k posterior draws z ~ q(z|x) of one image in two latent dimensions, per model side by side: all k
    as a grey density (a 2-D histogram), the TOP_SHOWN with the largest normalised importance weights as
    markers coloured and sized by their weight (the subtitle says which share of the weight they carry when
    that is not all k), and a star at the weighted mean of all k draws.

    results: name -> {"z": [k, z_dim], "weights": [k]}.
    """
    names = list(results)
    a, b = dims
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=names, horizontal_spacing=0.06)
    shares = []
    for i, name in enumerate(names, start=1):
        z, w = to_numpy(results[name]["z"]), to_numpy(results[name]["weights"])
        if z.shape[1] <= max(a, b):
            continue
        top = w.max() if w.max() > 0 else 1.0
        shown = np.argsort(-w, kind="stable")[:TOP_SHOWN][::-1]  # the heaviest drawn last, on top
        if len(w) > len(shown):
            shares.append(f"{name}: {w[shown].sum() / max(w.sum(), 1e-300):.1%}")
        fig.add_trace(go.Histogram2d(x=z[:, a], y=z[:, b], nbinsx=DENSITY_BINS, nbinsy=DENSITY_BINS,
                                     colorscale=DENSITY_SCALE,
                                     showscale=False, name=f"{name}: all {len(w):,} draws",
                                     hovertemplate="%{z} draws<extra></extra>"), row=1, col=i)
        fig.add_trace(go.Scatter(x=z[shown, a], y=z[shown, b], mode="markers", name=f"{name} draws",
                                 marker=dict(size=4 + 16 * np.sqrt(w[shown] / top), color=w[shown], cmin=0.0,
                                             cmax=top, colorscale="viridis", showscale=(i == 1), opacity=0.7,
                                             colorbar=dict(title="weight", thickness=12)),
                                 hovertemplate=f"z{a} %{{x:.2f}}, z{b} %{{y:.2f}}<br>weight %{{marker.color:.3g}}"
                                               "<extra></extra>", showlegend=False), row=1, col=i)
        mean = (w[:, None] * z).sum(0) / max(w.sum(), 1e-300)
        fig.add_trace(go.Scatter(x=[mean[a]], y=[mean[b]], mode="markers", name=f"{name} weighted mean",
                                 marker=dict(symbol="star", size=16, color="red", line=dict(color="black", width=1)),
                                 showlegend=False), row=1, col=i)
        fig.update_xaxes(title_text=f"z{a}", row=1, col=i)
        fig.update_yaxes(title_text=f"z{b}", row=1, col=i)
    note = (f"grey: density of all draws; markers: the {TOP_SHOWN} largest weights, carrying "
            + "; ".join(shares) + " of the weight") if shares else ""
    fig.update_layout(title=(title or "Posterior draws z ~ q(z|x), sized by importance weight (★ weighted mean)")
                      + (f"<br><sup>{note}</sup>" if note else ""),
                      height=420, width=1100, margin=dict(l=60, r=10, t=80 if note else 70, b=50))
    return fig


def _number(v) -> float | None:
    """A history value (float, numeric string, '' or None) as a float, or None when absent."""
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def training_curves(history_rows: Sequence[Mapping]) -> go.Figure:
    """Per-epoch training curves from rows with history.FIELDS keys (values may be CSV strings):
    the bound (train and validation) and the weight KL per data point against the epoch."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("bound (nats)", "KL(q(W) ‖ p(W)) / N"),
                        horizontal_spacing=0.1)
    use_epoch = any(_number(r.get("epoch")) is not None for r in history_rows)
    xname = "epoch" if use_epoch else "step"
    series = (("train_bound", "train L_k", 1, PALETTE[0]), ("valid_bound", "valid L_k", 1, PALETTE[1]),
              ("objective", "objective", 1, PALETTE[2]), ("kl_per_datapoint", "KL per data point", 2, PALETTE[3]))
    for field, label, col, color in series:
        pts = [(_number(r.get(xname)), _number(r.get(field))) for r in history_rows]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines+markers", name=label,
                                 line=dict(color=color), marker=dict(size=5)), row=1, col=col)
    fig.update_xaxes(title_text=xname)
    fig.update_layout(title="Training curves", height=360, width=1000, margin=dict(l=60, r=10, t=60, b=50),
                      legend=dict(orientation="h", y=-0.25))
    return fig
