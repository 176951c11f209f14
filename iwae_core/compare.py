"""Comparing evaluated models: the paper's table beside ours, and paired differences on the same test images.

A model folder's test results (metrics.json["test"] and the per-image test_ll.safetensors that
evaluate.evaluate_folder writes) count only while they are of the weights in the folder: stale_evaluation
checks them against model.safetensors' sha256. Models of one dataset evaluated on the same binarised test
images are compared image by image: the mean difference of their per-image log-likelihoods and its paired
standard error (paired_differences), which write_paired stores in each model's metrics.json.
comparison_table is `iwae table`: the numbers of Hernandez-Lobato et al. (2016) (evaluate.PAPER_TABLE)
beside ours.
"""

from __future__ import annotations

import math

from . import checkpoint as ckpt
from . import zoo
from .evaluate import PAPER_TABLE, model_sha256, per_image_name


def stale_evaluation(entry: zoo.ZooEntry) -> bool:
    """Whether the folder's test results (metrics.json, test_ll.safetensors) are of other weights than
    its model.safetensors, e.g. after a retrained model was copied over an evaluated one."""
    current = model_sha256(entry.path)
    test = entry.metrics.get("test") or {}
    if test and test.get("model_sha256") != current:
        return True
    per_image = entry.path / "test_ll.safetensors"
    if not per_image.exists():
        return False
    try:
        stored_hash = ckpt.read_metadata(per_image).get("model_sha256")
        if stored_hash is not None:
            return stored_hash != current
        # written before the hash was stored in the file: it must at least hold metrics.json's results
        stored = ckpt.read_tensors(per_image)
    except ckpt.CheckpointError:
        return True
    by_tau = test.get("by_tau", {})
    return any(per_image_name(tau) not in stored or len(stored[per_image_name(tau)]) != result["n_images"]
               or abs(stored[per_image_name(tau)].double().mean().item() - result["mean"]) > 1e-3
               for tau, result in by_tau.items())


def label(entry: zoo.ZooEntry, entries: list[zoo.ZooEntry]) -> str:
    """The entry's folder name, with its parent's where another entry has the same name (a retrained model
    beside the shipped one: retrain/mnist-iwae-r and pretrained/mnist-iwae-r)."""
    same = sum(e.name == entry.name for e in entries)
    return entry.name if same < 2 else f"{entry.path.parent.name}/{entry.name}"


def paired_differences(entries: list[zoo.ZooEntry], tau: str = "1") -> list[dict]:
    """For models of one dataset evaluated on the same images: mean per-image difference and its
    paired standard error, for every ordered pair (a better than b when the difference is > 0)."""
    lls = {}
    for e in entries:
        if not stale_evaluation(e) and (e.path / "test_ll.safetensors").exists():
            stored = ckpt.read_tensors(e.path / "test_ll.safetensors")
            if per_image_name(tau) in stored:
                lls[label(e, entries)] = stored[per_image_name(tau)]
    rows = []
    names = sorted(lls)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if lls[a].shape != lls[b].shape:
                continue
            d = lls[a] - lls[b]
            se = (d.std() / math.sqrt(len(d))).item()
            rows.append({"a": a, "b": b, "mean_difference": d.mean().item(), "paired_stderr": se,
                         "z": d.mean().item() / se if se > 0 else None, "n_images": len(d)})
    return rows


def write_paired(entries: list[zoo.ZooEntry], rows_by_dataset: dict[str, list[dict]] | None = None) -> None:
    """Store each model's paired differences against the others of its dataset in its metrics.json
    (those of paired_differences, computed here unless given per dataset)."""
    for dataset in {e.dataset for e in entries}:
        group = [e for e in entries if e.dataset == dataset]
        rows = rows_by_dataset[dataset] if rows_by_dataset else paired_differences(group)
        for e in group:
            metrics = ckpt.read_json_object(e.path / "metrics.json")
            metrics["paired"] = [r for r in rows if label(e, group) in (r["a"], r["b"])]
            ckpt.write_json(e.path / "metrics.json", metrics)


def comparison_table(dirs=None) -> str:
    """A plain-text table: the paper's numbers beside those of the given (or shipped) models."""
    entries = zoo.select_models(dirs)
    lines = [f"{'dataset':9} {'variant':18} {'paper':>17} {'ours (tau=1)':>17} {'ours (tau=0)':>17} "
             f"{'AU':>3} {'epochs':>6}  model"]
    for e in entries:
        # the reading of a random-weight model's objective (TrainConfig.objective); the paper's number is its variant's
        variant = e.variant if e.variant == "iwae" else f"{e.variant} {e.run.train.objective}"
        paper = PAPER_TABLE.get(e.dataset, {}).get(e.variant)
        test = e.metrics.get("test", {}).get("by_tau", {})
        fmt = lambda r: f"{r['mean']:.3f} ± {r['stderr']:.3f}" if r and r.get("stderr") else "-"  # noqa: E731
        paper_s = f"{paper[0]:.3f} ± {paper[1]:.3f}" if paper else "-"
        au = e.metrics.get("test", {}).get("active_units", "-")
        epochs = e.metrics.get("training", {}).get("epochs", "-")
        lines.append(f"{e.dataset:9} {variant:18} {paper_s:>17} {fmt(test.get('1')):>17} "
                     f"{fmt(test.get('0')):>17} {au!s:>3} {epochs!s:>6}  {label(e, entries)}"
                     + ("  (evaluated with other weights: run iwae eval again)" if stale_evaluation(e) else ""))
    return "\n".join(lines)
