"""The budget x seed study's machinery on tiny models: budgets along one schedule are bit-exact snapshots
of an uninterrupted run, the paired differences are those of the per-image results, and the verdict rule
separates a difference that holds across seeds from one that does not."""

import math

import pytest
import torch
from safetensors.torch import load_file

from iwae_core import checkpoint as ckpt
from iwae_core.data import load_dataset
from iwae_core.study import (
    StudyConfig,
    read_csv,
    run_study,
    run_task,
    summarize,
    trial_name,
    trial_run,
    write_results,
)
from iwae_core.train import Trainer
from support import require_data


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    require_data("MNIST", "raw")
    root = tmp_path_factory.mktemp("study")
    cfg = StudyConfig(root=root / "runs", results=root / "results", datasets=("mnist",), seeds=(0, 1),
                      arms=("iwae", "iwae-r-mixture"),
                      budgets=(1, 2), hidden=(16,), z_dim=4, k=3, batch_size=50, train_images=200, images=30,
                      S=20, mixture_init_sigma=0.05, workers=2)
    run_study(cfg)  # on a local Ray of two CPUs, as the real study runs
    return cfg


@pytest.mark.slow
def test_a_budget_is_the_uninterrupted_run_at_that_step(tiny_study):
    cfg = tiny_study
    data = load_dataset("mnist")
    data = {**data, "train": data["train"][:cfg.train_images]}
    run = trial_run(cfg, "mnist", "iwae-r-mixture", 1)
    run.train.max_steps = 2 * 4  # 200 images at batch 50: 4 steps an epoch
    straight = Trainer(run, data=data)
    straight.fit()
    snap = cfg.root / trial_name("mnist", "iwae-r-mixture", 1) / "epochs-002"
    saved = load_file(str(snap / "model.safetensors"))
    for name, value in straight.model.state_dict().items():
        assert torch.equal(saved[name], value), name
    first = load_file(str(cfg.root / trial_name("mnist", "iwae-r-mixture", 1) / "epochs-001" / "model.safetensors"))
    assert not torch.equal(first["decoder.layers.0.weight_mu"], saved["decoder.layers.0.weight_mu"])
    assert ckpt.read_json(snap / "metrics.json")["training"]["epochs"] == 2


@pytest.mark.slow
def test_results_pair_each_arm_with_the_same_seeds_iwae(tiny_study):
    cfg = tiny_study
    rows = write_results(cfg.root, cfg.results)
    # iwae at tau = 1, the random arm at tau = 1 and 0; two seeds, two budgets
    assert len(rows) == (1 + 2) * 2 * 2
    assert read_csv(cfg.results / "study.csv") == rows
    row = next(r for r in rows if r["arm"] == "iwae-r-mixture" and r["seed"] == 1 and r["epochs"] == 2
               and r["tau"] == 1)
    assert row["objective"] == "mixture" and row["init_sigma"] == 0.05 and row["n_images"] == 30
    own = load_file(str(cfg.root / "mnist-iwae-r-mixture-s1" / "epochs-002" / "test_ll.safetensors"))["tau=1"]
    ref = load_file(str(cfg.root / "mnist-iwae-s1" / "epochs-002" / "test_ll.safetensors"))["tau=1"]
    assert math.isclose(row["diff_to_iwae"], (own - ref).mean().item(), rel_tol=1e-6)
    assert math.isclose(row["diff_stderr"], ((own - ref).std() / math.sqrt(30)).item(), rel_tol=1e-6)
    assert all(r["diff_to_iwae"] == 0 for r in rows if r["arm"] == "iwae")
    md = (cfg.results / "study.md").read_text()
    assert "## mnist, 2 epochs" in md and "iwae-r-mixture" in md
    write_results(cfg.root, cfg.results, note="A pilot:\n two budgets.")
    write_results(cfg.root, cfg.results)  # a rebuild keeps the status paragraph
    assert "**Status.** A pilot: two budgets." in (cfg.results / "study.md").read_text()
    # a second call trains and evaluates nothing: every budget is there
    assert run_task(cfg, "mnist", "iwae", 0, 2).endswith("done already")


def fake_rows(diffs, se=0.05):
    return [{"dataset": "mnist", "epochs": 5, "tau": 1.0, "arm": arm, "seed": s, "test_ll": -90 + d,
             "diff_to_iwae": d, "diff_stderr": se} for arm, ds in (("iwae", [0.0] * len(diffs)), ("iwae-r", diffs))
            for s, d in enumerate(ds)]


def test_verdict_needs_the_difference_beyond_seed_spread_and_image_noise():
    verdict = {s["arm"]: s for s in summarize(fake_rows([0.50, 0.60, 0.55]))}["iwae-r"]
    assert verdict["verdict"] == "above IWAE" and math.isclose(verdict["diff"], 0.55)
    assert math.isclose(verdict["diff_sd"], 0.05)
    spread = {s["arm"]: s for s in summarize(fake_rows([0.5, -0.4, 0.1]))}["iwae-r"]
    assert spread["verdict"] == "not distinguishable from IWAE"  # the seeds disagree
    noisy = {s["arm"]: s for s in summarize(fake_rows([0.10, 0.11, 0.12], se=0.5))}["iwae-r"]
    assert noisy["verdict"] == "not distinguishable from IWAE"  # the images cannot tell
    below = {s["arm"]: s for s in summarize(fake_rows([-0.3, -0.35, -0.25]))}["iwae-r"]
    assert below["verdict"] == "below IWAE"
