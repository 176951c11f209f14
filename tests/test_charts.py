"""The charts hold the data they show: lines, bands, markers and histograms from the numbers they are given."""

from __future__ import annotations

import numpy as np
import pytest

from dashboard import charts
from iwae_core.history import FIELDS as HISTORY_FIELDS


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_sigma_histograms_show_each_layer_and_the_prior():
    fig = charts.sigma_histograms({"encoder.0": rng(6).uniform(1e-3, 2e-3, 1000),
                                   "decoder.1": rng(7).uniform(0.1, 0.2, 500)}, prior_std=1.0)
    legend = [t.name for t in fig.data if t.showlegend]
    assert legend == ["encoder.0 (1,000 weights)", "decoder.1 (500 weights)"]
    for t in fig.data:
        assert np.asarray(t.y).max() <= 1 and np.asarray(t.y).sum() == pytest.approx(2.0)  # shares (steps drawn twice)
    assert any(s.x0 == 1.0 for s in fig.layout.shapes)
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"


def test_bound_vs_k_draws_means_bands_references_and_the_chosen_k_range():
    curves = {"A": [{"k": 1, "mean": -100.0, "stderr": 1.0}, {"k": 10, "mean": -95.0, "stderr": 0.5}],
              "B": [{"k": 1, "mean": -101.0, "stderr": None}, {"k": 10, "mean": -97.0, "stderr": 0.2}]}
    fig = charts.bound_vs_k(curves, references={"paper": -94.3}, k_max=10)
    lines = {t.name: t for t in fig.data if t.mode == "lines+markers"}
    assert list(lines["A"].y) == [-100.0, -95.0] and list(lines["A"].x) == [1, 10]
    band = next(t for t in fig.data if t.fill == "toself" and t.name.startswith("A"))
    assert max(band.y) == pytest.approx(-94.5) and min(band.y) == pytest.approx(-101.0)
    ref = next(t for t in fig.data if t.name == "paper")
    assert list(ref.y) == [-94.3, -94.3]
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.range[1] == pytest.approx(1.1)
    wider = charts.bound_vs_k(curves, k_max=1000)
    assert wider.layout.xaxis.range[1] == pytest.approx(3.1)


def test_a_long_chart_title_is_wrapped_and_the_plot_keeps_its_height():
    """Two models of different objectives make the Bound vs k title long enough to run past the chart."""
    curves = {"A": [{"k": 1, "mean": -100.0, "stderr": 1.0}]}
    title = ("L_k against k, τ = 1, seed 0, first 100 test images; objectives mnist-iwae-r: bayes, "
             "omniglot-iwae-r-mixture: mixture (band ± 1 s.e. over images)")
    short, long = charts.bound_vs_k(curves, title="L_k"), charts.bound_vs_k(curves, title=title)
    lines = long.layout.title.text.split("<br>")
    assert len(lines) == 2 and " ".join(lines) == title
    plot = [fig.layout.height - fig.layout.margin.t - fig.layout.margin.b for fig in (short, long)]
    assert long.layout.margin.t > short.layout.margin.t and plot[0] == plot[1]


def test_importance_weights_sorts_weights_and_reports_ess():
    w = np.array([0.1, 0.6, 0.3])
    fig = charts.importance_weights({"m": {"weights": w, "ess": 2.17}})
    assert list(fig.data[0].y) == pytest.approx([0.6, 0.3, 0.1])
    assert fig.data[0].name == "m: ESS 2.2 of 3"
    assert fig.data[0].mode == "lines+markers"
    many = charts.importance_weights({"m": {"weights": np.full(500, 1 / 500), "ess": 500.0}})
    assert many.data[0].mode == "lines"  # 500 markers on a sorted curve show nothing a line does not


def test_posterior_scatter_plots_every_draw_in_the_chosen_dimensions_sized_by_weight():
    z = rng(8).normal(size=(20, 4))
    w = rng(9).random(20) ** 8
    w /= w.sum()
    fig = charts.posterior_scatter({"m": {"z": z, "weights": w}}, dims=(2, 3))
    draws, mean = fig.data  # no density behind them: every draw is a marker here (k < TOP_SHOWN)
    order = np.argsort(w)  # the heaviest last (on top)
    np.testing.assert_allclose(draws.x, z[order, 2])
    np.testing.assert_allclose(draws.marker.color, w[order])
    assert draws.marker.size[-1] == pytest.approx(20.0) and min(draws.marker.size) >= 4
    np.testing.assert_allclose([mean.x[0], mean.y[0]], (w[:, None] * z).sum(0)[[2, 3]])
    assert fig.layout.xaxis.title.text == "z2"
    assert "largest weights" not in fig.layout.title.text


def test_posterior_scatter_marks_the_heaviest_draws_and_says_what_share_of_the_weight_they_carry():
    k = charts.TOP_SHOWN + 500
    z = rng(10).normal(size=(k, 2))
    w = np.full(k, 1.0)
    w[:charts.TOP_SHOWN] = 4.0  # the first TOP_SHOWN draws carry 4 * 200 / (4 * 200 + 500) = 61.5 %
    w /= w.sum()
    fig = charts.posterior_scatter({"m": {"z": z, "weights": w}})
    density, draws, mean = fig.data
    assert len(density.x) == k and len(draws.x) == charts.TOP_SHOWN  # the density counts every draw
    assert sorted(draws.x) == sorted(z[:charts.TOP_SHOWN, 0])
    np.testing.assert_allclose([mean.x[0], mean.y[0]], (w[:, None] * z).sum(0))  # the mean is of all k draws
    assert f"the {charts.TOP_SHOWN} largest weights, carrying m: 61.5%" in fig.layout.title.text


