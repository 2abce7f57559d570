"""Decoded samples kept in memory (``datamodule.cache``): every image and mask of a split is read (or
generated) once, before training, instead of once per epoch.

The arrays of a split live in ONE flat byte tensor in shared memory (:meth:`torch.Tensor.share_memory_`):
DataLoader workers map the same pages (forked workers inherit them, spawned ones receive a handle), so
``num_workers`` workers cost no extra copy. A sample is copied out of it when it is read (tens of
microseconds; the augmentation pipeline may then change it in place).

When a pipeline (an ``albumentations.Compose``) starts with fixed ``Resize`` steps, as the presets that
train at a reduced resolution do, those steps run once, at caching time, and the cached arrays are the
resized ones; the per-step pipeline keeps the rest. ``Resize`` draws no random numbers, so the samples are
bit-identical to the uncached pipeline's with the same seed (tested).

Modes (:data:`CACHE_MODES`): ``auto`` caches when the decoded samples fit the bound, else reads from disk
and says why in the log; ``ram`` caches or stops with the sizes and the keys to change; ``none`` reads
every sample from disk (or generates it) on every use. The bound: ``datamodule.cache_max_gb`` and at
most half of the memory the system reports available (``MemAvailable``), per process (every DDP process
holds its own copy).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seglosses.checks import check_choice, check_number

from .dataset import SegmentationDataset, Transform
from .parallel import map_in_workers

__all__ = [
    "CACHE_MODES",
    "CacheOptions",
    "DecodedSamples",
    "available_memory_bytes",
    "cache_split",
    "split_fixed_resize",
]

log = logging.getLogger(__name__)

#: ``datamodule.cache``: see the module docstring.
CACHE_MODES = ("auto", "ram", "none")
#: Of the memory the system reports available, the most a cache may take.
AVAILABLE_SHARE = 0.5
GB = 1024**3


@dataclass(frozen=True)
class CacheOptions:
    """``datamodule.cache`` (one of :data:`CACHE_MODES`) and ``datamodule.cache_max_gb`` (GiB, > 0)."""

    mode: str = "auto"
    max_gb: float = 4.0

    def __post_init__(self) -> None:
        check_choice(self.mode, "datamodule.cache", CACHE_MODES)
        check_number(self.max_gb, "datamodule.cache_max_gb", greater_than=0)


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (None where the system does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def split_fixed_resize(transform: Transform | None) -> tuple[list[Any], Transform | None]:
    """``(leading Resize steps, the rest as a pipeline)`` of an ``albumentations.Compose`` whose first
    steps are ``albumentations.Resize`` applied always (p = 1); ``([], transform)`` for anything else. The
    rest keeps the Compose's probability, checks and extra targets, and the same step objects."""
    import albumentations as A

    if not isinstance(transform, A.Compose) or type(transform) is not A.Compose:
        return [], transform
    steps = list(transform.transforms)
    k = 0
    while k < len(steps) and type(steps[k]) is A.Resize and steps[k].p >= 1:
        k += 1
    if k == 0:
        return [], transform
    rest = A.Compose(
        steps[k:],
        p=transform.p,
        additional_targets=dict(transform._additional_targets),
        is_check_shapes=transform.is_check_shapes,
        strict=transform._strict,
    )
    return steps[:k], rest


