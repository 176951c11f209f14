"""Dashboard latency in a real browser: cold start, first paint of every page, slider-to-update times, and k -> 5000.

Usage: IWAE_DATA_DIR=DIR python bench/dashboard_speed.py [--zoo DIR ...] [--repeats 5]
(Bound vs k needs the test images: without IWAE_DATA_DIR that page shows an error and the run stalls.)
Starts `streamlit run app.py` on a free port (the zoo: pretrained/ + finished runs, or the --zoo folders),
drives the system Chromium with Playwright, and prints every time and the ratios between them, all from one run.
A "new" slider value has never been computed; a "cached" one has (the view must not recompute it).
Ends with the targets of the dashboard issue, each measured in this run: k -> 5000 for three models on 100 images
<= 20 s, first paint of every page <= 5 s, a cached update <= 0.5 s, a new τ on Samples and on Latent traversals
<= 0.5 s (a model with random weights, IWAE-R, on Latent traversals).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

from browser_support import (
    CHANGED_JS,
    CHART,
    IDLE,
    REMEMBER_JS,
    ROOT,
    Server,
    chromium_path,
    keyed_chart,
    launch,
    move_slider,
    wait_idle,
)


def slider_update(page, label: str, key: str, chart: str) -> tuple[float, float]:
    """Press one arrow key on a slider: seconds until `chart` (a selector) shows new data, and until the script
    is done."""
    page.locator(chart).first.evaluate(REMEMBER_JS)
    t0 = time.perf_counter()
    move_slider(page, label, presses=1, key=key)
    page.wait_for_function(CHANGED_JS, arg=chart, timeout=300_000, polling=20)
    changed = time.perf_counter() - t0
    wait_idle(page, timeout=300_000, settle=0.05)
    return changed, time.perf_counter() - t0


TARGETS = {"k -> 5000": 20.0, "first paint": 5.0, "cached update": 0.5, "new τ": 0.5}  # seconds, the dashboard issue
PAGES = ("Samples", "Latent_traversals", "Weight_variance", "Bound_vs_k", "Reproduction", "Train_live")
CHARTLESS = ("Reproduction", "Train_live")  # may show no chart (no study results, no runs yet)


def open_page(page, url: str, chart: bool = True) -> float:
    """Seconds from navigation to the page's first chart painted (when it has one) and its script done."""
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_selector(CHART if chart else "h1", timeout=600_000)
    page.wait_for_selector(IDLE, timeout=600_000)
    return time.perf_counter() - t0


CURVE_AT_5000 = ("sel => { const el = document.querySelector(sel); return el && el.data && Math.max(...el.data"
                 ".filter(t => t.mode === 'lines+markers').flatMap(t => t.x || [])) >= 5000; }")


def bound_to_5000(page) -> tuple[float, str]:
    """On Bound vs k at the default k = 100: move k to 5000 and time until the curve reaches k = 5000 and the
    script is done. Curves stored beside the models show at once; otherwise the page shows its cost estimate
    and a Compute button, which is clicked (the time then counts from the click). Returns the seconds and how
    the curve came (the estimate's text, or 'stored curves')."""
    t0 = time.perf_counter()
    move_slider(page, "largest k", presses=3, key="ArrowRight")  # 500, 1000, 5000
    button = page.get_by_role("button", name=re.compile(r"Compute up to k = 5,000"))
    page.wait_for_function(f"sel => ({CURVE_AT_5000})(sel) || [...document.querySelectorAll('button')]"
                           ".some(b => b.innerText.includes('Compute up to k = 5,000'))", arg=CHART,
                           timeout=600_000, polling=100)
    how = "stored curves"
    if button.count():
        how = button.inner_text()
        t0 = time.perf_counter()
        button.click()
    page.wait_for_function(CURVE_AT_5000, arg=CHART, timeout=1_800_000, polling=100)
    wait_idle(page, timeout=1_800_000, settle=0.05)
    return time.perf_counter() - t0, how


