"""Reliability of training and model folders: kills and Ctrl-C lose no run, no folder of the user's is
overwritten, every broken file or bad argument is a one-line error that names it (issue 14)."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import synthetic_data, train_tiny
from iwae_core import checkpoint as ckpt
from iwae_core.cli import main
from iwae_core.config import ModelConfig, RunConfig, TrainConfig
from iwae_core.data import DataCorruptError, load_mnist
from iwae_core.device import check_training_memory
from iwae_core.evaluate import check_evaluation_target
from iwae_core.maths.model import IWAE
from iwae_core.train import Trainer

ROOT = Path(__file__).resolve().parent.parent

# ---- the kill test --------------------------------------------------------------------------------------
# A 30-step run (3 epochs of 10 steps, a checkpoint at each epoch's end) killed at many points, then resumed
# until it finishes. Each chain: the kills in order (each in a fresh process that resumes the run), the exit
# the first kill gives, and the step the final resume starts from: never before the last checkpoint that was
# complete when the kill came.
CHAINS = {
    "SIGKILL mid-step": ([{"at": "objective", "n": 15}], -9, 10),
    "Ctrl-C mid-step": ([{"at": "objective", "n": 15, "signal": "SIGINT"}], 130, 15),
    "SIGTERM mid-step": ([{"at": "objective", "n": 25, "signal": "SIGTERM"}], 0, 25),
    "SIGKILL while the checkpoint folder is written": ([{"at": "swap", "n": 2, "phase": "writing"}], -9, 10),
    "SIGKILL between the swap's two renames": ([{"at": "swap", "n": 2, "phase": "between"}], -9, 10),
    "SIGKILL after the renames, before the clean-up": ([{"at": "swap", "n": 2, "phase": "after"}], -9, 20),
    "SIGKILL inside an atomic file write": ([{"at": "atomic", "n": 5}], -9, 10),
    # the resumed process is killed in the swap too: recovered twice, still nothing lost
    "SIGKILL between the renames, twice": ([{"at": "swap", "n": 2, "phase": "between"},
                                            {"at": "swap", "n": 1, "phase": "between"}], -9, 10),
    "SIGKILL mid-step, then Ctrl-C": ([{"at": "objective", "n": 15},
                                       {"at": "objective", "n": 8, "signal": "SIGINT"}], -9, 18),
}


def run_driver(cases: list[dict]) -> list[int]:
    """tests/train_driver.py: each case in a child forked from one process, so torch is imported once."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "train_driver.py"), json.dumps(cases)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


# the three of the issue, in every run of the tests (about 10 s); all of them with the slow tests
QUICK = ("SIGKILL mid-step", "Ctrl-C mid-step", "SIGKILL between the swap's two renames")


@pytest.mark.parametrize("names", [
    QUICK, pytest.param([name for name in CHAINS if name not in QUICK], marks=pytest.mark.slow)], ids=["quick", "all"])
def test_kills_and_ctrl_c_anywhere_resume_to_byte_identical_weights(tmp_path, names):
    chains = {name: CHAINS[name] for name in names}
    cases = [{"out": str(tmp_path / "full"), "log": str(tmp_path / "full.log")}]
    for i, (kills, _, _) in enumerate(chains.values()):
        out = str(tmp_path / f"run{i}")
        cases += [{"out": out, "log": f"{out}-{j}.log", "kill": kill, "resume": j > 0} for j, kill in enumerate(kills)]
        cases.append({"out": out, "log": f"{out}-final.log", "resume": True})
    codes = iter(run_driver(cases))
    assert next(codes) == 0
    full = tmp_path / "full"
    for i, (name, (kills, first_exit, resumed_at)) in enumerate(chains.items()):
        out = tmp_path / f"run{i}"
        exits = [next(codes) for _ in kills]
        assert exits[0] == first_exit, (name, Path(f"{out}-0.log").read_text())
        assert next(codes) == 0, (name, Path(f"{out}-final.log").read_text())
        log = Path(f"{out}-final.log").read_text()
        assert f"resuming {out} at step {resumed_at} " in log, (name, log)
        assert "finished: 30 steps" in log, (name, log)
        for f in ("model.safetensors", "checkpoint/optimizer.safetensors", "checkpoint/rng.safetensors"):
            assert (out / f).read_bytes() == (full / f).read_bytes(), (name, f)
        left = sorted(p.name for p in out.iterdir() if p.name.startswith(".") or p.name == "checkpoint.old")
        assert left == [], (name, left)  # nothing half-written is left behind
        if "between the" in name:  # the kill left checkpoint.old and no checkpoint/, and resume said so
            assert "recovered" in log and "from checkpoint.old" in log, log


