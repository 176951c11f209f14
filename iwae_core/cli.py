"""The `iwae` command: train, eval, table, bench, export."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import signal
import sys
from pathlib import Path

from .config import (
    COMPILE_MODES,
    DATASETS,
    DRAWS,
    ESTIMATORS,
    GRANULARITIES,
    NOISE_PRECISIONS,
    OBJECTIVES,
    PAPER_PRESET,
    PRECISIONS,
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
    if args.objective == "mixture":
        # the poster's reading: every importance sample draws its own weights, and there is no KL term;
        # an explicit --beta or granularity that contradicts it is refused by RunConfig below
        model_kw.update(encoder_granularity="sample", decoder_granularity="sample")
        train_kw["beta"] = 0.0
    for name in ("hidden", "z_dim", "prior_std", "init_sigma", "encoder_granularity", "decoder_granularity",
                 "draws"):
        if getattr(args, name) is not None:
            model_kw[name] = tuple(args.hidden) if name == "hidden" else getattr(args, name)
    for name in ("k", "epochs", "max_steps", "batch_size", "lr", "lr_final", "device", "estimator", "beta",
                 "seed", "threads", "init_from", "noise_precision", "objective", "adam_eps", "rho_adam_eps",
                 "rho_lr_scale", "compile"):
        if getattr(args, name) is not None:
            train_kw[name] = getattr(args, name)
    if getattr(args, "precision", None) is not None:
        train_kw["precision"] = args.precision
    train_kw["dataset"] = args.dataset
    return RunConfig(model=ModelConfig.for_variant(args.variant, **model_kw), train=TrainConfig(**train_kw))


def as_options(message: str, args) -> str:
    """A config's message in the words of the command line: "batch_size must ..." -> "--batch-size must ..."."""
    for name in sorted(vars(args), key=len, reverse=True):
        message = re.sub(rf"(?<![-\w]){name}(?=( must|=| and [-a-z_]+ must))", "--" + name.replace("_", "-"), message)
    return message


def check_out(out: Path, resume: bool, force: bool) -> None:
    """Refuse an --out that training would fail to write at its end, or whose files it would overwrite or
    delete without being asked to: checked before the data is loaded and any step is taken."""
    from .checkpoint import CheckpointError, check_writable, load_run_config, read_json_object

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if not out.exists():
        try:
            out.mkdir(parents=True)
        except OSError as err:
            raise ValueError(f"--out {out} cannot be created: {err.strerror or err}") from err
    # a log beside the run (a script's `>> OUT/train.log` creates it before training starts) is no obstacle
    entries = sorted(p.name for p in out.iterdir() if not p.name.endswith(".log"))
    try:
        load_run_config(out)
        is_run = True
    except CheckpointError:
        is_run = any((out / d / "trainer_state.json").exists() for d in ("checkpoint", "checkpoint.old"))
    if entries and not is_run:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        if not force:
            raise ValueError(f"--out {out} is not empty ({shown}) and holds no run of `iwae train`"
                             + ("; there is nothing to resume" if resume else "")
                             + ": choose a new or empty folder, or pass --force to write the run's files "
                             "(model.safetensors, config.json, metrics.json, history.csv, checkpoint/) into it")
        foreign = [name for name in ("checkpoint", "checkpoint.old") if (out / name).exists()]
        if foreign:  # training replaces these folders whole: never delete what this tool did not write
            raise ValueError(f"--out {out} holds {' and '.join(foreign)}, which `iwae train` did not write and "
                             "would replace; move them away first")
    elif is_run and not (resume or force):
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, --force to train a new one "
                         "over it, or choose another --out")
    read_json_object(out / "metrics.json")  # rewritten at the end: a broken one is refused now, not then
    check_writable(out, f"--out {out}")


