"""The dashboard against hostile input: model and run folders holding every kind of broken file, links asking
for absurd values, a training form asking for more memory than the machine has, and the server's settings.

Every AppTest run here also fails on any traceback or error logged while it runs (no_logged_tracebacks)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from streamlit.testing.v1 import AppTest

from iwae_core import runs, zoo
from iwae_core.config import ModelConfig, RunConfig, TrainConfig
from support import open_app

ROOT = Path(__file__).resolve().parent.parent
DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in json.loads

pytestmark = pytest.mark.usefixtures("no_logged_tracebacks")


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in ("model.safetensors", "config.json", "metrics.json", "history.csv"):
        shutil.copy(src / f, dst / f)
    return dst


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_tensors(path: Path, change) -> None:
    tensors = load_file(str(path))
    save_file({name: change(t) for name, t in tensors.items()}, str(path))


def remove(path: Path) -> None:
    path.unlink()


def make_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def write(name: str, content: str | bytes):
    def change(folder: Path) -> None:
        target = folder / name
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    return change


def set_key(section: str, key: str, value):
    return lambda folder: edit_json(folder / "config.json", lambda d: d[section].__setitem__(key, value))


# folder name -> (how to break a copy of a good model folder, the file its error must name, words it must say)
BROKEN = {
    "config-deep": (write("config.json", DEEP), "config.json", "nested too deeply"),
    "config-list": (write("config.json", "[1, 2]"), "config.json", "list"),
    "config-not-json": (write("config.json", "{"), "config.json", "not valid JSON"),
    "config-not-utf8": (write("config.json", b"\xff\xfe{}"), "config.json", "UTF-8"),
    "config-bad-k": (set_key("train", "k", 0), "config.json", "k"),
    "config-unknown-key": (set_key("model", "colour", "red"), "config.json", "colour"),
    "config-huge-hidden": (set_key("model", "hidden", [10**9]), "model.safetensors", "too small"),
    "config-many-layers": (set_key("model", "hidden", [1] * 100_000), "config.json", "100,000 hidden layers"),
    "config-x-dim": (set_key("model", "x_dim", 100), "config.json", "x_dim"),
    "config-missing": (lambda f: remove(f / "config.json"), "config.json", "missing"),
    "config-folder": (lambda f: make_dir(f / "config.json"), "config.json", "not a file"),
    "weights-missing": (lambda f: remove(f / "model.safetensors"), "model.safetensors", "missing"),
    "weights-garbage": (write("model.safetensors", b"garbage!" * 10), "model.safetensors", "safetensors"),
    "weights-truncated": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:999]),
                          "model.safetensors", "safetensors"),
    "weights-folder": (lambda f: make_dir(f / "model.safetensors"), "model.safetensors", "not a file"),
    "weights-int": (lambda f: edit_tensors(f / "model.safetensors", lambda t: t.to(torch.int32)),
                    "model.safetensors", "I32"),
    "weights-nan": (lambda f: edit_tensors(f / "model.safetensors", lambda t: torch.full_like(t, float("nan"))),
                    "model.safetensors", "NaN"),
    "weights-other-shape": (set_key("model", "z_dim", 5), "model.safetensors", "shape"),
}
# usable models (their weights load) whose numbers cannot be read: one row each, with the problem
PROBLEMS = {
    "metrics-list": (write("metrics.json", "[1, 2, 3]"), "metrics.json", "list"),
    "metrics-test-oops": (write("metrics.json", '{"test": "oops"}'), "metrics.json", "'oops'"),
    "metrics-mean-text": (write("metrics.json", '{"test": {"by_tau": {"1": {"mean": "abc"}}}}'),
                          "metrics.json", "test.by_tau.1.mean"),
    "metrics-mean-infinite": (write("metrics.json", '{"test": {"by_tau": {"1": {"mean": Infinity}}}}'),
                              "metrics.json", "finite"),
    "metrics-deep": (write("metrics.json", DEEP), "metrics.json", "nested too deeply"),
    "metrics-epochs-text": (write("metrics.json", '{"training": {"epochs": "many"}}'), "metrics.json", "epochs"),
    "history-not-utf8": (write("history.csv", b"epoch,step,valid_bound\n1,\xff\xfe,-100\n"), "history.csv", "UTF-8"),
    "history-text": (write("history.csv", "epoch,step,valid_bound\n1,10,-100\n2,20,abc\n"), "history.csv", "line 3"),
    "history-no-header": (write("history.csv", "1,10,-100\n"), "history.csv", "epoch"),
}


def evaluate_metrics(folder: Path) -> None:
    edit_json(folder / "metrics.json", lambda d: d.__setitem__("test", {
        "by_tau": {"1": {"mean": -120.5, "stderr": 0.4}, "0": {"mean": -121.25, "stderr": 0.5}},
        "active_units": 3, "n_images": 250, "S": 1000}))


@pytest.fixture(scope="module")
def hostile_zoo(tiny_zoo, tmp_path_factory) -> Path:
    """Two good models (one evaluated, one not) beside one folder for each kind of broken file."""
    root = tmp_path_factory.mktemp("hostile-zoo")
    copy_model(tiny_zoo / "tiny-iwae", root / "good-unevaluated")
    evaluate_metrics(copy_model(tiny_zoo / "tiny-iwae-r", root / "good-evaluated"))
    for name, (damage, _, _) in {**BROKEN, **PROBLEMS}.items():
        damage(copy_model(tiny_zoo / "tiny-iwae-r", root / name))
    (root / "not-a-model").mkdir()  # no model file at all: not listed
    (root / "stray.txt").write_text("not a folder")
    return root


def run_folder(root: Path, name: str, status, model: Path | None = None, **progress) -> Path:
    """A run folder as the Train live page writes it (no worker involved)."""
    path = root / name
    if model is not None:
        copy_model(model, path)
    else:
        path.mkdir(parents=True)
        path.joinpath("config.json").write_text(RunConfig(ModelConfig(hidden=(8,), z_dim=2)).to_json())
    path.joinpath("run.json").write_text(json.dumps({"created": f"2026-01-01 00:00:{len(name):02d}",
                                                     "train_images": None, "data_dir": None, "launches": 1}))
    path.joinpath("progress.json").write_text(json.dumps(
        {"status": status, "message": status, "step": 30, "total_steps": 30, "epoch": 2, "epochs": 3,
         "points": [[1, -500.0, 2.0], [30, -400.0, 3.0]], "history": [{"step": 30, "valid_bound": -410.0}],
         **progress}))
    return path


# run folder -> (file its error must name, words it must say)
BROKEN_RUNS = {
    "run-config-deep": ("config.json", "nested too deeply"),
    "run-options-list": ("run.json", "list"),
    "run-progress-status": ("progress.json", "status"),
    "run-progress-points": ("progress.json", "points"),
    "run-progress-step-text": ("progress.json", "step"),
    "run-lock-folder": ("worker.lock", "IsADirectoryError"),
}


@pytest.fixture(scope="module")
def hostile_runs(tiny_zoo, tmp_path_factory) -> Path:
    """A runs folder: a finished run and a stopped one that are fine, finished runs whose model files are
    broken, and one run folder for each kind of unreadable run file."""
    root = tmp_path_factory.mktemp("hostile-runs")
    run_folder(root, "run-good", "finished", tiny_zoo / "tiny-iwae-rrec")
    stopped = run_folder(root, "run-stopped-bad-png", "stopped")
    stopped.joinpath("samples.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad = run_folder(root, "run-finished-garbage-weights", "finished", tiny_zoo / "tiny-iwae")
    bad.joinpath("model.safetensors").write_bytes(b"garbage")
    latin = run_folder(root, "run-finished-latin1-history", "finished", tiny_zoo / "tiny-iwae")
    latin.joinpath("history.csv").write_bytes("epoch,step,note\n1,10,é\n".encode("latin-1"))
    run_folder(root, "run-config-deep", "finished", tiny_zoo / "tiny-iwae").joinpath("config.json").write_text(DEEP)
    run_folder(root, "run-options-list", "stopped").joinpath("run.json").write_text("[]")
    run_folder(root, "run-progress-status", 5)
    run_folder(root, "run-progress-points", "stopped", points="abc")
    run_folder(root, "run-progress-step-text", "stopped", step="ten")
    run_folder(root, "run-lock-folder", "running").joinpath("worker.lock").mkdir()
    return root




def texts(at: AppTest, kind: str) -> str:
    return "\n".join(str(e.value) for e in at.get(kind))


@pytest.fixture
def hostile(hostile_zoo, hostile_runs, monkeypatch, tmp_path):
    monkeypatch.setenv("IWAE_ZOO_DIRS", str(hostile_zoo))
    monkeypatch.setenv("IWAE_RUNS_DIR", str(hostile_runs))
    monkeypatch.setenv("IWAE_DATA_DIR", str(tmp_path / "no-data"))
    return hostile_zoo


# ---- the validating reader ---------------------------------------------------------------------------

def test_every_broken_model_folder_is_reported_once_naming_its_file(hostile_zoo):
    entries, broken = zoo.scan_models(hostile_zoo)
    assert sorted(b.name for b in broken) == sorted(BROKEN)
    assert sorted(e.name for e in entries) == sorted(["good-evaluated", "good-unevaluated", *PROBLEMS])
    for b in broken:
        _, file, words = BROKEN[b.name]
        assert file in b.error and words in b.error, (b.name, b.error)
        assert "\n" not in b.error and "Traceback" not in b.error
    for e in entries:
        if e.name in PROBLEMS:
            _, file, words = PROBLEMS[e.name]
            assert file in e.problem and words in e.problem, (e.name, e.problem)
        else:
            assert e.problem == ""


def test_broken_and_unreadable_runs_are_reported_and_the_rest_listed(hostile_runs):
    found, broken = runs.scan_runs(hostile_runs)
    assert sorted(b.name for b in broken) == sorted(BROKEN_RUNS)
    for b in broken:
        file, words = BROKEN_RUNS[b.name]
        assert file in b.error and words in b.error, (b.name, b.error)
    assert {r.name for r in found} == {"run-good", "run-stopped-bad-png", "run-finished-garbage-weights",
                                       "run-finished-latin1-history"}
    entries, broken_models = runs.scan_finished_models(hostile_runs)
    assert [e.name for e in entries] == ["run-finished-latin1-history", "run-good"]
    assert "history.csv" in entries[0].problem and "UTF-8" in entries[0].problem
    assert {b.name for b in broken_models} == {"run-finished-garbage-weights", "run-config-deep"}


# ---- the pages -----------------------------------------------------------------------------------------

def test_home_shows_one_row_per_broken_model_and_still_lists_the_good_ones(hostile):
    at = open_app()
    table = at.dataframe[0].value.set_index("model")
    assert sorted(table.index) == sorted(["good-evaluated", "good-unevaluated", *BROKEN, *PROBLEMS])
    for name, (_, file, words) in BROKEN.items():
        assert file in table.loc[name, "problem"] and words in table.loc[name, "problem"]
        assert table.loc[name, "test LL (τ=1)"] == "cannot load"
    for name, (_, file, _) in PROBLEMS.items():
        assert file in table.loc[name, "problem"] and table.loc[name, "variant"] == "IWAE-R"
    good = table.loc["good-evaluated"]
    assert (good["test LL (τ=1)"], good["active units"], good["S"], good["problem"]) == (
        "-120.500 ± 0.400", 3, 1000, "")
    assert table.loc["good-unevaluated", "test LL (τ=1)"] == "not evaluated yet"
    assert f"{len(BROKEN)} model folder(s) cannot be loaded" in texts(at, "warning")
    # the explore picker and the other pages offer only the models that load
    assert "config-deep" not in at.selectbox(key="home:model").options
    assert "good-evaluated" in at.selectbox(key="home:model").options


def test_views_offer_only_loadable_models_and_say_why_a_linked_one_is_not(hostile):
    at = open_app("2_Samples.py", model="weights-nan,good-evaluated")
    assert at.multiselect(key="samples:model").value == ["good-evaluated"]
    assert not set(at.multiselect(key="samples:model").options) & set(BROKEN)
    notice = texts(at, "warning")
    assert "model = weights-nan,good-evaluated" in notice and "weights-nan cannot be loaded" in notice
    assert "NaN" in notice and "model = good-evaluated" in notice
    assert at.get("plotly_chart")


def test_default_zoo_of_shipped_models_and_runs_renders_without_logging_a_traceback(hostile_runs, monkeypatch,
                                                                                      tmp_path):
    """The shipped models are evaluated (whole numbers in their columns), the runs are not: the table must not
    mix text and numbers in a column (pyarrow's ArrowInvalid, logged on every render)."""
    monkeypatch.delenv("IWAE_ZOO_DIRS", raising=False)
    monkeypatch.setenv("IWAE_RUNS_DIR", str(hostile_runs))
    monkeypatch.setenv("IWAE_DATA_DIR", str(tmp_path / "no-data"))
    at = open_app()
    table = at.dataframe[0].value.set_index("model")
    assert table.loc["mnist-iwae-r", "test images"] == 10000 and table.loc["mnist-iwae-r", "S"] == 5000
    assert table.loc["run-good", "test LL (τ=1)"] == "not evaluated yet"
    assert str(table["test images"].dtype) == "Int64" and table["test images"].isna()["run-good"]
    assert "UTF-8" in table.loc["run-finished-latin1-history", "problem"]
    assert "safetensors" in table.loc["run-finished-garbage-weights", "problem"]
    assert "nested too deeply" in table.loc["run-config-deep", "problem"]


def test_train_live_renders_beside_broken_runs_and_lists_them(hostile):
    at = open_app("1_Train_live.py")
    listed = texts(at, "markdown")
    for name, (file, _) in BROKEN_RUNS.items():
        assert re.search(rf"\*\*{name}\*\*: .*{re.escape(file)}", listed), name
    assert {o.split()[0] for o in at.selectbox(key="tl_run").options} == {"run-good", "run-stopped-bad-png",
                                                       "run-finished-garbage-weights", "run-finished-latin1-history"}
    assert "run = " not in texts(at, "warning")
    linked = open_app("1_Train_live.py", run="run-progress-points")
    assert "run = run-progress-points" in texts(linked, "warning") and "progress.json" in texts(linked, "warning")
    at.selectbox(key="tl_run").set_value("run-stopped-bad-png").run()
    assert not at.exception
    assert "samples.png is not a readable PNG image" in texts(at, "warning")
    at.selectbox(key="tl_run").set_value("run-good").run()
    assert not at.exception and "Finished: run-good" in texts(at, "success")
    assert at.get("plotly_chart")  # the live curves


# ---- the training form's memory cap ----------------------------------------------------------------------

def huge_run() -> RunConfig:
    return RunConfig(ModelConfig.for_variant("iwae-r", hidden=(2000,), z_dim=20),
                     TrainConfig(k=5000, batch_size=2000, epochs=1, device="cpu"))


def test_memory_estimate_refuses_the_80_gb_run_and_allows_small_ones(monkeypatch, tmp_path):
    monkeypatch.delenv("IWAE_MAX_STEP_GB", raising=False)
    assert runs.step_memory_bytes(huge_run()) > 100 * 2**30
    small = RunConfig(ModelConfig.for_variant("iwae-r", hidden=(200,), z_dim=20), TrainConfig(k=5, batch_size=100))
    assert runs.step_memory_bytes(small) < 50 * 2**20
    runs.check_run_size(small)
    with pytest.raises(runs.RunError, match=r"k = 5,000 × batch 2,000 .* about [\d,.]+ GB per training step"):
        runs.start_run(huge_run(), root=tmp_path / "runs")
    assert not any((tmp_path / "runs").glob("*/run.json"))  # refused before any folder was made
    monkeypatch.setenv("IWAE_MAX_STEP_GB", "0.01")
    with pytest.raises(runs.RunError, match="IWAE_MAX_STEP_GB"):
        runs.check_run_size(small.__class__(small.model, TrainConfig(k=50, batch_size=100)))
    monkeypatch.setenv("IWAE_MAX_STEP_GB", "lots")
    with pytest.raises(runs.RunError, match="IWAE_MAX_STEP_GB must be a positive number"):
        runs.step_memory_limit()


def test_memory_estimate_is_not_below_what_a_step_takes():
    """The estimate is generous: at least the bytes autograd keeps for one step of a small iwae-r model."""
    run = RunConfig(ModelConfig.for_variant("iwae-r", hidden=(64,), z_dim=8), TrainConfig(k=20, batch_size=50))
    from iwae_core.maths.model import IWAE

    model = IWAE(run.model)
    kept = []

    def pack(t):
        kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = -model.log_weights(torch.rand(50, 784).bernoulli(), 20).logsumexp(0).mean()
    assert loss.requires_grad
    assert 0 < sum(kept) < runs.step_memory_bytes(run)


def test_train_live_form_says_a_run_is_too_big_instead_of_starting_it(hostile, monkeypatch):
    monkeypatch.delenv("IWAE_MAX_STEP_GB", raising=False)
    at = open_app("1_Train_live.py")
    before = sorted(p.name for p in Path(runs.runs_dir()).iterdir())
    at.number_input(key="tl_k").set_value(5000)
    at.number_input(key="tl_batch").set_value(2000)
    at.number_input(key="tl_hidden").set_value(2000)
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception
    error = texts(at, "error")
    assert "Not started: too big" in error and "GB per training step" in error
    assert "Lower k, the batch size or the hidden units" in error
    assert sorted(p.name for p in Path(runs.runs_dir()).iterdir()) == before


# ---- links -----------------------------------------------------------------------------------------------

def test_a_link_asking_for_an_absurd_k_gets_the_largest_allowed_and_a_notice(hostile):
    at = open_app("5_Bound_vs_k.py", model="good-evaluated", k="1e308", tau="99", seed="-5")
    assert at.select_slider(key="bound:k").value == 500
    assert at.slider(key="bound:tau").value == 3.0
    assert at.number_input(key="bound:seed").value == 0
    notices = texts(at, "warning")
    assert "k = 1e308" in notices and "k = 500" in notices and "slider" in notices
    assert "tau = 99" in notices and "tau = 3" in notices
    assert "seed = -5" in notices and "seed = 0" in notices
    assert at.query_params["k"] in ("500", ["500"])
    # the notice stays while the value does, and goes once the user chooses another
    at.run()
    assert "k = 1e308" in texts(at, "warning")
    at.select_slider(key="bound:k").set_value(100).run()
    assert "k = 1e308" not in texts(at, "warning") and "tau = 99" in texts(at, "warning")


def test_a_link_cannot_put_a_markdown_link_into_the_notice(hostile):
    at = open_app("2_Samples.py", model="[click here](https://example.test)")
    notice = texts(at, "warning")
    assert "click here" in notice and "[click here](https" not in notice
    assert at.multiselect(key="samples:model").value  # the default models instead


@pytest.mark.parametrize("raw, used", [("30", 25), ("5000", 500), ("inf", 500), ("-7", 1), ("nan", 100),
                                       ("abc", 100), ("100", 100)])
def test_link_k_values(hostile, raw, used):
    at = open_app("5_Bound_vs_k.py", model="good-evaluated", k=raw)
    assert at.select_slider(key="bound:k").value == used
    assert (f"k = {raw}" in texts(at, "warning")) == (raw != "100")


# ---- the server's settings --------------------------------------------------------------------------------

def test_server_listens_on_localhost_without_usage_statistics_or_file_watcher(monkeypatch):
    """`make app` runs `streamlit run app.py` in the repository root, which reads .streamlit/config.toml."""
    tomllib = pytest.importorskip("tomllib")
    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert settings["server"]["address"] == "127.0.0.1"
    assert settings["browser"]["gatherUsageStats"] is False
    assert settings["server"]["fileWatcherType"] == "none"  # watching the root also watches .venv
    recipe = re.search(r"^app:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert re.fullmatch(r"\t\$\(BIN\)/streamlit run app\.py\n", recipe), recipe  # no cd, no overriding flag
    from streamlit import config

    monkeypatch.chdir(ROOT)  # Streamlit reads ./.streamlit/config.toml: the options must be ones it knows
    monkeypatch.delenv("STREAMLIT_SERVER_ADDRESS", raising=False)
    try:
        config.get_config_options(force_reparse=True)
        assert config.get_option("server.address") == "127.0.0.1"
        assert config.get_option("browser.gatherUsageStats") is False
        assert config.get_option("server.fileWatcherType") == "none"
    finally:
        monkeypatch.undo()
        config.get_config_options(force_reparse=True)


def test_train_live_shows_a_runs_settings_asks_before_deleting_and_no_stale_speed(hostile, hostile_runs, tmp_path,
                                                                                  monkeypatch):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(hostile_runs, root)
    stopped = root / "run-stopped-bad-png"
    progress = json.loads((stopped / "progress.json").read_text())
    (stopped / "progress.json").write_text(json.dumps({**progress, "steps_per_second": 42.0, "step": 10}))
    unstarted = run_folder(root, "run-unstarted", "stopped", step=0, total_steps=None)
    monkeypatch.setenv("IWAE_RUNS_DIR", str(root))
    at = open_app("1_Train_live.py", run="run-stopped-bad-png")
    assert at.selectbox(key="tl_run").value == "run-stopped-bad-png"
    bar = at.get("progress")[0].proto.text
    assert "step 10 of 30" in bar and "steps/s" not in bar and "left" not in bar  # stopped: no stale speed
    settings = json.loads(at.get("json")[0].proto.body)
    assert settings["model"]["hidden"] == [8] and settings["train"]["k"] == RunConfig().train.k
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["run-unstarted", "steps"] == "not started" and table.loc["run-good", "steps"] == "30 of 30"
    at.selectbox(key="tl_run").set_value("run-good").run()
    at.button(key="tl_delete").click().run()
    assert "Delete run-good and everything in its folder" in texts(at, "warning")
    assert (root / "run-good").exists()  # asked, not done
    at.button(key="tl_delete_no").click().run()
    assert "Delete run-good" not in texts(at, "warning") and (root / "run-good").exists()
    at.button(key="tl_delete").click().run()
    at.button(key="tl_delete_yes").click().run()
    assert not at.exception and not (root / "run-good").exists()
    assert unstarted.exists()
