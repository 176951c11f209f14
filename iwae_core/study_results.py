"""The budget x seed study's results: its run folders turned into results/study.csv and results/study.md.

collect() reads every evaluated snapshot under a study's root (DIR/<trial>/epochs-NNN/, as study.py writes
them) or a sweep's (`iwae sweep`: DIR/<trial>/), and pairs each with the same seed's IWAE image by image;
a bf16-mixed trial also with its float32 twin. Nothing here trains or evaluates, and nothing is written
into the run folders, so results can be rebuilt at any time, while the study runs, from whatever is on disk.

The study outlives its run folders: write_results() archives every snapshot's per-image results (a few KB,
with its config and metrics as metadata) in results/per_image/, and pairs from the folders and that archive
together, so a trial trained later, somewhere else, is still paired image by image with an IWAE trained
before. Rows of study.csv that neither the folders nor the archive hold (written before the archive
existed) are kept as they are; settled() tells the study which budgets it need not run again.

study.csv has one row per (dataset, arm, seed, budget, tau), in the columns CSV_FIELDS: the test LL and
its standard error over images, the paired difference to IWAE and its standard error (diff_to_iwae,
diff_stderr), and for bf16-mixed arms the paired difference to float32 (diff_to_float32,
diff_float32_stderr); read_csv() reads it back with numbers as numbers, for the Reproduction page.

study.md says how the models were trained and evaluated (S, images, commits), then gives summarize() as
tables: per dataset and budget, each arm's test LL and difference to IWAE as
mean ± sd across seeds with the paired s.e. and a verdict (whether the difference holds beyond both the
seed spread and the image noise); under them, for bf16-mixed arms, the difference to float32 against
FIDELITY_NATS and the seed spread. Its **Status.** paragraph, which says what the results cover, is kept
across rebuilds unless a new note replaces it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import evaluate
from .config import RunConfig
from .evaluate import per_image_name
from .study import ARMS

FIDELITY_NATS = 0.05  # bf16-mixed may become the default only if its mean difference is below this (and the seed sd)
CSV_FIELDS = ["dataset", "arm", "variant", "objective", "init_sigma", "seed", "epochs", "n_images", "S", "tau",
              "test_ll", "stderr", "diff_to_iwae", "diff_stderr", "train_seconds", "commit", "precision",
              "diff_to_float32", "diff_float32_stderr"]


ARCHIVE = "per_image"  # results/per_image/<trial>-eNNN.safetensors: one evaluated snapshot's per-image results


def snapshots(root: Path) -> list[dict]:
    """Every evaluated snapshot under root, as {name, run, test, training, per_image, arm, group}.

    root is a study's folder (trials with epochs-NNN/ snapshots) or a sweep's (`iwae sweep`, trials named
    key=value,...: a trial's arm is its name without the seed, and its IWAE is the trial of variant iwae
    whose name differs only in variant and seed)."""
    root = Path(root)
    sweep = (root / "sweep.json").is_file()
    found = []
    for metrics_path in sorted(root.glob("*/metrics.json" if sweep else "*/epochs-*/metrics.json")):
        snap = metrics_path.parent
        metrics = ckpt.read_json(metrics_path)
        test, training = metrics.get("test"), metrics.get("training", {})
        if not test or not (snap / "test_ll.safetensors").exists():
            continue
        run = ckpt.load_run_config(snap)
        if sweep:
            arm, group, name = _without(snap.name, "seed"), _without(snap.name, "seed", "variant"), snap.name
        else:
            arm, group = training.get("study", {}).get("arm") or _arm_of(run), ""
            name = f"{snap.parent.name}-e{training['epochs']:03d}"
        found.append({"name": name, "run": run, "test": test, "training": training, "arm": arm, "group": group,
                      "per_image": ckpt.read_tensors(snap / "test_ll.safetensors")})
    return found


def archive(found: list[dict], directory: Path) -> None:
    """Keep each snapshot's per-image results, config and metrics in directory/<name>.safetensors."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    for f in found:
        meta = {"config": f["run"].to_json(), "test": json.dumps(ckpt.finite_json(f["test"])),
                "training": json.dumps(ckpt.finite_json(f["training"])), "arm": f["arm"]}
        tensors = {k: v.contiguous() for k, v in f["per_image"].items()}
        ckpt.atomic_write(directory / f"{f['name']}.safetensors",
                          lambda tmp, tensors=tensors, meta=meta: save_file(tensors, tmp, metadata=meta))


