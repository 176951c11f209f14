"""The budget x seed study's results from its run folders: each arm paired image by image with the same seed's
IWAE, study.csv read back as written, study.md keeping its status paragraph across rebuilds, and the verdict
rules: a difference to IWAE holds only beyond both the seed spread and the image noise, and bf16-mixed may
become the default only within FIDELITY_NATS and the seed spread. The run folders are the tiny_study
fixture's (tests/conftest.py)."""

import math

import pytest
from safetensors.torch import load_file

from iwae_core.study_results import FIDELITY_NATS, read_csv, summarize, write_results


@pytest.mark.slow
def test_results_pair_each_arm_with_the_same_seeds_iwae(tiny_study):
    cfg = tiny_study
    rows = write_results(cfg.root, cfg.results)
    # iwae at tau = 1, the random arm at tau = 1 and 0; two seeds, two budgets
    assert len(rows) == (1 + 2) * 2 * 2
    assert read_csv(cfg.results / "study.csv") == rows
    row = next(r for r in rows if r["arm"] == "iwae-r-mixture" and r["seed"] == 1 and r["epochs"] == 2
               and r["tau"] == 1)
    assert row["objective"] == "mixture" and row["init_sigma"] == 0.05 and row["n_images"] == 30
    own = load_file(str(cfg.root / "mnist-iwae-r-mixture-s1" / "epochs-002" / "test_ll.safetensors"))["tau=1"]
    ref = load_file(str(cfg.root / "mnist-iwae-s1" / "epochs-002" / "test_ll.safetensors"))["tau=1"]
    assert math.isclose(row["diff_to_iwae"], (own - ref).mean().item(), rel_tol=1e-6)
    assert math.isclose(row["diff_stderr"], ((own - ref).std() / math.sqrt(30)).item(), rel_tol=1e-6)
    assert all(r["diff_to_iwae"] == 0 for r in rows if r["arm"] == "iwae")
    md = (cfg.results / "study.md").read_text()
    assert "## mnist, 2 epochs" in md and "iwae-r-mixture" in md
    write_results(cfg.root, cfg.results, note="A pilot:\n two budgets.")
    write_results(cfg.root, cfg.results)  # a rebuild keeps the status paragraph
    assert "**Status.** A pilot: two budgets." in (cfg.results / "study.md").read_text()


def fake_rows(diffs, se=0.05):
    return [{"dataset": "mnist", "epochs": 5, "tau": 1.0, "arm": arm, "seed": s, "test_ll": -90 + d,
             "diff_to_iwae": d, "diff_stderr": se} for arm, ds in (("iwae", [0.0] * len(diffs)), ("iwae-r", diffs))
            for s, d in enumerate(ds)]


def test_verdict_needs_the_difference_beyond_seed_spread_and_image_noise():
    verdict = {s["arm"]: s for s in summarize(fake_rows([0.50, 0.60, 0.55]))}["iwae-r"]
    assert verdict["verdict"] == "above IWAE" and math.isclose(verdict["diff"], 0.55)
    assert math.isclose(verdict["diff_sd"], 0.05)
    spread = {s["arm"]: s for s in summarize(fake_rows([0.5, -0.4, 0.1]))}["iwae-r"]
    assert spread["verdict"] == "not distinguishable from IWAE"  # the seeds disagree
    noisy = {s["arm"]: s for s in summarize(fake_rows([0.10, 0.11, 0.12], se=0.5))}["iwae-r"]
    assert noisy["verdict"] == "not distinguishable from IWAE"  # the images cannot tell
    below = {s["arm"]: s for s in summarize(fake_rows([-0.3, -0.35, -0.25]))}["iwae-r"]
    assert below["verdict"] == "below IWAE"


def fidelity_rows(diffs, spread):
    """Three seeds of IWAE in float32 (test LL -90 + spread * (-1, 0, 1)) and in bf16-mixed (diffs apart)."""
    rows = []
    for s, d in enumerate(diffs):
        base = {"dataset": "mnist", "epochs": 10, "tau": 1.0, "seed": s, "diff_to_iwae": 0.0, "diff_stderr": 0.0}
        ll = -90 + spread * (s - 1)
        rows.append({**base, "arm": "iwae", "test_ll": ll})
        rows.append({**base, "arm": "iwae-bf16", "test_ll": ll + d, "diff_to_float32": d, "diff_float32_stderr": 0.01})
    return rows


def test_bf16_may_become_the_default_only_within_005_nats_and_the_seed_spread():
    def verdict(diffs, spread):
        return next(s for s in summarize(fidelity_rows(diffs, spread)) if s["arm"] == "iwae-bf16")

    ok = verdict([0.01, -0.02, 0.02], spread=0.2)
    assert math.isclose(ok["fidelity"], 1 / 300) and ok["fidelity_verdict"].startswith("within")
    assert math.isclose(ok["seed_spread"], 0.2)
    assert verdict([0.06, 0.07, 0.05], spread=0.5)["fidelity_verdict"].endswith("keep float32")  # > 0.05 nats
    assert verdict([0.03, 0.04, 0.03], spread=0.01)["fidelity_verdict"].endswith("keep float32")  # > seed spread
    assert FIDELITY_NATS == 0.05


@pytest.mark.slow
def test_results_outlive_the_run_folders(tiny_study, tmp_path):
    """A new checkout has results/ (study.csv, per_image/) but no run folders: rebuilding gives the same rows,
    paired image by image from the archive; rows written before the archive existed are kept; and the study
    knows which budgets are settled."""
    import csv
    import shutil

    from iwae_core.study import StudyConfig, study_todo
    from iwae_core.study_results import ARCHIVE, settled

    cfg = tiny_study
    rows = write_results(cfg.root, cfg.results)
    assert len(list((cfg.results / ARCHIVE).glob("*.safetensors"))) == 2 * 2 * 2  # arms x seeds x budgets
    moved = tmp_path / "results"
    shutil.copytree(cfg.results, moved)
    legacy = {**rows[0], "arm": "iwae-rrec", "epochs": 1, "seed": 0, "test_ll": -123.0}  # from an older study.csv
    with open(moved / "study.csv", "a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(legacy)).writerow(legacy)
    again = write_results(tmp_path / "no-runs-here", moved)
    assert [r for r in again if r["arm"] != "iwae-rrec"] == rows
    assert [r["test_ll"] for r in again if r["arm"] == "iwae-rrec"] == [-123.0]
    elsewhere = StudyConfig(root=tmp_path / "no-runs-here", results=moved, datasets=("mnist",), seeds=(0, 1, 2),
                            arms=cfg.arms, budgets=(1, 2))
    assert study_todo(elsewhere) == [(("mnist", a, 2), b) for b in (1, 2) for a in cfg.arms]  # only seed 2 to run
    done = settled(moved, cfg.arms)
    assert done == {("mnist", a, s, e) for a in cfg.arms for s in (0, 1) for e in (1, 2)} | {
        ("mnist", "iwae-rrec", 0, 1)}  # a legacy row of a budget every arm of its seed has
    # a budget that only some arms have in study.csv, and nothing archived, is not settled: its trials are
    # run again so that their pairs can be computed from per-image results
    shutil.rmtree(moved / ARCHIVE)
    (moved / "study.csv").write_text("".join(
        line for line in (moved / "study.csv").read_text().splitlines(keepends=True)
        if ",iwae-r-mixture," not in line or ",2,30," not in line))  # drop the mixture arm's 2-epoch rows
    assert settled(moved, cfg.arms) == {("mnist", a, s, 1) for a in (*cfg.arms, "iwae-rrec") for s in (0, 1)
                                        if a != "iwae-rrec" or s == 0}
