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
    PAPER_PRESET,
    SEEDINGS,
    VARIANTS,
    ModelConfig,
    RunConfig,
    TrainConfig,
)


def build_run(args) -> RunConfig:
    preset = PAPER_PRESET if args.preset == "paper" else {"model": {}, "train": {}}
    model_kw = dict(preset["model"])
    train_kw = dict(preset["train"])
    for name in ("hidden", "z_dim", "prior_std", "encoder_granularity", "decoder_granularity"):
        if getattr(args, name) is not None:
            model_kw[name] = tuple(args.hidden) if name == "hidden" else getattr(args, name)
    for name in ("k", "epochs", "max_steps", "batch_size", "lr", "lr_final", "device", "estimator", "beta",
                 "seed", "threads", "init_from", "noise_precision"):
        if getattr(args, name) is not None:
            train_kw[name] = getattr(args, name)
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
            bar.set_postfix(epoch=m["epoch"] + 1, bound=f"{m['bound']:.2f}", kl=f"{m['kl_per_datapoint']:.2f}")

    def on_epoch(trainer, row):
        msg = (f"epoch {row['epoch']}: train L_k {row['train_bound']:.2f}, valid L_{trainer.cfg.eval_k} "
               f"{row['valid_bound']:.2f}, KL/N {row['kl_per_datapoint']:.2f}, {row['seconds']:.0f}s")
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

    if args.address and not args.workers:
        raise ValueError("--address runs a sharded evaluation on a Ray cluster: give --workers N too")
    if args.workers:  # shard the test images of every model across Ray workers
        from .sharded import evaluate_sharded

        results = evaluate_sharded(args.dirs, args.workers, S=args.k, limit=args.limit,
                                   noise_scales=args.noise_scale, batch_size=args.batch_size,
                                   data_dir=args.data_dir, write=not args.no_write, mc_repeats=args.mc_repeats,
                                   mc_images=args.mc_images, seed=args.seed, seeding=args.seeding,
                                   address=args.address, show_progress=sys.stderr.isatty())
        for result in results.values():
            print(json.dumps(result, indent=2))
        return 0
    for directory in args.dirs:
        load_model(directory)  # fail early and clearly on a bad folder
        result = evaluate_folder(directory, S=args.k, limit=args.limit, noise_scales=args.noise_scale,
                                 batch_size=args.batch_size, data_dir=args.data_dir, write=not args.no_write,
                                 mc_repeats=args.mc_repeats, mc_images=args.mc_images, seed=args.seed,
                                 progress=progress_bar(f"test LL {directory}"), seeding=args.seeding)
        print(json.dumps(result, indent=2))
    return 0


def cmd_table(args) -> int:
    from .checkpoint import select_models
    from .evaluate import comparison_table, paired_differences, stale_evaluation, write_paired
    from .sweep import is_sweep, sweep_table

    if len(args.dirs) == 1 and is_sweep(args.dirs[0]):  # a sweep folder: its trials grouped by configuration
        print(sweep_table(args.dirs[0]))
        return 0
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


def cmd_sweep(args) -> int:
    from .sweep import main_sweep

    return main_sweep(args)


def cmd_bench(args) -> int:
    from .benchmark import run_benchmarks

    run_benchmarks(quick=args.quick)
    return 0


def main(argv: list[str] | None = None) -> int:
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
    t.add_argument("--beta", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int)
    t.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    t.add_argument("--data-dir")
    t.add_argument("--out", required=True)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--noise-precision", choices=NOISE_PRECISIONS,
                   help="precision of the random layers' noise-path products (default auto: bfloat16 on CPUs "
                        "with native bfloat16 products, float32 elsewhere); evaluation always uses float32")
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
    e.add_argument("--data-dir")
    e.add_argument("--no-write", action="store_true", help="print only; leave metrics.json as it is")
    e.add_argument("--workers", type=int, default=None, metavar="N",
                   help="shard the test images of every model across N Ray workers (a local Ray, or the "
                        "cluster at --address / $RAY_ADDRESS); per-image results equal those without")
    e.add_argument("--address", default=None, help="a Ray cluster to run --workers on (default: $RAY_ADDRESS, "
                                                  "else a local Ray)")
    e.add_argument("--seeding", choices=SEEDINGS, default="stream",
                   help="stream (default; as every shipped number): one random stream through the images; "
                        "per-batch: a seed per batch of images, which shards without replaying the stream")
    e.set_defaults(func=cmd_eval)

    tb = sub.add_parser("table", help="the paper's table beside these models' numbers")
    tb.add_argument("dirs", nargs="*")
    tb.add_argument("--paired", action="store_true", help="also print paired per-image differences")
    tb.add_argument("--write", action="store_true", help="store the paired differences in each metrics.json")
    tb.set_defaults(func=cmd_table)

    sw = sub.add_parser("sweep", help="train (and evaluate) every combination of a grid, in parallel on Ray")
    sw.add_argument("grid", help="a TOML grid file: [base] settings, [grid] lists to cross, optional [eval]")
    sw.add_argument("--out", required=True, help="the sweep folder: one model folder per trial and sweep.json")
    sw.add_argument("--address", default=None,
                    help="a Ray cluster (ray://HOST:10001 or HOST:6379; default: $RAY_ADDRESS, else a local Ray)")
    sw.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: every core)")
    sw.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs (and torch threads) per trial")
    sw.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs per trial (fractions share a GPU)")
    sw.add_argument("--max-retries", type=int, default=3,
                    help="times Ray reruns a trial whose worker died (each resumes from its checkpoint)")
    sw.add_argument("--data-dir")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)

    b = sub.add_parser("bench", help="speed and memory benchmarks, printed as ratios")
    b.add_argument("--quick", action="store_true")
    b.set_defaults(func=cmd_bench)

    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