def archived(directory: Path) -> list[dict]:
    """The snapshots archive() kept in directory, in the form snapshots() gives."""
    found = []
    for path in sorted(Path(directory).glob("*.safetensors")):
        meta = ckpt.read_metadata(path)
        try:
            run, test, training = (RunConfig.from_json(meta["config"]), json.loads(meta["test"]),
                                   json.loads(meta["training"]))
        except (KeyError, ValueError, TypeError) as err:
            raise ckpt.CheckpointError(f"{path} is not an archived study result: {ckpt.one_line(err)}") from err
        found.append({"name": path.stem, "run": run, "test": test, "training": training, "arm": meta.get("arm"),
                      "group": "", "per_image": ckpt.read_tensors(path)})
    return found


def collect(root: Path, archive_dir: Path | None = None, found: list[dict] | None = None) -> list[dict]:
    """One row per evaluated (trial, budget, tau) under root, and in archive_dir (results/per_image) where root
    does not hold the same snapshot, with the paired difference to the same seed's IWAE. found: root's
    snapshots, where the caller has read them already."""
    found = snapshots(root) if found is None else found
    if archive_dir is not None and Path(archive_dir).is_dir():
        names = {f["name"] for f in found}
        found = found + [f for f in archived(archive_dir) if f["name"] not in names]
    return pair(found)


def pair(found: list[dict]) -> list[dict]:
    """study.csv's rows of the snapshots (snapshots(), archived()), each paired with the same seed's IWAE."""
    def key(f: dict, *extra) -> tuple:
        return (f["group"], f["run"].train.dataset, f["run"].train.seed, f["training"]["epochs"], *extra)

    def twin(f: dict) -> tuple:  # what a bf16-mixed trial is compared with: the same trial in float32
        return key(f, f["run"].model.variant, f["run"].train.objective)

    float32 = [f for f in found if f["run"].train.precision == "float32"]
    iwae = {key(f): f for f in float32 if f["run"].model.variant == "iwae"}
    twins = {twin(f): f for f in float32}
    rows = []
    for f in found:
        run, test = f["run"], f["test"]
        for tau, entry in sorted(test["by_tau"].items(), key=lambda t: -float(t[0])):
            ll = f["per_image"][per_image_name(tau)]
            # IWAE's network has no weight noise: its tau = 1 is all
            diff, diff_se = _paired(ll, test, iwae.get(key(f)), "tau=1")
            fidelity = (None, None)
            if run.train.precision != "float32":
                fidelity = _paired(ll, test, twins.get(twin(f)), per_image_name(tau))
            rows.append({"dataset": run.train.dataset, "arm": f["arm"], "variant": run.model.variant,
                         "objective": run.train.objective, "init_sigma": run.model.init_sigma,
                         "seed": run.train.seed, "epochs": f["training"]["epochs"], "n_images": test["n_images"],
                         "S": test["S"], "tau": float(tau), "test_ll": entry["mean"], "stderr": entry["stderr"],
                         "diff_to_iwae": diff, "diff_stderr": diff_se,
                         "train_seconds": f["training"].get("train_seconds"), "commit": test.get("commit"),
                         "precision": run.train.precision, "diff_to_float32": fidelity[0],
                         "diff_float32_stderr": fidelity[1]})
    return rows


