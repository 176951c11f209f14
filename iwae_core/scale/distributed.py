"""Data-parallel training with torch DDP under torchrun: each process trains on its own shard of the data.

`torchrun --nproc_per_node N -m iwae_core.cli train ...` sets RANK/WORLD_SIZE; the Trainer then wraps the
model in DistributedDataParallel (gradients averaged across processes) and only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model itself in a single process, else DistributedDataParallel around it."""
    if world()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(x: torch.Tensor) -> torch.Tensor:
    """This process's share of the training images (every world-size-th one, from its rank)."""
    rank, size = world()
    return x[rank::size]