class _Decoder:
    """Picklable: sample ``i`` of ``dataset`` as stored (``load``), then the fixed resize steps."""

    def __init__(self, dataset: SegmentationDataset, resize: Sequence[Any]) -> None:
        self.dataset = dataset
        self.resize = list(resize)

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image, mask, name = self.dataset.load(index)
        for step in self.resize:
            out = step(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return np.ascontiguousarray(image), np.ascontiguousarray(mask), name


@dataclass(frozen=True)
class _Entry:
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


class DecodedSamples:
    """The decoded (and pre-resized) samples of one split: one flat uint8 tensor in shared memory and, per
    sample, where its image and mask bytes lie. ``get(i)`` returns copies: uint8 image (H, W, C), mask
    (H, W) of the label storage dtype, and the name."""

    def __init__(self, arrays: Sequence[tuple[np.ndarray, np.ndarray, str]]) -> None:
        entries, offset = [], 0
        for image, mask, _ in arrays:
            pair = []
            for a in (image, mask):
                pair.append(_Entry(offset, tuple(a.shape), a.dtype))
                offset += a.nbytes
            entries.append(tuple(pair))
        buffer = torch.empty(offset, dtype=torch.uint8)
        flat = buffer.numpy()
        for (image, mask, _), pair in zip(arrays, entries, strict=True):
            for a, e in zip((image, mask), pair, strict=True):
                flat[e.offset : e.offset + e.nbytes] = a.reshape(-1).view(np.uint8)
        self.buffer = buffer.share_memory_()
        self.entries: list[tuple[_Entry, _Entry]] = entries
        self.names = [name for _, _, name in arrays]

    @property
    def nbytes(self) -> int:
        return int(self.buffer.numel())

    def __len__(self) -> int:
        return len(self.entries)

    def _array(self, e: _Entry) -> np.ndarray:
        raw = self.buffer.numpy()[e.offset : e.offset + e.nbytes]
        return raw.view(e.dtype).reshape(e.shape).copy()

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image, mask = self.entries[index]
        return self._array(image), self._array(mask), self.names[index]


def _estimate_bytes(dataset: SegmentationDataset, resize: Sequence[Any], first: tuple) -> int:
    """Bytes of the decoded split: exact with a fixed resize, else from the stored sizes (file headers)."""
    image, mask, _ = first
    per_pixel = image.nbytes // (image.shape[0] * image.shape[1]) + mask.dtype.itemsize
    if resize:
        return per_pixel * image.shape[0] * image.shape[1] * len(dataset)
    return per_pixel * sum(h * w for h, w in (dataset.stored_size(i) for i in range(len(dataset))))


def _refusal(options: CacheOptions, split: str, n: int, need: int, available: int | None) -> str | None:
    """Why the split does not fit (None when it does)."""
    bound = options.max_gb * GB
    if available is not None:
        bound = min(bound, AVAILABLE_SHARE * available)
    if need <= bound:
        return None
    avail = "unknown" if available is None else f"{available / GB:.1f} GiB"
    return (
        f"the {n} decoded {split} samples need {need / GB:.2f} GiB, more than the bound of {bound / GB:.2f} "
        f"GiB (datamodule.cache_max_gb={options.max_gb}, at most {AVAILABLE_SHARE:.0%} of the available "
        f"memory: {avail})"
    )


def cache_split(
    dataset: SegmentationDataset,
    split: str,
    options: CacheOptions,
    *,
    num_workers: int = 0,
    progress: bool = True,
    seed: int = 0,
) -> DecodedSamples | None:
    """Decode every sample of ``dataset`` once and make the data set read from memory (its pipeline then
    starts after the fixed resize steps, seeded with ``seed``). Returns the cache, or None when the mode
    is ``none`` or (``auto``) the split does not fit, which is logged.

    Raises:
        MemoryError: mode ``ram`` and the split does not fit; the message names the sizes and keys.
    """
    if options.mode == "none" or len(dataset) == 0:
        return None
    resize, rest = split_fixed_resize(dataset.transform)
    decode = _Decoder(dataset, resize)
    need = _estimate_bytes(dataset, resize, decode(0))
    refusal = _refusal(options, split, len(dataset), need, available_memory_bytes())
    if refusal is not None:
        if options.mode == "ram":
            raise MemoryError(f"datamodule.cache=ram: {refusal}; raise datamodule.cache_max_gb or set "
                              "datamodule.cache=none (read from disk every epoch)")
        log.info("datamodule.cache=auto: reading the %s split from disk every epoch: %s", split, refusal)
        return None
    from rich.progress import track

    loader = map_in_workers(decode, range(len(dataset)), num_workers)
    arrays = list(track(loader, description=f"caching {split} in memory", total=len(dataset),
                        disable=not progress, transient=True))
    samples = DecodedSamples(arrays)
    if rest is not dataset.transform and hasattr(rest, "set_random_seed"):
        rest.set_random_seed(seed)
    dataset.use_decoded(samples, rest)
    return samples
