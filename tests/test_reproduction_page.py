"""The Reproduction view in AppTest: it draws a study's CSV (test LL and differences against epochs, with
seed bands), follows the dataset and tau controls and the URL, and says what to run when there is none."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from iwae_core.study_results import CSV_FIELDS

APP = Path(__file__).resolve().parent.parent / "app.py"


def write_study(path, dataset="mnist"):
    """Three seeds of IWAE and IWAE-R at 5 and 10 epochs; IWAE-R 0.5 nats ahead at tau = 1, 0.2 behind at 0."""
    rows = []
    for epochs in (5, 10):
        for seed in range(3):
            base = -100.0 + epochs / 5 + 0.1 * seed
            rows.append({"dataset": dataset, "arm": "iwae", "variant": "iwae", "objective": "bayes",
                         "init_sigma": 0.001, "seed": seed, "epochs": epochs, "n_images": 2000, "S": 5000,
                         "tau": 1.0, "test_ll": base, "stderr": 0.5, "diff_to_iwae": 0.0, "diff_stderr": 0.0,
                         "train_seconds": 60.0, "commit": "abc1234"})
            for tau, diff in ((1.0, 0.5 + 0.01 * seed), (0.0, -0.2 - 0.01 * seed)):
                rows.append({**rows[-1 - (tau == 0.0)], "arm": "iwae-r", "variant": "iwae-r",
                             "tau": tau, "test_ll": base + diff, "diff_to_iwae": diff, "diff_stderr": 0.05})
    return write_rows(path, rows)


def write_rows(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def open_page(path, **params) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    for name, value in params.items():
        at.query_params[name] = value
    at.run()
    at.switch_page("views/6_Reproduction.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.text_input(key="repro:path").set_value(str(path)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def traces(at: AppTest) -> dict:
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    return {t["name"]: t for t in spec["data"] if t.get("name")}


def test_the_precision_studys_arms_are_shown_only_when_asked_for(tmp_path):
    path = write_study(tmp_path / "study.csv")
    rows = list(csv.DictReader(open(path)))
    bf16 = [{**r, "arm": r["arm"] + "-bf16", "precision": "bf16-mixed", "test_ll": float(r["test_ll"]) - 0.01}
            for r in rows]
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=CSV_FIELDS).writerows(bf16)
    at = open_page(path)
    assert "IWAE-R (Bayesian)" in traces(at) and "IWAE (bf16-mixed)" not in traces(at)
    assert "IWAE (bf16-mixed)" not in set(at.dataframe[0].value["arm"])
    at.checkbox(key="repro:bf16").check().run()
    assert not at.exception, [e.value for e in at.exception]
    assert {"IWAE (bf16-mixed)", "IWAE-R (Bayesian, bf16-mixed)", "IWAE-R (Bayesian)"} <= set(traces(at))
    assert at.query_params["bf16"] == "1"


@pytest.mark.slow
def test_an_arm_without_its_seeds_iwae_says_so_rather_than_passing_for_the_reference(tmp_path):
    rows = list(csv.DictReader(open(write_study(tmp_path / "full.csv"))))
    # a study still running: IWAE-R at 10 epochs is evaluated, the IWAE runs of its seeds are not yet
    rows = [{**r, "diff_to_iwae": "", "diff_stderr": ""} if r["arm"] == "iwae-r" and r["epochs"] == "10" else r
            for r in rows if not (r["arm"] == "iwae" and r["epochs"] == "10")]
    table = open_page(write_rows(tmp_path / "study.csv", rows)).dataframe[0].value
    assert set(table[table["epochs"] == 10]["verdict"]) == {"no IWAE of its seeds yet"}
    assert set(table[(table["epochs"] == 5) & (table["arm"] == "IWAE")]["verdict"]) == {"reference"}


def test_study_curves_follow_tau_and_the_verdict_is_shown(tmp_path):
    path = write_study(tmp_path / "study.csv")
    at = open_page(path)
    lines = traces(at)
    assert lines["IWAE-R (Bayesian)"]["x"] == [5, 10]
    diffs = [t for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
             if t.get("name") == "IWAE-R (Bayesian)" and t.get("xaxis") == "x2"]
    assert diffs and diffs[0]["y"] == pytest.approx([0.51, 0.51], abs=1e-9)  # mean of 0.50, 0.51, 0.52
    table = at.dataframe[0].value
    assert set(table["verdict"]) >= {"above IWAE"}
    reference = table[table["arm"] == "IWAE"]  # named as the reference, its differences to itself left empty
    assert set(reference["verdict"]) == {"reference"} and reference["− IWAE"].isna().all()
    assert at.dataframe[0].proto.placeholder == "—"
    at.radio(key="repro:tau").set_value("0").run()
    diffs = [t for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
             if t.get("name") == "IWAE-R (Bayesian)" and t.get("xaxis") == "x2"]
    assert diffs[0]["y"] == pytest.approx([-0.21, -0.21], abs=1e-9)
    assert "below IWAE" in set(at.dataframe[0].value["verdict"])
    assert at.query_params["tau"] == "0"


def test_the_title_counts_the_seeds_behind_each_point(tmp_path):
    def title(at: AppTest) -> str:
        return json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"]

    path = write_study(tmp_path / "study.csv")
    assert "(3 seeds," in title(open_page(path))
    # a study still running: seed 2 has not reached 10 epochs yet
    write_rows(path, [r for r in csv.DictReader(open(path)) if not (r["epochs"] == "10" and r["seed"] == "2")])
    assert "(2–3 seeds per point," in title(open_page(path))


def test_missing_study_says_what_to_run(tmp_path):
    at = open_page(tmp_path / "none.csv")
    assert any("python -m iwae_core.study" in i.value for i in at.info)


@pytest.mark.slow
def test_a_link_with_a_tau_the_study_lacks_says_so(tmp_path):
    path = write_study(tmp_path / "study.csv")
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params["tau"] = "0.5"
    at.run()
    at.switch_page("views/6_Reproduction.py").run()
    at.text_input(key="repro:path").set_value(str(path)).run()
    assert not at.exception
    assert at.radio(key="repro:tau").value == "1"
    notices = [w.value for w in at.warning] + [i.value for i in at.info]
    assert any("tau = 0.5" in n for n in notices), notices


def test_the_export_holds_the_rows_behind_the_figure_and_its_settings(tmp_path, monkeypatch):
    import io

    from dashboard import downloads
    seen = []
    monkeypatch.setattr(downloads, "zip_button", lambda figs, page, tables=None, settings=None:
                        seen.append((tables, settings)))
    open_page(write_study(tmp_path / "study.csv"), tau="0")
    tables, settings = seen[-1]
    rows = list(csv.DictReader(io.StringIO(tables["study"]())))
    assert list(rows[0]) == CSV_FIELDS
    assert {(r["arm"], r["tau"]) for r in rows} == {("iwae", "1.0"), ("iwae-r", "0.0")}  # IWAE's tau = 1 beside
    assert settings["dataset"] == "mnist" and settings["tau"] == 0.0 and settings["seeds"] == [0, 1, 2]


def evaluated_sweep(tiny_zoo, root):
    """A sweep folder of tiny trials (IWAE and IWAE-R, seeds 0 and 1), each evaluated on synthetic images."""
    import shutil

    from conftest import synthetic_data
    from iwae_core.evaluate import evaluate_folder

    data = synthetic_data()
    for variant in ("iwae", "iwae-r"):
        for seed in (0, 1):
            trial = root / f"variant={variant},seed={seed}"
            shutil.copytree(tiny_zoo / f"tiny-{variant}", trial)
            config = json.loads((trial / "config.json").read_text())
            config["train"]["seed"] = seed
            (trial / "config.json").write_text(json.dumps(config))
            evaluate_folder(trial, S=10, mc_repeats=1, seed=seed, data=data)
    (root / "sweep.json").write_text("{}")
    return root


@pytest.mark.slow
def test_a_sweep_folder_reads_as_a_study(tiny_zoo, tmp_path):
    import math

    from safetensors.torch import load_file

    from iwae_core.study_results import collect, summarize

    root = evaluated_sweep(tiny_zoo, tmp_path / "grid")
    rows = collect(root)
    assert {r["arm"] for r in rows} == {"variant=iwae", "variant=iwae-r"} and {r["seed"] for r in rows} == {0, 1}
    row = next(r for r in rows if r["arm"] == "variant=iwae-r" and r["seed"] == 1 and r["tau"] == 1)
    own = load_file(str(root / "variant=iwae-r,seed=1" / "test_ll.safetensors"))["tau=1"]
    ref = load_file(str(root / "variant=iwae,seed=1" / "test_ll.safetensors"))["tau=1"]
    assert math.isclose(row["diff_to_iwae"], (own - ref).mean().item(), rel_tol=1e-6)
    verdicts = {s["arm"]: s["verdict"] for s in summarize(rows) if s["tau"] == 1}
    assert verdicts["variant=iwae"] == "" and verdicts["variant=iwae-r"]  # the reference has no verdict
    at = open_page(root)
    assert "variant=iwae-r" in traces(at)
