"""The budget x seed study: does a random-weight IWAE beat IWAE, and at which training budget?

Each trial is one (dataset, arm, seed) trained on one cosine schedule of max(budgets) epochs; at every
budget (epochs 5, 10, 20, 40 by default) the weights are copied to DIR/<trial>/epochs-NNN/ and evaluated
there with the full protocol on the same binarised test images (the first `images`, S joint draws,
tau = 1 and 0). Evaluating along one schedule, instead of a separate run per budget, is what makes the
budgets affordable; the earlier budgets are therefore models in the middle of their learning-rate decay,
not models trained to convergence at that budget.

Everything is resumable: a trial resumes from its checkpoint (bit-exact), a budget whose evaluation is in
its folder is skipped, and results/study.csv and study.md are rebuilt from the folders on disk.

  python -m iwae_core.study --root runs/study --datasets mnist --seeds 0 1 2 --workers 2

The arms iwae-bf16 and iwae-r-bf16 train IWAE and IWAE-R in bf16-mixed precision on the same schedule; each is
paired with the float32 trial of the same seed and budget (the precision fidelity study of docs/precision.md):

  python -m iwae_core.study --root runs/study --datasets mnist --arms iwae-bf16 iwae-r-bf16 --until 10

The trials run as Ray tasks, as `iwae sweep`'s do (a local Ray, or a cluster with --address).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import evaluate
from .config import PAPER_PRESET, ModelConfig, RunConfig, TrainConfig
from .evaluate import per_image_name

# arm -> (variant, objective, training precision)
ARMS = {
    "iwae": ("iwae", "bayes", "float32"),
    "iwae-r": ("iwae-r", "bayes", "float32"),
    "iwae-r-mixture": ("iwae-r", "mixture", "float32"),
    "iwae-rrec": ("iwae-rrec", "bayes", "float32"),
    # the precision fidelity study (docs/precision.md): the same trials in bf16-mixed, paired with their float32
    # twin of the same seed and budget; not run unless asked for with --arms
    "iwae-bf16": ("iwae", "bayes", "bf16-mixed"),
    "iwae-r-bf16": ("iwae-r", "bayes", "bf16-mixed"),
}
DEFAULT_ARMS = ("iwae", "iwae-r", "iwae-r-mixture", "iwae-rrec")
FIDELITY_NATS = 0.05  # bf16-mixed may become the default only if its mean difference is below this (and the seed sd)
CSV_FIELDS = ["dataset", "arm", "variant", "objective", "init_sigma", "seed", "epochs", "n_images", "S", "tau",
              "test_ll", "stderr", "diff_to_iwae", "diff_stderr", "train_seconds", "commit", "precision",
              "diff_to_float32", "diff_float32_stderr"]


@dataclass
class StudyConfig:
    root: Path = Path("runs/study")
    datasets: tuple[str, ...] = ("mnist", "omniglot")
    arms: tuple[str, ...] = DEFAULT_ARMS
    seeds: tuple[int, ...] = (0, 1, 2)
    budgets: tuple[int, ...] = (5, 10, 20, 40)
    until: int | None = None  # evaluate only the budgets up to this many epochs (the schedule stays max(budgets))
    init_sigma: float = 1e-3  # of the Bayesian arms (the shipped models')
    mixture_init_sigma: float = 1e-2
    batch_size: int = 20
    lr: float = 1e-3
    lr_final: float = 1e-4
    images: int = 2000
    S: int = 5000
    threads: int = 1
    workers: int = 2
    data_dir: str | None = None
    results: Path = Path("results")
    # smaller models and data, for tests of the study's machinery (None: the paper's)
    hidden: tuple[int, ...] = (400,)
    z_dim: int = 40
    k: int = 25
    train_images: int | None = None

    def __post_init__(self) -> None:
        self.root, self.results = Path(self.root), Path(self.results)
        unknown = sorted(set(self.arms) - set(ARMS))
        if unknown:
            raise ValueError(f"unknown arms {unknown}; choose from {sorted(ARMS)}")
        if "iwae" not in self.arms and any(ARMS[a][2] == "float32" for a in self.arms):
            raise ValueError("the study's differences are to IWAE: keep the 'iwae' arm (only the bf16-mixed arms "
                             "may run without it: their references are the float32 trials in the same root)")
        if sorted(self.budgets) != list(self.budgets) or min(self.budgets) < 1:
            raise ValueError(f"budgets must be increasing positive epochs, got {self.budgets}")
        if self.until is not None and self.until < min(self.budgets):
            raise ValueError(f"until = {self.until} epochs leaves no budget to run (budgets {self.budgets})")

    @property
    def budgets_to_run(self) -> tuple[int, ...]:
        return tuple(b for b in self.budgets if self.until is None or b <= self.until)


def trial_name(dataset: str, arm: str, seed: int) -> str:
    return f"{dataset}-{arm}-s{seed}"


def trial_run(cfg: StudyConfig, dataset: str, arm: str, seed: int) -> RunConfig:
    """The paper's model and objective on one cosine schedule of max(budgets) epochs."""
    variant, objective, precision = ARMS[arm]
    granularity = {"encoder_granularity": "sample", "decoder_granularity": "sample"} if objective == "mixture" else {}
    sigma = cfg.mixture_init_sigma if objective == "mixture" else cfg.init_sigma
    model = ModelConfig.for_variant(variant, **{**PAPER_PRESET["model"], "hidden": cfg.hidden, "z_dim": cfg.z_dim},
                                    init_sigma=sigma, **granularity)
    train = TrainConfig(**{**PAPER_PRESET["train"], "batch_size": cfg.batch_size, "lr": cfg.lr,
                           "lr_final": cfg.lr_final, "k": cfg.k}, dataset=dataset, epochs=max(cfg.budgets), seed=seed,
                        threads=cfg.threads, device="cpu", objective=objective, precision=precision,
                        beta=0.0 if objective == "mixture" else 1.0)
    return RunConfig(model, train)


