"""The `iwae` command end to end on real MNIST: train writes a model folder, eval fills metrics.json, table prints."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from iwae_core.cli import main
from support import require_data


def iwae(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iwae_core.cli", *args], capture_output=True, text=True,
                          check=check)


@pytest.mark.slow
def test_train_eval_table(tmp_path):
    require_data("MNIST", "raw")
    out = tmp_path / "run"
    r = iwae("train", "--dataset", "mnist", "--variant", "iwae-rrec", "--hidden", "32", "--z-dim", "4",
             "--k", "3", "--max-steps", "30", "--batch-size", "50", "--threads", "1", "--out", str(out))
    assert "max_steps: 30 steps" in r.stdout
    for name in ("model.safetensors", "config.json", "metrics.json", "history.csv"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["hidden"] == [32] and config["model"]["random_encoder"] is True
    assert config["model"]["draws"] == "philox"  # the default generator, recorded with the model
    again = iwae("train", "--dataset", "mnist", "--out", str(out), check=False)
    assert again.returncode == 2 and "--resume" in again.stderr
    r = iwae("eval", str(out), "--k", "50", "--limit", "20", "--mc-repeats", "2")
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert test["S"] == 50 and test["n_images"] == 20 and set(test["by_tau"]) == {"1", "0"}
    assert test["draws"] == "philox"
    assert -400 < test["by_tau"]["1"]["mean"] < -100 and test["by_tau"]["1"]["stderr"] > 0
    assert metrics["training"]["steps"] == 30
    # Evaluating one noise scale again keeps the other's result for the same weights, images and S ...
    iwae("eval", str(out), "--k", "50", "--limit", "20", "--mc-repeats", "1", "--noise-scale", "0", "--seed", "7")
    again = json.loads((out / "metrics.json").read_text())["test"]
    assert again["by_tau"]["1"] == test["by_tau"]["1"] and again["by_tau"]["0"] != test["by_tau"]["0"]
    assert set(load_file(str(out / "test_ll.safetensors"))) == {"tau=1", "tau=0"}
    # ... but not a result on other images.
    iwae("eval", str(out), "--k", "50", "--limit", "10", "--mc-repeats", "1", "--noise-scale", "0")
    other = json.loads((out / "metrics.json").read_text())["test"]
    assert set(other["by_tau"]) == {"0"} and other["n_images"] == 10
    assert set(load_file(str(out / "test_ll.safetensors"))) == {"tau=0"}
    # Resuming a run that has done its steps changes nothing, not even the evaluation in metrics.json.
    before = (out / "metrics.json").read_bytes(), (out / "model.safetensors").read_bytes()
    r = iwae("train", "--dataset", "mnist", "--variant", "iwae-rrec", "--hidden", "32", "--z-dim", "4",
             "--k", "3", "--max-steps", "30", "--batch-size", "50", "--threads", "1", "--out", str(out), "--resume")
    assert "30 steps already" in r.stdout and "nothing to do" in r.stdout
    assert ((out / "metrics.json").read_bytes(), (out / "model.safetensors").read_bytes()) == before
    r = iwae("table", str(out))
    assert "-94.709" in r.stdout and "run" in r.stdout  # the paper's IWAE-Rrec number beside ours


def test_bad_arguments_give_clear_errors(tmp_path, capsys):
    assert main(["train", "--k", "0", "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path)]) == 2
    assert "k must be a positive integer" in capsys.readouterr().err
    assert main(["train", "--lr", "-1", "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path)]) == 2
    assert "lr must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse names the choices
        main(["train", "--draws", "mt19937", "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path)])
    assert "--draws: invalid choice: 'mt19937'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_train_without_data_names_the_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.MNIST.download", lambda self: (_ for _ in ()).throw(OSError("offline")))
    code = main(["train", "--max-steps", "1", "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "MNIST/raw" in err


@pytest.mark.slow
def test_resume_of_a_run_killed_before_its_metrics_writes_them(tmp_path):
    """A kill after the last checkpoint but before metrics.json: --resume writes the record, trains nothing."""
    require_data("MNIST", "raw")
    out = tmp_path / "run"
    args = ["train", "--dataset", "mnist", "--hidden", "16", "--z-dim", "3", "--k", "2", "--max-steps", "5",
            "--batch-size", "50", "--threads", "1", "--out", str(out)]
    iwae(*args)
    weights = (out / "model.safetensors").read_bytes()
    (out / "metrics.json").unlink()
    r = iwae(*args, "--resume")
    assert "written now" in r.stdout
    assert json.loads((out / "metrics.json").read_text())["training"]["steps"] == 5
    assert (out / "model.safetensors").read_bytes() == weights
    assert "nothing to do" in iwae(*args, "--resume").stdout
