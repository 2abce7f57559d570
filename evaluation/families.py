"""The metric families of one evaluation stage (``evaluation.*`` options, :mod:`evaluation.options`): what
the LightningModule feeds batch by batch (:class:`FamilyEvaluation`) and what it keeps of an epoch
(:class:`FamilyResults`: the values of ``metrics.json``, the logged keys, the columns of
``test_per_image.csv``; the tables are :mod:`evaluation.family_tables`).

- objects, boundary, topology: per image and class on the CPU (:class:`evaluation.spatial.SpatialRecorder`),
  gathered from every DDP process once per epoch (``all_gather_object``);
- calibration: a :class:`evaluation.calibration.CalibrationHistogram` updated per batch on the batches'
  device and summed over the processes once at the end (``all_reduce``).

Data-set values (the mean row of a table, ``<family>.<value>`` in ``metrics.json``) are the means over the
classes (``nanmean``, as mIoU) of the per-class values, which come from the records summed over the images.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from evaluation.boundaries import boundary_means
from evaluation.calibration import CalibrationHistogram
from evaluation.objects import OBJECT_FIELDS, SIZE_BUCKETS, object_scores
from evaluation.options import EvaluationOptions
from evaluation.spatial import SpatialClasses, SpatialRecorder, SpatialRecords, spatial_classes
from evaluation.topology import cldice_means
from safeio import json_ready

__all__ = ["FamilyEvaluation", "FamilyResults", "class_mean"]

#: The object counts of ``metrics.json`` and ``test_per_image.csv`` (``found``: ground-truth objects
#: detected, ``matched``: predicted objects that are true positives) and the fields they are.
OBJECT_COUNTS = {"gt": "gt", "found": "gt_detected", "pred": "pred", "matched": "pred_matched",
                 **{f"gt_{b}": f"gt_{b}" for b in SIZE_BUCKETS}}
OBJECT_RATES = ("recall", "precision", "f1", *(f"recall_{b}" for b in SIZE_BUCKETS), "dice_found")
BOUNDARY_VALUES = ("biou", "hd95", "assd", "nsd")
EMPTY_CASES = ("scored", "both_empty", "missed", "spurious")


def class_mean(values: Any) -> float:
    """The mean of (K,) per-class values over the classes where they are not NaN (NaN if none), as mIoU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all NaN: NaN
        return float(np.nanmean(np.asarray(values, dtype=np.float64))) if np.size(values) else math.nan