def test_a_run_whose_checkpoint_was_moved_to_checkpoint_old_resumes_from_it(tmp_path):
    """The issue's repro: mv RUN/checkpoint RUN/checkpoint.old; --resume must continue, not start over."""
    train_tiny(tmp_path / "run", "iwae", steps=12)
    os.replace(tmp_path / "run" / "checkpoint", tmp_path / "run" / "checkpoint.old")
    run = ckpt.load_run_config(tmp_path / "run")
    trainer = Trainer(run, out=tmp_path / "run", data=synthetic_data())
    assert trainer.resume() and trainer.step == 12
    assert "checkpoint.old" in trainer.recovered
    assert (tmp_path / "run" / "checkpoint").is_dir() and not (tmp_path / "run" / "checkpoint.old").exists()


def test_replace_dir_keeps_the_only_good_folder_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    final, old = tmp_path / "checkpoint", tmp_path / "checkpoint.old"
    old.mkdir()
    (old / "state").write_text("good")  # a kill between the renames left only this
    new = tmp_path / ".checkpoint.tmp-1"
    new.mkdir()
    (new / "state").write_text("new")
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(old.exists()), real(a, b)))
    ckpt.replace_dir(new, final)
    assert seen == [True]  # old still there when the new folder was renamed in
    assert (final / "state").read_text() == "new" and not old.exists()


# ---- model folders: broken in every way, a clear error or a correct load -----------------------------------
try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the test extra installs it; without it the property test is skipped, not the module
    given = None


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    try:
        return train_tiny(tmp_path_factory.mktemp("fuzz") / "model", "iwae-r", steps=5)
    finally:
        torch.set_num_threads(threads)


TENSOR_NAMES = [  # those of an iwae-r model with one hidden layer
    f"{net}.layers.{i}.{kind}_{p}" for net in ("encoder", "decoder") for i in (0, 1)
    for kind in ("weight", "bias") for p in ("mu", "rho")]

if given is not None:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.sampled_from([0, 1, 3, 16, 784, 10**12])
        | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=8)
    byte_edit = st.tuples(st.just("bytes"), st.sampled_from(["model.safetensors", "config.json"]),
                          st.sampled_from(["flip", "truncate", "insert", "replace"]),
                          st.floats(0, 1), st.binary(min_size=1, max_size=16))
    tensor_edit = st.tuples(
        st.just("tensor"), st.sampled_from(TENSOR_NAMES),
        st.sampled_from(["dtype", "shape", "value", "drop", "rename", "extra"]),
        st.sampled_from([torch.int32, torch.int64, torch.bool, torch.uint8, torch.int8, torch.float16,
                         torch.bfloat16, torch.float64]),
        st.sampled_from(["transpose", "drop-row", "unsqueeze", "flatten", "scalar", "empty"]),
        st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30, 1e5, -200.0, 0.0, 2.5, -3.0]))
    json_edit = st.tuples(
        st.just("json"), st.sampled_from(["config.json"]),
        st.sampled_from(["set", "delete", "replace", "nest"]),
        st.sampled_from([(), ("model",), ("train",)]),
        st.sampled_from(["hidden", "z_dim", "x_dim", "prior_std", "init_sigma", "random_encoder", "activation",
                         "encoder_granularity", "k", "lr", "colour"]),
        json_values)
    metrics_edit = st.tuples(st.just("metrics"), json_values | st.text(max_size=30))


