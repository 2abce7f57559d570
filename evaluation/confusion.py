"""Segmentation metrics from one confusion matrix: per-class IoU, Dice, precision, recall and their means.

Multiclass/binary: one (C, C) matrix of class ids. Multilabel: one binary (2, 2) matrix per label (each label
is its own foreground/background problem, prediction = ``logit > 0``), scored with the same formulas.

Conventions (as mmsegmentation and nnU-Net): a ratio whose denominator is 0 is NaN, so a class absent
from both target and prediction has NaN IoU/Dice and is left out of mIoU/mDice (``nanmean``), instead of
the 0 that torchmetrics' ``MulticlassJaccardIndex`` reports, which drags the mean down.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix, MultilabelConfusionMatrix

from seglosses.modes import MULTILABEL_MODE

__all__ = [
    "PER_CLASS",
    "MultilabelSegmentationMetrics",
    "SegmentationMetrics",
    "metric_logs",
    "scores_from_confusion",
    "scores_from_counts",
    "scores_from_multilabel_confusion",
    "segmentation_metrics",
]

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
    fp = cm.sum(dim=0) - tp
    fn = cm.sum(dim=1) - tp
    total = cm.sum()
    scores = scores_from_counts(tp, fp, fn, total)
    scores["pixel_acc"] = tp.sum() / total
    return scores


def scores_from_counts(tp: Tensor, fp: Tensor, fn: Tensor, total: Tensor) -> dict[str, Tensor]:
    r"""Per-class ``iou``, ``dice``, ``precision``, ``recall``, ``pixel_share`` and their ``mIoU``, ``mDice``
    from (..., C) counts of true positives, false positives and false negatives and the number of scored
    pixels ``total`` (broadcastable to them: a scalar, or (..., C) when each class has its own count, as in
    multilabel). Leading dimensions are kept: (C,) counts give (C,) entries and scalar means; (N, C)
    counts (one row per image) give (N, C) entries and (N,) means.

    The formulas of :func:`scores_from_confusion` (``pixel_share = (TP + FN) / total``); a 0 denominator
    gives NaN; means are ``nanmean`` over the last (class) dimension. ``pixel_acc`` depends on the task
    and is added by the caller. Float64 results.
    """
    tp, fp, fn, total = (torch.as_tensor(x).double() for x in (tp, fp, fn, total))
    # 0 / 0 = NaN in floating point: exactly the "undefined" convention above.
    scores = {
        "iou": tp / (tp + fp + fn),
        "dice": 2 * tp / (2 * tp + fp + fn),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "pixel_share": (tp + fn) / total,
    }
    for mean_name, key in MEANS.items():
        scores[mean_name] = torch.nanmean(scores[key], dim=-1)
    return scores


def scores_from_multilabel_confusion(confmat: Tensor) -> dict[str, Tensor]:
    r"""Scores of a (C, 2, 2) stack of per-label binary confusion matrices ``confmat[c, t, p]`` (torchmetrics'
    ``MultilabelConfusionMatrix`` layout: ``[[TN, FP], [FN, TP]]``).

    Per label ``c``, over its ``N_c = TP + FP + FN + TN`` scored pixels: ``iou``, ``dice``, ``precision``,
    ``recall`` as in :func:`scores_from_confusion` (NaN on 0 / 0, e.g. a label absent from target and
    prediction), ``pixel_share = (TP + FN) / N_c`` (the shares of several labels can sum to more than 1);
    ``mIoU``, ``mDice``: ``nanmean`` over labels; ``pixel_acc``: ``nanmean`` over labels of
    ``(TP + TN) / N_c``. Float64 results: per-label entries (C,), means scalars.
    """
    if confmat.ndim != 3 or tuple(confmat.shape[1:]) != (2, 2):
        raise ValueError(
            f"multilabel confusion matrices must have shape (C, 2, 2), got {tuple(confmat.shape)}"
        )
    cm = confmat.double()
    tn, fp, fn, tp = cm[:, 0, 0], cm[:, 0, 1], cm[:, 1, 0], cm[:, 1, 1]
    total = cm.sum(dim=(1, 2))
    scores = scores_from_counts(tp, fp, fn, total)
    scores["pixel_acc"] = torch.nanmean((tp + tn) / total)
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


class _ConfusionMetrics(nn.Module):
    """One torchmetrics confusion matrix (synced across DDP ranks), the target check shared by both kinds
    of metrics, and scoring by ``score``. ``compute()`` is a collective under DDP: call it on every rank."""

    def __init__(self, confmat: nn.Module, score: Callable[[Tensor], dict[str, Tensor]], num_values: int,
                 ignore_index: int | None, what: str) -> None:
        super().__init__()
        self.confmat = confmat
        self._score = score
        self._num_values = num_values  # targets lie in [0, num_values) or equal ignore_index
        self._what = what
        self.ignore_index = ignore_index

    def _check(self, preds: Tensor, target: Tensor, expected: str) -> None:
        if preds.shape != target.shape:
            raise ValueError(
                f"predictions {tuple(preds.shape)} and target {tuple(target.shape)} must have one shape "
                f"{expected}"
            )
        bad = (target < 0) | (target >= self._num_values)
        if self.ignore_index is not None:
            bad &= target != self.ignore_index
        if bool(bad.any()):
            values = torch.unique(target[bad])[:10].tolist()
            extra = "" if self.ignore_index is None else f" or ignore_index={self.ignore_index}"
            raise ValueError(
                f"{self._what}{extra}: {values}; "
                "check num_classes and ignore_index of the data set"
            )

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.confmat.update(preds, target)

    def compute_matrix(self) -> Tensor:
        """The matrix summed over all DDP ranks (a collective: call it on every rank)."""
        return self.confmat.compute()

    def score(self, matrix: Tensor) -> dict[str, Tensor]:
        """The scores of ``matrix`` (e.g. :meth:`compute_matrix`)."""
        return self._score(matrix)

    def compute(self) -> dict[str, Tensor]:
        return self.score(self.compute_matrix())

    def reset(self) -> None:
        self.confmat.reset()

    @property
    def matrix(self) -> Tensor:
        """The accumulated matrix of this rank (not synced)."""
        return self.confmat.confmat


class SegmentationMetrics(_ConfusionMetrics):
    """Accumulates one (C, C) confusion matrix and scores it with :func:`scores_from_confusion`.

    Args:
        num_classes: C.
        ignore_index: target value whose pixels are left out of the matrix (``None``: none).

    ``update(preds, target)``: ``preds`` and ``target`` int64 class ids of one shape (N, *) (``target``
    may hold ``ignore_index``). ``compute()`` is a collective under DDP: call it on every rank.
    ``reset()`` clears the matrix; ``matrix`` is this rank's (C, C) matrix ``[true, predicted]``.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        # validate_args would scan every batch for out-of-range ids; update() checks targets itself.
        confmat = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)
        super().__init__(confmat, scores_from_confusion, num_classes, ignore_index,
                         f"target holds class ids outside [0, {num_classes})")
        self.num_classes = num_classes

    def update(self, preds: Tensor, target: Tensor) -> None:
        self._check(preds, target, "(N, *)")
        super().update(preds, target)


