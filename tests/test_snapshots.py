"""Snapshots of a training run (iwae_core/runs/snapshots.py): the worker's bounded series of model weights that
the Samples and Weight variance views step through. Checked on real training (in process, and once through the
worker process with a kill and a resume)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import synthetic_data
from iwae_core import folders, runs
from iwae_core.checkpoint import load_model
from iwae_core.config import ModelConfig, RunConfig, TrainConfig
from iwae_core.runs import snapshots
from iwae_core.runs.snapshots import Keeper, list_snapshots, read_snapshot, thin
from iwae_core.train import Hooks, Trainer


def tiny_run(max_steps: int, variant: str = "iwae-r") -> RunConfig:
    """784-16-2 on batches of 20 of the 200 synthetic training images: 10 steps an epoch."""
    return RunConfig(ModelConfig.for_variant(variant, hidden=(16,), z_dim=2, init_sigma=0.05),
                     TrainConfig(k=2, batch_size=20, epochs=100, max_steps=max_steps, device="cpu", threads=1,
                                 eval_images=20, eval_k=2))


def trainer(run: RunConfig, out: Path, keeper: Keeper, extra_step_hook=None) -> Trainer:
    on_step = [keeper.on_step] + ([extra_step_hook] if extra_step_hook else [])
    (out / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(run.to_json())
    return Trainer(run, out=out, data=synthetic_data(), hooks=Hooks(on_step=on_step, on_epoch=[keeper.on_epoch]))


def test_thinning_keeps_the_first_and_latest_and_spaces_the_rest_evenly(tmp_path):
    """Snapshots of steps 0, 10, ..., 1000 arriving one by one with at most 8 kept: the count never exceeds 8,
    step 0 and the latest are always there, and the kept steps are spaced within a factor 2 of each other (but
    for the gap to the latest, which is one snapshot interval right after a snapshot)."""
    (tmp_path / snapshots.SNAPSHOTS).mkdir()
    for step in range(0, 1001, 10):
        save_file({"w": torch.zeros(1)}, str(snapshots.snapshot_path(tmp_path, step)))
        thin(tmp_path, keep=8)
        steps = [s for s, _ in list_snapshots(tmp_path)]
        assert len(steps) == min(step // 10 + 1, 8) and steps[0] == 0 and steps[-1] == step
    gaps = [b - a for a, b in zip(steps[:-2], steps[1:-1], strict=True)]
    assert max(gaps) <= 2 * min(gaps), steps
    with pytest.raises(ValueError, match="at least 2"):
        thin(tmp_path, keep=1)


def test_a_run_keeps_a_bounded_series_of_loadable_snapshots_that_follow_training(tmp_path):
    """A snapshot every step (seconds=0) over 45 steps with at most 6 kept: 6 files, the first of step 0 (the
    initial weights), the latest of step 45 holding exactly the trained model's weights; each loads through the
    checked reader, and the weights differ from one snapshot to the next."""
    keeper = Keeper(tmp_path, seconds=0.0, keep=6)
    t = trainer(tiny_run(45), tmp_path, keeper)
    keeper.start(t)
    t.fit()
    keeper.save(t)
    found = list_snapshots(tmp_path)
    assert len(found) == 6 and found[0][0] == 0 and found[-1][0] == 45
    models = [read_snapshot(path)[0] for _, path in found]
    for before, after in zip(models, models[1:], strict=False):
        assert max((a - b).abs().max().item()
                   for a, b in zip(before.state_dict().values(), after.state_dict().values(), strict=True)) > 1e-6
    final, _ = load_model(tmp_path)  # model.safetensors as the trainer's last checkpoint wrote it
    for name, value in final.state_dict().items():
        torch.testing.assert_close(models[-1].state_dict()[name], value, rtol=0, atol=0)
    assert load_file(str(found[-1][1])).keys() == final.state_dict().keys()  # the weights only
    assert not [p for p in (tmp_path / snapshots.SNAPSHOTS).iterdir() if not p.name.startswith("step-")]


def test_a_resumed_run_replaces_the_snapshots_beyond_its_checkpoint_with_the_same_weights(tmp_path):
    """A run killed at step 27 (its last checkpoint: the end of epoch 2, step 20) leaves snapshots up to 27 and an
    unfinished write; resumed, it drops those beyond step 20 and the tmp file, and as training resumes exactly,
    rewrites steps 21-27 with the very weights the killed run had, then goes on to step 35."""
    run = tiny_run(35)

    class Killed(Exception):
        pass

    def kill_at_27(trainer, metrics):
        if metrics["step"] == 27:
            raise Killed

    keeper = Keeper(tmp_path, seconds=0.0, keep=100)
    t = trainer(run, tmp_path, keeper, kill_at_27)
    keeper.start(t)
    with pytest.raises(Killed):
        t.fit()
    (tmp_path / snapshots.SNAPSHOTS / ".step-000000028.safetensors.x1.tmp").write_bytes(b"half a file")
    killed = {s: load_file(str(p)) for s, p in list_snapshots(tmp_path)}
    assert sorted(killed) == list(range(28))
    kept = {s: p.stat().st_mtime_ns for s, p in list_snapshots(tmp_path) if s < 20}

    keeper = Keeper(tmp_path, seconds=0.0, keep=100)
    t = trainer(run, tmp_path, keeper)
    assert t.resume() and t.step == 20
    keeper.start(t)
    assert [s for s, _ in list_snapshots(tmp_path)] == list(range(21))
    assert not list((tmp_path / snapshots.SNAPSHOTS).glob(".*"))
    t.fit()
    keeper.save(t)
    after = {s: p for s, p in list_snapshots(tmp_path)}
    assert sorted(after) == list(range(36))
    assert {s: after[s].stat().st_mtime_ns for s in kept} == kept  # untouched
    for s in range(21, 28):
        again = load_file(str(after[s]))
        for name, value in killed[s].items():
            torch.testing.assert_close(again[name], value, rtol=0, atol=0)


def test_a_broken_snapshot_is_a_file_error_naming_the_file(tmp_path):
    """Garbage, NaN weights and weights of another shape are each refused with the file named."""
    keeper = Keeper(tmp_path, seconds=0.0, keep=10)
    t = trainer(tiny_run(2), tmp_path, keeper)
    keeper.start(t)
    good = list_snapshots(tmp_path)[0][1]
    state = load_file(str(good))
    bad = tmp_path / snapshots.SNAPSHOTS
    (bad / "step-000000001.safetensors").write_bytes(b"not a safetensors file at all, " * 1000)
    save_file({k: v * float("nan") for k, v in state.items()}, str(bad / "step-000000002.safetensors"))
    save_file({k: torch.cat([v, v], -1) for k, v in state.items()}, str(bad / "step-000000003.safetensors"))
    for step, why in ((1, "safetensors"), (2, "NaN"), (3, "shape")):
        with pytest.raises(folders.FileError, match=why) as err:
            read_snapshot(bad / f"step-{step:09d}.safetensors")
        assert f"step-{step:09d}.safetensors" in str(err.value)


@pytest.mark.slow
def test_the_worker_keeps_bounded_consistent_snapshots_across_a_kill_and_a_resume(tmp_path, monkeypatch):
    """A real worker on 400 MNIST images (20 steps an epoch, a snapshot at each epoch's end) killed with SIGKILL
    and resumed: the series never holds snapshots beyond what the resumed run trained, stays within MAX_SNAPSHOTS
    over 60 epochs, and its latest snapshot holds exactly the finished model's weights."""
    from test_runs import tiny, wait_for

    from support import require_data

    require_data("MNIST", "raw")
    monkeypatch.setenv("IWAE_RUNS_DIR", str(tmp_path / "runs"))
    info = runs.start_run(tiny(epochs=60), train_images=400, name="snap")
    running = wait_for(info.path, lambda r: r.status == "running" and len(list_snapshots(r.path)) >= 4)
    os.kill(running.progress["pid"], signal.SIGKILL)
    wait_for(info.path, lambda r: r.status == "interrupted", timeout=30)
    shutil.copytree(info.path / snapshots.SNAPSHOTS, tmp_path / "before" / snapshots.SNAPSHOTS)
    runs.resume_run(info.path)
    done = wait_for(info.path, lambda r: r.status in ("finished", "failed"), timeout=300)
    assert done.status == "finished", done.message
    checkpoint_step = done.progress["resumed_from"]
    assert 0 < checkpoint_step <= max(s for s, _ in list_snapshots(tmp_path / "before"))
    found = list_snapshots(info.path)
    steps = [s for s, _ in found]
    assert 2 <= len(found) <= snapshots.MAX_SNAPSHOTS and steps[0] == 0 and steps[-1] == 60 * 20
    for step, path in found:  # a snapshot from before the kill is one the resumed run did not train again
        old = tmp_path / "before" / snapshots.SNAPSHOTS / path.name
        if old.exists() and step > checkpoint_step:
            assert old.stat().st_mtime_ns != path.stat().st_mtime_ns, step
    final, _ = load_model(info.path)
    latest, _ = read_snapshot(found[-1][1])
    for name, value in final.state_dict().items():
        torch.testing.assert_close(latest.state_dict()[name], value, rtol=0, atol=0)