def snapshot_dir(trial: Path, epochs: int) -> Path:
    return trial / f"epochs-{epochs:03d}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_task(cfg: StudyConfig, dataset: str, arm: str, seed: int, budget: int) -> str:
    """Train a trial up to `budget` epochs (resuming its checkpoint), snapshot and evaluate it."""
    from .data import load_dataset
    from .evaluate import evaluate_folder
    from .train import Trainer

    torch.set_num_threads(cfg.threads)
    trial = cfg.root / trial_name(dataset, arm, seed)
    snap = snapshot_dir(trial, budget)
    if (snap / "metrics.json").exists() and "test" in ckpt.read_json(snap / "metrics.json"):
        return f"{snap.name} of {trial.name}: done already"
    data = load_dataset(dataset, cfg.data_dir)
    if cfg.train_images:
        data = {**data, "train": data["train"][:cfg.train_images]}
    if not (snap / "model.safetensors").exists():
        run = trial_run(cfg, dataset, arm, seed)
        trainer = Trainer(run, out=trial, data=data)
        run.train.max_steps = budget * trainer.steps_per_epoch  # this budget's part of the one schedule
        trainer.resume()
        trainer.fit()
        trainer.finish({"command": f"python -m iwae_core.study (budget {budget} epochs)",
                        "study": {"commit": git_commit(), "arm": arm}})
        tmp = trial / f".{snap.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name in ("model.safetensors", "config.json", "metrics.json", "history.csv"):
            shutil.copyfile(trial / name, tmp / name)
        os.replace(tmp, snap)
    evaluate_folder(snap, S=cfg.S, limit=cfg.images, mc_repeats=1, data=data)
    metrics = ckpt.read_json(snap / "metrics.json")
    metrics["test"]["commit"] = git_commit()
    ckpt.write_json(snap / "metrics.json", metrics)
    return f"{snap.name} of {trial.name}: evaluated"


def _task(args) -> tuple[tuple, str]:
    cfg, key = args
    try:
        return key, run_task(cfg, *key)
    except Exception as err:  # one failed trial is reported and does not stop the others
        return key, f"failed: {type(err).__name__}: {err}"


def run_study(cfg: StudyConfig, address: str | None = None) -> None:
    """Every budget of every trial as Ray tasks of one CPU (and one torch thread) each, budget by budget, so
    that the early budgets of all seeds come first. On a local Ray of cfg.workers CPUs, or on the cluster at
    `address` (whose nodes must see cfg.root at the same path). A trial that fails is reported and the
    others go on; a worker that dies is retried, resuming from the trial's checkpoint."""
    from tqdm import tqdm

    from .scale.cluster import ray_session, say

    keys = [(d, a, s) for d in cfg.datasets for s in cfg.seeds for a in cfg.arms]
    with ray_session(address, num_cpus=None if address else cfg.workers) as (ray, where):
        say(f"study: {len(keys)} trials x {len(cfg.budgets_to_run)} budgets on {where}")
        task = ray.remote(_task).options(num_cpus=1, max_retries=3)
        for budget in cfg.budgets_to_run:
            pending = {task.remote((cfg, (*key, budget))): key for key in keys}
            bar = tqdm(total=len(pending), desc=f"study, {budget} epochs", unit="trial", file=sys.stderr)
            while pending:
                [ready], _ = ray.wait(list(pending), num_returns=1)
                key = pending.pop(ready)
                try:
                    message = ray.get(ready)[1]
                except Exception as err:  # the worker died more often than Ray retries
                    message = f"failed: {type(err).__name__}: {str(err).strip().splitlines()[0]}"
                bar.write(f"{trial_name(*key)} @ {budget} epochs: {message}")
                bar.update(1)
                write_results(cfg.root, cfg.results)
            bar.close()


