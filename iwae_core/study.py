"""The budget x seed study: does a random-weight IWAE beat IWAE, and at which training budget?

Each trial is one (dataset, arm, seed) trained on one cosine schedule of max(budgets) epochs; at every
budget (epochs 5, 10, 20, 40 by default) the weights are copied to DIR/<trial>/epochs-NNN/ and evaluated
there with the full protocol on the same binarised test images (the first `images`, S joint draws,
tau = 1 and 0). Evaluating along one schedule, instead of a separate run per budget, is what makes the
budgets affordable; the earlier budgets are therefore models in the middle of their learning-rate decay,
not models trained to convergence at that budget.

Everything is resumable: a trial resumes from its checkpoint (bit-exact), a budget whose evaluation is in
its folder is skipped, and results/study.csv and study.md are rebuilt from the folders on disk (after every
trial's budget, at the end, and alone with --summarize; study_results.py reads the folders and writes them).
The results outlive the folders: each evaluation's per-image results are kept in results/per_image/, and a
budget already there (or in study.csv for every arm of its seed) is not run again. A trial with its
earlier budgets in results/ trains straight through them to the first one missing, on the same schedule;
so the study can go on in a new checkout with an empty --root, trial by trial.

  python -m iwae_core.study --root runs/study --datasets mnist --seeds 0 1 2 --workers 2

The arms iwae-bf16 and iwae-r-bf16 train IWAE and IWAE-R in bf16-mixed precision on the same schedule; each is
paired with the float32 trial of the same seed and budget (the precision fidelity study of docs/precision.md):

  python -m iwae_core.study --root runs/study --datasets mnist --arms iwae-bf16 iwae-r-bf16 --until 10

The trials run as Ray tasks, as `iwae sweep`'s do (a local Ray, or a cluster with --address).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import DRAWS, PAPER_PRESET, ModelConfig, RunConfig, TrainConfig

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
    # the noise's generator (config.DRAWS): torch's, as every trial in results/ was trained with, so that a trial
    # retrained through its earlier budgets in a new checkout follows the same draws as the one they came from
    draws: str = "torch"

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
                                    init_sigma=sigma, draws=cfg.draws, **granularity)
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


def next_runnable(todo: list[tuple[tuple, int]], busy: set[tuple]) -> tuple[tuple, int] | None:
    """Take from `todo` (trial keys with a budget, in the study's order: budget by budget) the first item that can
    start now: its trial is not running (`busy`) and none of its earlier budgets is still waiting in `todo`. None
    when nothing can start until a running task ends."""
    waiting = set()
    for i, (key, _) in enumerate(todo):
        if key not in busy and key not in waiting:
            return todo.pop(i)
        waiting.add(key)
    return None


def study_todo(cfg: StudyConfig) -> list[tuple[tuple, int]]:
    """The (trial key, budget) pairs still to train and evaluate, budget by budget: all of cfg's but those
    settled in cfg.results (study_results.settled), from this root or an earlier one."""
    from .study_results import settled  # here, not at the top: study_results imports ARMS from this module

    keys = [(d, a, s) for d in cfg.datasets for s in cfg.seeds for a in cfg.arms]
    done = settled(cfg.results, cfg.arms)
    return [(key, budget) for budget in cfg.budgets_to_run for key in keys if (*key, budget) not in done]


def run_study(cfg: StudyConfig, address: str | None = None) -> None:
    """Every budget of every trial as Ray tasks of one CPU (and one torch thread) each, on a local Ray of
    cfg.workers CPUs or on the cluster at `address` (whose nodes must see cfg.root at the same path).

    The early budgets of all seeds come first, but without a barrier between budgets: a CPU that would wait
    for the slowest trial of a budget takes the next budget of a trial that is ready (next_runnable). One trial
    never runs two budgets at once (they share its folder). A trial that fails is reported and the others go
    on; a worker that dies is retried, resuming from the trial's checkpoint."""
    from tqdm import tqdm

    from .scale.cluster import ray_session, say
    from .study_results import write_results  # here, not at the top: study_results imports ARMS from this module

    keys = [(d, a, s) for d in cfg.datasets for s in cfg.seeds for a in cfg.arms]
    todo = study_todo(cfg)
    with ray_session(address, num_cpus=None if address else cfg.workers) as (ray, where):
        slots = cfg.workers if address is None else max(1, int(ray.cluster_resources().get("CPU", 1)))
        say(f"study: {len(todo)} evaluations to run ({len(keys)} trials x {len(cfg.budgets_to_run)} budgets, "
            f"{len(keys) * len(cfg.budgets_to_run) - len(todo)} of them in {cfg.results} already) on {where}")
        task = ray.remote(_task).options(num_cpus=1, max_retries=3)
        pending: dict = {}  # Ray reference -> (key, budget)
        bar = tqdm(total=len(todo), desc="study", unit="evaluation", file=sys.stderr)
        while todo or pending:
            while len(pending) < slots and (item := next_runnable(todo, {k for k, _ in pending.values()})):
                pending[task.remote((cfg, (*item[0], item[1])))] = item
            [ready], _ = ray.wait(list(pending), num_returns=1)
            key, budget = pending.pop(ready)
            try:
                message = ray.get(ready)[1]
            except Exception as err:  # the worker died more often than Ray retries
                message = f"failed: {type(err).__name__}: {str(err).strip().splitlines()[0]}"
            bar.write(f"{trial_name(*key)} @ {budget} epochs: {message}")
            bar.update(1)
            write_results(cfg.root, cfg.results)
        bar.close()


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
    p.add_argument("--draws", choices=DRAWS, default="torch",
                   help="the noise's generator: torch (default, as the trials in results/) or philox (faster; a "
                        "study of its own, in a new --root and --results)")
    p.add_argument("--summarize", action="store_true", help="only rebuild study.csv and study.md")
    p.add_argument("--note", help="a status paragraph for study.md (what the results cover, what is missing)")
    args = p.parse_args(argv)
    cfg = StudyConfig(root=args.root, results=args.results, datasets=tuple(args.datasets), arms=tuple(args.arms),
                      seeds=tuple(args.seeds), budgets=tuple(args.budgets), until=args.until,
                      init_sigma=args.init_sigma,
                      mixture_init_sigma=args.mixture_init_sigma, images=args.images, S=args.S,
                      workers=args.workers, data_dir=args.data_dir, draws=args.draws)
    if not args.summarize:
        run_study(cfg, args.address)
    from .study_results import write_results  # here, not at the top: study_results imports ARMS from this module

    rows = write_results(cfg.root, cfg.results, args.note)
    print(f"{len(rows)} result rows in {cfg.results / 'study.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
