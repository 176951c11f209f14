"""The `iwae` command: train, eval, table, bench, export."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from pathlib import Path

from .config import (
    DATASETS,
    ESTIMATORS,
    GRANULARITIES,
    NOISE_PRECISIONS,
    OBJECTIVES,
    PAPER_PRESET,
    PRECISIONS,
    VARIANTS,
    ModelConfig,
    RunConfig,
    TrainConfig,
)


def build_run(args) -> RunConfig:
    preset = PAPER_PRESET if args.preset == "paper" else {"model": {}, "train": {}}
    model_kw = dict(preset["model"])
    train_kw = dict(preset["train"])
    if args.objective == "mixture":
        # the poster's reading: every importance sample draws its own weights, and there is no KL term;
        # an explicit --beta or granularity that contradicts it is refused by RunConfig below
        model_kw.update(encoder_granularity="sample", decoder_granularity="sample")
        train_kw["beta"] = 0.0
    for name in ("hidden", "z_dim", "prior_std", "init_sigma", "encoder_granularity", "decoder_granularity"):
        if getattr(args, name) is not None:
            model_kw[name] = tuple(args.hidden) if name == "hidden" else getattr(args, name)
    for name in ("k", "epochs", "max_steps", "batch_size", "lr", "lr_final", "device", "estimator", "beta",
                 "seed", "threads", "init_from", "noise_precision", "objective", "adam_eps", "rho_adam_eps",
                 "rho_lr_scale"):
        if getattr(args, name) is not None:
            train_kw[name] = getattr(args, name)
    if getattr(args, "precision", None) is not None:
        train_kw["precision"] = args.precision
    train_kw["dataset"] = args.dataset
    return RunConfig(model=ModelConfig.for_variant(args.variant, **model_kw), train=TrainConfig(**train_kw))


def cmd_train(args) -> int:
    from tqdm import tqdm

    from .train import Hooks, Trainer, TrainingDiverged

    run = build_run(args)
    out = Path(args.out)
    if (out / "checkpoint").exists() and not args.resume:
        print(f"error: {out} already holds a run; pass --resume to continue it or choose another --out",
              file=sys.stderr)
        return 2
    bar = None

    def on_step(trainer, m):
        nonlocal bar
        if bar is None:
            total = trainer.total_steps if trainer.cfg.max_steps is None else min(trainer.cfg.max_steps,
                                                                                   trainer.total_steps)
            bar = tqdm(total=total, initial=trainer.step - 1, unit="step",
                       desc=f"{run.model.variant} {run.train.dataset}",
                       disable=None)
        bar.update(1)
        if m["step"] % 20 == 0:
            kl = {} if m["kl_per_datapoint"] is None else {"kl": f"{m['kl_per_datapoint']:.2f}"}
            bar.set_postfix(epoch=m["epoch"] + 1, bound=f"{m['bound']:.2f}", **kl)

    def on_epoch(trainer, row):
        # KL/N only where it is part of the objective (not with beta = 0)
        kl = "" if row["kl_per_datapoint"] is None else f", KL/N {row['kl_per_datapoint']:.2f}"
        msg = (f"epoch {row['epoch']}: train L_k {row['train_bound']:.2f}, valid L_{trainer.cfg.eval_k} "
               f"{row['valid_bound']:.2f}{kl}, {row['seconds']:.0f}s")
        (bar.write if bar else print)(msg)

    trainer = Trainer(run, out=out, hooks=Hooks(on_step=[on_step], on_epoch=[on_epoch]), data_dir=args.data_dir)
    signal.signal(signal.SIGTERM, lambda *_: trainer.request_stop())  # `kill` stops cleanly after a checkpoint
    if args.resume and trainer.resume():
        if trainer.done:
            # finished already: leave the model folder (and any evaluation in metrics.json) as it is
            print(f"{out} has done its {trainer.step} steps already ({trainer.epoch} epochs); nothing to do")
            return 0
        print(f"resuming {out} at step {trainer.step} (epoch {trainer.epoch})")
    try:
        reason = trainer.fit()
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        trainer.save_checkpoint()
        print(f"\ninterrupted; checkpoint saved, continue with: iwae train ... --out {out} --resume")
        return 130
    finally:
        if bar is not None:
            bar.close()
    trainer.finish({"command": "iwae " + " ".join(shlex.quote(a) for a in sys.argv[1:])})
    if reason == "stopped":
        print(f"stopped at step {trainer.step}; checkpoint saved, continue with --resume")
        return 0
    print(f"{reason}: {trainer.step} steps, model folder {out}")
    return 0


def progress_bar(desc: str):
    """A progress(done, total) callback drawing a tqdm bar on stderr, a new bar whenever a pass restarts."""
    from tqdm import tqdm

    state = {"bar": None}

    def update(done: int, total: int) -> None:
        bar = state["bar"]
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            # disable=None: no bar when stderr is not a terminal (a log file), as for `iwae train`
            bar = state["bar"] = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, mininterval=5,
                                      disable=None)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            state["bar"] = None
    return update


def cmd_eval(args) -> int:
    from .checkpoint import load_model
    from .evaluate import evaluate_folder

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    for directory in args.dirs:
        load_model(directory)  # fail early and clearly on a bad folder
        result = evaluate_folder(directory, S=args.k, limit=args.limit, noise_scales=args.noise_scale,
                                 batch_size=args.batch_size, data_dir=args.data_dir, write=not args.no_write,
                                 mc_repeats=args.mc_repeats, mc_images=args.mc_images, seed=args.seed,
                                 progress=progress_bar(f"test LL {directory}"))
        print(json.dumps(result, indent=2))
    return 0


def cmd_table(args) -> int:
    from .checkpoint import select_models
    from .evaluate import comparison_table, paired_differences, stale_evaluation, write_paired

    print(comparison_table(args.dirs or None))
    if args.paired or args.write:
        entries = select_models(args.dirs)
        for e in entries:
            if stale_evaluation(e):
                print(f"note: the test results in {e.path} are of other weights than its model.safetensors; "
                      f"left out of the paired differences until `iwae eval {e.path}` is run again",
                      file=sys.stderr)
        rows = {d: paired_differences([e for e in entries if e.dataset == d]) for d in {e.dataset for e in entries}}
        print("\npaired differences a - b of per-image test LL (tau = 1, same binarised test images):")
        for dataset in sorted(rows):
            for r in rows[dataset]:
                print(f"{dataset:9} {r['a']:>20} - {r['b']:<20} {r['mean_difference']:+.3f} ± "
                      f"{r['paired_stderr']:.3f}  ({r['mean_difference'] / r['paired_stderr']:+.1f} SE, "
                      f"{r['n_images']} images)")
        if args.write:
            write_paired(entries, rows)
    return 0


def cmd_bench(args) -> int:
    from .benchmark import run_benchmarks

    run_benchmarks(quick=args.quick, as_json=args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iwae", description="Importance weighted autoencoders with random weights")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and write a model folder")
    t.add_argument("--dataset", choices=DATASETS, default="mnist")
    t.add_argument("--variant", choices=sorted(VARIANTS), default="iwae")
    t.add_argument("--preset", choices=["paper"], default=None,
                   help="paper: 784-400-40 tanh, k=25, batch 100, Adam 1e-3 cosine-decayed to 1e-4")
    t.add_argument("--k", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--lr-final", type=float)
    t.add_argument("--hidden", type=int, nargs="+")
    t.add_argument("--z-dim", type=int)
    t.add_argument("--prior-std", type=float)
    t.add_argument("--encoder-granularity", choices=GRANULARITIES)
    t.add_argument("--decoder-granularity", choices=GRANULARITIES)
    t.add_argument("--estimator", choices=ESTIMATORS)
    t.add_argument("--objective", choices=OBJECTIVES,
                   help="bayes (default): weights drawn once per data point, minus beta KL(q||p)/N; mixture: the "
                        "random weights are part of the model, each importance sample draws its own, no KL")
    t.add_argument("--beta", type=float, help="weight of the KL term (default 1; 0 for --objective mixture)")
    t.add_argument("--init-sigma", type=float, help="initial sigma of every random weight (default 1e-3)")
    t.add_argument("--adam-eps", type=float, help="Adam's eps for the weight means (paper preset: 1e-4)")
    t.add_argument("--rho-adam-eps", type=float,
                   help="Adam's eps for the rho parameters, sigma = softplus(rho) (default 1e-8: their gradients "
                        "are 1e-6 to 1e-5, and a larger eps throttles how fast sigma can move)")
    t.add_argument("--rho-lr-scale", type=float, help="learning-rate multiplier for the rho parameters (default 1)")
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int)
    t.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    t.add_argument("--data-dir")
    t.add_argument("--out", required=True)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--noise-precision", choices=NOISE_PRECISIONS,
                   help="precision of the random layers' noise-path products (default auto: bfloat16 on CPUs "
                        "with native bfloat16 products, float32 elsewhere); evaluation always uses float32")
    t.add_argument("--precision", choices=PRECISIONS,
                   help="matrix products of the training step: float32 (default), bf16-mixed (bfloat16 inputs, "
                        "float32 accumulation; parameters, Adam, draws and the bound stay float32) or auto "
                        "(bf16-mixed where the device multiplies bfloat16 natively); see docs/precision.md")
    t.add_argument("--init-from", metavar="DIR",
                   help="start from the weights of this trained model folder: a further training stage with "
                        "its own schedule, counting on from that model's epochs and history")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="test log-likelihood and diagnostics of model folders")
    e.add_argument("dirs", nargs="+")
    e.add_argument("--k", type=int, default=5000, help="joint draws S per test image")
    e.add_argument("--limit", type=int, help="only the first N test images")
    e.add_argument("--noise-scale", type=float, nargs="+", default=None,
                   help="weight-noise scales tau to evaluate (default: 1 and 0 for random-weight models)")
    e.add_argument("--batch-size", type=int, default=None)
    e.add_argument("--mc-repeats", type=int, default=3, help="repeated estimates for the Monte-Carlo spread")
    e.add_argument("--mc-images", type=int, default=500, help="images the repeated estimates use")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    e.add_argument("--data-dir")
    e.add_argument("--no-write", action="store_true", help="print only; leave metrics.json as it is")
    e.set_defaults(func=cmd_eval)

    tb = sub.add_parser("table", help="the paper's table beside these models' numbers")
    tb.add_argument("dirs", nargs="*")
    tb.add_argument("--paired", action="store_true", help="also print paired per-image differences")
    tb.add_argument("--write", action="store_true", help="store the paired differences in each metrics.json")
    tb.set_defaults(func=cmd_table)

    b = sub.add_parser("bench", help="speed and memory benchmarks, printed as ratios")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--json", action="store_true",
                   help="print the results as one JSON object on stdout (the table goes to stderr)")
    b.set_defaults(func=cmd_bench)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
