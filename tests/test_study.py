"""The budget x seed study's machinery on tiny models: budgets along one schedule are bit-exact snapshots
of an uninterrupted run, the scheduler keeps every CPU busy without running one trial twice at once, a budget
already evaluated is not run again, and a bf16-mixed arm trains on the
float32 arm's schedule and is paired with its float32 twin. The tiny_study fixture (tests/conftest.py)
runs the study once per session; the results built from it are tests/test_study_results.py's."""

import math

import pytest
import torch
from safetensors.torch import load_file

from iwae_core import checkpoint as ckpt
from iwae_core.data import load_dataset
from iwae_core.study import ARMS, StudyConfig, next_runnable, run_task, trial_name, trial_run
from iwae_core.study_results import read_csv, write_results
from iwae_core.train import Trainer
from support import require_data


def test_the_scheduler_takes_early_budgets_first_and_never_a_running_trials_next_one():
    a, b, c = ("mnist", "iwae", 0), ("mnist", "iwae", 1), ("mnist", "iwae", 2)
    todo = [(key, budget) for budget in (5, 10, 20) for key in (a, b, c)]
    assert next_runnable(todo, set()) == (a, 5)
    assert next_runnable(todo, {a}) == (b, 5)
    # a and b running; c's 5 epochs come before anyone's 10
    assert next_runnable(todo, {a, b}) == (c, 5)
    assert next_runnable(todo, {a, b, c}) is None  # every trial busy: nothing may start
    # a done while b and c run: the CPU takes a's next budget instead of waiting for b and c
    assert next_runnable(todo, {b, c}) == (a, 10)
    # a's 20 waits for a's 10 to end, even with b's and c's 10 still queued
    assert next_runnable(todo, {b, c, a}) is None
    assert next_runnable(todo, {b, c}) == (a, 20)
    assert next_runnable(todo, {c}) == (b, 10)
    assert next_runnable(todo, {b, c}) is None  # b's 20 waits for b's 10, c's 10 for c's 5
    assert todo == [(c, 10), (b, 20), (c, 20)]


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
    # a second call trains and evaluates nothing: every budget is there
    assert run_task(cfg, "mnist", "iwae", 0, 2).endswith("done already")


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


def test_trials_draw_with_torchs_generator_unless_asked_as_the_results_they_continue(tmp_path):
    cfg = StudyConfig(root=tmp_path, results=tmp_path / "results", datasets=("mnist",), seeds=(0,))
    assert {trial_run(cfg, "mnist", arm, 0).model.draws for arm in ARMS} == {"torch"}
    faster = StudyConfig(root=tmp_path, results=tmp_path / "results", datasets=("mnist",), seeds=(0,), draws="philox")
    assert trial_run(faster, "mnist", "iwae-r", 0).model.draws == "philox"