def mutate(folder: Path, edit: tuple) -> None:
    kind = edit[0]
    if kind == "bytes":
        _, name, op, where, data = edit
        raw = (folder / name).read_bytes()
        at = int(where * len(raw))
        if op == "flip":
            raw = raw[:at] + bytes([raw[min(at, len(raw) - 1)] ^ data[0]]) + raw[at + 1:]
        elif op == "truncate":
            raw = raw[:at]
        elif op == "insert":
            raw = raw[:at] + data + raw[at:]
        else:
            raw = data
        (folder / name).write_bytes(raw)
    elif kind == "tensor":
        _, name, op, dtype, reshape, value = edit
        state = load_file(str(folder / "model.safetensors"))
        t = state[name]
        if op == "dtype":
            state[name] = t.to(dtype)
        elif op == "shape":
            state[name] = {"transpose": lambda: t.T.contiguous() if t.dim() == 2 else t[None],
                           "drop-row": lambda: t[:-1].contiguous(), "unsqueeze": lambda: t[None].contiguous(),
                           "flatten": lambda: t.flatten(), "scalar": lambda: t.flatten()[0].clone(),
                           "empty": lambda: t[:0].contiguous()}[reshape]()
        elif op == "value":
            t = t.clone()
            t.view(-1)[0] = value
            state[name] = t
        elif op == "drop":
            del state[name]
        elif op == "rename":
            state[name + "_x"] = state.pop(name)
        else:
            state["extra.weight"] = torch.zeros(3)
        save_file(state, str(folder / "model.safetensors"))
    elif kind == "json":
        _, name, op, where, key, value = edit
        doc = json.loads((folder / name).read_text())
        target = doc
        for part in where:
            target = target[part]
        if op == "set":
            target[key] = value
        elif op == "delete":
            target.pop(key, None)
            doc.pop(key, None)
        elif op == "replace":
            doc = value
        (folder / name).write_text("[" * 100_000 if op == "nest" else json.dumps(doc, allow_nan=True))
    else:
        value = edit[1]
        (folder / "metrics.json").write_text(value if isinstance(value, str) else json.dumps(value))


