"""The table over a sweep's trials (`iwae table RUNS/NAME`): the test log-likelihood of each configuration,
mean ± sd across seeds, and the paired differences between configurations.
"""

from __future__ import annotations

import os
from pathlib import Path

from .grid import trial_name
from .sweep import MANIFEST, read_manifest


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    import statistics

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _pm(sd: float | None) -> str:
    return f"± {sd:.3f}" if sd is not None else ""


def sweep_table(folder: str | os.PathLike, tau: str = "1", seed_key: str = "seed") -> str:
    """The trials grouped by configuration (every grid key but the seed): mean ± sd across seeds of the
    test log-likelihood, and the paired differences between configurations: per seed, the mean over the
    test images of a's minus b's per-image log-likelihood; then their mean over seeds ± the seed-to-seed sd."""
    import math

    from ..checkpoint import CheckpointError, read_tensors
    from ..compare import stale_evaluation
    from ..evaluate import per_image_name

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder} is not a sweep folder (no {MANIFEST})")
    from ..zoo import find_models

    entries = {e.path.name: e for e in find_models(folder)}  # a sweep's entries are named SWEEP/TRIAL
    groups: dict[str, dict] = {}
    for t in manifest["trials"]:
        config = {k: v for k, v in t["params"].items() if k != seed_key}
        label = trial_name(config) if config else "all"
        seed = t["params"].get(seed_key)
        g = groups.setdefault(label, {"trials": {}, "missing": []})
        e = entries.get(t["folder"])
        test = (e.metrics.get("test") or {}).get("by_tau", {}).get(tau) if e else None
        if e is None or test is None or stale_evaluation(e):
            g["missing"].append(f"{t['folder']} ({t['status']})")
            continue
        try:
            per_image = read_tensors(e.path / "test_ll.safetensors").get(per_image_name(tau))
        except CheckpointError:
            per_image = None
        g["trials"][seed] = {"mean": test["mean"], "stderr": test.get("stderr"), "per_image": per_image,
                             "n": test["n_images"]}
    lines = [f"sweep {folder}: test log-likelihood (tau = {tau}), mean ± sd across {seed_key}s"]
    width = max([len(label) for label in groups] + [13])
    lines.append(f"{'configuration':{width}}  {'mean':>9} {'± sd':>7}  {seed_key}s  images  per seed")
    for label, g in groups.items():
        trials = g["trials"]
        if trials:
            mean, sd = _mean_sd([r["mean"] for r in trials.values()])
            n = sorted({r["n"] for r in trials.values()})
            per_seed = "  ".join(f"{s}: {r['mean']:.3f}" for s, r in trials.items())
            lines.append(f"{label:{width}}  {mean:9.3f} {_pm(sd):>7}  "
                         f"{len(trials):>5}  {'/'.join(map(str, n)):>6}  {per_seed}")
        else:
            lines.append(f"{label:{width}}  {'-':>9}")
        if g["missing"]:
            lines.append(f"{'':{width}}  not evaluated: {', '.join(g['missing'])}")
    labels = [label for label in groups if groups[label]["trials"]]
    rows = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            diffs = []
            for seed, ra in groups[a]["trials"].items():
                rb = groups[b]["trials"].get(seed)
                if rb is None or ra["per_image"] is None or rb["per_image"] is None:
                    continue
                if ra["per_image"].shape != rb["per_image"].shape:
                    continue
                d = (ra["per_image"].double() - rb["per_image"].double())
                diffs.append((d.mean().item(), (d.std() / math.sqrt(len(d))).item() if len(d) > 1 else None))
            if diffs:
                mean, sd = _mean_sd([d for d, _ in diffs])
                se = [s for _, s in diffs if s is not None]
                rows.append((a, b, mean, sd, len(diffs), sum(se) / len(se) if se else None))
    if rows:
        lines.append("")
        lines.append(f"paired differences a - b of per-image test LL, same {seed_key} and images; mean over "
                     f"{seed_key}s ± {seed_key}-to-{seed_key} sd (and the mean within-{seed_key} paired SE)")
        for a, b, mean, sd, n, se in rows:
            lines.append(f"{a:>{width}} - {b:<{width}} {mean:+8.3f} {_pm(sd):>8}"
                         f"  ({n} {seed_key}{'s' if n != 1 else ''}"
                         + (f", paired SE {se:.3f})" if se is not None else ")"))
    return "\n".join(lines)
