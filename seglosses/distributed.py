"""The one test of "is this process part of a multi-process ``torch.distributed`` group"."""

from __future__ import annotations

import torch

__all__ = ["distributed_world", "process_group_initialized"]


def process_group_initialized() -> bool:
    """True when ``torch.distributed`` is available and its default process group exists (any size)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


def distributed_world() -> tuple[int, int] | None:
    """``(rank, world_size)`` of the initialised default process group with more than one process, else
    None (single process, or called before the group exists)."""
    if process_group_initialized() and torch.distributed.get_world_size() > 1:
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return None
