"""A Streamlit server on a free localhost port and a headless Chromium driven by Playwright, for tests and bench."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"


def chromium_path() -> str | None:
    """The Chromium to drive: $BROWSER_PATH, else chromium (or chromium-browser) on PATH."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if Path(env).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`streamlit run app.py` on a free port, started on enter and terminated on exit."""

    def __init__(self, env: dict | None = None, timeout: float = 90.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.log = ""

    def start(self) -> Server:
        cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.port", str(self.port), "--server.address", "127.0.0.1",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        return self

    def wait_healthy(self) -> float:
        """Seconds until /_stcore/health answers ok; raises with the server's output if it never does."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"streamlit did not answer its health check within {self.timeout:.0f} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        self.start()
        self.wait_healthy()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def launch(playwright, executable: str):
    """A headless Chromium from the system (never a Playwright download)."""
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)


def wait_idle(page, timeout: float = 120_000, settle: float = 0.25) -> None:
    """Wait until Streamlit has finished the script run an interaction started (it may take a moment to begin)."""
    try:
        page.wait_for_selector("[data-testid=stApp][data-test-script-state=running]", timeout=settle * 1000)
    except Exception:  # the run may already be over, or not needed
        pass
    page.wait_for_selector(IDLE, timeout=timeout)


def move_slider(page, label: str, presses: int = 1, key: str = "ArrowRight") -> None:
    """Focus the slider whose label contains `label` and press an arrow key (fill() does not reach Streamlit)."""
    slider = page.locator("[data-testid=stSlider]").filter(has_text=label).first.get_by_role("slider").first
    slider.focus()
    for _ in range(presses):
        slider.press(key)


CHART = "[data-testid=stPlotlyChart] .js-plotly-plot"  # the first chart of a page


# The chart a measurement watches, by the key its page gives st.plotly_chart (Streamlit marks the element with
# the class st-key-KEY): by position, another chart could take the first place while the page reruns.
def keyed_chart(key: str) -> str:
    return f".st-key-{key} .js-plotly-plot"


# Polls whether the chart (a selector) shows other data than remembered by REMEMBER_JS. The data is compared
# only when the chart's data object was replaced (Plotly swaps it on every update): serialising a megabyte of
# image tiles on every poll would keep the browser's main thread busy and slow down the very update being timed.
REMEMBER_JS = ("el => { window.__benchData = el.data; "
               "window.__benchJSON = JSON.stringify(el.data.map(t => [t.x, t.y, t.z])); }")
CHANGED_JS = ("sel => { const el = document.querySelector(sel); "
              "if (!el || !el.data || el.data === window.__benchData) return false; window.__benchData = el.data; "
              "return JSON.stringify(el.data.map(t => [t.x, t.y, t.z])) !== window.__benchJSON; }")