def cmd_train(args) -> int:
    from tqdm import tqdm

    from .config import check_k
    from .train import Hooks, Trainer, TrainingDiverged

    if args.k is not None:
        check_k(args.k, "--k")
    try:
        run = build_run(args)
    except ValueError as err:
        raise ValueError(as_options(str(err), args)) from err
    out = Path(args.out)
    created = not out.exists()
    check_out(out, args.resume, args.force)
    bar = None

    def on_step(trainer, m):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=trainer.planned_steps, initial=trainer.step - 1, unit="step",
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

    try:
        trainer = Trainer(run, out=out, hooks=Hooks(on_step=[on_step], on_epoch=[on_epoch]), data_dir=args.data_dir)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # the folder made for a run that could not start
        raise
    signals = []

    def stop(signum, frame):
        """SIGTERM and Ctrl-C stop after the current step, with a checkpoint (a KeyboardInterrupt could land
        mid-step, after its random draws, and the saved state would not resume exactly)."""
        if signum == signal.SIGINT and signal.SIGINT in signals:
            raise KeyboardInterrupt  # a second Ctrl-C: quit now, keeping the last checkpoint
        signals.append(signum)
        trainer.request_stop()
        if signum == signal.SIGINT:
            print("\nstopping after this step with a checkpoint (Ctrl-C again quits at once, keeping the last "
                  "checkpoint)", file=sys.stderr)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return train_until_done(args, trainer, out, signals, lambda: bar)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last checkpoint is kept, continue with: iwae train ... --out {out} --resume",
              file=sys.stderr)
        return 130
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if bar is not None:
            bar.close()


def train_until_done(args, trainer, out: Path, signals: list, bar) -> int:
    if args.resume:
        resumed = trainer.resume(allow_changes=args.force)
        if trainer.recovered:
            print(f"note: {trainer.recovered}")
        if trainer.changed:
            print("note: continuing with other settings than the checkpoint's (--force): "
                  + ", ".join(f"{o} {a} -> {b}" for o, a, b in trainer.changed))
        if not resumed:
            print(f"no checkpoint in {out}: starting from scratch")
        elif trainer.done:
            # finished already: leave the model folder (and any evaluation in metrics.json) as it is, unless a
            # kill after the last checkpoint kept the run from writing its metrics.json: write it now
            if trainer.finished_record():
                print(f"{out} has done its {trainer.step} steps already ({trainer.epoch} epochs); nothing to do")
                return 0
            trainer.finish({"command": "iwae " + " ".join(shlex.quote(a) for a in sys.argv[1:])})
            print(f"{out} had done its {trainer.step} steps but not written metrics.json; written now")
            return 0
        else:
            print(f"resuming {out} at step {trainer.step} (epoch {trainer.epoch})")
    trainer.decide_compile()
    print(f"training step {trainer.compile_note}"
          + ("; its first step compiles it (10-30 s)" if trainer.compiled_loss is not None else ""))
    reason = trainer.fit()
    if bar() is not None:
        bar().close()
    trainer.finish({"command": "iwae " + " ".join(shlex.quote(a) for a in sys.argv[1:])})
    if reason == "stopped":
        print(f"stopped at step {trainer.step}; checkpoint saved, continue with --resume")
        return 130 if signal.SIGINT in signals else 0
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


