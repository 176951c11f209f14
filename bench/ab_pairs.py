"""Two checkouts' training-step ratios, timed in alternating processes, pair by pair.

Usage: python bench/ab_pairs.py OLD NEW [--pairs 5] [--threads 2] [--repeats 30] [--compiled]

OLD and NEW are checkouts (e.g. `git worktree add /tmp/old HEAD~1` and this one). Each pair runs
bench/step_ratios.py once with --source OLD and once with --source NEW, in fresh processes, the order swapped
every pair (old-new, new-old, ...) so that a machine getting slower or faster through the session favours
neither. Prints, per ratio, each side's median and range over the pairs and in how many pairs NEW came out
lower. On a shared machine a change of a few per cent needs most pairs on one side before it counts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

STEP_RATIOS = Path(__file__).resolve().parent / "step_ratios.py"


def run(source: str, args: argparse.Namespace) -> dict:
    """step_ratios.py's JSON line for one checkout, in a fresh interpreter."""
    cmd = [sys.executable, str(STEP_RATIOS), "--source", source, "--threads", str(args.threads),
           "--repeats", str(args.repeats), *(["--compiled"] if args.compiled else [])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"step_ratios.py failed for {source} (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])["ratios"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--compiled", action="store_true", help="also the compiled steps (each compiles, 10-30 s)")
    args = ap.parse_args()
    for side in (args.old, args.new):
        if not (Path(side) / "iwae_core" / "__init__.py").is_file():
            raise SystemExit(f"{side}: not a checkout of this project (no iwae_core/__init__.py)")
    results = {"old": [], "new": []}
    for i in range(args.pairs):
        order = ("old", "new") if i % 2 == 0 else ("new", "old")
        for side in order:
            results[side].append(run(getattr(args, side), args))
            print(f"pair {i + 1}/{args.pairs}, {side}: {json.dumps(results[side][-1])}", file=sys.stderr, flush=True)
    print(f"{'ratio':58s} {'old: median (range)':26s} {'new: median (range)':26s} new lower")
    # every ratio either side gives: a checkout from before an option (bf16-mixed, the compiled loss) lacks
    # the ratios that need it, and its column shows a dash
    names = list(dict.fromkeys(name for side in ("old", "new") for name in results[side][0]))

    def summary(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})" if values else "-"

    for name in names:
        old, new = ([r[name] for r in results[side] if name in r] for side in ("old", "new"))
        lower = (f"{sum(n < o for o, n in zip(old, new, strict=True))} of {len(old)}"
                 if len(old) == len(new) == args.pairs else "")
        print(f"{name:58s} {summary(old):26s} {summary(new):26s} {lower}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