def snapshot(root: Path) -> dict:
    """Every file and folder under root, with the size and time of each file (a folder's time changes when
    a file is created and removed in it: the evaluation's write test does that, and leaves nothing)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "folder"
            for p in root.rglob("*")}


def check_loads_correctly_or_names_the_file(folder: Path, edit: tuple) -> None:
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        work = root / "model"
        shutil.copytree(folder, work)
        mutate(work, edit)
        before = snapshot(root)
        try:
            model, run = ckpt.load_model(work)
        except ckpt.CheckpointError as err:
            msg = str(err)
            assert "\n" not in msg and len(msg) < 1000, msg
            assert str(work) in msg and re.search(r"(model\.safetensors|config\.json)", msg), msg
        else:
            stored = load_file(str(work / "model.safetensors"))
            for name, p in model.state_dict().items():
                assert p.dtype == torch.float32 and torch.isfinite(p).all()
                assert torch.equal(p, stored[name].to(torch.float32)), name
            assert run == ckpt.load_run_config(work)
            x = torch.rand(2, run.model.x_dim).bernoulli()
            assert torch.isfinite(model.log_weights(x, 3)).all()
        try:
            metrics = check_evaluation_target(work, write=True)
        except ckpt.CheckpointError as err:
            assert "metrics.json" in str(err) and "\n" not in str(err)
        else:
            assert isinstance(metrics, dict)
        assert snapshot(root) == before  # reading wrote nothing, inside the folder or beside it


@pytest.mark.skipif(given is None, reason="hypothesis is not installed (pip install -e '.[test]')")
def test_a_mutated_model_folder_loads_correctly_or_gives_one_line_naming_the_file(tiny_folder):
    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.one_of(byte_edit, tensor_edit, json_edit, metrics_edit))
    def check(edit):
        check_loads_correctly_or_names_the_file(tiny_folder, edit)
    check()


@pytest.mark.parametrize("edit, message", [
    (("tensor", "decoder.layers.0.weight_mu", "dtype", torch.int32, None, None), "is int32, not a floating"),
    (("tensor", "decoder.layers.0.weight_mu", "dtype", torch.bool, None, None), "is bool, not a floating"),
    (("tensor", "encoder.layers.0.weight_mu", "value", None, None, 1e30), "more than 10000"),
    (("tensor", "encoder.layers.0.weight_rho", "value", None, None, -200.0), "sigma = softplus"),
    (("tensor", "encoder.layers.0.weight_mu", "value", None, None, math.inf), "NaN or infinite"),
    (("json", "config.json", "set", ("model",), "prior_std", math.inf), "prior_std and init_sigma must be finite"),
    (("json", "config.json", "set", ("model",), "hidden", [10**12]), "shape"),
    (("json", "config.json", "set", ("model",), "z_dim", 3.5), "z_dim must be an integer"),
    (("json", "config.json", "nest", (), "x", None), "config.json is not a valid model config"),
])
def test_each_kind_of_broken_weights_or_config_names_the_file_and_tensor(tiny_folder, tmp_path, edit, message):
    import shutil

    shutil.copytree(tiny_folder, tmp_path / "m")
    mutate(tmp_path / "m", edit)
    with pytest.raises(ckpt.CheckpointError, match=re.escape(message)) as err:
        ckpt.load_model(tmp_path / "m")
    assert str(tmp_path / "m") in str(err.value)
    if edit[0] == "tensor":
        assert edit[1] in str(err.value)


def test_float64_weights_load_as_float32(tiny_folder, tmp_path):
    import shutil

    shutil.copytree(tiny_folder, tmp_path / "m")
    mutate(tmp_path / "m", ("tensor", "decoder.layers.1.bias_mu", "dtype", torch.float64, None, None))
    model, _ = ckpt.load_model(tmp_path / "m")
    assert model.decoder.layers[1].bias_mu.dtype == torch.float32


def test_json_is_written_strictly_with_non_finite_numbers_as_null(tmp_path):
    ckpt.write_json(tmp_path / "m.json", {"kl": math.inf, "rows": [1.0, math.nan, {"x": -math.inf}], "n": 3})

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")
    data = json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse)
    assert data == {"kl": None, "rows": [1.0, None, {"x": None}], "n": 3}


# ---- checkpoints with broken files ------------------------------------------------------------------------
@pytest.fixture
def trained_run(tmp_path):
    run = RunConfig(ModelConfig.for_variant("iwae-r", hidden=(16,), z_dim=3),
                    TrainConfig(k=3, batch_size=20, epochs=1, max_steps=4, threads=1, device="cpu", eval_k=5))
    Trainer(run, out=tmp_path / "run", data=synthetic_data()).fit()
    return run, tmp_path / "run"


@pytest.mark.parametrize("breakage, message", [
    (lambda c: (c / "trainer_state.json").write_text("{}"), "trainer_state.json has no 'step'"),
    (lambda c: (c / "trainer_state.json").write_text("[1]"), "trainer_state.json holds a JSON list"),
    (lambda c: (c / "trainer_state.json").write_text(
        json.dumps({**json.loads((c / "trainer_state.json").read_text()), "step": "7"})), "'step' is '7'"),
    (lambda c: save_file({**load_file(str(c / "rng.safetensors")), "torch_rng": torch.zeros(7, dtype=torch.uint8)},
                         str(c / "rng.safetensors")), "rng.safetensors: tensor torch_rng is torch.uint8 (7,)"),
    (lambda c: save_file({**load_file(str(c / "rng.safetensors")),
                          "torch_rng": torch.zeros(5056, dtype=torch.uint8)}, str(c / "rng.safetensors")),
     "rng.safetensors holds no valid random generator state"),
    (lambda c: save_file({**load_file(str(c / "rng.safetensors")), "perm": torch.zeros(200, dtype=torch.int64)},
                         str(c / "rng.safetensors")), "rng.safetensors: tensor perm is not a permutation"),
    (lambda c: (c / "optimizer.safetensors").write_bytes(b"\x00" * 3), "optimizer.safetensors is not a readable"),
])
def test_a_broken_checkpoint_file_is_named(trained_run, breakage, message):
    run, out = trained_run
    breakage(out / "checkpoint")
    with pytest.raises(ckpt.CheckpointError, match=re.escape(message)):
        Trainer(run, out=out, data=synthetic_data()).resume()


def test_resume_with_other_settings_names_them_and_force_continues(trained_run):
    run, out = trained_run
    other = RunConfig(run.model, TrainConfig(**{**vars(run.train), "k": 4, "lr": 3e-3}))
    with pytest.raises(ckpt.CheckpointError, match=r"trained with --k 3, --lr 0.001; this run asks for --k 4, "
                                                   r"--lr 0.003.*--force"):
        Trainer(other, out=out, data=synthetic_data()).resume()
    trainer = Trainer(other, out=out, data=synthetic_data())
    assert trainer.resume(allow_changes=True) and trainer.step == 4
    assert [c[0] for c in trainer.changed] == ["--k", "--lr"]
    longer = RunConfig(run.model, TrainConfig(**{**vars(run.train), "max_steps": 8, "epochs": 3}))
    assert Trainer(longer, out=out, data=synthetic_data()).resume()  # a longer run is no other run


def test_corrupt_mnist_header_gives_a_reason(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, magic in (("train-images-idx3-ubyte", 0x803), ("train-labels-idx1-ubyte", 0x801),
                        ("t10k-images-idx3-ubyte", 0x803), ("t10k-labels-idx1-ubyte", 0x801)):
        (raw / name).write_bytes(magic.to_bytes(4, "big") + b"\x00\x00\x00\x05" + b"\x01" * 40)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 100)
    with pytest.raises(DataCorruptError, match=r"train-images-idx3-ubyte cannot be read: it starts with 0x12345678"):
        load_mnist(tmp_path, download=False)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") * 3 + b"\x00" * 5)
    with pytest.raises(DataCorruptError, match=r"is 21 bytes, its header announces \[2, 2, 2\], which take 24"):
        load_mnist(tmp_path, download=False)


# ---- the command line ---------------------------------------------------------------------------------------
TINY = ["--variant", "iwae-r", "--hidden", "16", "--z-dim", "3", "--k", "3", "--batch-size", "20", "--epochs", "1",
        "--max-steps", "3", "--threads", "1", "--device", "cpu"]


@pytest.fixture
def synthetic(monkeypatch):
    """The CLI trains and evaluates on synthetic data instead of reading MNIST."""
    data = synthetic_data()
    monkeypatch.setattr("iwae_core.train.load_dataset", lambda name, root=None: data)
    monkeypatch.setattr("iwae_core.evaluate.load_dataset", lambda name, root=None: data)
    return data


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if the data is even loaded: the error must come before."""
    def load(*args, **kwargs):
        raise AssertionError("the data was loaded before the bad argument was refused")
    monkeypatch.setattr("iwae_core.train.load_dataset", load)
    monkeypatch.setattr("iwae_core.evaluate.load_dataset", load)


