"""The worker: the detached process that trains one run folder and reports its progress.

`python -m iwae_core.runs.worker DIR [--lock-fd N]` takes (or inherits) the run's lock, trains with the
Trainer, rewrites progress.json about once a second and samples.png every few seconds, stops cleanly when
asked (a `stop` file or SIGTERM), and on its way out dispatches the next queued run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from ..checkpoint import write_json
from ..config import RunConfig
from .job import Job
from .queue import VALID_POINTS
from .snapshots import Keeper
from .store import CONFIG, OPTIONS, PROGRESS, SAMPLES, STOP, read_state, try_lock

MAX_POINTS = 1000  # per-step curve points kept in progress.json (older ones are merged pairwise)
SAMPLE_SECONDS = 3.0
GRID = 8  # samples.png is GRID x GRID images from fixed z


# ---- the worker --------------------------------------------------------------------------------------

class Worker(Job):
    """Trains one run folder with the Trainer and reports progress, samples and status on disk."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        super().__init__(path, lock_fd)
        self.run = RunConfig.from_json((path / CONFIG).read_text())
        self.options = read_state(path / OPTIONS)
        old = read_state(path / PROGRESS)
        self.state = {"status": "running", "message": "loading data", "pid": os.getpid(), "heartbeat": time.time(),
                      "started_at": time.time(), "step": 0, "total_steps": None, "epoch": 0,
                      "epochs": self.run.train.epochs, "steps_per_epoch": None,
                      "points": old.get("points", []), "stride": old.get("stride", 1), "history": [],
                      "samples_step": None, "steps_per_second": None, "valid": old.get("valid", [])}
        self.trainer = None
        self._sums = [0.0, 0.0, 0]  # bound, KL, count since the last stored point
        self._last_sample = 0.0
        self._rate = (time.monotonic(), 0)
        self.snapshots = Keeper(path)  # snapshots/: the model at steps of the run, for the views

    # progress.json is written by the heartbeat thread only (and once at the end), from self.state.
    def write(self) -> None:
        with self.lock:
            self.state["heartbeat"] = time.time()
            snapshot = json.loads(json.dumps(self.state))
        write_json(self.path / PROGRESS, snapshot)

    def on_beat(self) -> None:
        if (self.path / STOP).exists() and self.trainer is not None:
            self.trainer.request_stop()
            with self.lock:
                if self.state["status"] == "running":
                    self.state.update(status="stopping",
                                      message="stopping after the current step (saving a checkpoint)")

    def on_step(self, trainer, m: dict) -> None:
        sums = self._sums
        sums[0] += m["bound"]
        # no KL term in the objective (beta = 0): the curve has none
        sums[1] = None if m["kl_per_datapoint"] is None else sums[1] + m["kl_per_datapoint"]
        sums[2] += 1
        with self.lock:
            st = self.state
            if m["step"] % st["stride"] == 0:
                st["points"].append([m["step"], sums[0] / sums[2], None if sums[1] is None else sums[1] / sums[2]])
                self._sums = [0.0, 0.0, 0]
                if len(st["points"]) > MAX_POINTS:
                    st["points"] = _halve(st["points"])
                    st["stride"] *= 2
            st.update(step=m["step"], epoch=m["epoch"], batch=m["batch"], lr=m["lr"])
            t0, s0 = self._rate
            now = time.monotonic()
            if now - t0 > 2.0:
                st["steps_per_second"] = round((m["step"] - s0) / (now - t0), 2)
                self._rate = (now, m["step"])
            if st["status"] == "running":
                st["message"] = f"epoch {m['epoch'] + 1} of {st['epochs']}, step {m['step']}"
        if time.monotonic() - self._last_sample > SAMPLE_SECONDS:
            self.write_samples()

    def on_eval(self, trainer, m: dict) -> None:
        """A validation bound (per epoch, and every valid_every steps): a [step, bound] point of the live curve."""
        with self.lock:
            self.state["valid"].append([m["step"], m["valid_bound"]])

    def setup_validation(self, trainer, resumed: bool) -> None:
        """Keep the validation points up to the checkpoint's step (none for a fresh start), and give a run that
        asked for valid_points (and set no valid_every) a valid_every for about that many points."""
        wanted = self.options.get("valid_points")
        if wanted and not trainer.cfg.valid_every:
            trainer.cfg.valid_every = valid_every_for(self.state["total_steps"], trainer.steps_per_epoch, wanted)
        with self.lock:
            self.state["valid"] = [p for p in self.state["valid"] if p[0] <= trainer.step] if resumed else []
        self.set(valid_every=trainer.cfg.valid_every)

    def on_epoch(self, trainer, row: dict) -> None:
        self.set(history=list(trainer.history), epoch=trainer.epoch)

    def write_samples(self) -> None:
        """A GRID x GRID grid of p(x|z) means from fixed z and a fixed weight draw, so only training changes it."""
        import torch

        model = self.trainer.model
        ref = next(model.parameters())
        devices = [] if ref.device.type == "cpu" else [ref.device]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            z = torch.randn(GRID * GRID, model.config.z_dim, device=ref.device, dtype=ref.dtype)
            images = model.sample(z=z)[0].float().cpu()
        save_grid(images, self.path / SAMPLES)
        self._last_sample = time.monotonic()
        self.set(samples_step=self.trainer.step)

    def load_data(self) -> dict:
        from ..data import load_dataset

        data = load_dataset(self.run.train.dataset, self.options.get("data_dir"))
        n = self.options.get("train_images")
        if n:
            data = {**data, "train": data["train"][:n],
                    "source": f"{data['source']}; this run used only the first {n:,} training images"}
        return data

    def main(self) -> int:
        from ..train import Hooks, Trainer, TrainingDiverged

        beat = self.start_heartbeat()
        signal.signal(signal.SIGTERM, lambda *_: (self.path / STOP).touch())
        code, final = 0, {}
        try:
            self.write()
            hooks = Hooks(on_step=[self.on_step, self.snapshots.on_step],
                          on_epoch=[self.on_epoch, self.snapshots.on_epoch], on_eval=[self.on_eval])
            self.trainer = t = Trainer(self.run, out=self.path, data=self.load_data(), hooks=hooks)
            resumed = t.resume()
            with self.lock:
                self.state["points"] = [p for p in self.state["points"] if p[0] <= t.step] if resumed else []
                if not resumed:
                    self.state["stride"] = 1
            total = t.planned_steps
            t.decide_compile()  # a long run compiles its loss in the first step: say so, it takes 10-30 s
            compiling = "; compiling the training step (10-30 s)" if t.compiled_loss is not None else ""
            self.set(total_steps=total, steps_per_epoch=t.steps_per_epoch, step=t.step, epoch=t.epoch,
                     history=list(t.history), resumed_from=t.step if resumed else None, device=str(t.device),
                     message=f"{'resumed at' if resumed else 'started at'} step {t.step}{compiling}")
            self.setup_validation(t, resumed)
            self._rate = (time.monotonic(), t.step)
            self.snapshots.start(t)
            self.write_samples()
            if (self.path / STOP).exists():
                t.request_stop()
                reason = "stopped"
            else:
                reason = t.fit()
            self.snapshots.save(t)
            self.write_samples()
            if reason == "stopped":
                if not (self.path / "checkpoint").exists():
                    t.save_checkpoint()
                final = {"status": "stopped",
                         "message": f"stopped at step {t.step}; the checkpoint is kept, Resume continues"}
            else:
                t.finish({"run_folder": self.path.name, "train_images": self.options.get("train_images")})
                final = {"status": "finished", "message": f"finished: {t.step} steps, {t.epoch} epochs",
                         "step": t.step, "history": list(t.history)}
        except TrainingDiverged as err:
            final = {"status": "failed", "message": str(err)}
            code = 3
        except Exception as err:  # any failure becomes a status with a message, and a traceback in worker.log
            traceback.print_exc()
            final = {"status": "failed", "message": f"{type(err).__name__}: {err}"}
            code = 1
        finally:
            self.finish(beat, final, "the worker was interrupted")
        return code


