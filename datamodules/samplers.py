"""Samplers: exact evaluation shards for data-parallel (DDP) loaders, and rare-class sampling (RCS) of
training images (Hoyer et al., DAFormer, CVPR 2022).

RCS draws each sample of an epoch in two steps: a class c with

    P(c) = exp((1 - f_c) / T) / sum_k exp((1 - f_k) / T),

f_c the class's pixel frequency in the training labels and T the temperature (``datamodule.rcs_temperature``,
small T favours rare classes, large T tends to uniform over classes), the sum over the classes that some
training image holds with at least ``min_pixels`` pixels; then uniformly one of those images. An image i is
therefore drawn with probability sum_c P(c) [i holds c] / |{images holding c}|.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import DistributedSampler

# Re-exported: the one definition of "part of a multi-process group" is seglosses.distributed's.
from seglosses.distributed import distributed_world

if TYPE_CHECKING:
    from .statistics import LabelStatistics

__all__ = [
    "SAMPLINGS",
    "RareClassSampler",
    "UnpaddedDistributedSampler",
    "distributed_world",
    "rcs_class_probabilities",
]

#: Values of ``datamodule.sampling``: ``uniform`` (a shuffled pass over the images) or ``rcs``.
SAMPLINGS = ("uniform", "rcs")


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


def rcs_class_probabilities(
    frequencies: Sequence[float] | np.ndarray,
    temperature: float,
    eligible: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """P(c) = exp((1 - f_c) / T) / sum_k exp((1 - f_k) / T) over the ``eligible`` classes (default all), 0
    for the others; computed with the largest exponent subtracted, so any T > 0 is finite."""
    f = np.asarray(frequencies, dtype=np.float64)
    ok = np.ones(f.shape, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    if not temperature > 0:
        raise ValueError(f"datamodule.rcs_temperature must be > 0, got {temperature!r}")
    if not ok.any():
        raise ValueError("rare-class sampling: no class is eligible (no training image holds any class)")
    z = np.where(ok, (1.0 - f) / temperature, -np.inf)
    w = np.exp(z - z[ok].max())
    return w / w.sum()


class RareClassSampler(DistributedSampler):
    """Rare-class sampling of training images (see the module docstring), DDP-aware.

    Every epoch has one plan of ``total_size`` draws (``ceil(N / num_replicas) * num_replicas``, N the
    number of images), drawn from a generator seeded with ``(seed, epoch)``: identical on every process.
    Process ``rank`` takes draws ``rank, rank + num_replicas, ...`` of it, so the processes share the plan
    without overlap, and ``len()`` is that of :class:`~torch.utils.data.DistributedSampler`
    (``ceil(N / num_replicas)``; N in one process). Lightning calls :meth:`set_epoch` and keeps the sampler
    under DDP (it is a ``DistributedSampler``).

    Args:
        presence: (N, C) bool, image i holds class c (with at least the minimum pixel count).
        class_probs: (C,) P(c); > 0 only for classes that some image holds.
        num_replicas, rank: the DDP processes (1, 0: one process).
        seed: seeds every epoch's plan (with the epoch).
    """

    def __init__(
        self,
        presence: np.ndarray,
        class_probs: Sequence[float] | np.ndarray,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        presence = np.asarray(presence, dtype=bool)
        probs = np.asarray(class_probs, dtype=np.float64)
        if presence.ndim != 2 or probs.shape != (presence.shape[1],):
            raise ValueError(
                f"presence must be (N, C) and class_probs (C,), got {presence.shape} and {probs.shape}"
            )
        held = presence.any(axis=0)
        if not np.isfinite(probs).all() or (probs < 0).any() or probs.sum() <= 0 or (probs[~held] > 0).any():
            raise ValueError(
                "class_probs must be finite, >= 0, with a positive sum, and 0 for the classes no image holds "
                f"(held: {np.flatnonzero(held).tolist()}), got {probs.tolist()}"
            )
        super().__init__(
            range(presence.shape[0]), num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed
        )
        self.class_probs = probs / probs.sum()
        self.images = [np.flatnonzero(presence[:, c]) for c in range(presence.shape[1])]

    @classmethod
    def from_statistics(
        cls, stats: LabelStatistics, temperature: float, min_pixels: int = 3, **kwargs: int
    ) -> RareClassSampler:
        """The sampler of the training statistics ``stats``: f_c = ``stats.frequencies``, presence = at least
        ``min_pixels`` pixels of c (:meth:`LabelStatistics.presence`)."""
        presence = stats.presence(min_pixels).numpy()
        held = presence.any(axis=0)
        if not held.any():
            raise ValueError(
                f"datamodule.sampling=rcs: no training image holds any class with at least "
                f"datamodule.rcs_min_pixels={min_pixels} pixels"
            )
        probs = rcs_class_probabilities(stats.frequencies.numpy(), temperature, held)
        return cls(presence, probs, **kwargs)

    def epoch_plan(self) -> np.ndarray:
        """The ``total_size`` image indices of the current epoch, for all processes together."""
        rng = np.random.default_rng([self.seed % 2**64, self.epoch])
        classes = rng.choice(self.class_probs.size, size=self.total_size, p=self.class_probs)
        plan = np.empty(self.total_size, dtype=np.int64)
        for c in np.unique(classes):
            chosen = classes == c
            pool = self.images[c]
            plan[chosen] = pool[rng.integers(pool.size, size=int(chosen.sum()))]
        return plan

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_plan()[self.rank : self.total_size : self.num_replicas].tolist())
