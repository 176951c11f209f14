"""Samples and Weight variance on a run's snapshots (source = snapshots), in Streamlit's AppTest: a tiny run folder
whose snapshots a Keeper wrote while a Trainer trained it. Checked: the run and step pickers and their URL round
trip, Previous / Next / Play stepping, following a run's newest snapshot, a thinned-out step, a rewritten snapshot
(caches key on the file and its mtime), and a broken snapshot (a notice, no traceback)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import synthetic_data
from iwae_core import evaluate
from iwae_core.config import ModelConfig, RunConfig, TrainConfig
from iwae_core.runs import snapshots, store
from iwae_core.runs.snapshots import Keeper, list_snapshots, read_snapshot
from iwae_core.train import Hooks, Trainer
from support import open_app

pytestmark = pytest.mark.usefixtures("no_logged_tracebacks")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished run folder 'live' (784-16-2 IWAE-R, 24 steps) holding 5 snapshots, thinned evenly."""
    import torch

    threads = torch.get_num_threads()
    path = tmp_path_factory.mktemp("template") / "live"
    path.mkdir()
    run = RunConfig(ModelConfig.for_variant("iwae-r", hidden=(16,), z_dim=2, init_sigma=0.05),
                    TrainConfig(k=2, batch_size=20, epochs=10, max_steps=24, device="cpu", threads=1,
                                eval_images=20, eval_k=2))
    (path / "config.json").write_text(run.to_json())
    (path / "run.json").write_text(json.dumps({"created": "2026-01-01T00:00:00"}))
    (path / "progress.json").write_text(json.dumps({"status": "finished", "step": 24}))
    keeper = Keeper(path, seconds=0.0, keep=5)
    try:
        t = Trainer(run, out=path, data=synthetic_data(), hooks=Hooks(on_step=[keeper.on_step]))
        keeper.start(t)
        t.fit()
        keeper.save(t)
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture
def run(trained_run, tmp_path, monkeypatch, tiny_zoo) -> Path:
    """A copy of the trained run in a fresh IWAE_RUNS_DIR, beside the tiny zoo."""
    monkeypatch.setenv("IWAE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("IWAE_ZOO_DIRS", str(tiny_zoo))
    monkeypatch.setenv("IWAE_DATA_DIR", str(tmp_path / "no-data"))
    path = tmp_path / "runs" / "live"
    shutil.copytree(trained_run, path)
    return path


def steps_of(path: Path) -> list[int]:
    return [s for s, _ in list_snapshots(path)]


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def layer_table(path: Path) -> pd.DataFrame:
    """The per-layer summary of a snapshot, computed here from the file (what Weight variance must show)."""
    return pd.DataFrame(evaluate.weight_statistics(read_snapshot(path)[0]))


def shown_table(at: AppTest) -> pd.DataFrame:
    return at.dataframe[-1].value  # the per-layer summary, the page's only table


def param(at: AppTest, name: str):
    value = at.query_params[name]
    return value[0] if isinstance(value, list) else value


def test_weight_variance_shows_the_latest_snapshot_and_steps_through_the_others(run):
    steps = steps_of(run)
    assert len(steps) == 5 and steps[0] == 0 and steps[-1] == 24
    at = open_app("4_Weight_variance.py", source="snapshots")
    assert at.radio(key="weights:source").value == "snapshots"
    assert at.selectbox(key="weights:run").value == "live"
    assert at.select_slider(key="weights:step").value == 24 and at.select_slider(key="weights:step").options == \
        [str(s) for s in steps]
    pd.testing.assert_frame_equal(shown_table(at), layer_table(snapshots.snapshot_path(run, 24)))
    assert "**live @ step 24**: IWAE-R" in "\n".join(m.value for m in at.markdown)
    assert (param(at, "source"), param(at, "run"), param(at, "step")) == ("snapshots", "live", "24")
    assert "model" not in at.query_params

    at.button(key="weights:step:previous").click()
    rerun(at)
    assert at.select_slider(key="weights:step").value == steps[-2]
    pd.testing.assert_frame_equal(shown_table(at), layer_table(snapshots.snapshot_path(run, steps[-2])))
    assert param(at, "step") == str(steps[-2])
    at.select_slider(key="weights:step").set_value(0)
    rerun(at)
    first = shown_table(at)
    pd.testing.assert_frame_equal(first, layer_table(snapshots.snapshot_path(run, 0)))
    assert at.button(key="weights:step:previous").disabled
    at.button(key="weights:step:next").click()
    rerun(at)
    assert at.select_slider(key="weights:step").value == steps[1]
    assert not shown_table(at).equals(first)  # the weights trained between the snapshots

    at.radio(key="weights:source").set_value("zoo")
    rerun(at)
    assert param(at, "model") == "tiny-iwae-r" and not {"source", "run", "step"} & set(at.query_params)


def test_a_copied_link_reopens_the_run_and_step_and_a_thinned_step_gets_the_nearest(run):
    steps = steps_of(run)
    at = open_app("4_Weight_variance.py", source="snapshots")
    at.select_slider(key="weights:step").set_value(steps[1])
    rerun(at)
    link = {name: param(at, name) for name in at.query_params}
    fresh = open_app("4_Weight_variance.py", **link)
    assert fresh.select_slider(key="weights:step").value == steps[1]
    assert "The link asked for" not in "\n".join(w.value for w in fresh.warning)
    assert [c.proto.spec for c in fresh.get("plotly_chart")] == [c.proto.spec for c in at.get("plotly_chart")]

    off = open_app("4_Weight_variance.py", source="snapshots", run="live", step=str(steps[1] + 1))
    assert off.select_slider(key="weights:step").value == steps[1]  # the nearest snapshot
    notice = "\n".join(w.value for w in off.warning)
    assert f"step = {steps[1] + 1}" in notice and f"step = {steps[1]}" in notice
    other = open_app("4_Weight_variance.py", source="snapshots", run="no-such-run")
    assert other.selectbox(key="weights:run").value == "live" and "run = no-such-run" in \
        "\n".join(w.value for w in other.warning)


def test_the_view_follows_new_snapshots_at_the_latest_and_stays_on_a_chosen_step(run):
    at = open_app("4_Weight_variance.py", source="snapshots")
    assert at.select_slider(key="weights:step").value == 24
    first = snapshots.snapshot_path(run, 0)
    shutil.copyfile(first, snapshots.snapshot_path(run, 30))  # the run wrote a new snapshot
    rerun(at)
    assert at.select_slider(key="weights:step").value == 30
    pd.testing.assert_frame_equal(shown_table(at), layer_table(first))
    at.select_slider(key="weights:step").set_value(24)
    rerun(at)
    shutil.copyfile(first, snapshots.snapshot_path(run, 36))
    rerun(at)
    assert at.select_slider(key="weights:step").value == 24  # a step chosen by hand stays

    middle = steps_of(run)[2]
    at.select_slider(key="weights:step").set_value(middle)
    rerun(at)
    snapshots.snapshot_path(run, middle).unlink()  # thinned out while shown
    rerun(at)
    nearest = min(steps_of(run), key=lambda s: (abs(s - middle), s))
    assert at.select_slider(key="weights:step").value == nearest
    assert f"step {middle:,} was thinned out" in "\n".join(c.value for c in at.caption)


def test_play_steps_through_the_snapshots_from_the_first_and_stops_at_the_end(run):
    steps = steps_of(run)
    at = open_app("4_Weight_variance.py", source="snapshots")
    at.button(key="weights:step:play").click()
    rerun(at)
    assert at.session_state["weights:step:playing"]
    assert at.select_slider(key="weights:step").value == 0  # Play at the latest starts from the first
    rerun(at)
    assert at.select_slider(key="weights:step").value == 0  # the next frame only after PLAY_SECONDS
    shown = [0]
    for _ in steps[1:]:
        at.session_state["weights:step:frame"] = 0.0  # PLAY_SECONDS have passed
        rerun(at)
        shown.append(at.select_slider(key="weights:step").value)
        pd.testing.assert_frame_equal(shown_table(at), layer_table(snapshots.snapshot_path(run, shown[-1])))
    assert shown == steps
    at.session_state["weights:step:frame"] = 0.0
    rerun(at)  # at the end of a run that no longer trains, playing stops
    assert not at.session_state["weights:step:playing"] and at.select_slider(key="weights:step").value == 24

    at.select_slider(key="weights:step").set_value(steps[1])
    rerun(at)
    at.button(key="weights:step:play").click()
    rerun(at)
    at.button(key="weights:step:play").click()  # pause
    rerun(at)
    at.session_state["weights:step:frame"] = 0.0
    rerun(at)
    assert not at.session_state["weights:step:playing"] and at.select_slider(key="weights:step").value == steps[1]


def test_a_training_run_is_followed_and_play_waits_at_its_latest_snapshot(run):
    """While a worker holds the run (it trains), the view says it follows the run, and Play at the latest snapshot
    keeps playing (it waits for the next one) instead of stopping."""
    (run / "progress.json").write_text(json.dumps({"status": "running", "step": 24, "heartbeat": time.time()}))
    fd = store.try_lock(run)
    try:
        at = open_app("4_Weight_variance.py", source="snapshots")
        assert "(running, training)" in "\n".join(c.value for c in at.caption)
        assert "following the run" in "\n".join(c.value for c in at.caption)
        at.select_slider(key="weights:step").set_value(steps_of(run)[-2])
        rerun(at)
        at.button(key="weights:step:play").click()
        rerun(at)
        at.session_state["weights:step:frame"] = 0.0
        rerun(at)
        assert at.select_slider(key="weights:step").value == 24
        at.session_state["weights:step:frame"] = 0.0
        rerun(at)
        assert at.session_state["weights:step:playing"] and at.select_slider(key="weights:step").value == 24
        shutil.copyfile(snapshots.snapshot_path(run, 0), snapshots.snapshot_path(run, 30))
        at.session_state["weights:step:frame"] = 0.0
        rerun(at)
        assert at.select_slider(key="weights:step").value == 30
    finally:
        os.close(fd)


def test_a_rewritten_snapshot_is_read_again_and_a_broken_one_gives_a_notice(run):
    latest, first = snapshots.snapshot_path(run, 24), snapshots.snapshot_path(run, 0)
    at = open_app("4_Weight_variance.py", source="snapshots")
    before = shown_table(at)
    shutil.copyfile(first, latest)  # the same file name, other weights: a new mtime
    os.utime(latest, ns=(latest.stat().st_atime_ns, latest.stat().st_mtime_ns + 10**9))
    rerun(at)
    pd.testing.assert_frame_equal(shown_table(at), layer_table(first))
    assert not shown_table(at).equals(before)

    latest.write_bytes(b"\x00" * 100)
    rerun(at)
    notice = "\n".join(w.value for w in at.warning)
    assert "cannot be shown" in notice and "step-000000024.safetensors" in notice
    assert not at.get("plotly_chart")


def test_samples_shows_a_snapshot_and_its_images_change_with_the_step(run):
    steps = steps_of(run)
    at = open_app("2_Samples.py", source="snapshots", view="prior")
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t["name"] for t in spec["data"] if t.get("type") == "heatmap"]
    assert names == ["live @ step 24 (IWAE-R)"]
    last = [t["z"] for t in spec["data"] if t.get("type") == "heatmap"]
    at.select_slider(key="samples:step").set_value(steps[0])
    rerun(at)
    spec0 = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [t["name"] for t in spec0["data"] if t.get("type") == "heatmap"] == ["live @ step 0 (IWAE-R)"]
    assert [t["z"] for t in spec0["data"] if t.get("type") == "heatmap"] != last
    assert (param(at, "source"), param(at, "run"), param(at, "step")) == ("snapshots", "live", "0")


def test_without_runs_the_snapshot_source_says_how_to_get_some_and_an_empty_zoo_defaults_to_it(run, tmp_path,
                                                                                                monkeypatch):
    monkeypatch.setenv("IWAE_RUNS_DIR", str(tmp_path / "no-runs"))
    at = open_app("4_Weight_variance.py", source="snapshots")
    assert "No run has snapshots yet" in "\n".join(i.value for i in at.info)
    monkeypatch.setenv("IWAE_RUNS_DIR", str(run.parent))
    monkeypatch.setenv("IWAE_ZOO_DIRS", str(tmp_path / "empty-zoo"))
    at = open_app("2_Samples.py", view="prior")
    assert at.radio(key="samples:source").value == "snapshots"
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [t["name"] for t in spec["data"] if t.get("type") == "heatmap"] == ["live @ step 24 (IWAE-R)"]
