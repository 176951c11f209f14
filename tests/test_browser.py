"""The dashboard in a real Chromium: `streamlit run app.py` on a free port, every page, a slider, an export,
and a live training run. Needs Chromium (PATH or BROWSER_PATH) and real MNIST (IWAE_DATA_DIR)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))  # the browser helpers live with the bench
from browser_support import IDLE, Server, chromium_path, launch, move_slider, wait_idle  # noqa: E402
from iwae_core import runs
from support import require_data

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # reported by the chromium fixture: a failure in CI, a skip elsewhere
    sync_playwright = None

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAGES = {"Train live": "Train_live", "Samples": "Samples", "Latent traversals": "Latent_traversals",
         "Weight variance": "Weight_variance", "Bound vs k": "Bound_vs_k"}


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_path()
    if path is None or sync_playwright is None:
        msg = ("Chromium not found: install it (apt-get install chromium) or set BROWSER_PATH" if path is None
               else "the playwright package is missing: pip install -e '.[test]'")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="module")
def server(tiny_zoo, tmp_path_factory):
    """The app over conftest's tiny zoo (real MNIST test images for Bound vs k), runs in a fresh folder."""
    require_data("MNIST", "raw")
    runs_root = tmp_path_factory.mktemp("runs")
    env = {"IWAE_ZOO_DIRS": str(tiny_zoo), "IWAE_RUNS_DIR": str(runs_root), "IWAE_MAX_RUNS": "1"}
    with Server(env) as srv:
        srv.runs_root = runs_root
        yield srv
    for info in runs.list_runs(runs_root):
        if info.active or info.status == "queued":
            runs.stop_run(info.path, force=True)


@pytest.fixture
def page(chromium, server):
    with sync_playwright() as pw:
        browser = launch(pw, chromium)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        pg = context.new_page()
        pg.set_default_timeout(120_000)
        pg.goto(server.url)
        wait_idle(pg)
        yield pg
        context.close()
        browser.close()


def assert_no_exception(page, where: str) -> None:
    errors = page.locator("[data-testid=stException]")
    assert errors.count() == 0, f"{where}: {errors.first.inner_text()[:2000]}"


def open_page(page, server, label: str) -> None:
    """Follow the sidebar link to a page, as a user would, and wait for its script to finish."""
    page.locator("[data-testid=stSidebarNavLink]").filter(has_text=label).first.click()
    page.wait_for_url(re.compile(f"/{PAGES[label]}"))
    wait_idle(page)
    page.wait_for_selector("h1")


def chart_data(page, index: int = 0) -> list:
    """The z arrays of the index-th plotly chart on the page, read from the browser's own figure."""
    return page.locator("[data-testid=stPlotlyChart] .js-plotly-plot").nth(index).evaluate(
        "el => el.data.map(t => t.z || t.y)")


def progress_step(page, more_than: int, timeout: float = 120.0) -> int:
    """The step shown in the Train live progress bar, polled (no reload) until it exceeds more_than."""
    deadline = time.monotonic() + timeout
    steps = 0
    while time.monotonic() < deadline:
        m = re.search(r"step ([\d,]+) of 4,000", page.locator("[data-testid=stProgress]").first.inner_text())
        steps = int(m.group(1).replace(",", "")) if m else 0
        if steps > more_than:
            break
        time.sleep(0.5)
    return steps


def test_every_page_renders_without_exception(page, server):
    assert_no_exception(page, "home")
    link = page.locator("[data-testid=stPageLink] a").first
    link.wait_for()
    assert "model=tiny-iwae" in link.get_attribute("href")  # the home page lists the test zoo
    for label in PAGES:
        open_page(page, server, label)
        assert_no_exception(page, label)
        assert page.locator("h1").first.inner_text().strip().startswith(label.split()[0])
        if label != "Train live":
            page.wait_for_selector("[data-testid=stPlotlyChart] .js-plotly-plot")


