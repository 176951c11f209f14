"""Sweeps and sharded evaluation on Ray (iwae_core/scale/: grid, trial, sweep, sweep_table, sharded) and the
evaluation's seeding.

The Ray tests are `slow` and start a local Ray with 2 CPUs (about 6-9 s each); together they take about a
minute on the 2-core test machine. The sweep test trains tiny models on real MNIST (IWAE_DATA_DIR).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from iwae_core import zoo
from iwae_core.checkpoint import load_model, load_run_config
from iwae_core.config import ModelConfig
from iwae_core.evaluate import (
    binarized_test_images,
    evaluate_folder,
    log_likelihood,
    log_likelihood_range,
    skip_stream,
    stream_draws,
)
from iwae_core.maths.model import IWAE
from iwae_core.scale.grid import parse_grid, plan_trials
from iwae_core.scale.sharded import shard_bounds
from iwae_core.scale.sweep_table import sweep_table
from iwae_core.scale.trial import TrialStopped, evaluation_kwargs, run_trial, same_run, training_state
from support import require_data

ROOT = Path(__file__).resolve().parent.parent


# ---- the evaluation's seeding, without Ray -------------------------------------------------------------
@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is fastest, and far faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(variant: str) -> IWAE:
    torch.manual_seed(0)
    model = IWAE(ModelConfig.for_variant(variant, hidden=(12,), z_dim=3, init_sigma=0.2))
    return model.eval()


@pytest.mark.parametrize("variant", ["iwae", "iwae-r", "iwae-rrec"])
@pytest.mark.parametrize("S", [40, 7])
def test_shards_of_a_pass_equal_the_whole_pass(variant, S, one_thread):
    model = tiny_model(variant)
    x = torch.bernoulli(torch.full((47, 784), 0.3), generator=torch.Generator().manual_seed(1))
    for tau in (1.0, 0.0):
        # batches of 4 images, chunks of 15 draws (S = 40: 15 + 15 + 10), as evaluate_folder did it before
        torch.manual_seed(5)
        before = log_likelihood(model, x, S, tau=tau, batch_size=4, rows_per_chunk=60)
        whole = log_likelihood_range(model, x, S, tau, batch_size=4, seed=5, rows_per_chunk=60)
        assert torch.equal(whole, before)  # stream seeding: the shipped numbers' per-image values, unchanged
        for cuts in ([0, 20, 47], [0, 4, 8, 32, 47]):
            parts = [log_likelihood_range(model, x, S, tau, batch_size=4, seed=5, start=a, stop=b,
                                          rows_per_chunk=60) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
            assert torch.equal(torch.cat(parts), before), (tau, cuts)
        per_batch = log_likelihood_range(model, x, S, tau, seed=5, seeding="per-batch", batch_size=4)
        parts = [log_likelihood_range(model, x, S, tau, seed=5, seeding="per-batch", batch_size=4, start=a, stop=b)
                 for a, b in ((0, 8), (8, 36), (36, 47))]
        assert torch.equal(torch.cat(parts), per_batch)
        assert not torch.equal(per_batch, before)  # other draws: why per-batch seeding is opt-in


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist-iwae", "mnist-iwae-r", "mnist-iwae-rrec"])
def test_a_shard_of_the_shipped_pass_reproduces_the_shipped_values(name, one_thread):
    """Images 20-29 of a shipped model's whole-test-set pass (S = 5000, seed 0), computed alone after
    replaying the draws of images 0-19: the shipped per-image values, to float32 rounding (the draws are
    the same; sums may run in another order on another CPU or thread count). Other draws would differ by
    the Monte-Carlo spread, about 0.8 nats per image."""
    from iwae_core import checkpoint as ckpt
    from iwae_core.data import load_dataset

    require_data("MNIST", "raw")
    model, run = ckpt.load_model(zoo.PRETRAINED_DIR / name)
    shipped = ckpt.read_tensors(zoo.PRETRAINED_DIR / name / "test_ll.safetensors")["tau=1"]
    x = binarized_test_images(load_dataset("mnist"))
    ll = log_likelihood_range(model, x, 5000, 1.0, seed=0, start=20, stop=30)
    assert (ll - shipped[20:30]).abs().max().item() < 1e-4  # measured: at most 1.5e-5 (2 ulps of ~90)


def test_a_shard_must_start_on_a_batch_boundary():
    model = tiny_model("iwae")
    x = torch.zeros(30, 784)
    with pytest.raises(ValueError, match="batch boundary"):
        log_likelihood_range(model, x, 10, start=5)  # default batches of 10 images


def test_skipping_the_stream_is_exact_and_checked(monkeypatch, one_thread):
    model = tiny_model("iwae-r")
    x = torch.bernoulli(torch.full((10, 784), 0.5), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    log_likelihood(model, x, 30)
    after = torch.get_rng_state()
    torch.manual_seed(3)
    skip_stream(model, 1, 30, 10)
    assert torch.equal(torch.get_rng_state(), after)
    # a draw the recorder does not know would make the replay wrong: the check refuses instead
    monkeypatch.setattr("iwae_core.evaluate._RNG_FUNCTIONS", set())
    with pytest.raises(RuntimeError, match="per-batch seeding"):
        stream_draws(model, 10, 30, 1.0)


def test_shard_bounds_start_on_batches():
    assert shard_bounds(45, 10, 2) == [(0, 20), (20, 45)]
    assert shard_bounds(45, 10, 3) == [(0, 20), (20, 30), (30, 45)]
    assert shard_bounds(5, 10, 4) == [(0, 5)]
    assert shard_bounds(100, 10, 3) == [(0, 30), (30, 70), (70, 100)]


# ---- grids, without Ray -------------------------------------------------------------------------------
def test_grid_expands_to_named_valid_runs():
    grid = parse_grid({"base": {"dataset": "mnist", "hidden": [16], "epochs": 2, "preset": "paper"},
                       "grid": {"variant": ["iwae", "iwae-r"], "seed": [0, 1], "init_sigma": [0.001, 0.01],
                                "k": [5, 0]}})
    trials = plan_trials(grid, cpus_per_trial=2)
    assert len(trials) == 16 and len({t.name for t in trials}) == 16
    assert trials[0].name == "variant=iwae,seed=0,init_sigma=0.001,k=5"
    good = [t for t in trials if t.run is not None]
    assert len(good) == 8 and all("k must be a positive integer" in t.error for t in trials if t.run is None)
    run = good[-1].run
    assert run.model.variant == "iwae-r" and run.model.init_sigma == 0.01 and run.train.seed == 1
    assert run.model.hidden == (16,) and run.train.lr_final == 1e-4  # the paper preset under the base settings
    assert run.train.threads == 2 and run.train.device == "cpu"
    with pytest.raises(ValueError, match="unknown \\[grid\\] keys"):
        parse_grid({"grid": {"sigma": [1, 2]}})
    with pytest.raises(ValueError, match="non-empty list"):
        parse_grid({"grid": {"seed": 3}})
    with pytest.raises(ValueError, match="unknown \\[eval\\] keys"):
        parse_grid({"grid": {"seed": [1]}, "eval": {"samples": 10}})


def test_a_stopped_trial_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    """What Ctrl-C or kill of `iwae sweep` does to a running trial, without Ray: it stops after a checkpoint,
    and the rerun resumes from it to the same weights; a stopped evaluation writes nothing."""
    from conftest import synthetic_data

    monkeypatch.setattr("iwae_core.scale.trial.STOP_CHECK_SECONDS", 0.0)
    threads = torch.get_num_threads()
    data = synthetic_data()
    grid = parse_grid({"base": {"hidden": [16], "z_dim": 2, "k": 3, "batch_size": 20, "epochs": 3, "max_steps": 25,
                                "eval_k": 3, "eval_images": 20}, "grid": {"variant": ["iwae-r"]}})
    run = plan_trials(grid)[0].run
    asked = []

    def stop_at_the_seventh_step() -> bool:
        asked.append(1)
        return len(asked) >= 7
    try:
        with pytest.raises(TrialStopped, match="stopped at step 7"):
            run_trial(run, tmp_path / "a", data=data, should_stop=stop_at_the_seventh_step)
        assert training_state(tmp_path / "a", run) == "partial"
        info = run_trial(run, tmp_path / "a", data=data)
        assert info["resumed_at"] == 7 and info["trained_steps"] == 18
        assert training_state(tmp_path / "a", run) == "trained"
        run_trial(run, tmp_path / "b", data=data)
        a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
        with pytest.raises(TrialStopped, match="evaluation"):
            run_trial(run, tmp_path / "a", data=data, evaluation={"S": 5, "mc_repeats": 1},
                      should_stop=lambda: True)
        assert "test" not in json.loads((tmp_path / "a" / "metrics.json").read_text())
        assert run_trial(run, tmp_path / "a", data=data, evaluation={"S": 5, "mc_repeats": 1})["evaluated"]
    finally:
        torch.set_num_threads(threads)


def test_a_failing_trial_comes_back_as_its_error(tmp_path, monkeypatch):
    """What a Ray worker returns for a trial that diverges or breaks: status failed and the error's message
    (the driver reports it and goes on with the others); the trial's running file is cleared either way."""
    from iwae_core.scale import trial
    from iwae_core.train import TrainingDiverged

    run = plan_trials(parse_grid({"base": {"hidden": [8], "z_dim": 2}, "grid": {"seed": [0]}}))[0].run
    spec = {"run": run.to_json(), "out": str(tmp_path / "t"), "data_dir": None, "eval": None, "command": "iwae sweep",
            "token": "abc", "running_file": str(tmp_path / ".running" / "t.json"),
            "stop_file": str(tmp_path / ".running" / "STOP")}
    monkeypatch.setitem(trial._DATA_CACHE, ("mnist", None), {})  # no dataset needed: run_trial fails first
    for error, expected in ((TrainingDiverged("training stopped at step 3: the loss is not finite"),
                             "training stopped at step 3: the loss is not finite"),
                            (ValueError("bad value"), "ValueError: bad value")):
        def fail(*args, error=error, **kwargs):
            raise error
        monkeypatch.setattr("iwae_core.scale.trial.run_trial", fail)
        outcome = trial._trial_task(spec)
        assert outcome["status"] == "failed" and outcome["error"] == expected
        assert not (tmp_path / ".running" / "t.json").exists()