def error_of(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err  # one line, no traceback
    return lines[0]


def test_out_that_holds_the_users_files_is_refused_and_left_alone(tmp_path, capsys, no_data):
    out = tmp_path / "mine"
    (out / "checkpoint.old").mkdir(parents=True)
    (out / "checkpoint.old" / "thesis.tex").write_text("chapter 1")
    (out / "config.json").write_text('{"theme": "dark"}')
    (out / "history.csv").write_text("my,own\n")
    before = snapshot(out)
    err = error_of(["train", *TINY, "--out", str(out)], capsys)
    assert "is not empty" in err and "holds no run" in err and "--force" in err
    err = error_of(["train", *TINY, "--out", str(out), "--resume"], capsys)
    assert "nothing to resume" in err
    err = error_of(["train", *TINY, "--out", str(out), "--force"], capsys)
    assert "checkpoint.old" in err and "move them away" in err
    assert snapshot(out) == before


def test_force_writes_the_run_into_a_foreign_folder_and_keeps_the_other_files(tmp_path, capsys, synthetic):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["train", *TINY, "--out", str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "keep me"
    ckpt.load_model(out)


def test_a_folder_holding_only_a_log_counts_as_empty(tmp_path, capsys, synthetic):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train.log").write_text("")  # what `iwae train ... >> OUT/train.log` creates first
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "train.log").exists()


def test_an_existing_run_needs_resume_or_force_and_resume_on_an_empty_folder_says_so(tmp_path, capsys, synthetic):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--resume"]) == 0
    assert f"no checkpoint in {out}: starting from scratch" in capsys.readouterr().out
    err = error_of(["train", *TINY, "--out", str(out)], capsys)
    assert "already holds a run" in err and "--resume" in err
    err = error_of(["train", *TINY[:-4], "--k", "5", "--lr", "0.01", "--out", str(out), "--resume"], capsys)
    assert "--k 3" in err and "--k 5" in err and "--lr 0.001" in err and "--lr 0.01" in err and "--force" in err
    assert main(["train", *TINY[:-4], "--k", "5", "--max-steps", "6", "--out", str(out), "--resume", "--force"]) == 0
    stdout = capsys.readouterr().out
    assert "--k 3 -> 5" in stdout and "resuming" in stdout
    assert json.loads((out / "config.json").read_text())["train"]["k"] == 5


def test_out_that_is_a_file_or_under_a_file_is_refused_before_training(tmp_path, capsys, no_data):
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in error_of(["train", *TINY, "--out", str(tmp_path / "file")], capsys)
    assert "cannot be created" in error_of(["train", *TINY, "--out", str(tmp_path / "file" / "run")], capsys)


def test_a_broken_metrics_json_in_out_is_refused_before_training(tmp_path, capsys, synthetic, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    (out / "metrics.json").write_text('["not", "an", "object"]')
    monkeypatch.setattr("iwae_core.train.load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    assert "metrics.json holds a JSON list" in error_of(["train", *TINY, "--out", str(out), "--resume"], capsys)


@pytest.mark.parametrize("args, message", [
    (["--lr-final", "-5"], "--lr-final must be a finite rate of 0 or more, got -5.0"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--seed", "1" + "0" * 22], "--seed must be an integer from 0 to"),
    (["--k", "0"], "--k must be a positive integer"),
    (["--k", "200000"], "--k=200000 is more than 100000 importance samples; use a smaller --k"),
    (["--lr", "nan"], "--lr must be positive"),
    (["--prior-std", "inf"], "--prior-std and --init-sigma must be finite"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--k", "100000", "--batch-size", "100"], "GiB per training step, more than this machine's"),
])
def test_bad_train_arguments_are_refused_before_the_data_is_loaded(tmp_path, capsys, no_data, args, message):
    err = error_of(["train", *TINY, *args, "--out", str(tmp_path / "run")], capsys)
    assert message in err


def test_a_batch_larger_than_the_training_set_is_refused(tmp_path, capsys, synthetic):
    err = error_of(["train", *TINY, "--batch-size", "1000", "--out", str(tmp_path / "run")], capsys)
    assert "--batch-size 1000 is more than the 200 training images" in err
    assert not (tmp_path / "run").exists()  # the folder made for it is gone again


def test_an_unwritable_out_is_refused_before_training(tmp_path, capsys, no_data, monkeypatch):
    def read_only(*args, **kwargs):  # as on a read-only file system (root ignores permission bits)
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr("iwae_core.checkpoint.tempfile.mkstemp", read_only)
    (tmp_path / "run").mkdir()
    err = error_of(["train", *TINY, "--out", str(tmp_path / "run")], capsys)
    assert f"--out {tmp_path / 'run'} is not a writable folder: Read-only file system" in err


def test_the_memory_estimate_passes_the_paper_setting_and_refuses_absurd_ones():
    paper = RunConfig(ModelConfig(), TrainConfig(k=25, batch_size=100))
    check_training_memory(paper, available=4 * 2**30)  # fits a 4 GiB machine
    with pytest.raises(ValueError, match="--k 5000 x --batch-size 2000"):
        check_training_memory(RunConfig(ModelConfig(hidden=(2000,)), TrainConfig(k=5000, batch_size=2000)),
                              available=1024 * 2**30)


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    run = RunConfig(ModelConfig.for_variant("iwae-r", hidden=(16,), z_dim=3), TrainConfig(k=3))
    ckpt.save_model(tmp_path / "m", IWAE(run.model), run)
    return tmp_path / "m"


@pytest.mark.parametrize("args, message", [
    (["--limit", "-3"], "--limit must be at least 1, got -3"),
    (["--limit", "0"], "--limit must be at least 1, got 0"),
    (["--noise-scale", "nan"], "--noise-scale must be from 0 to 1000, got nan"),
    (["--noise-scale", "1", "-0.5"], "--noise-scale must be from 0 to 1000, got -0.5"),
    (["--batch-size", "-3"], "--batch-size must be at least 1, got -3"),
    (["--mc-images", "0"], "--mc-images must be at least 1, got 0"),
    (["--mc-repeats", "0"], "--mc-repeats must be at least 1, got 0"),
    (["--k", "0"], "--k must be a positive integer"),
    (["--S", "0"], "--S must be a positive integer"),  # S is the name; --k and --noise-scale its older spellings
    (["--tau", "inf"], "--tau must be from 0 to 1000, got inf"),
    (["--seed", "-1"], "--seed must be an integer from 0 to"),
])
def test_bad_eval_arguments_are_refused_up_front(model_dir, capsys, no_data, args, message):
    assert message in error_of(["eval", str(model_dir), *args], capsys)


def test_eval_checks_metrics_json_before_computing_and_no_write_ignores_it(model_dir, capsys, no_data, monkeypatch):
    (model_dir / "metrics.json").write_text("{broken")
    err = error_of(["eval", str(model_dir), "--k", "5", "--limit", "3"], capsys)
    assert str(model_dir / "metrics.json") in err and "not readable JSON" in err
    data = synthetic_data()
    monkeypatch.setattr("iwae_core.evaluate.load_dataset", lambda name, root=None: data)
    assert main(["eval", str(model_dir), "--k", "5", "--limit", "3", "--mc-repeats", "1", "--no-write"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 3
    assert (model_dir / "metrics.json").read_text() == "{broken"


def test_eval_refuses_a_folder_it_cannot_write_before_computing(model_dir, capsys, no_data):
    (model_dir / "test_ll.safetensors").mkdir()
    err = error_of(["eval", str(model_dir), "--k", "5"], capsys)
    assert "test_ll.safetensors is not a file" in err