def test_tau_slider_changes_the_samples_and_png_export_downloads(page, server):
    open_page(page, server, "Samples")
    page.wait_for_selector("[data-testid=stPlotlyChart] .js-plotly-plot")
    page.get_by_label("View", exact=True).click()  # the prior grid: reconstructions are the default with data
    page.get_by_role("option", name="Prior samples (not aligned across models)").click()
    wait_idle(page)
    page.wait_for_url(re.compile(r"view=prior"))
    wait_idle(page)
    before = chart_data(page)
    assert "tau=1" in page.url
    move_slider(page, "τ", presses=4, key="ArrowLeft")
    wait_idle(page)
    page.wait_for_url(re.compile(r"tau=0\.8"))
    wait_idle(page)
    after = chart_data(page)
    assert_no_exception(page, "Samples after the τ slider")
    assert len(after) == len(before)
    assert json.dumps(after[0]) == json.dumps(before[0])  # IWAE: deterministic decoder, τ changes nothing
    assert json.dumps(after[1]) != json.dumps(before[1])  # IWAE-R: the weight draws moved with τ
    assert json.dumps(after[2]) == json.dumps(before[2])  # IWAE-Rrec: random encoder only, same samples

    page.get_by_role("button", name=re.compile("Export samples")).first.click()
    png = page.locator("[data-testid=stDownloadButton]").filter(has_text="PNG").first
    png.wait_for()
    with page.expect_download(timeout=120_000) as info:
        png.click()
    path = info.value.path()
    content = open(path, "rb").read()
    assert content[:8] == b"\x89PNG\r\n\x1a\n" and len(content) > 1000
    assert info.value.suggested_filename == "samples.png"


def test_bound_vs_k_slider_extends_the_curve(page, server):
    open_page(page, server, "Bound vs k")
    page.wait_for_selector("[data-testid=stPlotlyChart] .js-plotly-plot")
    xs = page.locator("[data-testid=stPlotlyChart] .js-plotly-plot").first.evaluate(
        "el => Math.max(...el.data.filter(t => t.mode === 'lines+markers')"
        ".flatMap(t => (t.x || []).filter(v => typeof v === 'number')))")
    # the test image's charts do not depend on the curve's largest k, so the move must not redraw them (a redraw
    # replaces the data object Plotly keeps on the chart's element)
    unchanged = [".st-key-bound-image .js-plotly-plot", ".st-key-bound-weights .js-plotly-plot"]
    for i, selector in enumerate(unchanged):
        page.locator(selector).evaluate(f"el => {{ window.__kept{i} = el.data; }}")
    move_slider(page, "largest k", presses=1, key="ArrowRight")
    wait_idle(page)
    page.wait_for_url(re.compile(r"k=500"))
    wait_idle(page)
    xs_after = page.locator("[data-testid=stPlotlyChart] .js-plotly-plot").first.evaluate(
        "el => Math.max(...el.data.filter(t => t.mode === 'lines+markers')"
        ".flatMap(t => (t.x || []).filter(v => typeof v === 'number')))")
    assert_no_exception(page, "Bound vs k after the k slider")
    assert xs == 100 and xs_after == 500
    kept = [page.locator(selector).evaluate(f"el => el.data === window.__kept{i}")
            for i, selector in enumerate(unchanged)]
    assert kept == [True, True], "a chart the k move does not change was redrawn"


