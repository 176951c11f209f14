"""The shipped models: they load, their metadata is complete, and their test LL re-estimates agree with
metrics.json within its stated Monte-Carlo error (same images, S = 5000, a different seed)."""

import csv
import hashlib
import math

import pytest
import torch

from iwae_core import checkpoint as ckpt
from iwae_core import zoo
from iwae_core.compare import stale_evaluation
from iwae_core.data import load_dataset
from iwae_core.evaluate import binarized_test_images, log_likelihood
from support import require_data

TEST_IMAGES = {"mnist": 10_000, "omniglot": 8_115}
NAMES = [f"{d}-{v}" for d in ("mnist", "omniglot") for v in ("iwae", "iwae-r", "iwae-rrec")]
NAMES.append("omniglot-iwae-r-mixture")  # IWAE-R read as a mixture (--objective mixture), where it differs from IWAE


def test_every_model_is_shipped_and_small():
    found = {e.name for e in zoo.find_models()}
    assert set(NAMES) <= found, set(NAMES) - found
    kinds = (".safetensors", ".json", ".csv")  # what is shipped; training checkpoints and logs are not
    shipped = [f for f in zoo.PRETRAINED_DIR.glob("*/*") if f.is_file() and f.suffix in kinds]
    total = sum(f.stat().st_size for f in shipped)
    assert total < 40 * 2**20, f"pretrained/ holds {total / 2**20:.1f} MB"


@pytest.mark.parametrize("name", NAMES)
def test_metadata(name):
    path = zoo.PRETRAINED_DIR / name
    model, run = ckpt.load_model(path)
    dataset, variant = name.split("-", 1)
    variant = variant.removesuffix("-mixture")
    assert run.train.dataset == dataset and run.model.variant == variant
    assert run.train.objective == ("mixture" if name.endswith("-mixture") else "bayes")
    assert run.model.hidden == (400,) and run.model.z_dim == 40 and run.train.k == 25
    metrics = ckpt.read_json(path / "metrics.json")
    training, test = metrics["training"], metrics["test"]
    assert training["steps"] > 0 and training["train_seconds"] > 0 and training["command"].startswith("iwae train")
    with open(path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == training["epochs"] and int(rows[-1]["step"]) == training["steps"]
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    stages = training.get("stages")
    if stages:  # trained in stages (--init-from): they add up, each with the command that ran it
        assert sum(st["epochs"] for st in stages) == training["epochs"]
        assert sum(st["steps"] for st in stages) == training["steps"]
        assert all(st["command"].startswith("iwae train") for st in stages)
        assert all(st["init_from"] for st in stages[1:]) and stages[-1]["command"] == training["command"]
    # The full protocol: the whole test set, on exactly the weights that are shipped.
    assert test["S"] == 5000 and test["n_images"] == TEST_IMAGES[dataset]
    assert test["model_sha256"] == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    per_image = ckpt.read_tensors(path / "test_ll.safetensors")
    assert all(len(v) == test["n_images"] for v in per_image.values())
    assert not stale_evaluation(zoo.select_models([path])[0])  # test_ll.safetensors holds metrics.json's results
    taus = {"1", "0"} if variant != "iwae" else {"1"}
    assert set(test["by_tau"]) == taus
    for tau in taus:
        r = test["by_tau"][tau]
        assert -200 < r["mean"] < -50 and 0 < r["stderr"] < 2 and r["mc_sd_per_image"] > 0
    assert 0 < test["active_units"] <= 40
    others = [n for n in NAMES if n != name and n.startswith(dataset + "-")]  # paired with each of them
    assert isinstance(metrics.get("paired"), list) and len(metrics["paired"]) == len(others)
    assert all(p["n_images"] == test["n_images"] for p in metrics["paired"])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_test_ll_reestimate_agrees_with_metrics(name):
    dataset = name.split("-", 1)[0]
    require_data("MNIST" if dataset == "mnist" else "omniglot-py")
    path = zoo.PRETRAINED_DIR / name
    model, run = ckpt.load_model(path)
    stored = ckpt.read_tensors(path / "test_ll.safetensors")["tau=1"]
    metrics = ckpt.read_json(path / "metrics.json")["test"]["by_tau"]["1"]
    n = 8
    x = binarized_test_images(load_dataset(dataset), n)
    torch.manual_seed(20261124)
    fresh = log_likelihood(model, x, S=5000)
    # Both are S = 5000 estimates of the same images with independent draws: their mean difference has
    # standard deviation sqrt(2) * mc_sd_per_image / sqrt(n). Allow 4 of those.
    tol = 4 * math.sqrt(2) * metrics["mc_sd_per_image"] / math.sqrt(n)
    diff = (fresh - stored[:n]).mean().item()
    assert abs(diff) < tol, (diff, tol)