class MultilabelSegmentationMetrics(_ConfusionMetrics):
    """Accumulates one binary confusion matrix per label and scores them with
    :func:`scores_from_multilabel_confusion`.

    Args:
        num_labels: C.
        ignore_index: target value whose elements are left out (``None``: none). Compared per element, so a
            pixel ignored in every channel (as the datamodules deliver it) is left out of every label.

    ``update(preds, target)``: ``preds`` int64 {0, 1} (e.g. ``logits > 0``) and ``target`` int64 {0, 1} or
    ``ignore_index``, both (N, C, *). ``compute()`` is a collective under DDP: call it on every rank.
    ``matrix`` is this rank's (C, 2, 2) stack ``[[TN, FP], [FN, TP]]``.
    """

    def __init__(self, num_labels: int, ignore_index: int | None = None) -> None:
        confmat = MultilabelConfusionMatrix(num_labels, ignore_index=ignore_index, validate_args=False)
        super().__init__(confmat, scores_from_multilabel_confusion, 2, ignore_index,
                         "multilabel target holds values other than 0, 1")
        self.num_labels = num_labels

    def update(self, preds: Tensor, target: Tensor) -> None:
        if target.ndim < 2 or target.shape[1] != self.num_labels:
            raise ValueError(
                f"multilabel target must have shape (N, C, *) with C = {self.num_labels} labels, "
                f"got {tuple(target.shape)}"
            )
        self._check(preds, target, f"(N, C, *) with C = {self.num_labels} labels")
        super().update(preds, target)


def segmentation_metrics(mode: str, num_classes: int, ignore_index: int | None = None) -> _ConfusionMetrics:
    """The metrics of ``mode`` over ``num_classes`` scored classes (:func:`seglosses.modes.scored_classes`:
    binary 2): :class:`MultilabelSegmentationMetrics` for ``"multilabel"``, else
    :class:`SegmentationMetrics`."""
    if mode == MULTILABEL_MODE:
        return MultilabelSegmentationMetrics(num_classes, ignore_index)
    return SegmentationMetrics(num_classes, ignore_index)
