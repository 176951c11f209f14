"""The dashboard's charts as plotly Figures, built from numbers (no Streamlit calls here): L_k against k, the
study's test log-likelihood against training epochs, one image's importance weights and posterior draws, the
training curves, the latent units' activity and the weight sigmas' histograms.

Lines, markers, bars and histograms on plotly's own axes, coloured from PALETTE in the order the models are
given (bound_vs_k takes explicit colours, so a page keeps a model's colour across its charts). The image
figures (tiles, heatmaps) are figures.py; exporting a figure (PNG, SVG, PDF, HTML, CSV, a page's zip) is
export.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figures import TEMPLATE, title_and_room, to_numpy

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _titled(title: str, height: int, top: int, **margin) -> dict:
    """update_layout's title, height and margin for `title`, wrapped (figures.wrapped_title: plotly never wraps,
    and a title naming several models' objectives ran past the chart) with the top margin and the height grown by
    its extra lines, so the plot keeps its size."""
    text, extra = title_and_room(title)
    return {"title": text, "height": height + extra, "margin": dict(t=top + extra, **margin)}


def activity_bar(activity: Sequence[float], threshold: float = 0.01, title: str | None = None) -> go.Figure:
    """Burda's activity Var_x E_q[z_j|x] per latent unit (log scale) with the 'active' threshold."""
    act = to_numpy(activity)
    colors = [PALETTE[0] if a > threshold else "#bbbbbb" for a in act]
    fig = go.Figure(go.Bar(x=[f"z{j}" for j in range(len(act))], y=np.maximum(act, 1e-8), marker_color=colors,
                           name="activity", hovertemplate="%{x}: %{y:.3g}<extra></extra>"))
    fig.add_hline(y=threshold, line_dash="dash", annotation_text=f"active above {threshold:g}")
    fig.update_yaxes(type="log", title="Var_x E_q[z_j | x]", dtick=1, exponentformat="power")
    n_active = int((act > threshold).sum())
    fig.update_layout(**_titled(title or f"Active units: {n_active} of {len(act)}", 320, top=50, l=60, r=10, b=40),
                      width=900, template=TEMPLATE, showlegend=False)
    return fig


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
    fig.update_layout(**_titled(title or "Posterior weight σ per layer against the prior", 400, top=70, l=60, r=10,
                                b=50), width=1100, template=TEMPLATE, legend=dict(orientation="h", y=-0.3))
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
                                 mode="lines", fill="toself", fillcolor=color, opacity=0.2, line=dict(width=0),
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
    fig.update_layout(**_titled(title or f"L_k against k (band: ± {band:g} standard error over images)", 450,
                                top=50, l=60, r=10, b=50), template=TEMPLATE, width=900)
    return fig


STUDY_ARMS = {"iwae": "IWAE", "iwae-r": "IWAE-R (Bayesian)", "iwae-r-mixture": "IWAE-R (mixture)",
              "iwae-rrec": "IWAE-Rrec", "iwae-bf16": "IWAE (bf16-mixed)",
              "iwae-r-bf16": "IWAE-R (Bayesian, bf16-mixed)"}


