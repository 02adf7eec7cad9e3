"""Small helpers over ``torch.distributed`` for jobs launched by ``torchrun`` (or not).

The same job runs as one plain process or as ``torchrun --nproc_per_node N -m semcorr ...``:
:func:`init_from_env` joins the process group only when torchrun's environment variables say
there is more than one process, and every other helper degrades to the single-process answer
when no group exists. Gloo is used on CPU, NCCL when the job runs on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "barrier",
    "cleanup",
    "init_from_env",
    "is_main",
    "local_device",
    "shard",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes:
        rank: global rank, 0 for a single process.
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_from_env(use_cuda: bool = False) -> DistInfo:
    """Join the process group described by torchrun's environment, if any.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with a world size of 1 (or no torchrun)
    nothing is initialised. Calling it again when a group exists returns that group's info.

    Args:
        use_cuda: pick the NCCL backend (the job runs on CUDA devices); otherwise gloo.

    Returns:
        This process's :class:`DistInfo`.
    """
    if _active():
        return DistInfo(
            torch.distributed.get_rank(),
            torch.distributed.get_world_size(),
            _env_int("LOCAL_RANK", 0),
        )
    world_size = _env_int("WORLD_SIZE", 1)
    info = DistInfo(_env_int("RANK", 0), world_size, _env_int("LOCAL_RANK", 0))
    if world_size > 1:
        backend = "nccl" if use_cuda and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        torch.distributed.init_process_group(backend=backend)
    return info


def cleanup() -> None:
    """Leave the process group (no-op without one)."""
    if _active():
        torch.distributed.destroy_process_group()


def is_main() -> bool:
    """Whether this is rank 0 (always true without a process group)."""
    return not _active() or torch.distributed.get_rank() == 0


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """The device of this rank: ``cuda`` becomes ``cuda:<local_rank>``; others are unchanged."""
    if device.type == "cuda" and device.index is None and info.world_size > 1:
        return torch.device("cuda", info.local_rank)
    return device


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if _active():
        torch.distributed.barrier()


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The deterministic share of ``items`` of one rank: every ``world_size``-th item.

    Interleaving keeps the shares balanced (their lengths differ by at most one) and independent
    of anything but the order of ``items``.

    Args:
        items: the full work list, in the same order on every rank.
        rank: this rank, in ``[0, world_size)``.
        world_size: number of ranks.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return list(items[rank::world_size])


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order (``[obj]`` without a group)."""
    if not _active():
        return [obj]
    gathered: list[T] = [None] * torch.distributed.get_world_size()  # type: ignore[list-item]
    torch.distributed.all_gather_object(gathered, obj)
    return gathered
