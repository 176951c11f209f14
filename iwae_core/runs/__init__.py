"""Training runs that live on disk (the Train live page's): start, watch, stop, resume and queue them from
any process, while a detached worker process trains each one.

store    a run folder's layout, reading its state (RunInfo), and the lock that says a worker owns it
queue    starting, queueing, stopping, resuming and deleting runs; the limit on runs training at once
worker   the process that trains one run folder (`python -m iwae_core.runs.worker DIR`)
evaluation  the process that estimates a finished run's test log-likelihood
            (`python -m iwae_core.runs.evaluation DIR`)

The names below are the package's interface for pages and scripts; tests of the parts import the parts.
"""

from .queue import (
    active_runs,
    cancel_evaluation,
    check_run_size,
    delete_run,
    dispatch,
    resume_run,
    start_evaluation,
    start_run,
    step_memory_bytes,
    step_memory_limit,
    stop_run,
)
from .store import (
    ACTIVE,
    CONFIG,
    EVALUATION_BUSY,
    EVALUATION_STATUSES,
    LOCK,
    LOG,
    OPTIONS,
    PROGRESS,
    RESUMABLE,
    SAMPLES,
    STATUSES,
    STOP,
    RunError,
    RunInfo,
    RunLimitError,
    available_devices,
    finished_models,
    is_locked,
    list_runs,
    max_runs,
    read_run,
    runs_dir,
    scan_finished_models,
    scan_runs,
)

__all__ = ["ACTIVE", "CONFIG", "EVALUATION_BUSY", "EVALUATION_STATUSES", "LOCK", "LOG", "OPTIONS", "PROGRESS",
           "RESUMABLE", "SAMPLES", "STATUSES", "STOP", "RunError", "RunInfo", "RunLimitError", "active_runs",
           "available_devices", "cancel_evaluation", "check_run_size", "delete_run", "dispatch", "finished_models",
           "is_locked", "list_runs", "max_runs", "read_run", "resume_run", "runs_dir", "scan_finished_models",
           "scan_runs", "start_evaluation", "start_run", "step_memory_bytes", "step_memory_limit", "stop_run"]
