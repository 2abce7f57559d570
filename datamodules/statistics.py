"""Label statistics of a training split: one vectorised pass over the masks, cached on disk.

Determinism (what makes the result identical on every DDP rank): counts are integer sums of per-mask
``bincount`` results, so they do not depend on worker count or order; the cache file name is a SHA-256
of the cache key (the data set's file list with modification times and sizes, or the generator
parameters, plus the label encoding), and the file is written to a temporary name and moved into place
with ``os.replace``, so a reader sees either no file or a complete one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seglosses.checks import check_bool, check_number

from .cache import cache_file, read_cached, write_cached
from .labels import LabelSpec
from .parallel import map_in_workers

CACHE_PREFIX = "label_stats"
CountFn = Callable[[Any], tuple[np.ndarray, int, int]]


@dataclass(frozen=True, eq=False)
class LabelStatistics:
    """Per-class pixel statistics of a split (before augmentation, ignore_index excluded).

    Attributes:
        class_names: C names.
        pixel_counts: (C,) int64, pixels of each class (multilabel/binary: pixels where the class is on).
        image_pixel_counts: (C,) int64, sum over the images that contain class c of their labelled
            (non-ignored) pixels: the denominator of median-frequency balancing.
        num_images: number of masks counted.
        total_pixels: all mask pixels, ignored ones included.
        ignored_pixels: pixels equal to ignore_index.
        image_class_counts: (num_images, C) int64, the pixels of each class in each mask, in the order
            of the split's samples (the per-image class presence that rare-class sampling draws from:
            :meth:`presence`); None for statistics built without it.
    """

    class_names: tuple[str, ...]
    pixel_counts: Tensor
    image_pixel_counts: Tensor
    num_images: int
    total_pixels: int
    ignored_pixels: int
    image_class_counts: Tensor | None = None

    @property
    def labelled_pixels(self) -> int:
        """Pixels that are not ignore_index."""
        return self.total_pixels - self.ignored_pixels

    @property
    def frequencies(self) -> Tensor:
        """(C,) float64 ``pixel_counts / labelled_pixels`` (sums to 1 in multiclass mode)."""
        return self.pixel_counts.to(torch.float64) / max(self.labelled_pixels, 1)

    def presence(self, min_pixels: int = 1) -> Tensor:
        """(num_images, C) bool: mask i holds at least ``min_pixels`` pixels of class c."""
        if self.image_class_counts is None:
            raise ValueError("these label statistics were computed without per-image class counts")
        return self.image_class_counts >= min_pixels

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelStatistics) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "pixel_counts": self.pixel_counts.tolist(),
            "image_pixel_counts": self.image_pixel_counts.tolist(),
            "num_images": self.num_images,
            "total_pixels": self.total_pixels,
            "ignored_pixels": self.ignored_pixels,
            "image_class_counts": _sparse_rows(self.image_class_counts),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelStatistics:
        return cls(
            class_names=tuple(d["class_names"]),
            pixel_counts=torch.tensor(d["pixel_counts"], dtype=torch.int64),
            image_pixel_counts=torch.tensor(d["image_pixel_counts"], dtype=torch.int64),
            num_images=int(d["num_images"]),
            total_pixels=int(d["total_pixels"]),
            ignored_pixels=int(d["ignored_pixels"]),
            image_class_counts=_dense_rows(d.get("image_class_counts"), len(d["class_names"])),
        )


def _sparse_rows(counts: Tensor | None) -> list[list[list[int]]] | None:
    """(N, C) counts as one ``[[class, pixels], ...]`` list per image (the non-zero entries only): most
    images hold few of the classes, so the cache stays small for data sets with many of them."""
    if counts is None:
        return None
    rows = counts.tolist()
    return [[[c, n] for c, n in enumerate(row) if n] for row in rows]


def _dense_rows(rows: Sequence[Sequence[Sequence[int]]] | None, num_classes: int) -> Tensor | None:
    """The inverse of :func:`_sparse_rows`."""
    if rows is None:
        return None
    out = torch.zeros((len(rows), num_classes), dtype=torch.int64)
    for i, row in enumerate(rows):
        for c, n in row:
            out[i, int(c)] = int(n)
    return out


def count_labels(
    items: Sequence[Any],
    count_fn: CountFn,
    class_names: Sequence[str],
    *,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "label statistics",
) -> LabelStatistics:
    """Count labels of ``items`` in one pass, in parallel over ``num_workers`` processes.

    Besides the totals, the per-item counts are kept (:attr:`LabelStatistics.image_class_counts`, in the
    order of ``items``, which the loader preserves for any worker count).

    Args:
        items: one entry per mask (a file pair, an index ...), handed to ``count_fn``.
        count_fn: picklable ``count_fn(item) -> (counts (C,) int64, ignored_pixels, total_pixels)``;
            it validates the mask and raises naming the file on bad values.
        class_names: C names.
        num_workers: DataLoader worker processes (0: in this process).
        progress: show a rich progress bar.
    """
    from rich.progress import track

    c = len(class_names)
    pixel = np.zeros(c, dtype=np.int64)
    image_pixel = np.zeros(c, dtype=np.int64)
    per_image = np.zeros((len(items), c), dtype=np.int64)
    total = ignored = 0
    loader = map_in_workers(count_fn, items, num_workers)
    for i, (counts, ign, tot) in enumerate(
        track(loader, description=description, total=len(items), disable=not progress, transient=True)
    ):
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != (c,):
            raise ValueError(f"count_fn returned counts of shape {counts.shape}, expected ({c},)")
        per_image[i] = counts
        pixel += counts
        image_pixel += (counts > 0) * (tot - ign)
        total += int(tot)
        ignored += int(ign)
    return LabelStatistics(
        class_names=tuple(class_names),
        pixel_counts=torch.from_numpy(pixel),
        image_pixel_counts=torch.from_numpy(image_pixel),
        num_images=len(items),
        total_pixels=total,
        ignored_pixels=ignored,
        image_class_counts=torch.from_numpy(per_image),
    )


def cache_path(cache_dir: str | Path, key: Mapping[str, Any]) -> Path:
    """The cache file of the label statistics for ``key`` in ``cache_dir``."""
    return cache_file(cache_dir, CACHE_PREFIX, key)


def cached_statistics(
    key: Mapping[str, Any], compute: Callable[[], LabelStatistics], cache_dir: str | Path | None
) -> LabelStatistics:
    """Load the statistics for ``key`` from ``cache_dir`` (:mod:`datamodules.cache`), or compute and store
    them. ``cache_dir=None`` computes without caching."""
    if cache_dir is not None:
        hit = read_cached(cache_dir, CACHE_PREFIX, key)
        if hit is not None:
            return LabelStatistics.from_dict(hit)
    stats = compute()
    if cache_dir is not None:
        write_cached(cache_dir, CACHE_PREFIX, key, stats.to_dict())
    return stats


#: Default of ``datamodule.max_ignored_share``: the largest tolerated share of ignored training pixels.
DEFAULT_MAX_IGNORED_SHARE = 0.5


def check_max_ignored_share(value: Any) -> float:
    """``datamodule.max_ignored_share`` as a float in [0, 1]; ValueError naming the key otherwise."""
    share = float(check_number(value, "datamodule.max_ignored_share", 0.0))
    if share > 1:
        raise ValueError(f"datamodule.max_ignored_share must be in [0, 1], got {value!r}")
    return share


def format_statistics(stats: LabelStatistics, ignore_index: int | None = None) -> str:
    """A plain-text table of ``stats``: pixels per class with their share of the labelled pixels, and
    the ignored pixels with their share of all pixels."""
    labelled = max(stats.labelled_pixels, 1)
    width = max([len(n) for n in stats.class_names] + [len("ignored")]) + 6
    rows = [f"  {'class':<{width}} {'pixels':>12}  share", f"  {'-' * (width + 21)}"]
    for i, (name, n) in enumerate(zip(stats.class_names, stats.pixel_counts.tolist(), strict=True)):
        rows.append(f"  {f'{i} {name}':<{width}} {n:>12,}  {100 * n / labelled:5.1f} % of labelled")
    ign = "ignored" if ignore_index is None else f"ignored ({ignore_index})"
    share = 100 * stats.ignored_pixels / max(stats.total_pixels, 1)
    rows.append(f"  {ign:<{width}} {stats.ignored_pixels:>12,}  {share:5.1f} % of all")
    rows.append(f"  {stats.num_images} masks, {stats.total_pixels:,} pixels")
    return "\n".join(rows)


def check_label_statistics(
    stats: LabelStatistics,
    labels: LabelSpec,
    *,
    allow_absent_classes: bool = False,
    max_ignored_share: float = DEFAULT_MAX_IGNORED_SHARE,
) -> None:
    """Stop a run whose training labels cannot be what was meant.

    Two findings raise (each unless its option says it is intended):

    - a declared class has no pixel in any training mask (``allow_absent_classes=True`` accepts it);
    - more than ``max_ignored_share`` of all training pixels equal ``ignore_index`` (``1.0`` accepts any).

    The classic cause is 0/255 binary masks read with ``ignore_index=255`` and no ``value_map``: the whole
    foreground is ignored and the run reports a perfect score. Such masks (binary mode, or multiclass
    with two classes; only the values 0 and 255) get that diagnosis directly.

    Args:
        stats: statistics of the training split.
        labels: the :class:`~datamodules.labels.LabelSpec` the statistics were counted with.

    Raises:
        ValueError: with the findings, the statistics table and the likely fix.
    """
    check_bool(allow_absent_classes, "datamodule.allow_absent_classes")
    check_max_ignored_share(max_ignored_share)
    ii = labels.ignore_index
    counts = stats.pixel_counts.tolist()
    absent = [i for i, n in enumerate(counts) if n == 0]
    ignored_share = stats.ignored_pixels / stats.total_pixels if stats.total_pixels else 0.0
    findings = []
    if absent and not allow_absent_classes:
        names = ", ".join(f"{i} {stats.class_names[i]!r}" for i in absent)
        findings.append(
            f"{len(absent)} declared class(es) absent from all {stats.num_images} training masks: {names}"
        )
    if ignored_share > max_ignored_share:
        findings.append(
            f"{100 * ignored_share:.1f} % of the training pixels equal ignore_index {ii}, more than "
            f"datamodule.max_ignored_share={max_ignored_share}"
        )
    if not findings:
        return
    table = format_statistics(stats, ii)
    mapped = bool(labels.value_map)
    two_values = labels.mode == "binary" or (labels.mode == "multiclass" and labels.num_classes == 2)
    if two_values and ii == 255 and not mapped and stats.ignored_pixels and counts[-1] == 0:
        raise ValueError(
            "the training split looks like 0/255 masks: set datamodule.value_map={255:1}. "
            "Its only mask values are 0 and 255, and 255 is datamodule.ignore_index, so the whole "
            f"foreground ({100 * ignored_share:.1f} % of the pixels) is ignored and no foreground pixel is "
            f"ever trained or scored.\nTraining label statistics:\n{table}\nIf this is intended, say so: "
            "datamodule.allow_absent_classes=true"
        )
    fixes = []
    if stats.ignored_pixels and ii is not None:
        fixes.append(
            f"if the value {ii} is a class (e.g. 0/255 masks), map it: datamodule.value_map={{{ii}:1}} "
            "(stored value: label)"
        )
        fixes.append(
            "if another value marks unlabelled pixels, set datamodule.ignore_index to it "
            f"(now {ii}; null: none)"
        )
    if absent:
        fixes.append(
            "check datamodule.num_classes / class_names"
            + (" and value_map" if mapped else "")
            + " against the values stored in the masks"
        )
    opts = []
    if absent and not allow_absent_classes:
        opts.append("datamodule.allow_absent_classes=true")
    if ignored_share > max_ignored_share:
        opts.append("datamodule.max_ignored_share=1.0")
    raise ValueError(
        "label check of the training split failed:\n- "
        + "\n- ".join(findings)
        + f"\nTraining label statistics:\n{table}\nLikely fix: "
        + "; ".join(fixes)
        + ".\nIf this is intended, say so: "
        + " ".join(opts)
    )
