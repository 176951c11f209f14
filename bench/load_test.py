"""Dashboard under load: N browser sessions move a slider at once, for a bounded time.

Usage: python bench/load_test.py [--sessions 8] [--seconds 60] [--page Samples] [--slider τ] [--zoo DIR ...]
Starts `streamlit run app.py` on a free localhost port (the zoo: pretrained/ + finished runs, or the --zoo
folders), opens N sessions (one browser context each, the system Chromium driven by Playwright) on the page,
and in each one, once the page is painted, presses the slider's arrow keys at random, one move at a time,
for the given seconds (one session alone does the same first, after the cold start). A move
counts from the key press until the page's first chart shows other data; moves on to new values (computed)
and back to old ones (cached) mix as they would for several people exploring. Prints the latency of the
moves (p50, p95, max) and the server's resident memory (from /proc) before the sessions, at the end of the
load, and after they closed and the server idled, plus its CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path

from browser_support import CHANGED_JS, CHART, CHROMIUM_ARGS, IDLE, REMEMBER_JS, Server, chromium_path

MOVE_TIMEOUT = 300.0  # seconds a single move may take before it counts as timed out


def rss_mb(pid: int) -> tuple[float, float]:
    """The process's resident memory now and at its peak (VmRSS, VmHWM), in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat.rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


async def session(browser, url: str, slider_label: str, seconds: float, seed: int, latencies: list[float],
                  failures: list[str]) -> int:
    """One user: open the page, then move the slider one step at a time for `seconds`; returns the moves."""
    rng = random.Random(seed)
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    moves = 0
    try:
        await page.goto(url)
        await page.wait_for_selector(CHART, timeout=MOVE_TIMEOUT * 1000)
        await page.wait_for_selector(IDLE, timeout=MOVE_TIMEOUT * 1000)
        slider = page.locator("[data-testid=stSlider]").filter(has_text=slider_label).first.get_by_role("slider")
        state = "e => [Number(e.min), Number(e.max), Number(e.value)]"  # the slider is an <input type=range>
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            low, high, value = await slider.evaluate(state)
            key = "ArrowRight" if value <= low else "ArrowLeft" if value >= high else rng.choice(
                ["ArrowLeft", "ArrowRight"])
            await page.locator(CHART).first.evaluate(REMEMBER_JS)  # each session's page remembers its own
            await slider.focus()
            t0 = time.perf_counter()
            await slider.press(key)
            try:
                await page.wait_for_function(CHANGED_JS, arg=CHART, timeout=MOVE_TIMEOUT * 1000, polling=20)
            except Exception as err:  # a move that never shows: counted, and the session goes on
                failures.append(f"session {seed}: {type(err).__name__}")
                continue
            latencies.append(time.perf_counter() - t0)
            moves += 1
            await page.wait_for_selector(IDLE, timeout=MOVE_TIMEOUT * 1000)
    except Exception as err:
        failures.append(f"session {seed}: {type(err).__name__}: {str(err).splitlines()[0]}")
    finally:
        await context.close()
    return moves


async def load(args, server: Server) -> dict:
    from playwright.async_api import async_playwright

    url = f"{server.url}/{args.page}"
    latencies: list[float] = []
    failures: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
        # one session alone first: the cold start (models load) is not part of the load, and gives the
        # latency of a move with nobody else on the server
        alone: list[float] = []
        await session(browser, url, args.slider, args.alone, -1, alone, failures)
        before = rss_mb(server.proc.pid)
        cpu0 = cpu_seconds(server.proc.pid)
        t0 = time.monotonic()
        moves = await asyncio.gather(*(session(browser, url, args.slider, args.seconds, i, latencies, failures)
                                       for i in range(args.sessions)))
        wall = time.monotonic() - t0
        during = rss_mb(server.proc.pid)
        cpu = cpu_seconds(server.proc.pid) - cpu0
        await browser.close()
    await asyncio.sleep(args.idle)
    after = rss_mb(server.proc.pid)
    return {"alone": alone, "latencies": latencies, "failures": failures, "moves": moves, "wall": wall,
            "before": before, "during": during, "after": after, "cpu": cpu}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=8, help="concurrent browser sessions (default 8)")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the sessions move sliders (default 60)")
    ap.add_argument("--page", default="Samples", help="page URL path (default Samples)")
    ap.add_argument("--slider", default="τ", help="text of the slider's label to move (default τ)")
    ap.add_argument("--alone", type=float, default=10.0, help="seconds of one session alone first (default 10)")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds the server idles before the last memory "
                                                             "reading (default 10)")
    ap.add_argument("--zoo", nargs="*", help="folders of model folders (default: the app's zoo)")
    args = ap.parse_args()
    if args.sessions < 1 or args.seconds <= 0:
        ap.error("--sessions must be at least 1 and --seconds positive")
    args.chromium = chromium_path()
    if args.chromium is None:
        print("error: no Chromium on PATH (or BROWSER_PATH); the load test needs a real browser", file=sys.stderr)
        return 2
    env = {"IWAE_ZOO_DIRS": os.pathsep.join(args.zoo)} if args.zoo else {}
    server = Server(env)
    server.start()
    try:
        server.wait_healthy()
        started = rss_mb(server.proc.pid)
        r = asyncio.run(load(args, server))
    finally:
        server.stop()
    lat = r["latencies"]
    print(f"Dashboard load test: {args.sessions} sessions moving '{args.slider}' on {args.page} for "
          f"{args.seconds:g} s ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    if r["alone"]:
        print(f"  one session alone:    {len(r['alone'])} moves, median {statistics.median(r['alone']):.2f} s")
    if lat:
        print(f"  under load:           {len(lat)} moves in {r['wall']:.0f} s (per session {r['moves']}); "
              f"p50 {percentile(lat, 50):.2f} s, p95 {percentile(lat, 95):.2f} s, max {max(lat):.2f} s")
    else:
        print("  under load:           no move completed")
    print(f"  server CPU under load: {r['cpu']:.0f} s ({r['cpu'] / r['wall']:.2f} cores)")
    print(f"  server RSS: {started[0]:.0f} MB after start, {r['before'][0]:.0f} MB before the load (one session "
          f"served), {r['during'][0]:.0f} MB at its end, {r['after'][0]:.0f} MB after {args.idle:g} s idle; "
          f"peak {r['after'][1]:.0f} MB")
    for failure in r["failures"]:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if r["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