def test_train_live_starts_a_run_and_shows_progress(page, server):
    open_page(page, server, "Train live")
    assert_no_exception(page, "Train live")
    for label, value in (("Importance samples k", "2"), ("Hidden units (one layer)", "16"), ("Latent size", "2"),
                         ("Epochs", "200"), ("Batch size", "20")):
        box = page.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Tab")
    page.get_by_text("More", exact=True).click()
    images = page.get_by_label("Training images (0 = all)", exact=True)
    images.fill("400")
    images.press("Tab")
    wait_idle(page)  # each field's Tab reruns the page; a click while a rerun is still going can be lost
    page.get_by_role("button", name="Start training").click()
    wait_idle(page)
    assert_no_exception(page, "Train live after Start training")
    page.wait_for_selector("[data-testid=stProgress]")
    steps = progress_step(page, more_than=0)
    assert steps > 0, page.locator("[data-testid=stMain]").inner_text()[:2000]
    assert progress_step(page, more_than=steps) > steps  # the view refreshes by itself while the run trains
    page.wait_for_selector("[data-testid=stImage] img")
    assert_no_exception(page, "Train live while training")
    (started,) = runs.list_runs(server.runs_root)
    assert started.run.model.hidden == (16,) and started.run.train.k == 2 and started.options["train_images"] == 400

    page.reload()  # the run is found again after a reload
    page.wait_for_selector(IDLE)
    page.wait_for_selector(f"text={started.name}")
    page.get_by_role("button", name="Stop", exact=True).click()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "status stopped" not in page.locator("[data-testid=stMain]").inner_text():
        time.sleep(0.5)
    assert "status stopped" in page.locator("[data-testid=stMain]").inner_text()
    assert runs.read_run(started.path).status == "stopped"


FIGURES_JS = """els => els.map(el => JSON.stringify({
    title: el.layout.title && el.layout.title.text,
    annotations: (el.layout.annotations || []).map(a => a.text),
    data: el.data.map(t => ({type: t.type, name: t.name, x: t.x, y: t.y, z: t.z})),
}, (key, value) => ArrayBuffer.isView(value) ? Array.from(value) : value))"""


def view_state(page) -> dict:
    """What the page shows, read from the browser: every sidebar widget's label and value (sliders, number
    inputs, selectboxes, radios, the multiselect's chosen models) and every plotly figure's title, annotations
    and trace data."""
    sidebar = page.locator("[data-testid=stSidebarUserContent]")
    widgets = {}

    def label(el) -> str:
        return el.locator("[data-testid=stWidgetLabel]").first.inner_text().strip()

    for el in sidebar.locator("[data-testid=stSlider]").all():
        widgets[label(el)] = [s.input_value() for s in el.get_by_role("slider").all()]
    for el in sidebar.locator("[data-testid=stNumberInput]").all():
        widgets[label(el)] = el.locator("input").input_value()
    for el in sidebar.locator("[data-testid=stSelectbox]").all():
        widgets[label(el)] = el.get_by_role("combobox").input_value()
    for el in sidebar.locator("[data-testid=stRadio]").all():
        widgets[label(el)] = el.locator("[data-testid=stRadioOption]").filter(
            has=page.locator("input:checked")).inner_text().strip()
    for el in sidebar.locator("[data-testid=stMultiSelect]").all():
        widgets[label(el)] = [tag.get_attribute("aria-label")
                              for tag in el.locator("[data-testid=stMultiSelectTagsContainer] [data-tag]").all()]
    figures = page.locator("[data-testid=stPlotlyChart] .js-plotly-plot").evaluate_all(FIGURES_JS)
    return {"widgets": widgets, "figures": figures}


def choose(page, label: str, option: str) -> None:
    """Pick an option of a selectbox, as a user would."""
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def reopen_in_a_fresh_context(page, url: str) -> dict:
    """The view a second user gets from `url`: a new browser context (no cookies, no session state)."""
    context = page.context.browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        fresh = context.new_page()
        fresh.set_default_timeout(120_000)
        fresh.goto(url)
        fresh.wait_for_selector("[data-testid=stPlotlyChart] .js-plotly-plot")
        wait_idle(fresh)
        assert_no_exception(fresh, f"the shared link {url}")
        return view_state(fresh)
    finally:
        context.close()


def assert_same_view(shared: dict, changed: dict, default: dict, changes: list[str]) -> None:
    """The shared link shows the changed view: every widget and figure, and the changed controls really moved
    away from the page's defaults (else the comparison could not tell a link that drops them)."""
    for label in changes:
        assert changed["widgets"][label] != default["widgets"][label], f"{label} did not change"
    assert changed["figures"] != default["figures"]
    assert shared["widgets"] == changed["widgets"]
    assert len(shared["figures"]) == len(changed["figures"])
    for i, (a, b) in enumerate(zip(shared["figures"], changed["figures"], strict=True)):
        assert a == b, f"figure {i} differs: shared link {a[:300]} against the changed view {b[:300]}"