# ---- results ------------------------------------------------------------------------------------
def collect(root: Path) -> list[dict]:
    """One row per evaluated (trial, budget, tau), with the paired difference to the same seed's IWAE.

    root is a study's folder (trials with epochs-NNN/ snapshots) or a sweep's (`iwae sweep`, trials named
    key=value,...: a trial's arm is its name without the seed, and its IWAE is the trial of variant iwae
    whose name differs only in variant and seed)."""
    from safetensors.torch import load_file

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
        per_image = load_file(str(snap / "test_ll.safetensors"))
        if sweep:
            arm, group = _without(snap.name, "seed"), _without(snap.name, "seed", "variant")
        else:
            arm, group = training.get("study", {}).get("arm") or _arm_of(run), ""
        found.append({"snap": snap, "run": run, "test": test, "training": training, "per_image": per_image,
                      "arm": arm, "group": group})
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
               "diff": None, "diff_sd": None, "paired_se": None, "verdict": ""}
        _fidelity(row, rs, groups.get((dataset, epochs, tau, _float32_arm(arm)), []))
        if diffs and not all(r["diff_stderr"] == 0 for r in diffs):  # not the reference (IWAE) itself
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


def write_results(root: Path, results: Path, note: str | None = None) -> list[dict]:
    """Rebuild results/study.csv and results/study.md (with `note` as its status paragraph, or the one
    study.md has) from the study's folders."""
    rows = collect(root)
    if not rows:
        return rows
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
        "Generated by `python -m iwae_core.study` from the study's run folders (`results/study.csv` holds one row",
        "per dataset, arm, seed, budget and τ). Every model: the paper's architecture and objective (784-400-40",
        "tanh, k = 25), batch 20, Adam lr 1e-3 cosine-decayed to 1e-4 over one schedule of the largest budget,",
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iwae_core.study", description=__doc__.splitlines()[0])
    p.add_argument("--root", default="runs/study", help="folder of the trials' run folders (not for git)")
    p.add_argument("--results", default="results", help="where study.csv and study.md are written")
    p.add_argument("--datasets", nargs="+", default=["mnist", "omniglot"])
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=list(ARMS),
                   help="default: the four float32 arms; iwae-bf16 and iwae-r-bf16 are the precision study's")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budgets", nargs="+", type=int, default=[5, 10, 20, 40],
                   help="epochs at which each trial is evaluated; the schedule is the largest")
    p.add_argument("--until", type=int, help="evaluate only the budgets up to this many epochs (the schedule stays "
                                             "that of the largest budget), e.g. 10 for the precision study")
    p.add_argument("--init-sigma", type=float, default=1e-3)
    p.add_argument("--mixture-init-sigma", type=float, default=1e-2)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--S", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2, help="trials trained at once on a local Ray, one thread each")
    p.add_argument("--address", default=None, help="a Ray cluster to run the trials on (default: $RAY_ADDRESS, "
                                                  "else a local Ray of --workers CPUs)")
    p.add_argument("--data-dir")
    p.add_argument("--summarize", action="store_true", help="only rebuild study.csv and study.md")
    p.add_argument("--note", help="a status paragraph for study.md (what the results cover, what is missing)")
    args = p.parse_args(argv)
    cfg = StudyConfig(root=args.root, results=args.results, datasets=tuple(args.datasets), arms=tuple(args.arms),
                      seeds=tuple(args.seeds), budgets=tuple(args.budgets), until=args.until,
                      init_sigma=args.init_sigma,
                      mixture_init_sigma=args.mixture_init_sigma, images=args.images, S=args.S,
                      workers=args.workers, data_dir=args.data_dir)
    if not args.summarize:
        run_study(cfg, args.address)
    rows = write_results(cfg.root, cfg.results, args.note)
    print(f"{len(rows)} result rows in {cfg.results / 'study.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
