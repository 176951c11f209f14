"""The home page's tables: the model zoo, the paper's comparison table, and where the data is."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from iwae_core import data, evaluate, folders
from iwae_core.zoo import ZooEntry

from .zoo import variant_label

PAGES = {  # page file -> what it shows, for the home page's links
    "views/2_Samples.py": "Samples",
    "views/3_Latent_traversals.py": "Latent traversals",
    "views/4_Weight_variance.py": "Weight variance",
    "views/5_Bound_vs_k.py": "Bound vs k",
}


def page_title(path: Path) -> str:
    """'views/3_Latent_traversals.py' -> 'Latent traversals' (the views/ folder naming convention)."""
    stem = Path(path).stem
    return stem.split("_", 1)[1].replace("_", " ") if stem.split("_", 1)[0].isdigit() and "_" in stem else stem


def data_status() -> pd.DataFrame:
    """Whether MNIST and Omniglot are present under data_root(), without loading them."""
    root = data.data_root()
    raw = root / "MNIST" / "raw"
    mnist_files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                   "t10k-labels-idx1-ubyte")
    mnist = all((raw / f).exists() for f in mnist_files)
    mats = [root / "chardata.mat", root / "omniglot" / "chardata.mat", root / "OMNIGLOT" / "chardata.mat"]
    folders = [root / "omniglot-py" / f"images_{s}" for s in ("background", "evaluation")]
    mat = next((m for m in mats if m.exists()), None)
    omniglot = mat is not None or all(f.is_dir() for f in folders)
    return pd.DataFrame([
        {"dataset": "mnist", "present": mnist, "folder": str(raw), "expected": data.MNIST_LAYOUT},
        {"dataset": "omniglot", "present": omniglot, "folder": str(mat or root / "omniglot-py"),
         "expected": data.OMNIGLOT_LAYOUT},
    ])


def _fmt(r: dict | None) -> str:
    if not r or r.get("mean") is None:
        return "not evaluated yet"
    se = r.get("stderr")
    return f"{r['mean']:.3f} ± {se:.3f}" if se is not None else f"{r['mean']:.3f}"


INT_COLUMNS = ("train k", "epochs", "steps", "test images", "S", "active units")


def zoo_table(entries: dict[str, ZooEntry],
              broken: dict[str, folders.Broken] | None = None) -> pd.DataFrame:
    """One row per model: what it is, how long it trained, its test log-likelihood and the paper's; a broken
    folder is one row with its folder and the problem. Missing numbers are empty, never '' in a number column
    (Arrow cannot store a column that mixes text and numbers)."""
    rows = []
    for label, e in entries.items():
        test = e.metrics.get("test") or {}
        by_tau = test.get("by_tau") or {}
        training = e.metrics.get("training") or {}
        last = e.last_history
        paper = evaluate.PAPER_TABLE.get(e.dataset, {}).get(e.variant)
        valid = training.get("final_valid_bound")
        valid = valid if valid is not None else last.get("valid_bound")
        # tau scales sigma alone: without random weights tau = 0 is tau = 1, and an evaluation does not repeat it
        random = e.run.model.random_encoder or e.run.model.random_decoder
        tau0 = _fmt(by_tau.get("0")) if random or "0" in by_tau else "same as τ=1 (no random weights)"
        rows.append({
            "model": label, "dataset": e.dataset, "variant": variant_label(e.variant),
            "objective": e.run.train.objective if e.run.model.variant != "iwae" else "—",
            "layers": f"784-{'-'.join(map(str, e.run.model.hidden))}-{e.run.model.z_dim}", "train k": e.run.train.k,
            "epochs": training.get("epochs", last.get("epoch")),
            "steps": training.get("steps", last.get("step")),
            "valid L_k": round(valid, 2) if valid is not None else None,
            "test LL (τ=1)": _fmt(by_tau.get("1")), "test LL (τ=0)": tau0,
            "paper test LL": f"{paper[0]:.3f} ± {paper[1]:.3f}" if paper else "—",
            "test images": test.get("n_images"), "S": test.get("S"),
            "active units": test.get("active_units"), "folder": str(e.path), "problem": e.problem,
        })
    for label, b in (broken or {}).items():
        rows.append({"model": label, "dataset": "—", "variant": "—", "objective": "—", "layers": "—",
                     "test LL (τ=1)": "cannot load",
                     "test LL (τ=0)": "cannot load", "paper test LL": "—", "folder": str(b.path), "problem": b.error})
    table = pd.DataFrame(rows)
    for column in INT_COLUMNS:
        if column in table:
            table[column] = table[column].astype("Int64")
    return table


def paper_table(entries: dict[str, ZooEntry]) -> pd.DataFrame:
    """The paper's table with, beside each number, the best evaluated model of that dataset and variant."""
    rows = []
    for dataset, variants in evaluate.PAPER_TABLE.items():
        for variant, (mean, se) in variants.items():
            ours = [(label, e) for label, e in entries.items() if e.dataset == dataset and e.variant == variant]
            scored = [(e.metrics["test"]["by_tau"]["1"]["mean"], label, e) for label, e in ours
                      if ((e.metrics.get("test") or {}).get("by_tau") or {}).get("1", {}).get("mean") is not None]
            if scored:
                best, label, e = max(scored, key=lambda s: s[0])
                value, who = _fmt(e.metrics["test"]["by_tau"]["1"]), label
                diff = f"{best - mean:+.3f}"
            else:
                value = "not evaluated yet" if ours else "no model"
                who, diff = (", ".join(label for label, _ in ours) or "—"), ""
            rows.append({"dataset": dataset, "variant": variant_label(variant), "paper": f"{mean:.3f} ± {se:.3f}",
                         "ours (τ=1)": value, "ours − paper": diff, "model": who})
    return pd.DataFrame(rows)