def _per_class(names: Sequence[str], columns: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{class: {key: value}}`` of (K,) columns; ints stay ints."""
    return {name: {key: (int(v[k]) if np.issubdtype(np.asarray(v).dtype, np.integer) else float(v[k]))
                   for key, v in columns.items()} for k, name in enumerate(names)}


@dataclass(frozen=True)
class FamilyResults:
    """One stage's families of an epoch: ``records`` (objects, boundary, topology; ``None`` when all three
    are off) and ``calibration`` (the histogram summed over the processes, on the CPU; ``None`` when off).
    ``classes``: the scored classes (binary: the foreground), those of calibration too."""

    options: EvaluationOptions
    classes: SpatialClasses
    records: SpatialRecords | None = None
    calibration: CalibrationHistogram | None = None

    # ---- per-class values -------------------------------------------------------------------------------

    def objects(self) -> dict[str, np.ndarray]:
        """(K,) per class: the counts of :data:`OBJECT_COUNTS` (int64) and the rates of :data:`OBJECT_RATES`
        (:func:`evaluation.objects.object_scores` of the counts summed over the images)."""
        totals = self.records.totals("objects")
        scores = object_scores(totals)
        fields = dict(zip(OBJECT_FIELDS, totals.T, strict=True))
        counts = {key: fields[name].round().astype(np.int64) for key, name in OBJECT_COUNTS.items()}
        rates = {key: np.asarray(scores["dice_detected" if key == "dice_found" else key])
                 for key in OBJECT_RATES}
        return {**counts, **rates}

    def boundary(self) -> dict[str, np.ndarray]:
        """(K,) per class: :func:`evaluation.boundaries.boundary_means` of the summed records."""
        return boundary_means(self.records.totals("boundary"))

    def topology(self) -> dict[str, np.ndarray]:
        """(K_t,) per clDice class: :func:`evaluation.topology.cldice_means` of the summed records."""
        return cldice_means(self.records.totals("topology"))

    def ece(self) -> dict[str, Any]:
        """:meth:`evaluation.calibration.CalibrationHistogram.ece` of the summed histogram."""
        return self.calibration.ece()

    # ---- metrics.json and the loggers -------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The ``metrics.json`` entries of the families that are on (NaN as None): ``objects``,
        ``boundary``, ``topology``, ``calibration``, each ``{"options": ..., <mean values>, "per_class":
        {class: {...}}}``."""
        names, out = self.classes.names, {}
        o = self.options
        if o.objects is not None:
            values = self.objects()
            out["objects"] = {"options": {"iou": o.objects.iou, "connectivity": o.objects.connectivity,
                                          "size_bins": list(o.objects.size_bins)},
                              **{key: class_mean(values[key]) for key in OBJECT_RATES},
                              "per_class": _per_class(names, values)}
        if o.boundary is not None:
            values = self.boundary()
            out["boundary"] = {"options": {"dilation_ratio": o.boundary.dilation_ratio,
                                           "tolerance": o.boundary.tolerance},
                               **{key: class_mean(values[key]) for key in BOUNDARY_VALUES},
                               **{key: int(np.sum(values[key])) for key in ("missed", "spurious")},
                               "per_class": _per_class(names, values)}
        if o.topology is not None:
            values = self.topology()
            out["topology"] = {"cldice": class_mean(values["cldice"]),
                               "per_class": _per_class(self.classes.topology_names, values)}
        if o.calibration is not None:
            ece = {k: v.cpu().numpy() if isinstance(v, Tensor) else v for k, v in self.ece().items()}
            top = {"top_label_ece": float(ece["top_label_ece"])} if "top_label_ece" in ece else {}
            per_class = {"ece": ece["ece"], "pixels": ece["pixels"].round().astype(np.int64)}
            out["calibration"] = {"options": {"bins": ece["bins"]}, "ece_mean": float(ece["mean_ece"]), **top,
                                  "per_class": _per_class(names, per_class)}
        return json_ready(out)

    def logs(self, stage: str) -> dict[str, float]:
        """Flat ``{key: value}`` for the loggers: ``<stage>/objects/<recall|precision|f1>[/<class>]``,
        ``<stage>/boundary/<biou|hd95|assd|nsd>[/<class>]``, ``<stage>/cldice[/<class>]``,
        ``<stage>/ece/<class>``, ``<stage>/ece_mean``, ``<stage>/ece_top_label`` (multiclass); without a
        class: the mean over the classes."""
        logs: dict[str, float] = {}
        names = self.classes.names

        def add(prefix: str, values: Any, classes: Sequence[str]) -> None:
            values = np.asarray(values, dtype=np.float64)
            logs.update({f"{prefix}/{name}": float(v) for name, v in zip(classes, values, strict=True)})
            logs[prefix] = class_mean(values)

        if self.options.objects is not None:
            values = self.objects()
            for key in ("recall", "precision", "f1"):
                add(f"{stage}/objects/{key}", values[key], names)
        if self.options.boundary is not None:
            values = self.boundary()
            for key in BOUNDARY_VALUES:
                add(f"{stage}/boundary/{key}", values[key], names)
        if self.options.topology is not None:
            add(f"{stage}/cldice", self.topology()["cldice"], self.classes.topology_names)
        if self.options.calibration is not None:
            ece = self.ece()
            add(f"{stage}/ece", ece["ece"].cpu(), names)
            logs[f"{stage}/ece_mean"] = logs.pop(f"{stage}/ece")
            if "top_label_ece" in ece:
                logs[f"{stage}/ece_top_label"] = float(ece["top_label_ece"])
        return logs

    # ---- test_per_image.csv -----------------------------------------------------------------------------

    def csv_columns(self) -> list[str]:
        """The per-image columns of the spatial families: per class ``objects_gt/<class>``,
        ``objects_found/<class>``, ``objects_pred/<class>``, ``objects_matched/<class>`` (counts),
        ``biou/<class>``, ``hd95/<class>``, ``assd/<class>``, ``nsd/<class>``, then ``cldice/<class>`` of
        the clDice classes (``nan`` where both masks are empty)."""
        return [f"{key}/{name}" for key, names in self._csv_blocks() for name in names]

    def _csv_blocks(self) -> list[tuple[str, tuple[str, ...]]]:
        blocks = []
        if self.options.objects is not None:
            blocks += [(f"objects_{key}", self.classes.names) for key in ("gt", "found", "pred", "matched")]
        if self.options.boundary is not None:
            blocks += [(key, self.classes.names) for key in BOUNDARY_VALUES]
        if self.options.topology is not None:
            blocks.append(("cldice", self.classes.topology_names))
        return blocks

    def csv_values(self) -> np.ndarray:
        """(N, len(:meth:`csv_columns`)) float64, rows in :attr:`records` order (image names)."""
        r = self.records
        if r is None:
            return np.zeros((0, 0))
        parts = []
        if self.options.objects is not None:
            parts += [r.field("objects", OBJECT_COUNTS[key]) for key in ("gt", "found", "pred", "matched")]
        if self.options.boundary is not None:
            parts += [r.value("boundary", key) for key in BOUNDARY_VALUES]
        if self.options.topology is not None:
            parts.append(r.value("topology", "cldice"))
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(r), 0))

    def csv_is_count(self) -> list[bool]:
        """Per column of :meth:`csv_columns`: whether it holds a count (written as an int)."""
        return [key.startswith("objects_") for key, names in self._csv_blocks() for _ in names]