def study_curves(summary: Sequence[Mapping], rows: Sequence[Mapping], paper: Mapping[str, tuple] | None = None,
                 title: str | None = None) -> go.Figure:
    """The study for one dataset and tau: test LL against training epochs per arm (mean across seeds, a band
    of ± one seed-to-seed sd, each seed a faint dot), and the paired difference to the same seed's IWAE
    against epochs (band ± seed sd, error bars ± paired s.e.). `summary` and `rows` as iwae_core.study_results'
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
                                     mode="lines", fill="toself", fillcolor=colour, opacity=0.15, line=dict(width=0),
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
    fig.update_layout(**_titled(title or "Test log-likelihood across training budgets and seeds", 480, top=80, l=60,
                                r=10, b=50), template=TEMPLATE, width=1200)
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
    fig.update_layout(**_titled(title or f"Importance weights of the chosen image (sorted){cut}", 380, top=50, l=60,
                                r=10, b=50), width=900, template=TEMPLATE)
    return fig


TOP_SHOWN = 200  # posterior draws drawn as markers per model, the largest weights: each SVG marker costs the
# browser time on every redraw (1,500 of them about 0.2 s), while all k draws are shown as a density behind them
DENSITY_BINS = 30  # bins per axis of that density
# empty bins transparent, any draw at least a light grey, the densest bin dark grey
DENSITY_SCALE = [[0, "rgba(0,0,0,0)"], [1e-6, "rgba(110,110,110,0.3)"], [1, "rgba(30,30,30,0.9)"]]


def posterior_scatter(results: Mapping[str, Mapping], dims: tuple[int, int] = (0, 1),
                      title: str | None = None) -> go.Figure:
    """The k posterior draws z ~ q(z|x) of one image in two latent dimensions, per model side by side: all k
    as a grey density (a 2-D histogram) when k > TOP_SHOWN, the TOP_SHOWN with the largest normalised importance
    weights as markers coloured and sized by their weight (the subtitle says which share of the weight they carry when
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
        if len(w) > len(shown):  # else every draw is a marker, and the density's squares only clutter them
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
                      template=TEMPLATE, height=420, width=1100, margin=dict(l=60, r=10, t=80 if note else 70, b=50))
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


EARLY_FRACTION, EARLY_CLIP_MIN_POINTS = 0.1, 50  # a live run's per-step curve: the bound axis skips its first steps


def training_curves(history_rows: Sequence[Mapping]) -> go.Figure:
    """Per-epoch training curves from rows with history.FIELDS keys (values may be CSV strings):
    the bound (train and validation) and the weight KL per data point against the epoch. A KL that is 0 throughout
    (an IWAE, an IWAE-Rrec: no random decoder) gets no panel of its own."""
    has_kl = any(_number(r.get("kl_per_datapoint")) for r in history_rows)
    fig = make_subplots(rows=1, cols=2 if has_kl else 1,
                        subplot_titles=("bound (nats)", "KL(q(W) ‖ p(W)) / N") if has_kl else ("bound (nats)",),
                        horizontal_spacing=0.1)
    use_epoch = any(_number(r.get("epoch")) is not None for r in history_rows)
    xname = "epoch" if use_epoch else "step"
    series = (("train_bound", "train L_k", 1, PALETTE[0]), ("valid_bound", "valid L_k", 1, PALETTE[1]),
              ("objective", "objective", 1, PALETTE[2]), ("kl_per_datapoint", "KL per data point", 2, PALETTE[3]))
    bound_points = []
    for field, label, col, color in series[:None if has_kl else -1]:
        pts = [(_number(r.get(xname)), _number(r.get(field))) for r in history_rows]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        if not pts:
            continue
        bound_points += pts if col == 1 else []
        xs, ys = zip(*pts, strict=True)
        fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines+markers", name=label,
                                 line=dict(color=color), marker=dict(size=5)), row=1, col=col)
    if len(bound_points) >= EARLY_CLIP_MIN_POINTS:
        # the first steps' bound (-500 at step 0 against -100 later) flattens everything after it: where the
        # earlier points would take over half the axis (and over a nat), it spans the bound from the first tenth of
        # the steps on, and says so
        first, last = min(x for x, _ in bound_points), max(x for x, _ in bound_points)
        later = [y for x, y in bound_points if x >= first + EARLY_FRACTION * (last - first)]
        lo, hi = min(later), max(y for _, y in bound_points)
        pad = 0.05 * (hi - lo)
        if lo - min(y for _, y in bound_points) > max(hi - lo, 1.0):
            fig.update_yaxes(range=[lo - pad, hi + pad], row=1, col=1)
            fig.add_annotation(text=f"the first {EARLY_FRACTION:.0%} of the {xname}s run below the axis",
                               xref="x domain", yref="y domain", x=1.0, y=0.02, xanchor="right",
                               yanchor="bottom", showarrow=False, font=dict(size=11, color="#555"))
    fig.update_xaxes(title_text=xname)
    fig.update_layout(title="Training curves", height=360, width=1000, margin=dict(l=60, r=10, t=60, b=50),
                      template=TEMPLATE, legend=dict(orientation="h", y=-0.25))
    return fig
