"""The image figures hold the data they show, and every export format produces a valid file (or a clear refusal)."""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile

import numpy as np
import pytest

from dashboard import charts, export, figures


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def require_chromium() -> None:
    """PNG/SVG/PDF tests need a Chromium: fail in CI, skip elsewhere."""
    reason = export.export_unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


# ---- image figures -----------------------------------------------------------------------------------

def test_tile_places_images_row_by_row_with_nan_gaps():
    imgs = np.arange(5 * 784, dtype=float).reshape(5, 784)
    t = figures.tile(imgs, 3)
    assert t.shape == (2 * 29 - 1, 3 * 29 - 1)
    np.testing.assert_array_equal(t[:28, :28], imgs[0].reshape(28, 28))
    np.testing.assert_array_equal(t[29:, 29:57], imgs[4].reshape(28, 28))
    assert np.isnan(t[28]).all() and np.isnan(t[:, 28]).all()
    assert np.isnan(t[29:, 58:]).all()  # the sixth slot is empty


def test_image_grid_shows_the_images():
    imgs = rng().random((6, 784))
    fig = figures.image_grid(imgs, nrow=3, title="six")
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (57, 86)
    np.testing.assert_allclose(z[:28, 29:57], imgs[1].reshape(28, 28), atol=1e-4)
    assert fig.layout.title.text == "six"


def test_sample_grids_put_models_side_by_side_with_a_row_per_weight_draw():
    samples = {"IWAE": rng(1).random((3, 4, 784)), "IWAE-R": rng(2).random((3, 4, 784))}
    fig = figures.sample_grids(samples)
    assert [t.name for t in fig.data] == ["IWAE", "IWAE-R"]
    z = np.asarray(fig.data[1].z, dtype=float)
    assert z.shape == (3 * 29 - 1, 4 * 29 - 1)
    np.testing.assert_allclose(z[29:57, 58:86], samples["IWAE-R"][1, 2].reshape(28, 28), atol=1e-4)
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.yaxis2.scaleanchor == "x2"


def test_spread_map_is_the_per_pixel_std_and_says_when_there_is_none():
    rand = rng(3).random((5, 2, 784))
    flat = np.repeat(rng(4).random((1, 2, 784)), 5, axis=0)
    fig = figures.spread_map({"random": rand, "deterministic": flat})
    z = np.asarray(fig.data[0].z, dtype=float)
    np.testing.assert_allclose(z[:28, :28], rand[:, 0].std(0, ddof=1).reshape(28, 28), atol=1e-4)
    assert np.nanmax(np.asarray(fig.data[1].z, dtype=float)) == 0
    assert fig.data[0].showscale and not fig.data[1].showscale
    assert any("no spread" in a.text for a in fig.layout.annotations)
    # Streamlit's frontend repaints the exact colours #000001-#000099 (theme placeholders), with or without the
    # theme (0 on the magma scale came out lavender): none may remain.
    colours = [c for t in fig.data for _, c in t.colorscale]
    assert not any(c.lower().startswith("#0000") for c in colours)


def test_traversal_grid_labels_units_and_offsets():
    imgs = rng(5).random((2, 3, 784))
    fig = figures.traversal_grid(imgs, units=[4, 1], values=[-1.0, 0.0, 1.0])
    assert list(fig.layout.yaxis.ticktext) == ["z4", "z1"]
    assert list(fig.layout.xaxis.ticktext) == ["-1", "+0", "+1"]
    z = np.asarray(fig.data[0].z, dtype=float)
    np.testing.assert_allclose(z[29:57, 58:86], imgs[1, 2].reshape(28, 28), atol=1e-4)
    nine = figures.traversal_grid(rng(5).random((1, 9, 784)), units=[0], values=list(np.linspace(-3, 3, 9)))
    assert list(nine.layout.xaxis.ticktext)[:3] == ["-3", "-2.25", "-1.5"]  # every digit of the offsets


def test_an_image_grid_is_wide_enough_for_its_title():
    title = "test image 0 and reconstruction"
    fig = figures.image_grid(rng(6).random((2, 784)), nrow=2, title=title)
    assert fig.layout.width >= 9 * len(title)  # two 28-pixel images alone would fit in 200 px


