"""The README's screenshot: the dashboard in a headless Chromium, one page at a link's settings.

  python scripts/screenshot.py --page Bound_vs_k --query "model=mnist-iwae,mnist-iwae-r,mnist-iwae-rrec" \
      --out docs/images/bound-vs-k.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from browser_support import Server, chromium_path, launch, wait_idle  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--page", default="", help="the page's URL path (e.g. Bound_vs_k); empty for the home page")
    p.add_argument("--query", default="", help="the link's settings, as in a shared URL (a=1&b=2)")
    p.add_argument("--out", required=True)
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=900)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise SystemExit("no Chromium found: install one (apt-get install chromium) or set BROWSER_PATH")
    with Server() as server, sync_playwright() as pw:
        browser = launch(pw, executable)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(f"{server.url}/{args.page}" + (f"?{args.query}" if args.query else ""))
        page.wait_for_selector("[data-testid=stApp]", timeout=120_000)
        wait_idle(page, timeout=600_000, settle=2.0)
        page.wait_for_timeout(1500)  # let Plotly finish drawing
        page.screenshot(path=args.out)
        browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
