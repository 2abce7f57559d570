"""Per-image pixel counts of an evaluation: :func:`per_image_counts` of a batch, :class:`PerImageCounts` of
a split (one row per image) and :class:`PerImageRecorder`, which collects a stage's batches and gathers
them from every DDP process (``all_gather_object``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from evaluation.confusion import scores_from_counts
from seglosses.distributed import distributed_world

__all__ = ["COUNT_FIELDS", "PerImageCounts", "PerImageRecorder", "batch_names", "per_image_counts"]


#: The last dimension of :func:`per_image_counts`: true positives, false positives, false negatives, true
#: negatives of one class in one image.
COUNT_FIELDS = ("tp", "fp", "fn", "tn")


def per_image_counts(preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None,
                     multilabel: bool = False) -> Tensor:
    """Per image and class the pixel counts ``[TP, FP, FN, TN]`` (:data:`COUNT_FIELDS`): (B, C, 4) int64.

    Multiclass/binary: ``preds`` and ``target`` int64 class ids (B, *) (``preds`` in [0, C), ``target`` in
    [0, C) or ``ignore_index``), C = ``num_classes`` (binary: 2, background and foreground); one (C, C)
    confusion matrix per image by a single ``bincount``, then TP its diagonal, FP/FN its column/row sums
    minus TP, TN the rest of the image's scored pixels. Multilabel: ``preds`` {0, 1} and ``target`` {0, 1}
    or ``ignore_index``, both (B, C, *); each label its own binary problem, elements equal to
    ``ignore_index`` left out of that label (as :class:`MultilabelSegmentationMetrics` counts them).

    Summed over the images, the counts are those of the dataset's confusion matrix.
    """
    if preds.shape != target.shape:
        raise ValueError(f"predictions {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
    b = preds.shape[0]
    if multilabel:
        if preds.ndim < 2 or preds.shape[1] != num_classes:
            raise ValueError(f"multilabel inputs must be (B, {num_classes}, *), got {tuple(preds.shape)}")
        p = preds.reshape(b, num_classes, -1) == 1
        t = target.reshape(b, num_classes, -1)
        valid = torch.ones_like(p) if ignore_index is None else t != ignore_index
        t = (t == 1) & valid
        p = p & valid
        tp = (p & t).sum(-1)
        fp = (p & ~t).sum(-1)
        fn = (~p & t).sum(-1)
        tn = valid.sum(-1) - tp - fp - fn
        return torch.stack([tp, fp, fn, tn], dim=-1).long()
    c = num_classes
    p, t = preds.reshape(b, -1).long(), target.reshape(b, -1).long()
    image = torch.arange(b, device=t.device).unsqueeze(1)
    index = (image * c + t) * c + p  # (image, true, predicted) flattened
    if ignore_index is not None:
        index = index[t != ignore_index]
    confmat = torch.bincount(index.reshape(-1), minlength=b * c * c).reshape(b, c, c)
    tp = confmat.diagonal(dim1=1, dim2=2)
    fp = confmat.sum(dim=1) - tp
    fn = confmat.sum(dim=2) - tp
    tn = confmat.sum(dim=(1, 2)).unsqueeze(1) - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], dim=-1).long()


@dataclass(frozen=True)
class PerImageCounts:
    """Pixel counts of each evaluated image: ``names`` (N image names) and ``counts`` (N, C, 4) int64
    ``[TP, FP, FN, TN]`` per image and class (:func:`per_image_counts`)."""

    names: tuple[str, ...]
    counts: Tensor

    def __post_init__(self) -> None:
        if self.counts.ndim != 3 or self.counts.shape[-1] != len(COUNT_FIELDS):
            raise ValueError(f"counts must be (N, C, 4), got {tuple(self.counts.shape)}")
        if len(self.names) != self.counts.shape[0]:
            raise ValueError(f"{len(self.names)} names for {self.counts.shape[0]} images")

    @classmethod
    def merge(cls, parts: Sequence[tuple[Sequence[str], Tensor]], num_classes: int) -> PerImageCounts:
        """One table of ``parts`` (names, (n_i, C, 4) counts), e.g. the batches of every DDP process, on the
        CPU, rows sorted by image name (stable), so that the order does not depend on the sharding."""
        names = [str(n) for part, _ in parts for n in part]
        tensors = [counts.cpu().long() for _, counts in parts]
        counts = torch.cat(tensors) if tensors else torch.zeros(0, num_classes, 4, dtype=torch.long)
        order = sorted(range(len(names)), key=names.__getitem__)
        return cls(tuple(names[i] for i in order), counts[order] if order else counts)

    def __len__(self) -> int:
        return len(self.names)

    def field(self, name: str) -> Tensor:
        """(N, C) counts of one of :data:`COUNT_FIELDS`."""
        return self.counts[..., COUNT_FIELDS.index(name)]

    def target_pixels(self) -> Tensor:
        """(N, C) pixels whose true class is c (TP + FN)."""
        return self.field("tp") + self.field("fn")

    def pred_pixels(self) -> Tensor:
        """(N, C) pixels predicted c (TP + FP)."""
        return self.field("tp") + self.field("fp")

    def scores(self) -> dict[str, Tensor]:
        """:func:`scores_from_counts` of each image: (N, C) ``iou``, ``dice``, ... and (N,) ``mIoU``,
        ``mDice``; NaN where a class is absent from both target and prediction of the image."""
        tp, fp, fn, tn = self.counts.unbind(-1)
        return scores_from_counts(tp, fp, fn, tp + fp + fn + tn)


def batch_names(names: Any, batch_idx: int, size: int) -> list[str]:
    """A batch's ``"name"`` entry as ``size`` strings (``batch<batch_idx>_<i>`` when it has none or they do
    not match the batch)."""
    if isinstance(names, str):
        names = [names]
    if names is None or len(names) != size:
        return [f"batch{batch_idx}_{i}" for i in range(size)]
    return [str(n) for n in names]


class PerImageRecorder:
    """The per-image counts of one evaluation epoch of this process: :meth:`add` each batch (counts stay on
    the device, no sync per batch), :meth:`gather` at the epoch end."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._parts: list[tuple[list[str], Tensor]] = []

    def reset(self) -> None:
        self._parts = []

    def add(self, names: Sequence[str], counts: Tensor) -> None:
        """One batch: its image names and (B, C, 4) counts (:func:`per_image_counts`)."""
        self._parts.append((list(names), counts))

    def gather(self) -> PerImageCounts:
        """This epoch's counts of every DDP process (``all_gather_object``: every rank calls it), on the
        CPU, sorted by image name; the recorder is emptied."""
        parts = [(names, counts.cpu()) for names, counts in self._parts]
        self._parts = []
        if distributed_world() is not None:
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, parts)
            parts = [part for rank_parts in gathered for part in rank_parts]
        return PerImageCounts.merge(parts, self.num_classes)