# ---- a sweep on a local Ray ----------------------------------------------------------------------------
GRID = """
[base]
dataset = "mnist"
hidden = [16]
z_dim = 2
k = 3
batch_size = 20
epochs = 1
max_steps = 400
eval_k = 3
eval_images = 20
checkpoint_every = 0.2   # seconds: a checkpoint every few dozen steps, so a kill finds a recent one

[grid]
variant = ["iwae", "iwae-r"]
seed = [0, 1]

[eval]
S = 10
limit = 30
mc_repeats = 1
"""
KILLED = "variant=iwae,seed=0"


def sweep_cli(grid: Path, out: Path, *extra: str) -> subprocess.Popen:
    # Ray's workers run at niceness 15: on a busy machine they would crawl behind everything else
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_worker_niceness": "0"}
    return subprocess.Popen([sys.executable, "-m", "iwae_core.cli", "sweep", str(grid), "--out", str(out),
                             "--no-progress", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def kill_trial_mid_run(out: Path, name: str, after_step: int, timeout: float = 120) -> int:
    """SIGKILL the Ray worker running trial `name` once its checkpoint is past after_step; its step then."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            running = json.loads((out / ".running" / f"{name}.json").read_text())
            state = json.loads((out / name / "checkpoint" / "trainer_state.json").read_text())
        except (OSError, ValueError):
            time.sleep(0.01)
            continue
        if state["step"] >= after_step:
            assert state["step"] < 400, "the trial finished before it could be killed"
            os.kill(running["pid"], signal.SIGKILL)
            return state["step"]
        time.sleep(0.005)
    raise AssertionError(f"trial {name} did not get past step {after_step} in {timeout} s")


@pytest.mark.slow
def test_sweep_runs_resumes_after_a_killed_worker_and_skips_what_is_done(tmp_path):
    data_root = require_data("MNIST", "raw")
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    out = tmp_path / "sweep"
    # 1. the sweep, with one trial's worker killed mid-run (no retry by Ray: the rerun must resume it)
    proc = sweep_cli(grid, out, "--max-retries", "0")
    killed_at = kill_trial_mid_run(out, KILLED, after_step=40)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    manifest = json.loads((out / "sweep.json").read_text())
    status = {t["name"]: t["status"] for t in manifest["trials"]}
    assert status == {"variant=iwae,seed=0": "interrupted", "variant=iwae,seed=1": "done",
                      "variant=iwae-r,seed=0": "done", "variant=iwae-r,seed=1": "done"}, stderr
    assert "rerun the same command" in stderr
    # 2. the rerun trains only the killed trial, from its checkpoint
    proc = sweep_cli(grid, out)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "3 done already, 1 to run" in stderr
    trials = {t["name"]: t for t in json.loads((out / "sweep.json").read_text())["trials"]}
    assert all(t["status"] == "done" for t in trials.values())
    resumed = trials[KILLED]
    assert resumed["resumed_at"] >= killed_at and resumed["trained_steps"] == 400 - resumed["resumed_at"]
    # four loadable model folders, trained and evaluated as `iwae train` and `iwae eval` would
    for name in trials:
        model, run = load_model(out / name)
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["training"]["steps"] == 400 and metrics["test"]["n_images"] == 30
        assert set(load_file(out / name / "test_ll.safetensors")) == {"tau=1"} | (
            {"tau=0"} if run.model.variant == "iwae-r" else set())
    assert not list((out / ".running").iterdir())
    # the resumed trial's weights are those of an uninterrupted run of the same settings
    reference = tmp_path / "reference"
    run_trial(load_run_config(out / KILLED), reference, data_dir=str(data_root))
    a, b = load_file(out / KILLED / "model.safetensors"), load_file(reference / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # 3. a third call finds everything done: no Ray, no file touched
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "sweep.json"}
    proc = sweep_cli(grid, out)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "4 done already, 0 to run" in stderr and "Ray" not in stderr
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "sweep.json"}
    # the table groups the two seeds of each variant and pairs the variants seed by seed
    table = sweep_table(out)
    assert "variant=iwae " in table and "variant=iwae-r " in table and "± " in table
    assert "variant=iwae - variant=iwae-r" in table and "(2 seeds" in table
    r = subprocess.run([sys.executable, "-m", "iwae_core.cli", "table", str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert r.stdout.strip() == table  # `iwae table` knows a sweep folder


def test_a_trial_folder_with_other_settings_is_not_resumed(tmp_path):
    grid = parse_grid({"base": {"hidden": [8], "z_dim": 2, "max_steps": 5}, "grid": {"seed": [0, 1]}})
    a, b = (t.run for t in plan_trials(grid))
    assert same_run(a, a) and not same_run(a, b)
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "config.json").write_text(b.to_json())
    assert training_state(folder, a) == "other" and training_state(folder, b) == "new"


# ---- sharded evaluation on a local Ray -----------------------------------------------------------------
@pytest.mark.slow
def test_sharded_evaluation_equals_single_process_image_by_image(tiny_zoo, tmp_path, monkeypatch):
    data_root = require_data("MNIST", "raw")
    import ray

    from iwae_core.scale.sharded import evaluate_sharded

    single, sharded = tmp_path / "single", tmp_path / "sharded"
    names = ["tiny-iwae", "tiny-iwae-r"]
    for root in (single, sharded):
        for name in names:
            shutil.copytree(tiny_zoo / name, root / name)
    settings = {"S": 30, "limit": 45, "mc_repeats": 2, "mc_images": 25, "seed": 3}
    from iwae_core.data import load_dataset

    mnist = load_dataset("mnist", data_root)
    monkeypatch.setenv("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for seeding, workers in (("stream", 2), ("per-batch", 3)):
            results = evaluate_sharded([sharded / n for n in names], workers, data_dir=str(data_root),
                                       seeding=seeding, show_progress=False, **settings)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for name in names:
                    expected = evaluate_folder(single / name, data=mnist, seeding=seeding, **settings)
                    got = results[str(sharded / name)]
                    a = load_file(single / name / "test_ll.safetensors")
                    b = load_file(sharded / name / "test_ll.safetensors")
                    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (seeding, name)
                    for tau, entry in expected["by_tau"].items():
                        timing = ("seconds", "images_per_second", "workers")
                        assert {k: v for k, v in got["by_tau"][tau].items() if k not in timing} == \
                               {k: v for k, v in entry.items() if k not in timing}
                        assert got["by_tau"][tau]["workers"] == workers
                    assert got["seeding"] == seeding and got["active_units"] == expected["active_units"]
            finally:
                torch.set_num_threads(threads)
    finally:
        ray.shutdown()


def test_sweep_trials_are_listed_in_the_zoo_grouped_by_sweep(tiny_zoo, tmp_path, monkeypatch):
    """A sweep folder under a zoo root (or the root itself) lists its trials as SWEEP/TRIAL, apart from the
    other models, on the home page too."""
    import shutil

    from support import open_app

    root = tmp_path / "zoo"
    shutil.copytree(tiny_zoo / "tiny-iwae", root / "alone")
    for trial in ("variant=iwae,seed=0", "variant=iwae-r,seed=0"):
        shutil.copytree(tiny_zoo / "tiny-iwae", root / "grid" / trial)
    (root / "grid" / "sweep.json").write_text("{}")
    entries, broken = zoo.scan_models(root)
    assert [e.name for e in entries] == ["alone", "grid/variant=iwae,seed=0", "grid/variant=iwae-r,seed=0"]
    assert not broken
    assert [e.name for e in zoo.scan_models(root / "grid")[0]] == [
        "grid/variant=iwae,seed=0", "grid/variant=iwae-r,seed=0"]
    monkeypatch.setenv("IWAE_ZOO_DIRS", str(root))
    at = open_app()
    models = list(at.dataframe[0].value["model"])
    assert {"alone", "grid/variant=iwae,seed=0", "grid/variant=iwae-r,seed=0"} <= set(models)


def test_the_eval_table_reads_the_older_spellings_k_and_noise_scale_as_S_and_tau():
    old = parse_grid({"grid": {"seed": [0]}, "eval": {"k": 7, "noise_scale": [0.5], "limit": 3}})
    new = parse_grid({"grid": {"seed": [0]}, "eval": {"S": 7, "tau": [0.5], "limit": 3}})
    assert old.evaluation == new.evaluation == {"S": 7, "tau": [0.5], "limit": 3}
    assert evaluation_kwargs(old.evaluation) == {"S": 7, "taus": [0.5], "limit": 3}
    with pytest.raises(ValueError, match=r"\['S'\] under both spellings"):
        parse_grid({"grid": {"seed": [0]}, "eval": {"k": 7, "S": 8}})
