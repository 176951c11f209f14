"""Every dashboard page in Streamlit's AppTest, on tiny trained models: it renders without exception and
its widgets change what is shown (asserted on the figures' data and the tables' values)."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from iwae_core.checkpoint import write_json
from support import open_app, require_data

pytestmark = pytest.mark.usefixtures("no_logged_tracebacks")  # a traceback Streamlit only logs fails a test too


@pytest.fixture
def zoo(tiny_zoo, monkeypatch) -> Path:
    monkeypatch.setenv("IWAE_ZOO_DIRS", str(tiny_zoo))
    return tiny_zoo


@pytest.fixture
def mnist(monkeypatch) -> Path:
    root = require_data("MNIST", "raw")
    monkeypatch.setenv("IWAE_DATA_DIR", str(root))
    return root


@pytest.fixture
def no_data(monkeypatch, tmp_path) -> Path:
    empty = tmp_path / "no-data-here"
    empty.mkdir()
    monkeypatch.setenv("IWAE_DATA_DIR", str(empty))
    return empty




def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def array(value) -> np.ndarray:
    """A plotly JSON array (a list, or a typed array {dtype, bdata, shape}) as a float numpy array."""
    if isinstance(value, dict) and "bdata" in value:
        a = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            a = a.reshape([int(s) for s in str(shape).split(",")])
        return a.astype(float)
    return np.array(value, dtype=float)


def panels(spec: dict) -> dict[str, np.ndarray]:
    """name -> z of every heatmap in a chart spec."""
    return {t["name"]: array(t["z"]) for t in spec["data"] if t.get("type") == "heatmap"}


def texts(at: AppTest, kind: str) -> str:
    return "\n".join(str(e.value) for e in at.get(kind))


# ---- home ----------------------------------------------------------------------------------------------

def test_home_lists_the_zoo_beside_the_paper_and_the_data_status(zoo, mnist):
    at = open_app()
    table = at.dataframe[0].value
    assert list(table["model"]) == ["tiny-iwae", "tiny-iwae-r", "tiny-iwae-rrec"]
    assert list(table["variant"]) == ["IWAE", "IWAE-R", "IWAE-Rrec"]
    assert set(table["test LL (τ=1)"]) == {"not evaluated yet"}
    # an evaluation covers tau = 0 only where there are random weights for tau to scale
    assert list(table["test LL (τ=0)"]) == ["same as τ=1 (no random weights)", "not evaluated yet",
                                            "not evaluated yet"]
    assert list(table["paper test LL"]) == ["-95.182 ± 0.022", "-94.346 ± 0.025", "-94.709 ± 0.025"]
    assert list(table["layers"]) == ["784-32-4"] * 3
    paper = at.dataframe[1].value
    mnist_rows = paper[paper["dataset"] == "mnist"]
    assert set(mnist_rows["ours (τ=1)"]) == {"not evaluated yet"}
    assert set(paper[paper["dataset"] == "omniglot"]["ours (τ=1)"]) == {"no model"}
    status = at.dataframe[2].value
    assert bool(status.set_index("dataset").loc["mnist", "present"])
    assert at.selectbox(key="home:model").value == "tiny-iwae"


def test_home_shows_evaluated_numbers_next_to_the_papers(tiny_zoo, tmp_path, monkeypatch, mnist):
    shutil.copytree(tiny_zoo / "tiny-iwae-r", tmp_path / "zoo" / "tiny-iwae-r")
    metrics_path = tmp_path / "zoo" / "tiny-iwae-r" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["test"] = {"by_tau": {"1": {"mean": -120.5, "stderr": 0.4}, "0": {"mean": -121.25, "stderr": 0.5}},
                       "active_units": 3, "n_images": 250, "S": 1000}
    write_json(metrics_path, metrics)
    monkeypatch.setenv("IWAE_ZOO_DIRS", str(tmp_path / "zoo"))
    at = open_app()
    row = at.dataframe[0].value.iloc[0]
    assert (row["test LL (τ=1)"], row["test LL (τ=0)"], row["active units"]) == ("-120.500 ± 0.400",
                                                                                 "-121.250 ± 0.500", 3)
    assert (row["test images"], row["S"]) == (250, 1000)  # how much of the test set the numbers cover
    paper = at.dataframe[1].value.set_index(["dataset", "variant"])
    assert paper.loc[("mnist", "IWAE-R"), "ours (τ=1)"] == "-120.500 ± 0.400"
    assert paper.loc[("mnist", "IWAE-R"), "ours − paper"] == f"{-120.5 + 94.346:+.3f}"
    assert paper.loc[("mnist", "IWAE"), "ours (τ=1)"] == "no model"


def test_home_and_pages_say_clearly_when_there_is_no_model_or_no_data(tmp_path, monkeypatch, no_data):
    monkeypatch.setenv("IWAE_ZOO_DIRS", str(tmp_path / "empty-zoo"))
    at = open_app()
    assert "No trained model yet" in texts(at, "info") and "empty-zoo" in texts(at, "info")
    assert "no-data-here" in texts(at, "warning") and "MNIST" in texts(at, "warning")
    at.switch_page("views/2_Samples.py")
    rerun(at)
    assert "No trained model found" in texts(at, "info")
    assert not at.get("plotly_chart")


# ---- samples -------------------------------------------------------------------------------------------

def test_samples_tau_changes_only_the_random_decoder_and_draws_add_rows(zoo, no_data):
    at = open_app("2_Samples.py", view="prior")
    assert at.multiselect(key="samples:model").value == ["tiny-iwae", "tiny-iwae-r", "tiny-iwae-rrec"]
    before = panels(charts(at)[0])
    assert list(before) == ["tiny-iwae (IWAE)", "tiny-iwae-r (IWAE-R)", "tiny-iwae-rrec (IWAE-Rrec)"]
    assert before["tiny-iwae-r (IWAE-R)"].shape == (4 * 29 - 1, 8 * 29 - 1)  # 4 weight draws x 8 latent draws
    at.slider(key="samples:tau").set_value(2.0)
    after = panels(charts(rerun(at))[0])
    np.testing.assert_array_equal(after["tiny-iwae (IWAE)"], before["tiny-iwae (IWAE)"])
    np.testing.assert_array_equal(after["tiny-iwae-rrec (IWAE-Rrec)"], before["tiny-iwae-rrec (IWAE-Rrec)"])
    assert np.nanmax(np.abs(after["tiny-iwae-r (IWAE-R)"] - before["tiny-iwae-r (IWAE-R)"])) > 1e-3
    assert at.query_params["tau"] == ["2"] or at.query_params["tau"] == "2"
    at.slider(key="samples:draws").set_value(2)
    assert panels(charts(rerun(at))[0])["tiny-iwae-r (IWAE-R)"].shape == (2 * 29 - 1, 8 * 29 - 1)
    at.slider(key="samples:n").set_value(3)
    fewer = panels(charts(rerun(at))[0])["tiny-iwae (IWAE)"]
    assert fewer.shape == (2 * 29 - 1, 3 * 29 - 1)
    np.testing.assert_array_equal(fewer[:28, :28], before["tiny-iwae (IWAE)"][:28, :28])  # same z, same seed


def count_calls(monkeypatch, module, name: str) -> list:
    """Record which networks of its model are random at every call of module.name, then make the call."""
    calls, real = [], getattr(module, name)

    def counted(model, *args, **kwargs):
        calls.append((model.config.random_encoder, model.config.random_decoder))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_tau_move_recomputes_only_the_networks_with_random_weights(zoo, no_data, monkeypatch):
    """A tau the deterministic decoders (IWAE, IWAE-Rrec) ignore is served from their cached images; only the
    random decoder (IWAE-R) is decoded again. The seed is one no other test uses, so nothing is cached before."""
    from iwae_core import explore

    samples = count_calls(monkeypatch, explore, "decoder_samples")
    traversal = count_calls(monkeypatch, explore, "traversal")
    at = open_app("2_Samples.py", view="prior", seed="918273")
    assert sorted(samples) == [(False, False), (True, False), (True, True)]  # one call per model
    before = panels(charts(at)[0])
    samples.clear()
    at.slider(key="samples:tau").set_value(0.4)
    after = panels(charts(rerun(at))[0])
    assert samples == [(True, True)]  # IWAE-R only
    for name in ("tiny-iwae (IWAE)", "tiny-iwae-rrec (IWAE-Rrec)"):
        np.testing.assert_array_equal(after[name], before[name])

    at = open_app("3_Latent_traversals.py", model="tiny-iwae-rrec", seed="918273")
    assert traversal == [(True, False), (True, False)]  # the grid (every unit in one call) and the start image
    traversal.clear()
    at.slider(key="traversals:tau").set_value(0.4)
    rerun(at)
    assert traversal == []  # a prior draw decoded by a deterministic decoder: nothing depends on tau


def test_samples_spread_is_zero_for_deterministic_decoders_and_at_tau_zero(zoo, no_data):
    at = open_app("2_Samples.py", view="prior")
    spread = charts(at)[1]
    notes = [a["text"] for a in spread["layout"].get("annotations", []) if "no spread" in a["text"]]
    assert len(notes) == 2  # IWAE and IWAE-Rrec: deterministic decoders
    assert np.nanmax(panels(spread)["tiny-iwae-r (IWAE-R)"]) > 1e-3
    at.slider(key="samples:tau").set_value(0.0)
    spread = charts(rerun(at))[1]
    assert np.nanmax(panels(spread)["tiny-iwae-r (IWAE-R)"]) == 0
    assert sum("no spread" in a["text"] for a in spread["layout"]["annotations"]) == 3


def test_samples_url_sets_the_widgets(zoo, no_data):
    at = open_app("2_Samples.py", model="tiny-iwae-r,not-a-model", tau="0.5", seed="3", view="prior")
    assert at.multiselect(key="samples:model").value == ["tiny-iwae-r"]
    assert at.slider(key="samples:tau").value == 0.5
    assert at.number_input(key="samples:seed").value == 3
    other = open_app("2_Samples.py", model="tiny-iwae-r", tau="0.5", seed="4", view="prior")
    assert not np.array_equal(panels(charts(at)[0])["tiny-iwae-r (IWAE-R)"],
                              panels(charts(other)[0])["tiny-iwae-r (IWAE-R)"])
    bad = open_app("2_Samples.py", tau="lots", seed="-5")
    assert bad.slider(key="samples:tau").value == 1.0 and bad.number_input(key="samples:seed").value == 0


def test_export_widgets_explain_a_missing_chromium(zoo, no_data, monkeypatch, tmp_path):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chromium"))
    at = open_app("2_Samples.py", view="prior")
    captions = texts(at, "caption")
    assert "BROWSER_PATH" in captions and "no-chromium" in captions and "HTML and CSV export still work" in captions


def test_samples_reconstructions_of_the_same_test_images_by_each_model(zoo, mnist):
    at = open_app("2_Samples.py", image="5", n="4", draws="2")
    assert at.selectbox(key="samples:view").value == "reconstructions"  # the comparison that means something
    spec = charts(at)[0]
    grids = panels(spec)
    assert list(grids) == ["test images 5–8", "tiny-iwae (IWAE)", "tiny-iwae-r (IWAE-R)", "tiny-iwae-rrec (IWAE-Rrec)"]
    assert grids["test images 5–8"].shape == (28, 4 * 29 - 1) and grids["tiny-iwae-r (IWAE-R)"].shape == (57, 115)
    assert set(np.unique(grids["test images 5–8"][~np.isnan(grids["test images 5–8"])])) <= {0.0, 1.0}
    np.testing.assert_array_equal(grids["tiny-iwae (IWAE)"][:28], grids["tiny-iwae (IWAE)"][29:])  # deterministic
    assert "τ = 1, seed 0, 2 weight draws" in spec["layout"]["title"]["text"]
    assert spec["layout"]["height"] >= 4 * 96  # big tiles: models stacked, each as wide as the figure
    at.number_input(key="samples:image").set_value(6)
    moved = panels(charts(rerun(at))[0])
    np.testing.assert_array_equal(moved["test images 6–9"][:, :28], grids["test images 5–8"][:, 29:57])
    assert at.query_params["image"] in ("6", ["6"])


def test_samples_ab_compares_one_model_at_tau_zero_and_the_chosen_tau(zoo, no_data):
    at = open_app("2_Samples.py", view="ab", tau="2")
    assert at.selectbox(key="samples:ab").value == "tiny-iwae-r"  # a random model by default
    grids = panels(charts(at)[0])
    a, b = grids["A: tiny-iwae-r (IWAE-R), τ = 0"], grids["B: tiny-iwae-r (IWAE-R), τ = 2"]
    np.testing.assert_array_equal(a[:28], a[29:57])  # tau = 0: every weight draw is the posterior mean
    assert np.nanmax(np.abs(b[:28] - b[29:57])) > 1e-3
    at.selectbox(key="samples:ab").set_value("tiny-iwae")
    rerun(at)
    assert "A and B are the same images" in texts(at, "info")
    assert at.query_params["ab"] in ("tiny-iwae", ["tiny-iwae"])


def test_samples_prior_grid_says_it_is_not_aligned_and_bad_views_get_a_notice(zoo, no_data):
    at = open_app("2_Samples.py", view="prior")
    assert "not aligned across models" in charts(at)[0]["layout"]["title"]["text"]
    assert "NOT the same content" in texts(at, "caption")
    bad = open_app("2_Samples.py", view="sideways", draws="40")
    notices = texts(bad, "warning")
    assert "view = sideways" in notices and "view = prior" in notices  # no test images here: the prior grid
    assert "draws = 40" in notices and "draws = 4" in notices


# ---- latent traversals ---------------------------------------------------------------------------------

def test_traversals_from_a_test_image_units_and_tau(zoo, mnist):
    at = open_app("3_Latent_traversals.py", model="tiny-iwae-r")
    assert at.radio(key="traversals:source").options == ["Test image", "Prior draw"]
    grid = charts(at)[1]
    n_units = len(grid["layout"]["yaxis"]["ticktext"])
    assert n_units >= 1 and panels(grid)["traversal"].shape == (n_units * 29 - 1, 9 * 29 - 1)
    assert "Active units" in texts(at, "markdown")
    at.slider(key="traversals:steps").set_value(5)
    grid5 = charts(rerun(at))[1]
    assert panels(grid5)["traversal"].shape[1] == 5 * 29 - 1
    assert grid5["layout"]["xaxis"]["ticktext"] == ["-3", "-1.5", "+0", "+1.5", "+3"]
    at.slider(key="traversals:tau").set_value(1.5)
    noisy = charts(rerun(at))[1]
    assert np.nanmax(np.abs(panels(noisy)["traversal"] - panels(grid5)["traversal"])) > 1e-3
    start_image = panels(charts(at)[0])
    at.number_input(key="traversals:index").set_value(5)
    assert not np.array_equal(panels(charts(rerun(at))[0])["test image 5 and reconstruction"],
                              start_image["test image 0 and reconstruction"])


def test_traversals_unit_count_and_prior_start(zoo, mnist):
    at = open_app("3_Latent_traversals.py", model="tiny-iwae")
    at.checkbox(key="traversals:only_active").uncheck()
    rerun(at)
    at.slider(key="traversals:units").set_value(2)
    grid = charts(rerun(at))[1]
    assert len(grid["layout"]["yaxis"]["ticktext"]) == 2
    assert panels(grid)["traversal"].shape[0] == 2 * 29 - 1
    at.radio(key="traversals:source").set_value("prior")
    start = charts(rerun(at))[0]
    assert "prior draw (seed 0)" in start["layout"]["title"]["text"]
    at.number_input(key="traversals:seed").set_value(9)
    assert "prior draw (seed 9)" in charts(rerun(at))[0]["layout"]["title"]["text"]


def test_traversals_work_from_the_prior_without_data(zoo, no_data):
    at = open_app("3_Latent_traversals.py", model="tiny-iwae")
    assert at.radio(key="traversals:source").options == ["Prior draw"]
    assert "no-data-here" in texts(at, "warning")
    grid = charts(at)[1]
    assert grid["layout"]["yaxis"]["ticktext"] == ["z0", "z1", "z2", "z3"]  # no activity without data: every unit
    assert np.nanmax(panels(grid)["traversal"]) > 0


# ---- weight variance -----------------------------------------------------------------------------------

def test_weight_variance_maps_histograms_and_unit_slider(zoo, no_data):
    at = open_app("4_Weight_variance.py")
    assert at.selectbox(key="weights:model").value == "tiny-iwae-r"  # a random model by default
    specs = charts(at)
    assert [s["layout"]["title"]["text"] for s in specs] == [
        "Posterior weight σ of tiny-iwae-r; objective bayes", "Signal-to-noise |μ|/σ of tiny-iwae-r; objective bayes",
        "Posterior weight σ per layer against the prior"]
    # one colour scale for both maps: log10 sigma from the smallest initial sigma (0.05), or from the maps' lowest
    # 0.5th percentile where sigma shrank below it, to the prior std (1), written on the bar; hover names the
    # unit and the pixel
    heat = [t for t in specs[0]["data"] if t.get("type") == "heatmap"]
    floor = min(0.05, *(float(np.quantile(sigma_of(zoo / "tiny-iwae-r", name), 0.005)) for name in MAPPED_RHOS))
    assert [(t["zmin"], t["zmax"]) for t in heat] == [(pytest.approx(np.log10(floor)), 0.0)] * 2
    assert "unit %{customdata[0]}, pixel (%{customdata[1]}, %{customdata[2]})" in heat[0]["hovertemplate"]
    cells = array(heat[0]["customdata"]).reshape(4 * 29 - 1, 8 * 29 - 1, 3)
    assert list(cells[29 + 3, 2 * 29 + 5]) == [8 + 2, 3, 5]  # second row of tiles, third tile: unit 10
    sigma = panels(specs[0])
    assert list(sigma) == ["first encoder layer (units 0–31)", "last decoder layer (units 0–31)"]
    assert sigma["first encoder layer (units 0–31)"].shape == (4 * 29 - 1, 8 * 29 - 1)  # 32 units, 8 per row
    # the tiles are log10 sigma: init sigma 0.05 moved a little by training
    assert -1.6 < np.nanmedian(sigma["first encoder layer (units 0–31)"]) < -1.0
    at.slider(key="weights:units").set_value(8)
    at.slider(key="weights:cols").set_value(4)
    smaller = panels(charts(rerun(at))[0])
    assert smaller["first encoder layer (units 0–7)"].shape == (2 * 29 - 1, 4 * 29 - 1)
    assert at.query_params["units"] in ("8", ["8"]) and at.query_params["cols"] in ("4", ["4"])
    stats = at.dataframe[0].value
    assert list(stats["layer"]) == ["encoder.0", "encoder.1", "decoder.0", "decoder.1"]


MAPPED_RHOS = ("encoder.layers.0.weight_rho", "decoder.layers.1.weight_rho")  # the layers Weight variance maps


def sigma_of(folder: Path, name: str) -> np.ndarray:
    """sigma = softplus(rho) of one weight, read from the model file itself."""
    from safetensors.torch import load_file

    return torch.nn.functional.softplus(load_file(folder / "model.safetensors")[name]).numpy()


@pytest.mark.parametrize("sigma, floor, named", [(0.005, 0.005, "0.5th percentile of this model's σ"),
                                                 (0.1, 0.05, "smallest initial σ")])
def test_weight_variance_colour_scale_reaches_down_to_a_shrunk_sigma(zoo, tmp_path, monkeypatch, no_data,
                                                                     sigma, floor, named):
    """A model whose mapped sigmas all shrank to 0.005, a tenth of their initial 0.05, is drawn on a scale from
    log10 0.005, not clipped to one colour at 0.05; one whose sigmas grew keeps the initial sigma as the floor."""
    from safetensors.torch import load_file, save_file

    from iwae_core.maths.layers import inverse_softplus

    changed = tmp_path / "zoo" / "changed-iwae-r"
    shutil.copytree(zoo / "tiny-iwae-r", changed)
    state = load_file(changed / "model.safetensors")
    for name in MAPPED_RHOS:
        state[name] = torch.full_like(state[name], inverse_softplus(sigma))
    save_file(state, str(changed / "model.safetensors"))
    assert np.allclose(sigma_of(changed, MAPPED_RHOS[0]), sigma, rtol=1e-5)
    monkeypatch.setenv("IWAE_ZOO_DIRS", str(tmp_path / "zoo"))
    spec = charts(open_app("4_Weight_variance.py", model="changed-iwae-r"))[0]
    heat = [t for t in spec["data"] if t.get("type") == "heatmap"]
    assert [(t["zmin"], t["zmax"]) for t in heat] == [(pytest.approx(np.log10(floor), abs=1e-5), 0.0)] * 2
    assert f"({named}, {floor:g})" in heat[0]["colorbar"]["title"]["text"]
    tiles = panels(spec)["first encoder layer (units 0–31)"]  # log10 sigma, float32: inside the scale
    assert np.nanmax(np.abs(tiles - np.log10(sigma))) < 1e-4 and np.nanmin(tiles) >= heat[0]["zmin"] - 1e-4


def test_weight_variance_of_a_deterministic_model_shows_mu(zoo, no_data):
    at = open_app("4_Weight_variance.py")
    at.selectbox(key="weights:model").set_value("tiny-iwae")
    specs = charts(rerun(at))
    assert [s["layout"]["title"]["text"] for s in specs] == ["Deterministic weights |μ| of tiny-iwae"]
    assert "point-estimate weights" in texts(at, "info")
    assert at.query_params["model"] in ("tiny-iwae", ["tiny-iwae"])


def test_weight_variance_says_when_sigma_has_not_moved(zoo, tmp_path, monkeypatch, no_data):
    from safetensors.torch import load_file, save_file

    from iwae_core.maths.layers import inverse_softplus

    at = open_app("4_Weight_variance.py", model="tiny-iwae-r")
    warning = texts(at, "warning")  # 30 training steps barely move sigma from its initial 0.05
    assert "The encoder's σ has not moved from its initial value 0.05" in warning
    assert "The decoder's σ has not moved" in warning
    moved = tmp_path / "zoo" / "moved-iwae-r"
    shutil.copytree(zoo / "tiny-iwae-r", moved)
    state = load_file(moved / "model.safetensors")
    gen = torch.Generator().manual_seed(0)
    for name in [n for n in state if n.startswith("encoder") and n.endswith("rho")]:
        sigma = 0.05 * torch.exp(torch.randn(state[name].shape, generator=gen))
        state[name] = sigma.apply_(inverse_softplus)
    save_file(state, str(moved / "model.safetensors"))
    monkeypatch.setenv("IWAE_ZOO_DIRS", str(tmp_path / "zoo"))
    warning = texts(open_app("4_Weight_variance.py", model="moved-iwae-r"), "warning")
    assert "encoder's σ has not moved" not in warning and "The decoder's σ has not moved" in warning


# ---- bound vs k ----------------------------------------------------------------------------------------

def test_bound_vs_k_back_at_a_setting_seen_before_builds_no_figure_and_shows_the_same(zoo, mnist, monkeypatch):
    """Every figure of Bound vs k is built once per setting: moving back to a k (or image) seen before builds
    none (building them was most of such a rerun) and shows exactly the figures of the first time. The seed is
    one no other test uses, so nothing is cached before."""
    import functools

    import dashboard.charts
    import dashboard.figures

    built = []
    for module, name in ((dashboard.charts, "bound_vs_k"), (dashboard.charts, "importance_weights"),
                         (dashboard.charts, "posterior_scatter"), (dashboard.figures, "image_grid")):
        real = getattr(module, name)
        counted = functools.wraps(real)(lambda *a, _real=real, _name=name, **kw: built.append(_name) or _real(*a, **kw))
        monkeypatch.setattr(module, name, counted)
    at = open_app("5_Bound_vs_k.py", seed="918273")
    first = charts(at)
    assert sorted(built) == ["bound_vs_k", "bound_vs_k", "image_grid", "importance_weights", "posterior_scatter"]
    at.select_slider(key="bound:k").set_value(25)
    rerun(at)
    # a new largest k: new curves; the test image's figures have their own k and are reused
    assert sorted(built[5:]) == ["bound_vs_k", "bound_vs_k"]
    assert charts(at) != first
    built.clear()
    at.select_slider(key="bound:k").set_value(100)
    assert charts(rerun(at)) == first and built == []
    at.number_input(key="bound:index").set_value(3)
    rerun(at)
    assert sorted(built) == ["image_grid", "importance_weights", "posterior_scatter"]  # the curves did not change
    built.clear()
    at.select_slider(key="bound:image_k").set_value(25)
    rerun(at)
    assert sorted(built) == ["importance_weights", "posterior_scatter"]


def curve_means(spec: dict) -> dict[str, list]:
    return {t["name"]: (list(array(t["x"])), list(array(t["y"]))) for t in spec["data"]
            if t.get("mode") == "lines+markers" and not t["name"].startswith("paper")}


def means_se(spec: dict, name: str) -> list:
    return list(array(next(t for t in spec["data"] if t.get("name") == name)["customdata"]))


def test_bound_vs_k_k_slider_sets_the_range_and_tau_moves_random_models(zoo, mnist):
    at = open_app("5_Bound_vs_k.py")
    assert at.select_slider(key="bound:k").value == 100
    means = curve_means(charts(at)[0])
    assert set(means) == {"tiny-iwae", "tiny-iwae-r", "tiny-iwae-rrec"}
    assert means["tiny-iwae"][0] == [1, 2, 5, 10, 25, 50, 100]
    table = at.dataframe[0].value
    assert len(table) == 3 * 7 and set(table["n_images"]) == {100}
    ys = means["tiny-iwae"][1]
    assert ys[-1] > ys[0]  # L_100 above L_1 on average
    at.select_slider(key="bound:k").set_value(10)
    spec = charts(rerun(at))[0]
    assert curve_means(spec)["tiny-iwae"][0] == [1, 2, 5, 10]
    assert spec["layout"]["xaxis"]["range"][1] == pytest.approx(1.1)
    small = curve_means(spec)["tiny-iwae"][1]
    assert small != ys[:4]  # one pass of 10 draws per image, not of 100: other groups, same expectation
    assert abs(small[0] - ys[0]) < 3 * means_se(spec, "tiny-iwae")[0]
    at.slider(key="bound:tau").set_value(2.0)
    moved = curve_means(charts(rerun(at))[0])
    assert moved["tiny-iwae"][1] == small  # deterministic weights: tau changes nothing
    assert moved["tiny-iwae-r"][1] != curve_means(spec)["tiny-iwae-r"][1]
    assert at.query_params["k"] in ("10", ["10"])
    at.slider(key="bound:tau").set_value(1.0)
    at.select_slider(key="bound:k").set_value(100)
    assert curve_means(charts(rerun(at))[0])["tiny-iwae"][1] == ys  # computed once per setting, then reused


def test_bound_vs_k_url_and_the_chosen_image(zoo, mnist):
    at = open_app("5_Bound_vs_k.py", k="30", image_k="50", model="tiny-iwae-r", tau="1")
    assert at.select_slider(key="bound:k").value == 25  # nearest k of the grid
    assert at.select_slider(key="bound:image_k").value == 50  # the test image's own k
    assert at.multiselect(key="bound:model").value == ["tiny-iwae-r"]
    assert "L_50" in texts(at, "markdown") and "ESS" in texts(at, "markdown")
    weights = next(s for s in charts(at) if "Importance weights" in s["layout"]["title"]["text"])
    assert weights["data"][0]["name"].endswith("of 50")
    posterior = next(s for s in charts(at) if "Posterior draws" in s["layout"]["title"]["text"])
    x0 = array(posterior["data"][0]["x"])  # the density of every draw
    assert len(x0) == 50
    at.number_input(key="bound:index").set_value(3)
    rerun(at)
    posterior3 = next(s for s in charts(at) if "Posterior draws" in s["layout"]["title"]["text"])
    assert not np.array_equal(array(posterior3["data"][0]["x"]), x0)
    at.selectbox(key="bound:dim_a").set_value(2)
    posterior_dims = next(s for s in charts(rerun(at)) if "Posterior draws" in s["layout"]["title"]["text"])
    assert posterior_dims["layout"]["xaxis"]["title"]["text"] == "z2"


def test_bound_vs_k_without_data_names_the_folder(zoo, no_data):
    at = open_app("5_Bound_vs_k.py")
    errors = texts(at, "error")
    assert "no-data-here" in errors and "MNIST" in errors
    assert not at.get("plotly_chart")


def test_bound_vs_k_large_k_waits_for_a_click_with_an_estimate(zoo, mnist):
    at = open_app("5_Bound_vs_k.py", images="20", model="tiny-iwae,tiny-iwae-r")
    assert at.number_input(key="bound:images").value == 20
    at.select_slider(key="bound:k").set_value(1000)
    rerun(at)
    info = texts(at, "info")
    assert "k = 1,000 on 20 images" in info and " s**" in info
    assert not any(s["layout"]["title"]["text"].startswith("L_k against k") for s in charts(at))
    next(b for b in at.button if b.label.startswith("Compute up to k = 1,000")).click()
    rerun(at)
    curve = next(s for s in charts(at) if s["layout"]["title"]["text"].startswith("L_k against k"))
    assert curve_means(curve)["tiny-iwae"][0][-1] == 1000
    at.number_input(key="bound:index").set_value(1)
    rerun(at)  # computed: another control keeps the curve without a new click
    assert any(s["layout"]["title"]["text"].startswith("L_k against k") for s in charts(at))
    assert "k = 1,000 on 20 images" not in texts(at, "info")


def test_bound_vs_k_paired_view_against_a_reference_from_the_url(zoo, mnist):
    at = open_app("5_Bound_vs_k.py", images="30", k="10", ref="tiny-iwae-r")
    assert at.selectbox(key="bound:ref").value == "tiny-iwae-r"
    specs = charts(at)
    curve = next(s for s in specs if s["layout"]["title"]["text"].startswith("L_k against k"))
    paired = next(s for s in specs if s["layout"]["title"]["text"].startswith("L_k minus tiny-iwae-r"))
    diffs = curve_means(paired)
    assert set(diffs) == {"tiny-iwae − tiny-iwae-r", "tiny-iwae-rrec − tiny-iwae-r"}
    plain = curve_means(curve)
    np.testing.assert_allclose(diffs["tiny-iwae − tiny-iwae-r"][1],
                               np.array(plain["tiny-iwae"][1]) - np.array(plain["tiny-iwae-r"][1]), atol=1e-4)
    # the paired s.e. is the spread of the per-image differences, below the unpaired bands here
    assert max(means_se(paired, "tiny-iwae − tiny-iwae-r")) < max(means_se(curve, "tiny-iwae"))
    # the paper's numbers: in their model's colour, said to be whole-test-set numbers at k = 5000
    line = {t["name"]: t["line"]["color"] for t in curve["data"] if t.get("mode") == "lines+markers"}
    paper = next(t for t in curve["data"] if t["name"].startswith("paper IWAE-R"))
    assert "whole test set, k = 5000" in paper["name"] and paper["line"]["color"] == line["tiny-iwae-r"]
    at.selectbox(key="bound:ref").set_value("tiny-iwae")
    rerun(at)
    assert at.query_params["ref"] in ("tiny-iwae", ["tiny-iwae"])
    assert "tiny-iwae-r − tiny-iwae" in curve_means(next(s for s in charts(at)
                                                         if s["layout"]["title"]["text"].startswith("L_k minus")))


def test_bound_vs_k_link_values_of_the_new_controls_get_notices(zoo, mnist):
    at = open_app("5_Bound_vs_k.py", images="0", ref="nobody", image="99999", k="10")
    notices = texts(at, "warning")
    assert "images = 0" in notices and "images = 100" in notices
    assert "ref = nobody" in notices and "image = 99999" in notices
    assert at.number_input(key="bound:index").value == 0


def test_tau_slider_says_when_it_does_nothing_and_is_disabled_for_deterministic_networks(zoo, no_data):
    at = open_app("2_Samples.py", model="tiny-iwae")
    assert at.slider(key="samples:tau").disabled
    assert "τ does nothing here: tiny-iwae has deterministic weights" in texts(at, "caption")
    at = open_app("2_Samples.py", model="tiny-iwae,tiny-iwae-r")
    assert not at.slider(key="samples:tau").disabled
    assert "τ does nothing for tiny-iwae (deterministic" in texts(at, "caption")
    at = open_app("2_Samples.py", model="tiny-iwae-r")
    assert not at.slider(key="samples:tau").disabled and "τ does nothing" not in texts(at, "caption")


# ---- the whole view in the link ------------------------------------------------------------------------

ROUND_TRIPS = {  # page -> the controls moved away from their defaults before the link is copied
    "2_Samples.py": [("selectbox", "samples:view", "ab"), ("selectbox", "samples:ab", "tiny-iwae-rrec"),
                     ("slider", "samples:draws", 3), ("slider", "samples:n", 5), ("slider", "samples:tau", 0.5),
                     ("number_input", "samples:seed", 7)],
    "3_Latent_traversals.py": [("selectbox", "traversals:model", "tiny-iwae-r"),
                               ("number_input", "traversals:index", 4), ("slider", "traversals:span", 2.0),
                               ("slider", "traversals:steps", 7), ("checkbox", "traversals:only_active", False),
                               ("slider", "traversals:units", 3), ("slider", "traversals:tau", 0.5)],
    "4_Weight_variance.py": [("selectbox", "weights:model", "tiny-iwae-rrec"), ("slider", "weights:units", 10),
                             ("slider", "weights:first", 3), ("slider", "weights:cols", 5)],
    "5_Bound_vs_k.py": [("number_input", "bound:images", 20), ("select_slider", "bound:k", 25),
                        ("selectbox", "bound:ref", "tiny-iwae-rrec"), ("number_input", "bound:index", 2),
                        ("selectbox", "bound:dim_a", 3), ("checkbox", "bound:paper", False)],
}


@pytest.mark.parametrize("page", list(ROUND_TRIPS))
def test_a_copied_link_reproduces_the_view(zoo, mnist, page):
    at = open_app(page)
    for kind, key, value in ROUND_TRIPS[page]:
        getattr(at, kind)(key=key).set_value(value)
        rerun(at)
    link = {name: at.query_params[name] for name in at.query_params}
    link = {name: v[0] if isinstance(v, list) else v for name, v in link.items()}
    fresh = open_app(page, **link)
    for kind, key, value in ROUND_TRIPS[page]:
        assert getattr(fresh, kind)(key=key).value == value, (key, link)
    assert not texts(fresh, "warning").count("The link asked for")
    assert [c.proto.spec for c in fresh.get("plotly_chart")] == [c.proto.spec for c in at.get("plotly_chart")]


# ---- exports: settings in the title and a JSON sidecar, tidy CSV ---------------------------------------

@pytest.fixture
def zipped(monkeypatch) -> list:
    """What each page hands to its zip button: (figures, page, tables, settings)."""
    from dashboard import downloads
    seen = []
    monkeypatch.setattr(downloads, "zip_button", lambda figs, page, tables=None, settings=None:
                        seen.append((figs, page, tables, settings)))
    return seen


def test_bound_vs_k_exports_tidy_tables_and_its_settings(zoo, mnist, zipped):
    at = open_app("5_Bound_vs_k.py", k="10", images="20", seed="3", model="tiny-iwae,tiny-iwae-r")
    figs, page, tables, settings = zipped[-1]
    assert page == "bound_vs_k" and set(tables) == {"bound_vs_k", "bound_vs_k_paired", "test_image",
                                                    "importance_weights", "posterior_draws"}
    assert {m["model"]: m["objective"] for m in settings["models"]} == {"tiny-iwae": "-", "tiny-iwae-r": "bayes"}
    assert (settings["k_max"], settings["tau"], settings["seed"], settings["images"]) == (10, 1.0, 3, 20)
    assert settings["link"]["k"] == "10" and settings["link"]["ref"] == "tiny-iwae" and "image" in settings["link"]
    title = figs["bound_vs_k"].layout.title.text
    assert "τ = 1" in title and "seed 3" in title and "20 test images" in title and "objective bayes" in title
    curve = list(csv.DictReader(io.StringIO(tables["bound_vs_k"]())))
    assert list(curve[0]) == ["model", "k", "tau", "seed", "images", "mean", "stderr"]
    assert len(curve) == 2 * 4 and {r["model"] for r in curve} == {"tiny-iwae", "tiny-iwae-r"}
    shown = curve_means(charts(at)[0])
    assert [float(r["mean"]) for r in curve if r["model"] == "tiny-iwae"] == pytest.approx(shown["tiny-iwae"][1])
    paired = list(csv.DictReader(io.StringIO(tables["bound_vs_k_paired"]())))
    assert {r["reference"] for r in paired} == {"tiny-iwae"} and {r["model"] for r in paired} == {"tiny-iwae-r"}
    weights = list(csv.DictReader(io.StringIO(tables["importance_weights"]())))
    assert len(weights) == 2 * 100 and "normalised weight" in weights[0]  # the test image's own k (default 100)
    assert settings["k_importance"] == 100 and {r["k"] for r in weights} == {"100"}


def test_samples_exports_images_as_tidy_pixels(zoo, no_data, zipped):
    open_app("2_Samples.py", view="prior", draws="2", n="3", model="tiny-iwae-r")
    figs, page, tables, settings = zipped[-1]
    rows = list(csv.DictReader(io.StringIO(tables["samples"]())))
    assert list(rows[0]) == ["model", "draw", "z index", "pixel row", "column", "value"]
    assert len(rows) == 2 * 3 * 784
    spread = list(csv.DictReader(io.StringIO(tables["spread"]())))
    assert list(spread[0]) == ["model", "z index", "pixel row", "column", "std across weight draws"]
    assert settings["weight_draws"] == 2 and settings["latent_draws"] == 3 and settings["view"] == "prior"
    assert "not aligned across models" in figs["samples"].layout.title.text


def test_bound_vs_k_reads_curves_stored_beside_a_model_only_when_they_match(zoo, mnist, tmp_path, monkeypatch):
    from iwae_core import checkpoint, curves, data, evaluate

    root = tmp_path / "zoo"
    for name in ("tiny-iwae", "tiny-iwae-r"):
        shutil.copytree(zoo / name, root / name)
    monkeypatch.setenv("IWAE_ZOO_DIRS", str(root))
    d = data.load_dataset("mnist", str(mnist), download=False)
    x = evaluate.binarized_test_images(d, 30)
    curves.write_bound_curves(root / "tiny-iwae-r", x, [1, 2, 5, 10, 25], k_maxes=(10, 25), seed=0,
                              source=d["source"])
    model, _ = checkpoint.load_model(root / "tiny-iwae-r")
    stored = curves.grouped_bounds(model, x, [1, 2, 5, 10], seed=0)  # what the page would compute itself
    at = open_app("5_Bound_vs_k.py", k="10", images="30", model="tiny-iwae,tiny-iwae-r")
    assert "Read from the curves stored beside tiny-iwae-r" in texts(at, "caption")
    means = curve_means(charts(at)[0])["tiny-iwae-r"][1]
    np.testing.assert_allclose(means, stored.mean(1).numpy(), rtol=1e-6)
    at.select_slider(key="bound:k").set_value(25)  # the other stored largest k
    assert "Read from the curves stored beside tiny-iwae-r" in texts(rerun(at), "caption")
    at.select_slider(key="bound:k").set_value(10)
    # other settings than stored (seed, image count) are computed, not read
    at.number_input(key="bound:seed").set_value(1)
    assert "Read from the curves" not in texts(rerun(at), "caption")
    at.number_input(key="bound:seed").set_value(0)
    at.number_input(key="bound:images").set_value(20)
    assert "Read from the curves" not in texts(rerun(at), "caption")
    # curves of other weights, or a broken file, are not used, and the page says why
    path = root / "tiny-iwae-r" / curves.BOUND_CURVES
    path.write_bytes(b"not a safetensors file")
    at = open_app("5_Bound_vs_k.py", k="10", images="30", model="tiny-iwae-r", seed="2")  # seed: not cached yet
    warning = texts(at, "warning")
    assert "precomputed curves are not used" in warning and "not a readable safetensors file" in warning
    assert "Read from the curves" not in texts(at, "caption") and charts(at)


def test_progress_bar_reaches_the_browser_at_most_every_interval_and_always_at_the_end(monkeypatch):
    from dashboard import widgets

    shown, clock = [], iter([0.0, 0.1, 0.2, 0.3, 0.4, 0.45, 0.9])
    monkeypatch.setattr(widgets.time, "monotonic", lambda: next(clock))
    bar = widgets.ProgressBar("start", seconds=0.25)
    monkeypatch.setattr(bar.bar, "progress", lambda value, text: shown.append(value))
    for fraction in (0.1, 0.2, 0.3, 0.4, 0.5, 1.0, 1.0):
        bar(fraction, "computing")
    assert shown == [0.1, 0.4, 1.0, 1.0]  # at 0.0 s and 0.3 s, then the end (however soon), then 0.9 s


def test_charts_are_drawn_as_exported_on_the_figures_template(zoo, mnist, zipped):
    """The screen shows what an export writes: no Streamlit theme restyling the charts in the browser, and the
    figure handed to the exports is the one drawn, on the dashboard's white template, whatever plotly's default
    template is (importing Streamlit makes its own the default)."""
    import plotly.io as pio
    import streamlit.elements.plotly_chart  # noqa: F401  (what every page imports: it sets plotly's default)
    assert pio.templates.default == "streamlit"
    at = open_app("5_Bound_vs_k.py", k="10", images="20", model="tiny-iwae,tiny-iwae-r")
    figs = zipped[-1][0]
    drawn = at.get("plotly_chart")
    assert len(drawn) == 5 and all(c.proto.theme == "" for c in drawn)  # "" is theme=None; the default is "streamlit"
    for chart, fig in zip(drawn, [figs[name] for name in ("bound_vs_k", "bound_vs_k_paired", "test_image",
                                                         "importance_weights", "posterior_draws")], strict=True):
        spec = json.loads(chart.proto.spec)
        assert spec["layout"]["template"]["layout"]["plot_bgcolor"] == "white"
        assert spec == json.loads(fig.to_json())