def _paired(ll: torch.Tensor, test: dict, ref: dict | None, name: str) -> tuple[float | None, float | None]:
    """Mean and standard error over images of ll minus the reference's per-image results `name`, when the
    reference was evaluated on the same images with the same S; else (None, None)."""
    if ref is None or ref["test"]["n_images"] != test["n_images"] or ref["test"]["S"] != test["S"] \
            or name not in ref["per_image"]:
        return None, None
    paired = evaluate.summarize(ll - ref["per_image"][name])
    return paired["mean"], paired["stderr"]


def _without(trial: str, *keys: str) -> str:
    """A sweep trial's name (key=value,...) without the given keys."""
    return ",".join(part for part in trial.split(",") if part.split("=", 1)[0] not in keys)


def arm_order(arm: str) -> tuple:
    """The study's arms in their order, then any other (a sweep's) by name."""
    return (list(ARMS).index(arm), "") if arm in ARMS else (len(ARMS), arm)


def _arm_of(run: RunConfig) -> str:
    arm = "iwae-r-mixture" if run.train.objective == "mixture" else run.model.variant
    return arm if run.train.precision == "float32" else f"{arm}-bf16"


def read_csv(path: Path) -> list[dict]:
    """results/study.csv back as rows with numbers as numbers."""
    ints, floats = {"seed", "epochs", "n_images", "S"}, {"init_sigma", "tau", "test_ll", "stderr", "diff_to_iwae",
                                                        "diff_stderr", "train_seconds", "diff_to_float32",
                                                        "diff_float32_stderr"}
    with open(path, newline="") as f:
        return [{k: (None if v == "" else int(v) if k in ints else float(v) if k in floats else v)
                 for k, v in row.items()} for row in csv.DictReader(f)]


