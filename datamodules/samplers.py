"""Samplers for data-parallel (DDP) loaders: exact evaluation shards and a seeded training split."""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler

# Re-exported: the one definition of "part of a multi-process group" is seglosses.distributed's.
from seglosses.distributed import distributed_world

__all__ = ["UnpaddedDistributedSampler", "distributed_world"]


class UnpaddedDistributedSampler(DistributedSampler):
    """Evaluation shards that cover a data set exactly once over all processes.

    Process ``rank`` of ``num_replicas`` gets indices ``rank, rank + num_replicas, ...`` in order: no
    shuffling and, unlike :class:`~torch.utils.data.DistributedSampler`, no padding (which repeats samples
    so that every process gets ``ceil(len / num_replicas)`` and so counts them twice in the metrics).
    Shard lengths differ by at most one sample; summing per-process counts (e.g. a confusion matrix)
    gives exactly the counts of one process evaluating the whole set. Subclassing DistributedSampler
    tells Lightning to keep it instead of injecting its own.

    Args:
        dataset: a sized data set.
        num_replicas, rank: default to the initialised process group's world size and rank.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        size = len(dataset)
        self.num_samples = len(range(self.rank, size, self.num_replicas))
        self.total_size = size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))
