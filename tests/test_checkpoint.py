"""Model folders (iwae_core/checkpoint.py): safetensors + JSON round trip, and clear errors for corrupt or
mismatched files."""

import json

import pytest
import torch

from iwae_core import checkpoint as ckpt
from iwae_core import zoo
from iwae_core.config import ModelConfig, RunConfig, TrainConfig
from iwae_core.maths.model import IWAE


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    run = RunConfig(ModelConfig.for_variant("iwae-r", hidden=(16,), z_dim=3), TrainConfig(k=7))
    model = IWAE(run.model)
    ckpt.save_model(tmp_path, model, run)
    return tmp_path, model, run


def test_round_trip_restores_every_tensor_and_the_config(folder):
    path, model, run = folder
    loaded, loaded_run = ckpt.load_model(path)
    assert loaded_run == run and loaded_run.model.variant == "iwae-r"
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weights_are_safetensors_not_pickle(folder):
    path, _, _ = folder
    raw = (path / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert "decoder.layers.0.weight_rho" in header
    assert b"\x80\x04" not in raw[:2]  # no pickle protocol marker at the start


def test_truncated_weights_give_a_clear_error(folder):
    path, _, _ = folder
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        ckpt.load_model(path)


def test_garbage_config_gives_a_clear_error(folder):
    path, _, _ = folder
    (path / "config.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="config.json"):
        ckpt.load_model(path)
    (path / "config.json").write_text(json.dumps({"model": {"z_dim": 3, "colour": "red"}, "train": {}}))
    with pytest.raises(ckpt.CheckpointError, match="colour"):
        ckpt.load_model(path)


def test_config_that_does_not_match_the_weights_is_refused(folder):
    path, _, run = folder
    wrong = RunConfig(ModelConfig.for_variant("iwae-r", hidden=(16,), z_dim=5), run.train)
    (path / "config.json").write_text(wrong.to_json())
    with pytest.raises(ckpt.CheckpointError, match="shape"):
        ckpt.load_model(path)
    wrong = RunConfig(ModelConfig.for_variant("iwae", hidden=(16,), z_dim=3), run.train)
    (path / "config.json").write_text(wrong.to_json())
    with pytest.raises(ckpt.CheckpointError, match="unexpected"):
        ckpt.load_model(path)


def test_nan_weights_are_refused(tmp_path):
    run = RunConfig(ModelConfig(hidden=(4,), z_dim=2), TrainConfig())
    model = IWAE(run.model)
    with torch.no_grad():
        model.encoder.layers[0].weight_mu[0, 0] = float("nan")
    ckpt.save_model(tmp_path, model, run)
    with pytest.raises(ckpt.CheckpointError, match="NaN"):
        ckpt.load_model(tmp_path)


def test_missing_folder_and_missing_files(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="not a model folder"):
        ckpt.load_model(tmp_path / "nowhere")


def test_find_models_lists_folders_and_skips_broken_ones(folder, tmp_path):
    path, _, _ = folder
    broken = tmp_path.parent / (tmp_path.name + "-zoo") / "broken"
    broken.mkdir(parents=True)
    (broken / "model.safetensors").write_bytes(b"x")
    (broken / "config.json").write_text("{")
    good = broken.parent / "good"
    good.mkdir()
    for f in ("model.safetensors", "config.json"):
        (good / f).write_bytes((path / f).read_bytes())
    (good / "metrics.json").write_text('{"test": {"test_ll": -100.0}}')
    entries = zoo.find_models(broken.parent)
    assert [e.name for e in entries] == ["good"]
    assert entries[0].metrics["test"]["test_ll"] == -100.0 and entries[0].variant == "iwae-r"
