"""The run manager with real worker processes on a tiny model and 400 real MNIST images, and the Train live page."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from iwae_core import runs
from iwae_core.checkpoint import load_model
from iwae_core.config import ModelConfig, RunConfig, TrainConfig
from iwae_core.runs import queue, store, worker
from iwae_core.zoo import find_models
from support import require_data

ROOT = Path(__file__).resolve().parent.parent


def tiny(epochs: int = 100, lr: float = 1e-3, variant: str = "iwae") -> RunConfig:
    """784-16-2 with k = 2 on batches of 20: 20 steps per epoch on 400 images, a few ms per step."""
    return RunConfig(ModelConfig.for_variant(variant, hidden=(16,), z_dim=2),
                     TrainConfig(k=2, batch_size=20, epochs=epochs, lr=lr, device="cpu", eval_images=40, eval_k=5))


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A fresh IWAE_RUNS_DIR with room for two concurrent runs; stops whatever a test leaves running."""
    require_data("MNIST", "raw")
    monkeypatch.setenv("IWAE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("IWAE_MAX_RUNS", "2")
    yield tmp_path / "runs"
    for info in runs.list_runs(tmp_path / "runs"):
        if info.status in (*runs.ACTIVE, "queued", "unresponsive"):
            runs.stop_run(info.path, force=info.status == "unresponsive")
    for info in runs.list_runs(tmp_path / "runs"):
        wait_for(info.path, lambda r: not r.active and r.status != "queued", timeout=60)


def wait_for(path, condition, timeout: float = 90.0) -> runs.RunInfo:
    """Poll the run's status on disk until condition(info) holds; fail with the last state otherwise."""
    end = time.monotonic() + timeout
    while True:
        info = runs.read_run(path)
        if condition(info):
            return info
        if time.monotonic() > end:
            log = (Path(path) / runs.LOG).read_text() if (Path(path) / runs.LOG).exists() else ""
            pytest.fail(f"timed out: {info.status} {info.message} step {info.progress.get('step')}\n{log[-2000:]}")
        time.sleep(0.2)


@pytest.mark.slow
def test_start_progress_stop_resume_finish_then_in_the_zoo(root):
    info = runs.start_run(tiny(epochs=300), train_images=400, name="life")
    assert info.status in ("starting", "running")
    first = wait_for(info.path, lambda r: r.status == "running" and r.progress.get("step", 0) >= 5)
    later = wait_for(info.path, lambda r: r.progress.get("step", 0) > first.progress["step"])
    stopping = runs.stop_run(info.path)
    assert stopping.status in ("running", "stopping", "stopped")
    assert later.progress["total_steps"] == 300 * 20
    assert 0 < later.fraction < 1
    points = later.progress["points"]
    assert points and all(isinstance(b, float) and kl >= 0 for _, b, kl in points)
    assert time.time() - later.progress["heartbeat"] < 10
    # the worker writes its final status, then releases the lock as it exits
    stopped = wait_for(info.path, lambda r: r.status == "stopped" and not runs.is_locked(r.path), timeout=90)
    state = json.loads((info.path / "checkpoint" / "trainer_state.json").read_text())
    assert 0 < state["step"] < 6000
    assert stopped.progress["step"] == state["step"]
    assert stopped.resumable and not runs.is_locked(info.path)
    assert info.name not in [e.name for e in runs.finished_models(root)]

    resumed = runs.resume_run(info.path)
    assert resumed.status in ("starting", "running")
    done = wait_for(info.path, lambda r: r.status in ("finished", "failed"), timeout=240)
    assert done.status == "finished", done.message
    assert done.progress["step"] == 6000 and done.progress["resumed_from"] == state["step"]
    assert [p[0] for p in done.progress["points"]] == sorted(p[0] for p in done.progress["points"])
    assert len(done.progress["history"]) == 300
    # one validation point per epoch (300 epochs need no more), kept across the stop and the resume, none twice
    assert [s for s, _ in done.progress["valid"]] == list(range(20, 6001, 20)) and done.progress["valid_every"] == 0
    assert info.name in [e.name for e in find_models(root)]
    assert info.name in [e.name for e in runs.finished_models(root)]
    model, run = load_model(info.path)
    assert run.model.hidden == (16,)
    metrics = json.loads((info.path / "metrics.json").read_text())["training"]
    assert metrics["steps"] == 6000 and metrics["train_images"] == 400
    assert (info.path / runs.SAMPLES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "--- launch 2" in (info.path / runs.LOG).read_text()
    again = subprocess.run([sys.executable, "-m", "iwae_core.runs.worker", str(info.path)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 4 and "is finished" in again.stderr


def test_a_short_run_validates_about_fifteen_times_within_its_epoch(root):
    """One epoch of 20 steps: the page's runs ask for about 15 validation points (start_run's valid_points), so
    the worker sets valid_every = ceil(20 / 15) = 2 and progress.json's curve gets a validation bound after
    steps 2, 4, ..., 20, while history.csv keeps its one row per epoch."""
    assert worker.valid_every_for(20, 20) == 2 and worker.valid_every_for(600, 600) == 40
    assert worker.valid_every_for(100 * 20, 20) == 0  # 100 epochs give enough points of their own
    info = runs.start_run(tiny(epochs=1), train_images=400, name="short")
    assert info.options["valid_points"] == queue.VALID_POINTS == 15
    done = wait_for(info.path, lambda r: r.status in ("finished", "failed") and not runs.is_locked(r.path))
    assert done.status == "finished", done.message
    assert [s for s, _ in done.progress["valid"]] == list(range(2, 21, 2)) and done.progress["valid_every"] == 2
    assert done.progress["valid"][-1][1] == done.progress["history"][-1]["valid_bound"]
    assert [r["step"] for r in done.curve_rows() if "valid_bound" in r] == list(range(2, 21, 2))
    assert json.loads((info.path / "config.json").read_text())["train"]["valid_every"] == 2
    assert len((info.path / "history.csv").read_text().splitlines()) == 2  # header + one epoch
    explicit = runs.start_run(tiny(epochs=1), train_images=400, name="per-epoch", valid_points=None)
    done = wait_for(explicit.path, lambda r: r.status in ("finished", "failed") and not runs.is_locked(r.path))
    assert [s for s, _ in done.progress["valid"]] == [20] and done.progress["valid_every"] == 0


def finished_run(name: str, variant: str = "iwae-r") -> runs.RunInfo:
    info = runs.start_run(tiny(epochs=1, variant=variant), train_images=400, name=name)
    done = wait_for(info.path, lambda r: r.status in ("finished", "failed") and not runs.is_locked(r.path))
    assert done.status == "finished", done.message
    return done


def test_evaluating_a_finished_run_in_a_job_writes_its_test_log_likelihood(root):
    """The evaluation job computes what evaluate_folder computes in this process (S = 7 on the first 30 test
    images, tau 1 and 0 with Monte-Carlo repeats: 6 passes of 30 images, all counted in its progress), writes
    it to metrics.json so the run gets its test log-likelihood in the zoo, and reports done."""
    from iwae_core.evaluate import evaluate_folder

    info = finished_run("evaluated")
    assert "test" not in json.loads((info.path / "metrics.json").read_text())
    started = runs.start_evaluation(info.path, S=7, images=30)
    assert started.status == "finished" and started.evaluation["status"] in ("starting", "running", "done")
    done = wait_for(info.path, lambda r: r.evaluation.get("status") not in runs.EVALUATION_BUSY
                    and not runs.is_locked(r.path))
    ev = done.evaluation
    assert ev["status"] == "done", ev
    assert ev["done"] == ev["total"] == 6 * 30 and ev["S"] == 7 and ev["images"] == 30
    test = json.loads((info.path / "metrics.json").read_text())["test"]
    assert test["S"] == 7 and test["n_images"] == 30 and set(test["by_tau"]) == {"1", "0"}
    expected = evaluate_folder(info.path, S=7, limit=30, write=False)
    assert test["test_ll"] == expected["test_ll"] == ev["test_ll"]
    assert test["by_tau"]["0"]["mean"] == expected["by_tau"]["0"]["mean"]
    assert test["by_tau"]["1"]["mc_sd_per_image"] == expected["by_tau"]["1"]["mc_sd_per_image"]
    assert f"{expected['test_ll']:.2f}" in ev["message"]
    entry = next(e for e in runs.finished_models(root) if e.name == "evaluated")
    assert entry.metrics["test"]["test_ll"] == expected["test_ll"]
    assert done.status == "finished" and done.progress["step"] == 20  # the training's state is untouched


def test_an_evaluation_can_be_cancelled_and_bad_requests_are_refused(root, tmp_path, monkeypatch):
    """Bad S, no images, no data, an unfinished run, a second evaluation and deleting meanwhile are refused
    with their reason; a cancelled evaluation leaves metrics.json as it was and the run finished."""
    info = finished_run("cancel", variant="iwae")
    with pytest.raises(runs.RunError, match="S must be a positive integer"):
        runs.start_evaluation(info.path, S=0, images=10)
    with pytest.raises(runs.RunError, match="test images must be at least 1"):
        runs.start_evaluation(info.path, S=10, images=0)
    data_dir = os.environ["IWAE_DATA_DIR"]
    monkeypatch.setenv("IWAE_DATA_DIR", str(tmp_path / "nothing"))
    with pytest.raises(runs.RunError, match=r"no mnist test images: the data is not in .*nothing.*IWAE_DATA_DIR"):
        runs.start_evaluation(info.path, S=10, images=10)
    monkeypatch.setenv("IWAE_DATA_DIR", data_dir)
    stopped = root / "stopped"
    stopped.mkdir()
    (stopped / runs.CONFIG).write_text(tiny().to_json())
    (stopped / runs.OPTIONS).write_text("{}")
    (stopped / runs.PROGRESS).write_text(json.dumps({"status": "stopped", "message": "stopped", "step": 3}))
    with pytest.raises(runs.RunError, match="run stopped is stopped; only a finished run can be evaluated"):
        runs.start_evaluation(stopped, S=10, images=10)

    runs.start_evaluation(info.path, S=50_000, images=10_000)  # hours: cancelled long before
    running = wait_for(info.path, lambda r: r.evaluation.get("status") == "running" and r.evaluation.get("total"))
    assert running.evaluation["total"] == 10_000 + 2 * 500 and runs.is_locked(info.path)  # + Monte-Carlo repeats
    assert runs.active_runs(root) == ["cancel"]  # it takes a training slot
    with pytest.raises(runs.RunError, match="being evaluated already"):
        runs.start_evaluation(info.path, S=10, images=10)
    with pytest.raises(runs.RunError, match="cancel the evaluation before deleting"):
        runs.delete_run(info.path)
    runs.cancel_evaluation(info.path)
    done = wait_for(info.path, lambda r: r.evaluation.get("status") not in runs.EVALUATION_BUSY
                    and not runs.is_locked(r.path), timeout=60)
    assert done.evaluation["status"] == "cancelled", done.evaluation
    assert "test" not in json.loads((info.path / "metrics.json").read_text())
    assert not (info.path / runs.STOP).exists() and done.status == "finished"


@pytest.mark.slow
def test_a_hung_evaluation_is_unresponsive_and_the_page_can_end_the_process(root, monkeypatch):
    """An evaluation process that holds the run's lock without reporting for STALE_SECONDS is shown as
    unresponsive (busy: no second evaluation starts); cancelling it kills the process, which a stop file
    alone could not, and the evaluation ends interrupted with metrics.json as it was."""
    info = finished_run("hung", variant="iwae")
    before = (info.path / "metrics.json").read_text()
    runs.start_evaluation(info.path, S=50_000, images=10_000)
    running = wait_for(info.path, lambda r: r.evaluation.get("status") == "running" and r.evaluation.get("total"))
    pid = running.evaluation["pid"]
    os.kill(pid, signal.SIGSTOP)  # hung: holds the lock, reports nothing, would never see the stop file
    try:
        monkeypatch.setattr(store, "STALE_SECONDS", 1.5)
        hung = wait_for(info.path, lambda r: r.evaluation.get("status") == "unresponsive", timeout=30)
        assert f"pid {pid}" in hung.evaluation["message"] and runs.is_locked(info.path)
        with pytest.raises(runs.RunError, match="being evaluated already"):
            runs.start_evaluation(info.path, S=10, images=10)
        at = page(root)  # the page says so and offers to end it
        at.query_params["run"] = "hung"
        at.run()
        assert any("evaluation is hung" in w.value and f"pid {pid}" in w.value for w in at.warning)
        assert at.button(key="tl_eval_cancel").label == "Force-stop the evaluation"
        at.button(key="tl_eval_cancel").click().run()
        assert not at.exception, at.exception
        done = wait_for(info.path, lambda r: r.evaluation.get("status") == "interrupted", timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert not Path(f"/proc/{pid}").exists() or b"iwae_core" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert not runs.is_locked(info.path) and done.status == "finished"
    assert (info.path / "metrics.json").read_text() == before


def test_worker_refuses_a_run_whose_lock_is_held(tmp_path):
    """The exclusive flock alone decides: with it held elsewhere the worker exits without touching the run."""
    path = tmp_path / "held"
    path.mkdir()
    (path / runs.CONFIG).write_text(tiny().to_json())
    (path / runs.OPTIONS).write_text("{}")
    (path / runs.PROGRESS).write_text(json.dumps({"status": "running", "pid": 12345}))
    with open(path / runs.LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        out = subprocess.run([sys.executable, "-m", "iwae_core.runs.worker", str(path)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 4
        assert "pid 12345" in out.stderr
        assert runs.is_locked(path)
        assert runs.read_run(path).status == "running"  # a live lock holder keeps its status
    assert json.loads((path / runs.PROGRESS).read_text()) == {"status": "running", "pid": 12345}
    assert runs.read_run(path).status == "interrupted"  # the holder is gone: detected


def test_resume_and_delete_wait_for_a_worker_that_is_releasing_its_lock(tmp_path, monkeypatch):
    """A worker writes "stopped" just before it lets go of the lock: Resume or Delete in that gap waits."""
    monkeypatch.setenv("IWAE_RUNS_DIR", str(tmp_path))
    launched = []
    monkeypatch.setattr(queue, "_launch", lambda p: launched.append(Path(p).name) or True)

    def stopped_run_still_locked(name):
        path = tmp_path / name
        path.mkdir()
        (path / runs.CONFIG).write_text(tiny().to_json())
        (path / runs.OPTIONS).write_text("{}")
        (path / runs.PROGRESS).write_text(json.dumps({"status": "stopped", "message": "stopped"}))
        held = open(path / runs.LOCK, "w")
        fcntl.flock(held, fcntl.LOCK_EX)
        return path, held

    path, held = stopped_run_still_locked("resume")
    monkeypatch.setattr(queue, "RELEASE_SECONDS", 0.3)
    with pytest.raises(runs.RunError, match="another worker"):  # never released: refused, status kept
        runs.resume_run(path)
    with pytest.raises(runs.RunError, match="stop it before deleting"):
        runs.delete_run(path)
    assert runs.read_run(path).status == "stopped" and launched == [] and path.is_dir()

    monkeypatch.setattr(queue, "RELEASE_SECONDS", 30.0)
    threading.Timer(0.5, held.close).start()  # the exiting worker lets go half a second later
    assert runs.resume_run(path).status == "queued" and launched == ["resume"]

    path, held = stopped_run_still_locked("delete")
    threading.Timer(0.5, held.close).start()
    runs.delete_run(path)
    assert not path.exists()


def test_an_evaluation_waits_for_a_free_slot_and_a_bad_evaluation_state_is_reported(tmp_path, monkeypatch):
    """With the one slot held by a training worker, an evaluation is queued (or refused with queue=False) and
    launched by the dispatch once the slot is free; an evaluation state no worker writes makes the folder a
    broken run whose reason names the field."""
    require_data("MNIST", "raw")
    monkeypatch.setenv("IWAE_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("IWAE_MAX_RUNS", "1")
    launched = []
    monkeypatch.setattr(queue, "_launch_evaluation", lambda p: launched.append(Path(p).name) or True)

    def folder(name, progress):
        path = tmp_path / name
        path.mkdir()
        (path / runs.CONFIG).write_text(tiny().to_json())
        (path / runs.OPTIONS).write_text(json.dumps({"created": "2026-01-01 00:00:00"}))
        (path / runs.PROGRESS).write_text(json.dumps(progress))
        return path

    training = folder("training", {"status": "running", "heartbeat": time.time()})
    done = folder("done", {"status": "finished", "step": 20})
    with open(training / runs.LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(runs.RunLimitError, match="IWAE_MAX_RUNS"):
            runs.start_evaluation(done, S=10, images=10, queue=False)
        info = runs.start_evaluation(done, S=10, images=10)
        assert info.evaluation["status"] == "queued" and "1 run(s) training or evaluating" in info.evaluation["message"]
        assert info.status == "finished" and launched == []
    assert runs.dispatch(tmp_path) == ["done"] and launched == ["done"]
    assert runs.read_run(done).evaluation["S"] == 10

    folder("bad-status", {"status": "finished", "evaluation": {"status": "bogus"}})
    folder("bad-point", {"status": "finished", "valid": [[1]]})
    broken = {b.name: b.error for b in runs.scan_runs(tmp_path)[1]}
    assert "evaluation.status is 'bogus'" in broken["bad-status"] and "valid[0]" in broken["bad-point"]


@pytest.mark.slow
def test_limit_queues_or_refuses_and_a_queued_run_starts_when_a_slot_frees(root, monkeypatch):
    monkeypatch.setenv("IWAE_MAX_RUNS", "1")
    a = runs.start_run(tiny(epochs=1000), train_images=400, name="a")
    assert a.status == "starting"
    with pytest.raises(runs.RunLimitError, match="IWAE_MAX_RUNS"):
        runs.start_run(tiny(), train_images=400, name="refused", queue=False)
    assert [r.name for r in runs.list_runs(root)] == ["a"]
    b = runs.start_run(tiny(epochs=1000), train_images=400, name="b")
    assert b.status == "queued" and "IWAE_MAX_RUNS=1" in b.message
    monkeypatch.setattr(queue, "MAX_QUEUED", 1)
    with pytest.raises(runs.RunLimitError, match="waiting"):
        runs.start_run(tiny(), train_images=400, name="c")
    assert runs.dispatch(root) == []  # no free slot: nothing starts
    with pytest.raises(runs.RunError, match="stop it before deleting"):
        runs.delete_run(b.path)
    wait_for(a.path, lambda r: r.status == "running")
    assert runs.read_run(b.path).status == "queued"
    second = subprocess.run([sys.executable, "-m", "iwae_core.runs.worker", str(a.path)],
                            capture_output=True, text=True, timeout=120)  # a second worker on a live run
    assert second.returncode == 4 and "another worker" in second.stderr, second.stderr
    with pytest.raises(runs.RunError, match="only stopped or interrupted"):
        runs.resume_run(a.path)
    assert runs.read_run(a.path).status == "running"
    runs.stop_run(a.path)
    wait_for(a.path, lambda r: r.status == "stopped")
    running = wait_for(b.path, lambda r: r.status == "running" and r.progress.get("step", 0) > 0)
    assert running.progress["pid"] != runs.read_run(a.path).progress["pid"]
    assert runs.active_runs(root) == ["b"]
    with pytest.raises(runs.RunLimitError):
        runs.resume_run(a.path, queue=False)
    with pytest.raises(runs.RunError, match="stop it before deleting"):
        runs.delete_run(b.path)
    runs.delete_run(a.path)
    assert not a.path.exists() and [r.name for r in runs.list_runs(root)] == ["b"]


@pytest.mark.slow
def test_killed_worker_is_interrupted_and_hung_worker_is_unresponsive(root, monkeypatch):
    info = runs.start_run(tiny(epochs=1000), train_images=400, name="victim")
    running = wait_for(info.path, lambda r: r.status == "running" and r.progress.get("step", 0) > 0)
    pid = running.progress["pid"]

    os.kill(pid, signal.SIGSTOP)  # hung: holds the lock, no heartbeat
    try:
        monkeypatch.setattr(store, "STALE_SECONDS", 1.5)
        hung = wait_for(info.path, lambda r: r.status == "unresponsive", timeout=30)
        assert f"pid {pid}" in hung.message and runs.is_locked(info.path)
    finally:
        os.kill(pid, signal.SIGCONT)
    monkeypatch.setattr(store, "STALE_SECONDS", 60.0)
    wait_for(info.path, lambda r: r.status == "running")

    os.kill(pid, signal.SIGKILL)
    dead = wait_for(info.path, lambda r: r.status == "interrupted", timeout=30)
    assert f"pid {pid}" in dead.message and "Resume" in dead.message
    assert dead.resumable
    assert json.loads((info.path / runs.PROGRESS).read_text())["status"] == "interrupted"  # written down


@pytest.mark.slow
def test_diverging_run_fails_with_a_clear_message(root):
    info = runs.start_run(tiny(epochs=3, lr=1e6, variant="iwae-r"), train_images=400, name="nan")
    done = wait_for(info.path, lambda r: r.status in ("failed", "finished") and not runs.is_locked(r.path))
    assert done.status == "failed"
    assert "not finite" in done.message or "NaN" in done.message
    assert "smaller learning rate" in done.message
    assert not done.resumable and not runs.is_locked(info.path)


def test_start_refuses_bad_requests(tmp_path, monkeypatch):
    monkeypatch.setenv("IWAE_RUNS_DIR", str(tmp_path))
    with pytest.raises(runs.RunError, match="smaller than one batch"):
        runs.start_run(tiny(), train_images=5)
    if not torch.cuda.is_available():
        bad = tiny()
        bad.train.device = "cuda"
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            runs.start_run(bad)
    monkeypatch.setenv("IWAE_MAX_RUNS", "zero")
    with pytest.raises(runs.RunError, match="IWAE_MAX_RUNS must be a positive integer"):
        runs.max_runs()
    assert runs.list_runs() == []


def test_runs_dir_and_limit_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("IWAE_RUNS_DIR", str(tmp_path / "r"))
    monkeypatch.setenv("IWAE_MAX_RUNS", "3")
    assert runs.runs_dir() == tmp_path / "r" and runs.max_runs() == 3
    monkeypatch.delenv("IWAE_RUNS_DIR")
    monkeypatch.delenv("IWAE_MAX_RUNS")
    assert runs.runs_dir().name == "runs"
    assert runs.max_runs() == max(1, (os.cpu_count() or 1) // 2)


def test_curve_points_are_merged_pairwise_and_grid_png_is_written(tmp_path):
    pts = [[1, 0.0, 2.0], [2, 2.0, 4.0], [3, 4.0, 6.0]]
    assert worker._halve(pts) == [[2, 1.0, 3.0], [3, 4.0, 6.0]]
    images = torch.zeros(64, 784)
    images[0] = 1.0
    worker.save_grid(images, tmp_path / "g.png")
    from PIL import Image

    with Image.open(tmp_path / "g.png") as img:
        assert img.size == (2 * (8 * 30 + 2), 2 * (8 * 30 + 2))
        assert img.getpixel((2 * 2 + 5, 2 * 2 + 5)) == 255  # the first image is all ink: white
        assert img.getpixel((2 * 32 + 5, 2 * 2 + 5)) == 0  # the second image is empty: black
        assert img.getpixel((1, 1)) == 255  # the gaps between images are white


# ---- the Train live page -------------------------------------------------------------------------------

def page(tmp_root: Path) -> AppTest:
    at = AppTest.from_file(str(ROOT / "views" / "1_Train_live.py"), default_timeout=60)
    return at


@pytest.mark.slow
def test_train_live_page_starts_shows_and_stops_a_run(root):
    at = page(root)
    at.run()
    assert not at.exception
    assert any("No runs yet" in i.value for i in at.info)
    at.selectbox(key="tl_dataset").set_value("mnist")
    at.selectbox(key="tl_variant").set_value("iwae-r")
    at.number_input(key="tl_k").set_value(2)
    at.number_input(key="tl_hidden").set_value(16)
    at.number_input(key="tl_z").set_value(2)
    at.number_input(key="tl_epochs").set_value(1000)
    at.number_input(key="tl_batch").set_value(20)
    at.number_input(key="tl_images").set_value(400)
    at.button(key="tl_start").click()
    at.run()
    assert not at.exception, at.exception
    started = runs.list_runs(root)
    assert len(started) == 1
    info = started[0]
    assert info.run.model.variant == "iwae-r" and info.run.model.hidden == (16,) and info.run.train.k == 2
    assert info.options["train_images"] == 400 and info.run.train.threads == 1
    wait_for(info.path, lambda r: r.status == "running" and r.progress.get("step", 0) > 0)

    at.run()  # a reload: the page finds the run on disk
    assert not at.exception
    assert at.selectbox(key="tl_run").value == info.name
    bar = at.get("progress")
    assert bar, "no progress bar for a running run"
    done_steps = re.match(r"step ([\d,]+) of 20,000 · epoch \d+ of 1000", bar[0].proto.text)
    assert done_steps and int(done_steps.group(1).replace(",", "")) > 0, bar[0].proto.text
    assert any(info.name in str(df.value.to_dict()) for df in at.dataframe)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    train_trace = next(t for t in spec["data"] if t.get("name") == "train L_k")
    assert len(train_trace["x"]) > 0 and train_trace["x"] == sorted(train_trace["x"])
    assert any("status **running**" in m.value for m in at.markdown)
    assert at.button(key="tl_resume").disabled and not at.button(key="tl_stop").disabled

    at.button(key="tl_stop").click().run()
    assert not at.exception
    # the worker writes its final status, then releases the lock as it exits
    stopped = wait_for(info.path, lambda r: r.status == "stopped" and not runs.is_locked(r.path), timeout=90)
    assert stopped.progress["step"] > 0
    at.run()
    assert any("status **stopped**" in m.value for m in at.markdown)
    assert at.button(key="tl_stop").disabled and not at.button(key="tl_resume").disabled

    at.button(key="tl_resume").click().run()
    assert not at.exception
    wait_for(info.path, lambda r: r.status == "running" and r.progress.get("resumed_from") == stopped.progress["step"])


FORM = [("selectbox", "tl_dataset", "omniglot", "dataset", "omniglot"),
        ("selectbox", "tl_variant", "iwae-rrec", "variant", "iwae-rrec"),
        ("number_input", "tl_k", 7, "k", "7"), ("number_input", "tl_hidden", 33, "hidden", "33"),
        ("number_input", "tl_z", 3, "z", "3"), ("number_input", "tl_lr", 2.5e-4, "lr", "0.00025"),
        ("number_input", "tl_epochs", 2, "epochs", "2"), ("number_input", "tl_batch", 25, "batch", "25"),
        ("selectbox", "tl_device", "cpu", "device", "cpu"), ("number_input", "tl_images", 400, "images", "400"),
        ("selectbox", "tl_objective", "mixture", "objective", "mixture"),
        ("number_input", "tl_sigma", 0.02, "sigma", "0.02"),
        ("selectbox", "tl_precision", "bf16-mixed", "precision", "bf16-mixed"),
        ("number_input", "tl_seed", 11, "seed", "11"), ("number_input", "tl_threads", 2, "threads", "2")]


def link_of(at: AppTest) -> dict:
    return {name: (v[0] if isinstance(v, list) else v) for name, v in at.query_params.items()}


def test_train_live_form_keeps_every_field_in_the_url(tmp_path, monkeypatch):
    """Each field of the new-run form is written to the URL as it changes; a fresh page opened from that URL shows
    the same values, and a link's unusable values get the default and a notice naming them; nothing starts."""
    monkeypatch.setenv("IWAE_RUNS_DIR", str(tmp_path / "runs"))
    at = page(tmp_path)
    at.run()
    assert not at.exception
    for kind, key, value, _, _ in FORM:
        getattr(at, kind)(key=key).set_value(value)
        at.run()
        assert not at.exception, at.exception
    link = link_of(at)
    assert {param: link[param] for _, _, _, param, _ in FORM} == {param: text for _, _, _, param, text in FORM}
    fresh = page(tmp_path)
    fresh.query_params.update(link)
    fresh.run()
    assert not fresh.exception
    assert [getattr(fresh, kind)(key=key).value for kind, key, *_ in FORM] == [value for _, _, value, *_ in FORM]
    assert not [w.value for w in fresh.warning if "The link asked for" in w.value]
    assert not runs.list_runs()

    bad = page(tmp_path)
    bad.query_params.update({**link, "k": "0", "lr": "nan", "variant": "vae", "epochs": "2.5"})
    bad.run()
    assert not bad.exception
    assert bad.number_input(key="tl_k").value == 5 and bad.number_input(key="tl_lr").value == 1e-3
    assert bad.selectbox(key="tl_variant").value == "iwae" and bad.number_input(key="tl_epochs").value == 5
    assert bad.number_input(key="tl_batch").value == 25  # the good values of the link are kept
    notices = " ".join(w.value for w in bad.warning)
    for shown in ("k = 0", "lr = nan", "variant = vae", "epochs = 2.5"):
        assert f"**{shown}**" in notices.replace("\\", ""), (shown, notices)
    assert link_of(bad)["k"] == "5" and link_of(bad)["lr"] == "0.001"


def test_train_live_evaluates_a_finished_run_from_the_page(root, monkeypatch):
    """A finished run offers Evaluate (S, test images): the job's progress shows while it runs, Cancel stops it,
    and a finished evaluation shows the test log-likelihood metrics.json now holds, as the home page's zoo does."""
    monkeypatch.delenv("IWAE_ZOO_DIRS", raising=False)
    info = finished_run("ui-eval", variant="iwae")
    at = page(root)
    at.query_params["run"] = "ui-eval"
    at.run()
    assert not at.exception and at.selectbox(key="tl_run").value == "ui-eval"
    assert any("Not evaluated yet" in c.value for c in at.caption)
    at.number_input(key="tl_eval_S").set_value(50_000)
    at.number_input(key="tl_eval_images").set_value(10_000)
    at.button(key="tl_evaluate").click().run()
    assert not at.exception, at.exception
    wait_for(info.path, lambda r: r.evaluation.get("status") == "running" and r.evaluation.get("total"))
    at.run()
    bars = [b.proto.text for b in at.get("progress")]
    assert any(re.match(r"evaluating: [\d,]+ of 11,000 image passes · S = 50,000 on 10,000 test images", t)
               for t in bars), bars
    assert at.button(key="tl_delete").disabled  # not while the evaluation holds the run
    at.button(key="tl_eval_cancel").click().run()
    wait_for(info.path, lambda r: r.evaluation.get("status") == "cancelled" and not runs.is_locked(r.path))
    at.run()
    assert any("cancelled" in i.value for i in at.info)

    at.number_input(key="tl_eval_S").set_value(5)
    at.number_input(key="tl_eval_images").set_value(20)
    at.button(key="tl_evaluate").click().run()
    assert not at.exception
    wait_for(info.path, lambda r: r.evaluation.get("status") == "done" and not runs.is_locked(r.path))
    at.run()
    test = json.loads((info.path / "metrics.json").read_text())["test"]
    assert test["S"] == 5 and test["n_images"] == 20
    shown = " ".join(m.value for m in at.markdown)
    assert f"log p(x) ≈ **{test['by_tau']['1']['mean']:.2f} ± {test['by_tau']['1']['stderr']:.2f}**" in shown
    assert "on 20 test images with S = 5 joint draws" in shown
    home = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)  # the zoo: shipped models and finished runs
    home.run()
    row = home.dataframe[0].value.set_index("model").loc["ui-eval"]
    one = test["by_tau"]["1"]
    assert row["test LL (τ=1)"] == f"{one['mean']:.3f} ± {one['stderr']:.3f}" and row["S"] == 5


def test_a_mixture_run_started_from_the_form_trains_and_shows_its_curve(root):
    """objective = mixture from the form: each importance sample draws its own weights (granularity sample) and
    there is no KL term (beta 0), with the form's initial sigma and precision; its progress (no KL in the curve
    points) reads back and the page draws it."""
    at = page(root)
    for name, value in {"variant": "iwae-r", "objective": "mixture", "sigma": "0.01", "k": "2", "hidden": "16",
                        "z": "2", "epochs": "1", "batch": "20", "images": "400", "precision": "bf16-mixed"}.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception
    at.button(key="tl_start").click().run()
    assert not at.exception, at.exception
    (info,) = runs.list_runs(root)
    m, t = info.run.model, info.run.train
    assert (t.objective, t.beta, m.encoder_granularity, m.decoder_granularity) == ("mixture", 0.0, "sample", "sample")
    assert m.init_sigma == 0.01 and m.variant == "iwae-r" and t.k == 2 and t.precision == "bf16-mixed"
    done = wait_for(info.path, lambda r: r.status in ("finished", "failed") and not runs.is_locked(r.path))
    assert done.status == "finished", done.message
    assert done.progress["points"] and all(kl is None for _, _, kl in done.progress["points"])
    assert json.loads((info.path / "metrics.json").read_text())["training"]["precision"] == "bf16-mixed"
    at.run()
    assert not at.exception
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {"train L_k", "valid L_k"} <= {trace.get("name") for trace in spec["data"]}