def test_a_shared_link_reproduces_the_samples_view_in_a_fresh_browser(page, server):
    """Samples with the model choice, view, τ, weight draws and seed all changed: the page's URL, opened in a
    fresh browser context, shows the same widgets and the same figures (titles, images, spreads)."""
    open_page(page, server, "Samples")
    page.wait_for_selector("[data-testid=stPlotlyChart] .js-plotly-plot")
    default = view_state(page)
    choose(page, "View", "Prior samples (not aligned across models)")
    page.get_by_role("button", name="Remove tiny-iwae-rrec (bayes)").click()
    wait_idle(page)
    move_slider(page, "τ", presses=5, key="ArrowLeft")  # 1 -> 0.75
    wait_idle(page)
    move_slider(page, "Weight draws", presses=2, key="ArrowLeft")  # 4 -> 2
    wait_idle(page)
    set_number(page, "Seed", 17)
    page.wait_for_url(re.compile(r"seed=17"))
    wait_idle(page)
    assert_no_exception(page, "Samples after the changes")
    changed = view_state(page)
    assert changed["widgets"]["Models"] == ["tiny-iwae", "tiny-iwae-r (bayes)"]
    assert "τ = 0.75, seed 17, 2 weight draws" in changed["figures"][0]
    assert_same_view(reopen_in_a_fresh_context(page, page.url), changed, default,
                     ["Models", "View", "τ (weight-noise scale)", "Weight draws θ", "Seed"])


def test_a_shared_link_reproduces_the_latent_traversal_in_a_fresh_browser(page, server):
    """Latent traversals with another model, the start, τ, the seed and the steps changed: the URL opened in a
    fresh browser context shows the same widgets, start image and traversal grid."""
    open_page(page, server, "Latent traversals")
    page.wait_for_selector("[data-testid=stPlotlyChart] .js-plotly-plot")
    default = view_state(page)
    choose(page, "Model", "tiny-iwae-r (bayes)")
    page.locator("[data-testid=stSidebarUserContent] [data-testid=stRadio]").get_by_text("Prior draw").click()
    wait_idle(page)
    move_slider(page, "τ", presses=10, key="ArrowRight")  # 0 -> 0.5
    wait_idle(page)
    move_slider(page, "Steps", presses=2, key="ArrowLeft")  # 9 -> 5
    wait_idle(page)
    set_number(page, "Seed", 5)
    page.wait_for_url(re.compile(r"seed=5"))
    wait_idle(page)
    assert_no_exception(page, "Latent traversals after the changes")
    changed = view_state(page)
    assert "prior draw (seed 5)" in changed["figures"][0] and "τ = 0.5, seed 5" in changed["figures"][1]
    assert_same_view(reopen_in_a_fresh_context(page, page.url), changed, default,
                     ["Model", "Start from", "τ (weight-noise scale)", "Steps", "Seed"])


def test_a_link_to_a_page_is_the_first_thing_a_fresh_dashboard_serves(chromium, tiny_zoo, tmp_path):
    """A shared link opened on a dashboard just started: the sidebar lists Home and the six pages as on the home
    page, not Streamlit's reading of a pages/ folder beside app.py (which named the home page 'app')."""
    env = {"IWAE_ZOO_DIRS": str(tiny_zoo), "IWAE_RUNS_DIR": str(tmp_path / "runs")}
    with Server(env) as srv, sync_playwright() as pw:
        browser = launch(pw, chromium)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(120_000)
        pg.goto(f"{srv.url}/Weight_variance?model=tiny-iwae-r")
        wait_idle(pg)
        pg.wait_for_selector("h1")
        links = pg.locator("[data-testid=stSidebarNavLink]").all_inner_texts()
        browser.close()
    labels = [link.split("\n")[-1] for link in links]  # the home link's text is its icon's name, then "Home"
    assert labels == [
        "Home", "Train live", "Samples", "Latent traversals", "Weight variance", "Bound vs k", "Reproduction"]