def test_a_long_title_is_wrapped_into_lines_that_fit_and_the_figure_grows_by_them():
    """Plotly never wraps a title: the Samples title (134 characters) ran past the edge of the page's column."""
    title = ("Prior samples, not aligned across models (τ = 1, seed 0, 4 weight draws; objective bayes); "
             "rows: weight draws, columns: latent draws z")
    samples = {"IWAE": rng(1).random((2, 3, 784))}
    short, long = figures.sample_grids(samples, title="Samples"), figures.sample_grids(samples, title=title)
    lines = long.layout.title.text.split("<br>")
    assert len(lines) == 2 and all(len(line) <= figures.TITLE_CHARS for line in lines)
    assert " ".join(lines) == title  # broken at a space, nothing lost
    assert lines[0].endswith("weight draws;")  # after '; ', the preferred break
    assert short.layout.title.text == "Samples"
    grown = figures.TITLE_LINE_PX
    assert (long.layout.margin.t, long.layout.height) == (short.layout.margin.t + grown, short.layout.height + grown)
    c = figures.TITLE_CHARS
    one_word = "x" * (2 * c + 5)  # no space to break at: cut at the limit
    assert figures.wrapped_title(one_word) == ("<br>".join([one_word[:c], one_word[c:2 * c], one_word[2 * c:]]), 3)


def test_weight_tiles_use_log10_and_own_or_shared_colour_scales():
    small, large = np.full((4, 784), 1e-3), np.full((4, 784), 1e-1)
    small[0, 0], large[0, 0] = 2e-3, 2e-1
    own = figures.weight_tiles({"enc": small, "dec": large}, ncol=2)
    assert own.data[0].zmax < -2 and own.data[1].zmin > -1.5  # each panel spans its own values
    assert np.nanmin(np.asarray(own.data[1].z, dtype=float)) == pytest.approx(-1, abs=1e-3)
    shared = figures.weight_tiles({"enc": small, "dec": large}, ncol=2, shared_scale=True)
    assert shared.data[0].zmin == shared.data[1].zmin and shared.data[0].zmax == shared.data[1].zmax
    assert np.asarray(own.data[0].z, dtype=float).shape == (2 * 29 - 1, 2 * 29 - 1)


# ---- export ------------------------------------------------------------------------------------------

def small_figures() -> dict:
    return {"grid": figures.image_grid(rng(10).random((2, 784)), nrow=2),
            "curve": charts.bound_vs_k({"A": [{"k": 1, "mean": -100.0, "stderr": 1.0},
                                              {"k": 5, "mean": -98.0, "stderr": 1.0}]})}


def test_csv_export_holds_every_pixel_and_point():
    figs = small_figures()
    rows = list(csv.DictReader(io.StringIO(export.figure_bytes(figs["grid"], "csv").decode())))
    assert len(rows) == 2 * 784  # NaN gaps left out
    assert {r["trace"] for r in rows} == {"images"}
    curve = list(csv.DictReader(io.StringIO(export.figure_csv(figs["curve"]))))
    mean_rows = [r for r in curve if r["trace"] == "A"]
    assert [(r["x"], r["y"], r["value"]) for r in mean_rows] == [("1", "-100.0", "1.0"), ("5", "-98.0", "1.0")]


def test_html_export_is_self_contained():
    html = export.figure_bytes(small_figures()["curve"], "html").decode()
    assert html.lstrip().lower().startswith(("<html", "<!doctype html")) and "</html>" in html
    assert '<script src="http' not in html and len(html) > 1_000_000  # plotly.js inlined


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown export format"):
        export.figure_bytes(small_figures()["grid"], "bmp")


def test_missing_browser_path_gives_a_clear_error_and_the_zip_says_so(monkeypatch, tmp_path):
    missing = tmp_path / "no-chromium"
    monkeypatch.setenv("BROWSER_PATH", str(missing))
    with pytest.raises(export.ExportUnavailable, match="BROWSER_PATH=.*no-chromium.*not an executable"):
        export.figure_bytes(small_figures()["grid"], "png")
    assert "HTML and CSV export still work" in export.export_unavailable_reason()
    with zipfile.ZipFile(io.BytesIO(export.page_zip(small_figures()))) as zf:
        names = set(zf.namelist())
        readme = zf.read("README.txt").decode()
    assert names == {"grid.html", "grid.csv", "curve.html", "curve.csv", "README.txt"}
    assert "Skipped PNG, SVG and PDF" in readme and "no-chromium" in readme


def test_no_chromium_on_path_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(export.ExportUnavailable, match="No Chromium or Chrome found on PATH"):
        export.figure_bytes(small_figures()["grid"], "svg")


