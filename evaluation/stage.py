"""One evaluation stage from its parts: :func:`stage_summary`, what ``metrics.json`` holds of a split (the
LightningModule's ``results``), and :class:`StageEvaluation`, the same metrics fed image by image outside
Lightning (``evaluate.py`` scoring saved masks, :mod:`runs.evaluating`).

Both use the pieces the LightningModule's evaluation steps use: the confusion-matrix metrics
(:func:`evaluation.confusion.segmentation_metrics`), the per-image counts
(:func:`evaluation.per_image.per_image_counts`) and the metric families
(:class:`evaluation.families.FamilyEvaluation`), so a saved mask scores as the same prediction scores in a
training run's test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from evaluation.confusion import segmentation_metrics
from evaluation.families import FamilyEvaluation, FamilyResults
from evaluation.options import EvaluationOptions
from evaluation.per_image import PerImageCounts, PerImageRecorder, per_image_counts
from evaluation.tables import summarize
from seglosses.modes import MULTILABEL_MODE, check_mode, scored_classes

__all__ = ["StageEvaluation", "StageResult", "stage_summary"]


def stage_summary(scores: dict[str, Tensor], class_names: Sequence[str],
                  families: FamilyResults | None = None) -> dict[str, Any]:
    """The ``metrics.json`` entry of a split: :func:`evaluation.tables.summarize` of the pixel scores (mIoU,
    mDice, pixel_acc, per_class) and, with ``families``, their summary (objects, boundary, topology,
    calibration: :meth:`evaluation.families.FamilyResults.summary`)."""
    summary = summarize(scores, class_names)
    if families is not None:
        summary.update(families.summary())
    return summary


@dataclass(frozen=True)
class StageResult:
    """What :meth:`StageEvaluation.finish` returns: the confusion ``matrix`` (CPU int64; (C, C) or
    multilabel (C, 2, 2)), its ``scores``, the per-image counts (rows sorted by name), the families (None
    when none runs) and the :func:`stage_summary`."""

    matrix: Tensor
    scores: dict[str, Tensor]
    per_image: PerImageCounts
    families: FamilyResults | None
    summary: dict[str, Any]


class StageEvaluation:
    """The metrics of one stage, fed image by image (one process, no DDP).

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        num_classes: the network's output channels (binary: 1).
        class_names: the scored classes' names (binary: background and foreground).
        ignore_index: target value left out (``None``: none).
        options: the metric families; they run when ``options.runs_on(stage)`` (``None``: none).
        stage: the split the images stand for (``"test"``: the families' default split).

    :meth:`update` takes predicted classes and targets as the metrics do (multiclass/binary (N, H, W)
    class ids, multilabel (N, C, H, W) {0, 1}) and, for calibration, probabilities (N, C, H, W).
    """

    def __init__(self, mode: str, num_classes: int, class_names: Sequence[str],
                 ignore_index: int | None = None, options: EvaluationOptions | None = None,
                 stage: str = "test") -> None:
        self.mode, self.ignore_index = check_mode(mode), ignore_index
        self.class_names = [str(n) for n in class_names]
        self.classes = scored_classes(mode, num_classes)
        if len(self.class_names) != self.classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.classes} scored classes")
        self.metric = segmentation_metrics(mode, self.classes, ignore_index)
        self.images = PerImageRecorder(self.classes)
        self.families = None
        if options is not None and options.runs_on(stage):
            self.families = FamilyEvaluation(options, mode, num_classes, self.class_names, ignore_index)

    @property
    def calibration(self) -> bool:
        """Whether the families include calibration (then :meth:`update` needs probabilities)."""
        return self.families is not None and self.families.histogram is not None

    def update(self, names: Sequence[str], preds: Tensor, target: Tensor,
               probabilities: Tensor | None = None) -> None:
        """One batch of images: names, predicted classes, target, and their probabilities (needed when
        :attr:`calibration`)."""
        self.metric.update(preds, target)
        self.images.add(names, per_image_counts(preds, target, self.classes, self.ignore_index,
                                                multilabel=self.mode == MULTILABEL_MODE))
        if self.families is not None:
            self.families.update(names, None, preds, target, probabilities=probabilities)

    def finish(self) -> StageResult:
        """The stage's :class:`StageResult`; the state is emptied."""
        matrix = self.metric.compute_matrix().detach().cpu().long()
        scores = self.metric.score(matrix)
        self.metric.reset()
        families = self.families.finish() if self.families is not None else None
        per_image = self.images.gather()
        summary = stage_summary(scores, self.class_names, families)
        return StageResult(matrix, scores, per_image, families, summary)
