"""Connecting to Ray for `iwae sweep` and `iwae eval --workers`: a local Ray on this machine, or a cluster.

Ray is an optional dependency (the `scale` extra): the engine and `iwae train` never import it.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from .. import SOURCE_ROOT


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise RuntimeError("this command runs on Ray, which is not installed: pip install 'iwae-core[scale]' "
                           "(or pip install 'ray[tune]>=2.60')") from err
    return ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None):
    """Ray for the duration of a command: the cluster at `address` (or $RAY_ADDRESS), else a local Ray
    with num_cpus CPUs (default: every core). A Ray this process had joined already is used as it is;
    one started or joined here is left (and, when local, stopped) at the end.
    Yields (ray, description of where the work runs)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray, "the Ray this process is connected to"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        # tasks run on the cluster's nodes: the package (and torch) must be installed there, and run and
        # data folders must be at the same paths on every node (shared storage); see docs/scaling.md
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError or its own errors
            hint = ""
            if "auth" in str(err).lower():
                hint = (" (the cluster wants its token: set RAY_AUTH_MODE=token and make the head's "
                        "~/.ray/auth_token, or RAY_AUTH_TOKEN, available here)")
            raise RuntimeError(f"cannot connect to the Ray cluster at {address}{hint}: "
                               f"{str(err).strip().splitlines()[0]}") from err
        where = f"the Ray cluster at {address}"
    else:
        # a local Ray's worker processes inherit this environment: let them import this very package,
        # also when it runs from a source checkout that is not installed
        package_parent = str(SOURCE_ROOT)
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if package_parent not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([package_parent, *paths])
        num_cpus = num_cpus or os.cpu_count() or 1
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)
        where = f"a local Ray with {num_cpus} CPU{'s' if num_cpus != 1 else ''}"
    try:
        yield ray, where
    finally:
        ray.shutdown()


def cluster_cpus(ray) -> int:
    return int(ray.cluster_resources().get("CPU", 1))


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
