"""The evaluation job: the detached process that estimates a finished run's test log-likelihood.

`python -m iwae_core.runs.evaluation DIR --lock-fd N` (started by queue.start_evaluation, not by hand) holds
the run's lock, runs evaluate.evaluate_folder with the S and number of test images asked for, reports its
progress in progress.json's "evaluation" about once a second, and writes metrics.json's "test" (and
test_ll.safetensors) at the end, as `iwae eval` does, so the model gets its test log-likelihood in the zoo.
A `stop` file cancels it; metrics.json is then left as it was.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from ..checkpoint import write_json
from .job import Job
from .store import OPTIONS, PROGRESS, STOP, read_state


class Cancelled(Exception):
    """The page asked the evaluation to stop (a `stop` file in the run folder)."""


class Evaluation(Job):
    """One evaluation of a finished run folder, reporting in progress.json's "evaluation"."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        super().__init__(path, lock_fd)
        self.options = read_state(path / OPTIONS)
        asked = read_state(path / PROGRESS).get("evaluation") or {}
        self.S, self.images = int(asked.get("S") or 0), int(asked.get("images") or 0)
        self.state = {**asked, "status": "running", "message": "loading the model and the test images",
                      "pid": os.getpid(), "started_at": time.time(), "done": 0, "total": None}

    def write(self) -> None:
        """progress.json with this job's state (the training's part is as the training worker left it)."""
        with self.lock:
            self.state["heartbeat"] = time.time()
            state = dict(self.state)
        write_json(self.path / PROGRESS, {**read_state(self.path / PROGRESS), "evaluation": state})

    def on_beat(self) -> None:
        if (self.path / STOP).exists():
            self.set(status="stopping", message="cancelling")

    def evaluate(self) -> dict:
        """evaluate_folder on the first `images` test images with S draws each; every pass it makes (each tau,
        then the Monte-Carlo repeats) is computed here with log_likelihood_range, as evaluate_folder would,
        so the progress counts them all."""
        from .. import checkpoint as ckpt
        from .. import evaluate
        from ..data import load_dataset

        model, run = ckpt.load_model(self.path)
        data = load_dataset(run.train.dataset, self.options.get("data_dir"), download=False)
        n = min(self.images, len(data["test"]))
        x = evaluate.binarized_test_images(data, n)
        passes = evaluate.evaluation_passes(n, evaluate.taus_for(run))
        total = sum(count for _, _, count in passes)
        self.set(total=total, images=n, message=f"{len(passes)} passes of S = {self.S:,} draws per image")
        finished = [0]

        def one_pass(tau: float, seed: int, count: int):
            def report(done: int, _: int) -> None:
                if (self.path / STOP).exists():
                    raise Cancelled
                self.set(done=finished[0] + done)

            t0 = time.perf_counter()
            ll = evaluate.log_likelihood_range(model, x[:count], self.S, tau, seed=seed, progress=report)
            finished[0] += count
            self.set(done=finished[0])
            return ll, time.perf_counter() - t0

        return evaluate.evaluate_folder(self.path, S=self.S, limit=n, data=data, passes=one_pass)

    def main(self) -> int:
        beat = self.start_heartbeat()
        code, final = 0, None
        try:
            self.write()
            t0 = time.monotonic()
            result = self.evaluate()
            at_one = result["by_tau"].get("1") or {}
            final = {"status": "done", "test_ll": result["test_ll"], "stderr": at_one.get("stderr"),
                     "seconds": round(time.monotonic() - t0, 1),
                     "message": f"test log-likelihood {result['test_ll']:.2f} nats (τ = 1) on "
                                f"{result['n_images']:,} test images, S = {result['S']:,}; written to metrics.json"}
        except Cancelled:
            final = {"status": "cancelled", "message": "cancelled; metrics.json is as it was"}
        except Exception as err:  # any failure becomes a status with a message, and a traceback in worker.log
            traceback.print_exc()
            final = {"status": "failed", "message": f"{type(err).__name__}: {err}"}
            code = 1
        finally:
            self.finish(beat, final, "the evaluation was interrupted")
        return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iwae_core.runs.evaluation",
                                description="evaluate one finished run folder (started by the run queue)")
    p.add_argument("path")
    p.add_argument("--lock-fd", type=int, required=True, help="an inherited fd that holds the run's lock")
    args = p.parse_args(argv)
    path = Path(args.path).resolve()
    asked = read_state(path / PROGRESS).get("evaluation") or {}
    if asked.get("status") != "starting":
        os.close(args.lock_fd)
        print(f"error: run {path.name} has no evaluation waiting to start", file=sys.stderr)
        return 4
    import torch

    from ..config import RunConfig

    torch.set_num_threads(RunConfig.from_json((path / "config.json").read_text()).train.threads or 1)
    return Evaluation(path, args.lock_fd).main()


if __name__ == "__main__":
    sys.exit(main())