def valid_every_for(total_steps: int, steps_per_epoch: int, points: int = VALID_POINTS) -> int:
    """A valid_every giving about `points` validation bounds over a run of total_steps (steps_per_epoch each):
    0 (per epoch only) when the epochs alone give at least two thirds of that many."""
    if total_steps // max(steps_per_epoch, 1) >= 2 * points / 3:
        return 0
    return max(1, math.ceil(total_steps / points))


def _halve(points: list) -> list:
    """Merge neighbouring curve points pairwise (mean values, later step) to keep the list short."""
    def mean(u, v):
        return None if u is None or v is None else (u + v) / 2
    merged = [[b[0], mean(a[1], b[1]), mean(a[2], b[2])] for a, b in zip(points[0::2], points[1::2], strict=False)]
    return merged + ([points[-1]] if len(points) % 2 else [])


def save_grid(images, path: Path, grid: int = GRID, pad: int = 2, scale: int = 2) -> None:
    """Write [n, 784] grey values in [0, 1] as a grid x grid PNG (white ink on black, white gaps), atomically."""
    import numpy as np
    import torch
    from PIL import Image

    from ..checkpoint import atomic_write
    from ..explore import tile

    canvas = torch.nn.functional.pad(tile(images[: grid * grid].float().clamp(0, 1), grid, pad, fill=1.0),
                                     (pad, pad, pad, pad), value=1.0)
    pil = Image.fromarray(np.rint(canvas.numpy() * 255).astype(np.uint8), mode="L")
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    atomic_write(Path(path), lambda p: pil.save(p, format="PNG"))


def run_worker(path: str | os.PathLike, lock_fd: int | None = None) -> int:
    """Entry point of the worker process: take (or inherit) the run's lock, then train."""
    path = Path(path).resolve()
    if lock_fd is None:
        for _ in range(20):  # a reader may hold the lock for a moment while it checks the status
            lock_fd = try_lock(path)
            if lock_fd is not None:
                break
            time.sleep(0.05)
        else:
            pid = read_state(path / PROGRESS).get("pid")
            print(f"error: run {path.name} is being trained by another worker (pid {pid}); "
                  "two workers never train one run", file=sys.stderr)
            return 4
    status = read_state(path / PROGRESS).get("status")
    if status in ("finished", "failed"):
        os.close(lock_fd)
        print(f"error: run {path.name} is {status}; start a new run instead", file=sys.stderr)
        return 4
    import torch

    cfg = RunConfig.from_json((path / CONFIG).read_text()).train
    torch.set_num_threads(cfg.threads or 1)
    return Worker(path, lock_fd).main()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iwae_core.runs.worker",
                                description="train one run folder (started by the run queue, not by hand)")
    p.add_argument("path")
    p.add_argument("--lock-fd", type=int, default=None, help="an inherited fd that already holds the run's lock")
    args = p.parse_args(argv)
    return run_worker(args.path, args.lock_fd)


if __name__ == "__main__":
    sys.exit(main())
