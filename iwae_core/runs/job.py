"""What the training worker (worker.py) and the evaluation job (evaluation.py) share: a process that owns a
run folder's lock, keeps its state in a dict that a heartbeat thread writes to progress.json about once a
second, stops when a `stop` file appears, and at the end records its final state, releases the run and
lets the next queued job start.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from .queue import dispatch
from .store import STOP

HEARTBEAT_SECONDS = 1.0


class Job:
    """Subclasses set self.state in __init__, write it in write(), and react to a stop file in on_beat()."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path, self.lock_fd = path, lock_fd
        self.state: dict = {}
        self.lock = threading.Lock()
        self._done = threading.Event()

    def write(self) -> None:
        raise NotImplementedError

    def on_beat(self) -> None:
        """Called by the heartbeat thread before each write (e.g. to notice the stop file)."""

    def set(self, **changes) -> None:
        with self.lock:
            self.state.update(changes)

    def heartbeat(self) -> None:
        while not self._done.wait(HEARTBEAT_SECONDS):
            self.on_beat()
            self.write()

    def start_heartbeat(self) -> threading.Thread:
        beat = threading.Thread(target=self.heartbeat, daemon=True)
        beat.start()
        return beat

    def finish(self, beat: threading.Thread, final: dict | None, interrupted: str) -> None:
        """Stop the heartbeat, record the final state (`interrupted` as the message when there is none), release
        the run's lock and dispatch the next queued job."""
        self._done.set()
        beat.join()
        (self.path / STOP).unlink(missing_ok=True)
        self.set(**(final or {"status": "failed", "message": interrupted}))
        self.write()
        os.close(self.lock_fd)  # release the run, then let a queued job take the slot
        with contextlib.suppress(Exception):
            dispatch(self.path.parent)