def test_training_curves_read_history_rows_including_csv_strings():
    rows = [dict.fromkeys(HISTORY_FIELDS, "") | {"epoch": "1", "step": "10", "train_bound": "-150.5",
                                                 "valid_bound": "-140", "kl_per_datapoint": "3.5"},
            dict.fromkeys(HISTORY_FIELDS) | {"epoch": 2, "step": 20, "train_bound": -120.0,
                                             "valid_bound": None, "kl_per_datapoint": 2.0}]
    fig = charts.training_curves(rows)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["train L_k"].y) == [-150.5, -120.0] and list(by_name["train L_k"].x) == [1.0, 2.0]
    assert list(by_name["valid L_k"].y) == [-140.0]
    assert list(by_name["KL per data point"].y) == [3.5, 2.0]
    assert "objective" not in by_name  # no values, no trace


def test_training_curves_fall_back_to_the_step_for_live_runs():
    rows = [{"step": 1, "train_bound": -200.0, "kl_per_datapoint": 1.0},
            {"step": 2, "train_bound": -190.0, "kl_per_datapoint": 0.9},
            {"step": 2, "valid_bound": -185.0}]
    fig = charts.training_curves(rows)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["train L_k"].x) == [1.0, 2.0] and list(by_name["valid L_k"].y) == [-185.0]
    assert fig.layout.xaxis.title.text == "step"


def test_training_curves_leave_out_a_kl_that_is_zero_throughout():
    """An IWAE run records a KL of 0 (no random weights): a flat panel of zeros said nothing."""
    rows = [{"step": 1, "train_bound": -200.0, "kl_per_datapoint": 0.0},
            {"step": 2, "train_bound": -190.0, "kl_per_datapoint": "0.0"}]
    fig = charts.training_curves(rows)
    assert [t.name for t in fig.data] == ["train L_k"] and "xaxis2" not in fig.layout
    assert [a.text for a in fig.layout.annotations] == ["bound (nats)"]
    rows[1]["kl_per_datapoint"] = 0.25  # a random decoder's KL, however small, keeps its panel
    fig = charts.training_curves(rows)
    assert [t.name for t in fig.data] == ["train L_k", "KL per data point"] and fig.data[1].xaxis == "x2"


def test_a_live_runs_bound_axis_leaves_out_the_first_steep_steps_and_says_so():
    """A live run's bound rises from about -540 to -100 in its first steps; on an axis down to -540 the rest of
    training was a flat line. The axis spans the bound from the first tenth of the steps on."""
    steps = np.arange(1, 201)
    bound = -100 - 440 * np.exp(-steps / 5.0)  # -100 from about step 40 on
    rows = [{"step": int(s), "train_bound": float(b), "kl_per_datapoint": 1.0}
            for s, b in zip(steps, bound, strict=True)]
    fig = charts.training_curves(rows)
    later = bound[steps >= 1 + 0.1 * 199]
    pad = 0.05 * (bound.max() - later.min())
    assert fig.layout.yaxis.range == pytest.approx((later.min() - pad, bound.max() + pad))
    assert bound[0] < fig.layout.yaxis.range[0]  # the first steps run below the axis
    assert fig.layout.yaxis2.range is None  # the KL panel keeps its own autoscale
    assert [a.text for a in fig.layout.annotations][-1] == "the first 10% of the steps run below the axis"
    flat = charts.training_curves(rows[100:])  # nothing steep left: the axis is plotly's own
    assert flat.layout.yaxis.range is None and "below the axis" not in str(flat.layout.annotations)
    few = charts.training_curves(rows[:20])  # a per-epoch history (a few points): every point shown
    assert few.layout.yaxis.range is None


def test_bands_are_filled_areas_without_markers_at_their_corners():
    """A band is a closed outline filled in; plotly draws markers on a trace of fewer than 20 points unless told
    otherwise, which put a dot of the next default colour on every corner of every band."""
    curves = {"A": [{"k": k, "mean": -100.0 + k / 10, "stderr": 1.0} for k in (1, 5, 10)]}
    summary = [{"arm": arm, "epochs": e, "test_ll": -95.0 + e / 10, "test_ll_sd": 0.2,
                "diff": 0.1 if arm != "iwae" else None, "diff_sd": 0.1, "paired_se": 0.05, "seeds": 3}
               for arm in ("iwae", "iwae-r") for e in (5, 10)]
    rows = [{"arm": s["arm"], "epochs": s["epochs"], "test_ll": s["test_ll"], "seed": 0} for s in summary]
    for fig in (charts.bound_vs_k(curves, k_max=10), charts.study_curves(summary, rows)):
        bands = [t for t in fig.data if t.fill == "toself"]
        assert bands and all(t.mode == "lines" for t in bands)
