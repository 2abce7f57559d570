"""Segmentation metrics from one confusion matrix: per-class IoU, Dice, precision, recall and their means.

Conventions (as mmsegmentation and nnU-Net): a ratio whose denominator is 0 is NaN, so a class absent
from both target and prediction has NaN IoU/Dice and is left out of mIoU/mDice (``nanmean``), instead of
the 0 that torchmetrics' ``MulticlassJaccardIndex`` reports, which drags the mean down.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = ["PER_CLASS", "SegmentationMetrics", "metric_logs", "scores_from_confusion"]

PER_CLASS = ("iou", "dice", "precision", "recall", "pixel_share")
MEANS = {"mIoU": "iou", "mDice": "dice"}


def scores_from_confusion(confmat: Tensor) -> dict[str, Tensor]:
    r"""Scores of a (C, C) confusion matrix ``confmat[t, p]`` = pixels of true class ``t`` predicted ``p``.

    With ``TP`` the diagonal, ``FP`` the column sums minus ``TP`` and ``FN`` the row sums minus ``TP``:

    - ``iou``: ``TP / (TP + FP + FN)``; ``dice``: ``2 TP / (2 TP + FP + FN)``;
    - ``precision``: ``TP / (TP + FP)``; ``recall``: ``TP / (TP + FN)``;
    - ``pixel_share``: ``(TP + FN) / N``, the share of the (non-ignored) pixels whose true class is ``c``;
    - ``mIoU``, ``mDice``: ``nanmean`` over classes; ``pixel_acc``: ``sum TP / N``.

    A 0 denominator gives NaN (e.g. IoU of a class absent from target and prediction, precision of a class
    never predicted). Everything is computed in float64 and returned as float64: per-class entries (C,),
    means scalars.
    """
    if confmat.ndim != 2 or confmat.shape[0] != confmat.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {tuple(confmat.shape)}")
    cm = confmat.double()
    tp = cm.diagonal()
    target_count = cm.sum(dim=1)
    pred_count = cm.sum(dim=0)
    fp = pred_count - tp
    fn = target_count - tp
    total = cm.sum()
    # 0 / 0 = NaN in floating point: exactly the "undefined" convention above.
    scores = {
        "iou": tp / (tp + fp + fn),
        "dice": 2 * tp / (2 * tp + fp + fn),
        "precision": tp / pred_count,
        "recall": tp / target_count,
        "pixel_share": target_count / total,
    }
    for mean_name, key in MEANS.items():
        scores[mean_name] = torch.nanmean(scores[key])
    scores["pixel_acc"] = tp.sum() / total
    return scores


def metric_logs(prefix: str, scores: dict[str, Tensor], class_names: Sequence[str]) -> dict[str, float]:
    """Flat ``{key: value}`` for logging: ``<prefix>/iou/<class>``, ``<prefix>/dice/<class>``,
    ``<prefix>/precision/<class>``, ``<prefix>/recall/<class>``, ``<prefix>/mIoU``, ``<prefix>/mDice``,
    ``<prefix>/pixel_acc``. Pixel shares are not logged (they describe the data, not the model)."""
    logs: dict[str, float] = {}
    for key in ("iou", "dice", "precision", "recall"):
        values = scores[key].tolist()
        if len(values) != len(class_names):
            raise ValueError(f"{len(values)} classes scored but {len(class_names)} class names given")
        for name, value in zip(class_names, values, strict=True):
            logs[f"{prefix}/{key}/{name}"] = value
    for key in (*MEANS, "pixel_acc"):
        logs[f"{prefix}/{key}"] = float(scores[key])
    return logs


class SegmentationMetrics(nn.Module):
    """Accumulates one confusion matrix (torchmetrics, synced across DDP ranks) and scores it.

    Args:
        num_classes: C.
        ignore_index: target value whose pixels are left out of the matrix (``None``: none).

    ``update(preds, target)``: ``preds`` and ``target`` int64 class ids of one shape (N, *) (``target``
    may hold ``ignore_index``). ``compute()`` -> :func:`scores_from_confusion` of the accumulated matrix;
    it is a collective under DDP: call it on every rank. ``reset()`` clears the matrix.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # validate_args would scan every batch for out-of-range ids; the module checks targets once itself.
        self.confmat = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape:
            raise ValueError(
                f"predictions {tuple(preds.shape)} and target {tuple(target.shape)} must have one shape"
            )
        bad = (target < 0) | (target >= self.num_classes)
        if self.ignore_index is not None:
            bad &= target != self.ignore_index
        if bool(bad.any()):
            values = torch.unique(target[bad])[:10].tolist()
            extra = "" if self.ignore_index is None else f" or ignore_index={self.ignore_index}"
            raise ValueError(
                f"target holds class ids outside [0, {self.num_classes}){extra}: {values}; "
                "check num_classes and ignore_index of the data set"
            )
        self.confmat.update(preds, target)

    def compute(self) -> dict[str, Tensor]:
        return scores_from_confusion(self.confmat.compute())

    def reset(self) -> None:
        self.confmat.reset()

    @property
    def matrix(self) -> Tensor:
        """The accumulated (C, C) matrix of this rank (not synced)."""
        return self.confmat.confmat