def random_weight_model(zoo: list[str] | None) -> str | None:
    """The label of the zoo's first IWAE-R model (random encoder and decoder: a τ move changes every traversal
    image), or None when there is none; the default zoo's shipped models are looked at."""
    sys.path.insert(0, str(ROOT))
    from iwae_core.zoo import PRETRAINED_DIR, scan_models

    entries, _ = scan_models(*(zoo or [PRETRAINED_DIR]))
    return next((e.name for e in entries if e.variant == "iwae-r"), None)


def tau_moves(page, repeats: int, chart: str, new_key: str, back_key: str, name: str, results: dict) -> None:
    """`repeats` τ moves to values never shown (new_key), then as many back over them (cached), on chart `chart`."""
    moves = {"new value": [], "cached value": []}
    for kind, key in (("new value", new_key), ("cached value", back_key)):
        for _ in range(repeats):
            moves[kind].append(slider_update(page, "τ", key, chart))
        results[f"{name} τ, {kind}: chart updated"] = statistics.median(c for c, _ in moves[kind])
        results[f"{name} τ, {kind}: script done"] = statistics.median(d for _, d in moves[kind])


class Results(dict):
    """Measured times; each is also printed as soon as it is known, so a stalled run still shows its progress."""

    def __setitem__(self, name: str, seconds: float) -> None:
        super().__setitem__(name, seconds)
        print(f"  ... {name}: {seconds:.3f} s", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", nargs="*", help="folders of model folders (default: the app's zoo)")
    ap.add_argument("--repeats", type=int, default=5, help="slider moves per measurement (median reported)")
    args = ap.parse_args()
    executable = chromium_path()
    if executable is None:
        print("error: no Chromium on PATH (or BROWSER_PATH); this benchmark needs a real browser", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    env = {"IWAE_ZOO_DIRS": os.pathsep.join(args.zoo)} if args.zoo else {}
    results = Results()
    with sync_playwright() as pw:
        browser = launch(pw, executable)  # the browser is up before the clock starts
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        server = Server(env)
        t0 = time.perf_counter()
        server.start()
        try:
            results["server health check"] = server.wait_healthy()
            page.goto(server.url)
            page.wait_for_selector("h1", timeout=300_000)
            page.wait_for_selector("[data-testid=stDataFrame]", timeout=300_000)
            page.wait_for_selector(IDLE, timeout=300_000)
            results["cold start: launch to home painted"] = time.perf_counter() - t0

            results["Samples: first paint (models load, cold cache)"] = open_page(page, f"{server.url}/Samples")
            for name in PAGES:  # every page again, models loaded: what a user opening a link waits for
                results[f"first paint: {name}"] = open_page(page, f"{server.url}/{name}", name not in CHARTLESS)
            open_page(page, f"{server.url}/Samples")  # from τ = 1 down to values never shown, then back up
            tau_moves(page, args.repeats, keyed_chart("samples-reconstructions"), "ArrowLeft", "ArrowRight", "Samples",
                      results)
            random_model = random_weight_model(args.zoo)
            if random_model:  # from τ = 0 up, watching the traversal grid
                open_page(page, f"{server.url}/Latent_traversals?model={random_model}")
                tau_moves(page, args.repeats, keyed_chart("traversals-grid"), "ArrowRight", "ArrowLeft",
                          "Latent traversals", results)

            results["Bound vs k: first paint (k ≤ 100, cold cache)"] = open_page(page, f"{server.url}/Bound_vs_k")
            changed, done = slider_update(page, "largest k", "ArrowRight", keyed_chart("bound-curve"))
            results["Bound vs k, k 100→500 (new L_500): chart updated"] = changed
            results["Bound vs k, k 100→500 (new L_500): script done"] = done
            back, back_done = [], []
            for i in range(args.repeats):
                changed, done = slider_update(page, "largest k", "ArrowLeft" if i % 2 == 0 else "ArrowRight",
                                              keyed_chart("bound-curve"))
                back.append(changed)
                back_done.append(done)
            results["Bound vs k, k moved to a cached value: chart updated"] = statistics.median(back)
            results["Bound vs k, k moved to a cached value: script done"] = statistics.median(back_done)
            open_page(page, f"{server.url}/Bound_vs_k?images=100")
            results["Bound vs k, k -> 5000 (default models, 100 images, seed 0)"], stored = bound_to_5000(page)
            open_page(page, f"{server.url}/Bound_vs_k?images=100&seed=1")  # a seed no stored curve has
            results["Bound vs k, k -> 5000 (default models, 100 images, seed 1)"], estimate = bound_to_5000(page)
            errors = page.locator("[data-testid=stException]").count()
        finally:
            server.stop()
            browser.close()

    width = max(len(k) for k in results) + 2
    print(f"Dashboard benchmark ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"median of {args.repeats} moves where repeated)")
    for name, seconds in results.items():
        print(f"  {name:<{width}} {seconds:8.3f} s")
    r = results
    ratios = {
        "Samples τ: new / cached value": r["Samples τ, new value: chart updated"]
        / r["Samples τ, cached value: chart updated"],
        "Bound vs k: new L_500 / cached k": r["Bound vs k, k 100→500 (new L_500): chart updated"]
        / r["Bound vs k, k moved to a cached value: chart updated"],
        "cold start / Samples τ update (new value)": r["cold start: launch to home painted"]
        / r["Samples τ, new value: chart updated"],
        "Samples first paint / τ update (new value)": r["Samples: first paint (models load, cold cache)"]
        / r["Samples τ, new value: chart updated"],
        "Bound vs k first paint / k update (new L_500)": r["Bound vs k: first paint (k ≤ 100, cold cache)"]
        / r["Bound vs k, k 100→500 (new L_500): chart updated"],
    }
    if "Latent traversals τ, new value: chart updated" in r:
        ratios["Latent traversals τ: new / cached value"] = (r["Latent traversals τ, new value: chart updated"]
                                                             / r["Latent traversals τ, cached value: chart updated"])
        ratios["Latent traversals τ / Samples τ (new values)"] = (r["Latent traversals τ, new value: chart updated"]
                                                                  / r["Samples τ, new value: chart updated"])
    else:
        print("warning: no IWAE-R model in the zoo, so no τ move on Latent traversals was measured", file=sys.stderr)
    print("Ratios")
    for name, value in ratios.items():
        print(f"  {name:<{width}} {value:8.2f}x")
    print(f"Targets (k -> 5000: seed 0 from {stored!r}; seed 1 from {estimate!r})")
    checks = [(f"k -> 5000, three models, 100 images, seed {seed}",
               r[f"Bound vs k, k -> 5000 (default models, 100 images, seed {seed})"], TARGETS["k -> 5000"])
              for seed in (0, 1)]
    checks += [(f"first paint of {name}", r[f"first paint: {name}"], TARGETS["first paint"]) for name in PAGES]
    traversals = ("Latent traversals",) if "Latent traversals τ, new value: chart updated" in r else ()
    checks += [(f"cached update: {name}", r[f"{name}: chart updated"], TARGETS["cached update"])
               for name in ("Samples τ, cached value", "Bound vs k, k moved to a cached value",
                            *(f"{t} τ, cached value" for t in traversals))]
    checks += [(f"new τ: {name}", r[f"{name} τ, new value: chart updated"], TARGETS["new τ"])
               for name in ("Samples", *traversals)]
    for name, seconds, target in checks:
        print(f"  {name:<{width}} {seconds:8.3f} s  target <= {target:g} s  {'met' if seconds <= target else 'MISSED'}")
    if errors:
        print(f"warning: {errors} exception(s) shown on the last page", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
