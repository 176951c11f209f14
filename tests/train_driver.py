"""Runs `iwae train` on synthetic data in forked children, each optionally killed at a chosen point.

    python tests/train_driver.py CASES_JSON

CASES_JSON is a list of {"out": folder, "resume": bool, "log": file, "kill": null or a kill spec}; the cases
run one after the other, each in a child forked from this process (torch is imported once). Kill specs:
    {"at": "objective", "n": N, "signal": "SIGKILL" | "SIGINT" | "SIGTERM"}  mid-step N of this child,
        after the step's random draws (inside the objective)
    {"at": "swap", "n": N, "phase": "writing" | "between" | "after"}  SIGKILL in the N-th checkpoint swap
        of this child: while its folder is written, between the two renames, or after them (before the
        old folder is removed)
    {"at": "atomic", "n": N}  SIGKILL inside the N-th atomic file write, before its rename
Prints one JSON line: per case, the exit code or the negated number of the signal that ended the child.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import iwae_core.checkpoint as ckpt
import iwae_core.train as train
from conftest import synthetic_data
from iwae_core.cli import main

ARGS = ["train", "--dataset", "mnist", "--variant", "iwae-r", "--hidden", "16", "--z-dim", "3", "--k", "3",
        "--batch-size", "20", "--epochs", "3", "--threads", "1", "--device", "cpu", "--noise-precision", "float32"]


def arm(kill: dict) -> None:
    """Patch the training code of this (child) process so that it signals itself as the spec says."""
    count = {"n": 0}
    sig = getattr(signal, kill.get("signal", "SIGKILL"))

    def hit() -> bool:
        count["n"] += 1
        return count["n"] == kill["n"]

    def die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), sig)

    if kill["at"] == "objective":
        real_objective = train.surrogate_objective

        def objective(*a, **kw):
            if hit():
                die()  # SIGINT and SIGTERM run their handler here, mid-step; SIGKILL ends the process
            return real_objective(*a, **kw)
        train.surrogate_objective = objective
    elif kill["at"] == "swap" and kill["phase"] == "writing":
        # the N-th checkpoint's folder is half written (its trainer_state.json not yet) when the kill comes
        real_save, real_write_json = train.Trainer.save_checkpoint, ckpt.write_json
        writing = {"now": False}

        def save_checkpoint(self):
            writing["now"] = hit()
            real_save(self)

        def write_json(path, data):
            if writing["now"] and Path(path).name == "trainer_state.json":
                die()
            real_write_json(path, data)
        train.Trainer.save_checkpoint, ckpt.write_json = save_checkpoint, write_json
    elif kill["at"] == "swap":
        real_replace_dir, real_replace = ckpt.replace_dir, os.replace
        armed = {"now": False}

        def replace_dir(tmp, final):
            armed["now"] = hit()
            real_replace_dir(tmp, final)

        def replace(src, dst):
            real_replace(src, dst)
            name = Path(dst).name
            if armed["now"] and ((kill["phase"] == "between" and name == "checkpoint.old")
                                 or (kill["phase"] == "after" and name == "checkpoint")):
                die()
        ckpt.replace_dir, os.replace = replace_dir, replace
    elif kill["at"] == "atomic":
        real_atomic = ckpt.atomic_write

        def atomic_write(path, write):
            if hit():
                write(str(path.parent / f".{path.name}.killed.tmp"))
                die()
            real_atomic(path, write)
        ckpt.atomic_write = atomic_write


def run_case(case: dict) -> int:
    pid = os.fork()
    if pid == 0:  # child: never return into the parent's loop
        code = 1
        try:
            fd = os.open(case["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            if case.get("kill"):
                arm(case["kill"])
            code = main(ARGS + ["--out", case["out"]] + (["--resume"] if case.get("resume") else []))
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    import torch
    import tqdm  # noqa: F401

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo (2 s) once, before the forks
    data = synthetic_data()
    train.load_dataset = lambda name, root=None: data  # the CLI's data, without the real files
    print(json.dumps([run_case(case) for case in json.loads(sys.argv[1])]))