@pytest.mark.slow
def test_png_svg_pdf_export_and_the_full_zip():
    require_chromium()
    fig = small_figures()["curve"]
    assert export.figure_bytes(fig, "png").startswith(b"\x89PNG\r\n\x1a\n")
    svg = export.figure_bytes(fig, "svg")
    assert svg.lstrip().startswith(b"<svg") and b"</svg>" in svg
    assert export.figure_bytes(fig, "pdf").startswith(b"%PDF")
    with zipfile.ZipFile(io.BytesIO(export.page_zip(small_figures()))) as zf:
        names = set(zf.namelist())
        assert zf.read("grid.png").startswith(b"\x89PNG")
        assert "Nothing was skipped." in zf.read("README.txt").decode()
    assert names == {f"{n}.{f}" for n in ("grid", "curve") for f in export.FORMATS} | {"README.txt"}


def test_image_csv_is_tidy_with_named_columns():
    grids = {"m": rng(1).random((2, 3, 784)), "n": rng(2).random((2, 3, 784))}
    rows = list(csv.DictReader(io.StringIO(export.images_csv(grids, labels={"z index": [5, 6, 7]}))))
    assert list(rows[0]) == ["model", "draw", "z index", "pixel row", "column", "value"]
    assert len(rows) == 2 * 2 * 3 * 784
    pick = next(r for r in rows if (r["model"], r["draw"], r["z index"], r["pixel row"], r["column"])
                == ("n", "1", "7", "3", "27"))
    assert float(pick["value"]) == pytest.approx(grids["n"][1, 2, 3 * 28 + 27], rel=1e-5)
    with pytest.raises(ValueError, match="does not have the axes draw, z index"):
        export.images_csv({"flat": rng(1).random((3, 784))})


def test_page_zip_holds_tidy_tables_and_a_settings_sidecar_per_figure():
    figs = small_figures()
    table = export.table_csv([{"model": "A", "k": 1, "tau": 1.0, "seed": 0, "mean": -100.0, "stderr": None}])
    settings = {"models": [{"model": "A", "objective": "bayes"}], "k_max": 5, "tau": 1.0, "seed": 0, "images": 10}
    with zipfile.ZipFile(io.BytesIO(export.page_zip(figs, {"curve": lambda: table}, settings))) as zf:
        curve = list(csv.DictReader(io.StringIO(zf.read("curve.csv").decode())))
        sidecar = json.loads(zf.read("curve.json"))
        grid_csv = zf.read("grid.csv").decode()
        readme = zf.read("README.txt").decode()
    assert curve == [{"model": "A", "k": "1", "tau": "1.0", "seed": "0", "mean": "-100.0", "stderr": ""}]
    assert sidecar["models"][0]["objective"] == "bayes" and sidecar["k_max"] == 5
    assert sidecar["title"] == figs["curve"].layout.title.text
    assert grid_csv.startswith("trace,x,y,value")  # no tidy table given: the trace data in long form
    assert "curve are tidy tables" in readme and "NAME.json" in readme


def test_stacked_image_panels_are_placed_and_titled_as_make_subplots_places_them():
    from plotly.subplots import make_subplots

    grids = {f"m{i}": np.zeros((draws, 8, 784)) for i, draws in enumerate((3, 4, 5))}
    fig = figures.sample_grids(grids)
    tile_px = min(figures.TILE_PX, (1100 - 20) / 8)
    heights = [draws * tile_px + 40 for draws in (3, 4, 5)]
    ref = make_subplots(rows=3, cols=1, subplot_titles=list(grids), row_heights=[h / sum(heights) for h in heights],
                        vertical_spacing=0.06)
    for axis in ("xaxis", "yaxis", "xaxis2", "yaxis2", "xaxis3", "yaxis3"):
        np.testing.assert_allclose(fig.layout[axis].domain, ref.layout[axis].domain, atol=1e-12)
        assert fig.layout[axis].anchor == ref.layout[axis].anchor
    assert [(a.text, a.x, pytest.approx(a.y)) for a in fig.layout.annotations] == \
        [(a.text, a.x, a.y) for a in ref.layout.annotations]
    assert [(t.xaxis, t.yaxis) for t in fig.data] == [("x", "y"), ("x2", "y2"), ("x3", "y3")]
    assert fig.layout.yaxis2.autorange == "reversed" and fig.layout.yaxis2.scaleanchor == "x2"