def summarize(rows: list[dict]) -> list[dict]:
    """Per (dataset, epochs, tau, arm): the mean across seeds and its seed-to-seed sd, of the test LL and of
    the paired difference to IWAE; and whether that difference holds. It holds when its mean across seeds is
    more than twice its standard error across seeds (sd / sqrt(seeds), at least 2 seeds) and more than
    twice the mean paired s.e. divided by sqrt(seeds): beyond both the seed spread and the image noise."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["epochs"], r["tau"], r["arm"]), []).append(r)
    out = []
    for (dataset, epochs, tau, arm), rs in sorted(groups.items(),
                                                  key=lambda g: (g[0][0], g[0][1], -g[0][2], arm_order(g[0][3]))):
        ll = torch.tensor([r["test_ll"] for r in rs], dtype=torch.float64)
        diffs = [r for r in rs if r["diff_to_iwae"] is not None]
        row = {"dataset": dataset, "epochs": epochs, "tau": tau, "arm": arm, "seeds": len(rs),
               "test_ll": ll.mean().item(), "test_ll_sd": ll.std().item() if len(rs) > 1 else None,
               "diff": None, "diff_sd": None, "paired_se": None, "verdict": "",
               # the reference (IWAE) is paired with itself: differences of zero with a zero standard error
               "reference": bool(diffs) and all(r["diff_stderr"] == 0 for r in diffs)}
        _fidelity(row, rs, groups.get((dataset, epochs, tau, _float32_arm(arm)), []))
        if diffs and not row["reference"]:
            d = torch.tensor([r["diff_to_iwae"] for r in diffs], dtype=torch.float64)
            se = sum(r["diff_stderr"] for r in diffs) / len(diffs)
            row.update(diff=d.mean().item(), paired_se=se, diff_sd=d.std().item() if len(d) > 1 else None)
            n = len(d)
            if n < 2:
                row["verdict"] = "one seed: no verdict"
            elif abs(row["diff"]) > 2 * row["diff_sd"] / math.sqrt(n) and abs(row["diff"]) > 2 * se / math.sqrt(n):
                row["verdict"] = "above IWAE" if row["diff"] > 0 else "below IWAE"
            else:
                row["verdict"] = "not distinguishable from IWAE"
        out.append(row)
    return out


def _float32_arm(arm: str) -> str:
    return arm.removesuffix("-bf16")


def _fidelity(row: dict, rs: list[dict], float32_rs: list[dict]) -> None:
    """For a bf16-mixed arm: the mean across seeds of its paired difference to the same seed's float32 trial, its
    seed-to-seed sd, the mean paired s.e., the float32 arm's seed-to-seed sd of the test LL (the seed spread),
    and whether bf16-mixed may become the default: with at least 3 seeds, the mean difference below FIDELITY_NATS
    and below that seed spread (docs/precision.md)."""
    row.update(fidelity=None, fidelity_sd=None, fidelity_se=None, seed_spread=None, fidelity_verdict="")
    d = [r["diff_to_float32"] for r in rs if r.get("diff_to_float32") is not None]
    if not d:
        return
    d = torch.tensor(d, dtype=torch.float64)
    spread = torch.tensor([r["test_ll"] for r in float32_rs], dtype=torch.float64)
    row.update(fidelity=d.mean().item(), fidelity_sd=d.std().item() if len(d) > 1 else None,
               fidelity_se=sum(r["diff_float32_stderr"] for r in rs if r.get("diff_float32_stderr") is not None)
               / len(d), seed_spread=spread.std().item() if len(spread) > 1 else None)
    if len(d) < 3 or row["seed_spread"] is None:
        row["fidelity_verdict"] = f"{len(d)} seed{'s' if len(d) > 1 else ''}: no verdict (3 needed)"
    elif abs(row["fidelity"]) < FIDELITY_NATS and abs(row["fidelity"]) < row["seed_spread"]:
        row["fidelity_verdict"] = f"within {FIDELITY_NATS} nats and the seed spread"
    else:
        row["fidelity_verdict"] = f"not within {FIDELITY_NATS} nats and the seed spread: keep float32"


def row_key(r: dict) -> tuple:
    return r["dataset"], r["arm"], r["seed"], r["epochs"], r["tau"]


def write_results(root: Path, results: Path, note: str | None = None) -> list[dict]:
    """Archive the study's evaluated snapshots in results/per_image/ and rebuild results/study.csv and
    results/study.md (with `note` as its status paragraph, or the one study.md has) from the folders, the
    archive and the rows of study.csv that neither holds (written before the archive existed)."""
    results = Path(results)
    found = snapshots(root)
    if not (Path(root) / "sweep.json").is_file():
        archive(found, results / ARCHIVE)
    rows = collect(root, results / ARCHIVE, found)  # the folders read once, for the archive and the rows
    if (results / "study.csv").exists():
        new = {row_key(r) for r in rows}
        rows += [r for r in read_csv(results / "study.csv") if row_key(r) not in new]
    if not rows:
        return rows
    rows.sort(key=lambda r: (r["dataset"], arm_order(r["arm"]), r["seed"], r["epochs"], -r["tau"]))
    results.mkdir(parents=True, exist_ok=True)

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
    ckpt.atomic_write(results / "study.csv", write)
    if note is None and (results / "study.md").exists():  # keep the status paragraph a rebuild does not know
        note = _status((results / "study.md").read_text())
    ckpt.atomic_write(results / "study.md", lambda tmp: Path(tmp).write_text(markdown(rows, note)))
    return rows


def settled(results: Path, arms) -> set[tuple[str, str, int, int]]:
    """The (dataset, arm, seed, epochs) the study need not train to and evaluate again: archived in
    results/per_image/, or in study.csv at a budget of a seed that every one of `arms` has (paired already,
    so no trial to come needs their per-image results)."""
    results = Path(results)
    done = {(f["run"].train.dataset, f["arm"], f["run"].train.seed, f["training"]["epochs"])
            for f in (archived(results / ARCHIVE) if (results / ARCHIVE).is_dir() else [])}
    rows = read_csv(results / "study.csv") if (results / "study.csv").exists() else []
    have: dict[tuple, set] = {}
    for r in rows:
        have.setdefault((r["dataset"], r["seed"], r["epochs"]), set()).add(r["arm"])
    return done | {(d, a, s, e) for (d, s, e), got in have.items() if set(arms) <= got for a in got}


def _f(value, fmt: str = "+.3f") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


STATUS = "**Status.** "


def _status(text: str) -> str | None:
    line = next((line for line in text.splitlines() if line.startswith(STATUS)), None)
    return line.removeprefix(STATUS) if line else None


def markdown(rows: list[dict], note: str | None = None) -> str:
    """results/study.md: for each dataset and budget, every arm's test LL and difference to IWAE across seeds."""
    summary = summarize(rows)
    n_images = sorted({r["n_images"] for r in rows})
    S = sorted({r["S"] for r in rows})
    commits = sorted({r["commit"] for r in rows if r["commit"]})
    lines = [
        "# The budget × seed study",
        "",
        "Generated by `python -m iwae_core.study` from the study's run folders and the per-image results it keeps in",
        "`results/per_image/` (`results/study.csv` holds one row per dataset, arm, seed, budget and τ). Every",
        "model: the paper's architecture and objective (784-400-40 tanh, k = 25), batch 20, Adam lr 1e-3",
        "cosine-decayed to 1e-4 over one schedule of the largest budget,",
        "evaluated at each budget along it; test LL with S = "
        f"{', '.join(map(str, S))} joint draws on the first {', '.join(map(str, n_images))} test images",
        "(binarised with the fixed evaluation seed, the same images for every model). Differences are paired:",
        "per image, against the same seed's IWAE at the same budget. Mean ± sd are across seeds; the paired",
        "s.e. is the mean over seeds of each difference's standard error over images. A difference *holds*",
        "when its mean is more than twice both its standard error across seeds and the paired s.e. over √seeds.",
        f"Commits: {', '.join(commits) or '—'}.",
        "",
    ]
    if note:
        lines += [STATUS + " ".join(note.split()), ""]
    for dataset in sorted({s["dataset"] for s in summary}):
        for epochs in sorted({s["epochs"] for s in summary if s["dataset"] == dataset}):
            lines += [f"## {dataset}, {epochs} epochs", "",
                      "| arm | τ | seeds | test LL (mean ± sd) | − IWAE (mean ± sd) | paired s.e. | verdict |",
                      "|---|---|---|---|---|---|---|"]
            for s in summary:
                if s["dataset"] != dataset or s["epochs"] != epochs:
                    continue
                lines.append(f"| {s['arm']} | {s['tau']:g} | {s['seeds']} | {_f(s['test_ll'], '.3f')} ± "
                             f"{_f(s['test_ll_sd'], '.3f')} | {_f(s['diff'])} ± {_f(s['diff_sd'], '.3f')} | "
                             f"{_f(s['paired_se'], '.3f')} | {s['verdict']} |")
            lines.append("")
            fidelity = [s for s in summary if s["dataset"] == dataset and s["epochs"] == epochs
                        and s["fidelity"] is not None]
            if fidelity:
                lines += ["Precision: each bf16-mixed trial minus the same seed's float32 trial, paired over the "
                          "images; the seed spread is the float32 arm's sd of the test LL across seeds.", "",
                          "| arm | τ | seeds | bf16-mixed − float32 (mean ± sd) | paired s.e. | seed spread "
                          "| verdict |",
                          "|---|---|---|---|---|---|---|"]
                lines += [f"| {s['arm']} | {s['tau']:g} | {s['seeds']} | {_f(s['fidelity'])} ± "
                          f"{_f(s['fidelity_sd'], '.3f')} | {_f(s['fidelity_se'], '.3f')} | "
                          f"{_f(s['seed_spread'], '.3f')} | {s['fidelity_verdict']} |" for s in fidelity]
                lines.append("")
    return "\n".join(lines)