class FamilyEvaluation:
    """The families of one stage's epoch in this process (module docstring): :meth:`update` every batch,
    :meth:`finish` at the epoch end (a collective under DDP: every rank calls it).

    Args:
        options: the families and their options.
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        num_classes: the network's output channels (binary: 1).
        class_names: the metric classes' names (binary: background and foreground).
        ignore_index: target value left out (``None``: none).
    """

    def __init__(self, options: EvaluationOptions, mode: str, num_classes: int, class_names: Sequence[str],
                 ignore_index: int | None = None) -> None:
        self.options = options
        self.classes = spatial_classes(mode, class_names, options.topology)
        self.spatial = SpatialRecorder(options, mode, class_names, ignore_index) if options.spatial else None
        self.histogram = None
        if options.calibration is not None:
            self.histogram = CalibrationHistogram(num_classes, mode, options.calibration.bins, ignore_index)

    def update(self, names: Sequence[str], logits: Tensor | None, preds: Tensor, target: Tensor,
               probabilities: Tensor | None = None) -> None:
        """One batch: image names, the logits (N, C, H, W), the predicted classes and the target as the
        metrics take them; calibration scores ``probabilities`` (N, C, H, W) instead of the logits when
        they are given (saved probabilities, ``evaluate.py``)."""
        if self.spatial is not None:
            self.spatial.add(names, preds, target)
        if self.histogram is not None:
            if probabilities is not None:
                self.histogram.update_probabilities(probabilities.detach(), target)
            elif logits is not None:
                self.histogram.update(logits.detach(), target)
            else:
                raise ValueError("calibration is on but the batch has neither logits nor probabilities")

    def finish(self) -> FamilyResults:
        """The epoch's results from every process; the state is emptied."""
        records = self.spatial.gather() if self.spatial is not None else None
        calibration = None
        if self.histogram is not None:
            calibration = self.histogram.synced()
            calibration.state = calibration.state.cpu()
            self.histogram.reset()
        return FamilyResults(self.options, self.classes, records, calibration)