class Spelled(argparse.Action):
    """Store an option's value and the spelling it was given under (DEST_option), so that an error names the
    option as the user typed it: `iwae eval --k 0` says --k, `--S 0` says --S."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_option", option_string)


def cmd_eval(args) -> int:
    from .checkpoint import load_model
    from .evaluate import check_evaluation_settings, check_evaluation_target, evaluate_folder

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    check_evaluation_settings(
        {"S": getattr(args, "S_option", "--S"), "limit": "--limit", "taus": getattr(args, "tau_option", "--tau"),
         "batch_size": "--batch-size", "mc_repeats": "--mc-repeats", "mc_images": "--mc-images", "seed": "--seed"},
        S=args.S, limit=args.limit, taus=args.tau, batch_size=args.batch_size,
        mc_repeats=args.mc_repeats, mc_images=args.mc_images, seed=args.seed)
    for directory in args.dirs:  # every folder is checked before the first one takes minutes
        load_model(directory)
        check_evaluation_target(Path(directory), write=not args.no_write)
    if args.address and not args.workers:
        raise ValueError("--address runs a sharded evaluation on a Ray cluster: give --workers N too")
    if args.workers:  # shard the test images of every model across Ray workers
        from .scale.sharded import evaluate_sharded

        results = evaluate_sharded(args.dirs, args.workers, S=args.S, limit=args.limit,
                                   taus=args.tau, batch_size=args.batch_size,
                                   data_dir=args.data_dir, write=not args.no_write, mc_repeats=args.mc_repeats,
                                   mc_images=args.mc_images, seed=args.seed, seeding=args.seeding,
                                   address=args.address, show_progress=sys.stderr.isatty())
        for result in results.values():
            print(json.dumps(result, indent=2))
        return 0
    for directory in args.dirs:
        result = evaluate_folder(directory, S=args.S, limit=args.limit, taus=args.tau,
                                 batch_size=args.batch_size, data_dir=args.data_dir, write=not args.no_write,
                                 mc_repeats=args.mc_repeats, mc_images=args.mc_images, seed=args.seed,
                                 progress=progress_bar(f"test LL {directory}"), seeding=args.seeding)
        print(json.dumps(result, indent=2))
    return 0


def cmd_table(args) -> int:
    from .compare import comparison_table, paired_differences, stale_evaluation, write_paired
    from .scale.sweep import is_sweep
    from .scale.sweep_table import sweep_table
    from .zoo import select_models

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
                z = f"{r['z']:+.1f} SE" if r["z"] is not None else "identical"
                print(f"{dataset:9} {r['a']:>20} - {r['b']:<20} {r['mean_difference']:+.3f} ± "
                      f"{r['paired_stderr']:.3f}  ({z}, {r['n_images']} images)")
        if args.write:
            write_paired(entries, rows)
    return 0


def cmd_sweep(args) -> int:
    from .scale.sweep import main_sweep

    return main_sweep(args)


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
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--force", action="store_true",
                   help="train into a non-empty --out that holds no run (its files of the run's names are "
                        "replaced), over an existing run, or resume with other settings than the checkpoint's")
    t.add_argument("--noise-precision", choices=NOISE_PRECISIONS,
                   help="precision of the random layers' noise-path products (default auto: bfloat16 on CPUs "
                        "with native bfloat16 products, float32 elsewhere); evaluation always uses float32")
    t.add_argument("--precision", choices=PRECISIONS,
                   help="matrix products of the training step: float32 (default), bf16-mixed (bfloat16 inputs, "
                        "float32 accumulation; parameters, Adam, draws and the bound stay float32) or auto "
                        "(bf16-mixed where the device multiplies bfloat16 natively); see docs/precision.md")
    t.add_argument("--compile", choices=COMPILE_MODES,
                   help="compile the training step's loss with torch.compile: auto (default) where it pays back the "
                        "10-30 s of compiling (runs of 5 million rows of steps x batch x k or more, with a C++ "
                        "compiler or CUDA), on, or off")
    t.add_argument("--draws", choices=DRAWS,
                   help="generator of the noise: philox (default; drawn on every CPU thread) or torch (torch's own, "
                        "as models trained before philox existed)")
    t.add_argument("--init-from", metavar="DIR",
                   help="start from the weights of this trained model folder: a further training stage with "
                        "its own schedule, counting on from that model's epochs and history")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="test log-likelihood and diagnostics of model folders")
    e.add_argument("dirs", nargs="+")
    e.add_argument("--S", "--k", dest="S", type=int, default=5000, action=Spelled,
                   help="joint draws S of (weights, z) per test image (--k: the older spelling)")
    e.add_argument("--limit", type=int, help="only the first N test images")
    e.add_argument("--tau", "--noise-scale", dest="tau", type=float, nargs="+", default=None, action=Spelled,
                   help="weight-noise scales tau to evaluate (default: 1 and 0 for random-weight models; "
                        "--noise-scale: the older spelling)")
    e.add_argument("--batch-size", type=int, default=None)
    e.add_argument("--mc-repeats", type=int, default=3, help="repeated estimates for the Monte-Carlo spread")
    e.add_argument("--mc-images", type=int, default=500, help="images the repeated estimates use")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
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
    b.add_argument("--json", action="store_true",
                   help="print the results as one JSON object on stdout (the table goes to stderr)")
    b.set_defaults(func=cmd_bench)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
