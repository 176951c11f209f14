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
    FIDELITY_NATS,
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


def test_a_bf16_arm_follows_the_same_schedule_and_is_paired_with_its_float32_twin(tmp_path):
    """iwae-bf16 trains IWAE in bf16-mixed on the float32 arm's schedule (max(budgets) epochs, though --until
    stops at the first budget) and each of its rows carries the paired difference to the same seed's float32
    trial, computed from the two per-image results."""
    require_data("MNIST", "raw")
    cfg = StudyConfig(root=tmp_path / "runs", results=tmp_path / "results", datasets=("mnist",), seeds=(0,),
                      arms=("iwae", "iwae-bf16"), budgets=(1, 2), until=1, hidden=(16,), z_dim=4, k=3,
                      batch_size=50, train_images=200, images=30, S=20, workers=1)
    assert cfg.budgets_to_run == (1,)
    for arm in cfg.arms:
        assert run_task(cfg, "mnist", arm, 0, 1).endswith("evaluated")
    trial = cfg.root / trial_name("mnist", "iwae-bf16", 0)
    run = ckpt.load_run_config(trial / "epochs-001")
    assert run.train.precision == "bf16-mixed" and run.train.epochs == 2  # the two-budget schedule
    rows = write_results(cfg.root, cfg.results)
    bf16 = next(r for r in rows if r["arm"] == "iwae-bf16")
    own = load_file(str(trial / "epochs-001" / "test_ll.safetensors"))["tau=1"]
    ref = load_file(str(cfg.root / "mnist-iwae-s0" / "epochs-001" / "test_ll.safetensors"))["tau=1"]
    assert bf16["precision"] == "bf16-mixed" and bf16["diff_to_float32"] != 0
    assert math.isclose(bf16["diff_to_float32"], (own - ref).mean().item(), rel_tol=1e-6)
    assert math.isclose(bf16["diff_float32_stderr"], ((own - ref).std() / math.sqrt(30)).item(), rel_tol=1e-6)
    assert next(r for r in rows if r["arm"] == "iwae")["diff_to_float32"] is None
    assert read_csv(cfg.results / "study.csv") == rows
    md = (cfg.results / "study.md").read_text()
    assert "bf16-mixed − float32" in md and "1 seed: no verdict (3 needed)" in md


def fidelity_rows(diffs, spread):
    """Three seeds of IWAE in float32 (test LL -90 + spread * (-1, 0, 1)) and in bf16-mixed (diffs apart)."""
    rows = []
    for s, d in enumerate(diffs):
        base = {"dataset": "mnist", "epochs": 10, "tau": 1.0, "seed": s, "diff_to_iwae": 0.0, "diff_stderr": 0.0}
        ll = -90 + spread * (s - 1)
        rows.append({**base, "arm": "iwae", "test_ll": ll})
        rows.append({**base, "arm": "iwae-bf16", "test_ll": ll + d, "diff_to_float32": d, "diff_float32_stderr": 0.01})
    return rows


def test_bf16_may_become_the_default_only_within_005_nats_and_the_seed_spread():
    def verdict(diffs, spread):
        return next(s for s in summarize(fidelity_rows(diffs, spread)) if s["arm"] == "iwae-bf16")

    ok = verdict([0.01, -0.02, 0.02], spread=0.2)
    assert math.isclose(ok["fidelity"], 1 / 300) and ok["fidelity_verdict"].startswith("within")
    assert math.isclose(ok["seed_spread"], 0.2)
    assert verdict([0.06, 0.07, 0.05], spread=0.5)["fidelity_verdict"].endswith("keep float32")  # > 0.05 nats
    assert verdict([0.03, 0.04, 0.03], spread=0.01)["fidelity_verdict"].endswith("keep float32")  # > seed spread
    assert FIDELITY_NATS == 0.05
