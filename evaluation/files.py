"""The evaluation files of a run (written by global rank 0, ``runs.training.fit_and_test`` /
``runs.training.evaluate``):

- ``metrics.json`` (:func:`write_metrics`): the scores of every split, the checkpoint and its epoch;

- ``test_per_image.csv``: one row per test image, sorted by name (:data:`PER_IMAGE_CSV`, columns
  :func:`per_image_columns`): ``name``, ``mIoU``, ``mDice`` of the image (``nanmean`` over its classes),
  then per class ``iou/<class>``, ``dice/<class>``, ``target_pixels/<class>`` (pixels of the class in the
  mask) and ``pred_pixels/<class>`` (pixels predicted as the class); ignored pixels are in none of them.
  A score of a class absent from both the image's mask and its prediction is ``nan`` (the text, which
  ``float()``, pandas and numpy read as NaN); multilabel: one binary problem per label, as the metrics.
  Then the columns of the metric families that are on for the test
  (:meth:`evaluation.families.FamilyResults.csv_columns`: object counts, Boundary IoU, HD95, ASSD, NSD,
  clDice per class).
- ``confusion_<split>.csv`` (``val``: the best validation epoch; ``test``): multiclass/binary: header
  ``true\\predicted`` and the class names, then one row per true class: its name and the pixel counts
  predicted as each class (int). Multilabel: header ``label,TN,FP,FN,TP``, one row per label (its binary
  confusion matrix).
- ``confusion_<split>.png``: the matrix with each row divided by its sum (:func:`normalize_rows`: the share
  of the true class's pixels predicted as each class; a row without pixels is grey), values written
  in the cells up to :data:`ANNOTATE_MAX` classes; multilabel: one 2x2 panel per label.
- ``reliability_<split>.png`` (the splits whose calibration family is on,
  :meth:`evaluation.calibration.CalibrationHistogram.reliability_diagram`).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from evaluation.families import FamilyResults
from evaluation.per_image import PerImageCounts
from safeio import atomic_path, write_json

log = logging.getLogger(__name__)

__all__ = [
    "ANNOTATE_MAX",
    "PER_IMAGE_CSV",
    "confusion_names",
    "normalize_rows",
    "per_image_columns",
    "plot_confusion",
    "reliability_name",
    "write_confusion_csv",
    "write_evaluation_outputs",
    "write_metrics",
    "write_per_image_csv",
]

PER_IMAGE_CSV = "test_per_image.csv"
METRICS_JSON = "metrics.json"
MULTILABEL_COLUMNS = ("TN", "FP", "FN", "TP")
#: Heatmaps of up to this many classes have their values written in the cells.
ANNOTATE_MAX = 20


def write_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """``record`` as JSON, atomically; NaN/inf scores (a split whose pixels are all ignored) as null."""
    write_json(Path(path), record)
    log.info("metrics written to %s", path)


def confusion_names(split: str) -> tuple[str, str]:
    """File names of the confusion matrix of ``split``: ``confusion_<split>.csv``, ``.png``."""
    return f"confusion_{split}.csv", f"confusion_{split}.png"


def reliability_name(split: str) -> str:
    """File name of the reliability diagram of ``split``: ``reliability_<split>.png``."""
    return f"reliability_{split}.png"


def per_image_columns(class_names: Sequence[str], families: FamilyResults | None = None) -> list[str]:
    """Header of ``test_per_image.csv`` (with ``families``: their columns at the end)."""
    columns = ["name", "mIoU", "mDice"]
    for key in ("iou", "dice", "target_pixels", "pred_pixels"):
        columns += [f"{key}/{name}" for name in class_names]
    return columns + (families.csv_columns() if families is not None else [])


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else repr(value)


def _family_cells(families: FamilyResults | None, names: Sequence[str]) -> list[list[str]]:
    """The cells of the families' columns of each row (counts as ints), rows checked against ``names``."""
    if families is None or families.records is None:
        return [[] for _ in names]
    if tuple(families.records.names) != tuple(names):
        raise ValueError("the families' per-image records are not of the images of the pixel counts")
    counts = families.csv_is_count()
    return [[str(int(v)) if count else _number(float(v)) for v, count in zip(row, counts, strict=True)]
            for row in families.csv_values().tolist()]


def write_per_image_csv(path: str | Path, per_image: PerImageCounts, class_names: Sequence[str],
                        families: FamilyResults | None = None) -> None:
    """``per_image`` (N images, C = ``len(class_names)`` classes) as ``test_per_image.csv``: one row per
    image in its order, columns :func:`per_image_columns`; scores full-precision floats or ``nan``;
    ``families``: the test's metric families, whose records must be of the same images in the same
    order."""
    if per_image.counts.shape[1] != len(class_names):
        raise ValueError(f"{per_image.counts.shape[1]} classes counted but {len(class_names)} names given")
    extra = _family_cells(families, per_image.names)
    scores = per_image.scores()
    iou, dice = scores["iou"].tolist(), scores["dice"].tolist()
    miou, mdice = scores["mIoU"].tolist(), scores["mDice"].tolist()
    target, pred = per_image.target_pixels().tolist(), per_image.pred_pixels().tolist()
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(per_image_columns(class_names, families))
        for i, name in enumerate(per_image.names):
            writer.writerow([name, _number(miou[i]), _number(mdice[i]), *map(_number, iou[i]),
                             *map(_number, dice[i]), *target[i], *pred[i], *extra[i]])


def write_confusion_csv(path: str | Path, matrix: Tensor | np.ndarray, class_names: Sequence[str]) -> None:
    """A (C, C) matrix ``[true, predicted]`` (header ``true\\predicted`` + class names, one row per true
    class) or a (C, 2, 2) multilabel stack ``[[TN, FP], [FN, TP]]`` (header ``label,TN,FP,FN,TP``, one row
    per label) as integer counts."""
    m = np.asarray(matrix, dtype=np.int64)
    names = [str(n) for n in class_names]
    multilabel = m.ndim == 3
    square = m.ndim == 2 and m.shape[0] == m.shape[1]
    if (multilabel and m.shape[1:] != (2, 2)) or (not multilabel and not square):
        raise ValueError(f"confusion matrix must be (C, C) or (C, 2, 2), got {m.shape}")
    if m.shape[0] != len(names):
        raise ValueError(f"{m.shape[0]} classes in the matrix but {len(names)} names given")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        if multilabel:
            writer.writerow(["label", *MULTILABEL_COLUMNS])
            for name, cm in zip(names, m, strict=True):
                writer.writerow([name, *cm.reshape(-1).tolist()])
        else:
            writer.writerow(["true\\predicted", *names])
            for name, row in zip(names, m, strict=True):
                writer.writerow([name, *row.tolist()])


def normalize_rows(matrix: Tensor | np.ndarray) -> np.ndarray:
    """``matrix`` (..., C) divided by the sums of its last dimension (float64): each row of a (C, C)
    confusion matrix sums to 1 (the share of the true class's pixels predicted as each class); a row
    without pixels is NaN. (C, 2, 2) multilabel stacks: each label's two rows."""
    m = np.asarray(matrix, dtype=np.float64)
    sums = m.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums > 0, m / np.where(sums > 0, sums, 1.0), np.nan)


def _heatmap(ax: Any, values: np.ndarray, xlabels: Sequence[str], ylabels: Sequence[str],
             annotate: bool) -> Any:
    import matplotlib

    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="lightgrey")  # no pixels: grey, not the white of 0
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(xlabels)), labels=list(xlabels), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(ylabels)), labels=list(ylabels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if annotate:
        for (i, j), v in np.ndenumerate(values):
            if math.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if v > 0.5 else "black")
    return image


def plot_confusion(path: str | Path, matrix: Tensor | np.ndarray, class_names: Sequence[str],
                   title: str) -> None:
    """Heatmap PNG of the row-normalised ``matrix`` (:func:`normalize_rows`; (C, C) or (C, 2, 2)), class names
    on the axes (a class without pixels marked ``(no pixels)``, its row grey), values in the cells up to
    :data:`ANNOTATE_MAX` classes. Matplotlib's Agg canvas, no pyplot: the caller's backend stays."""
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=np.int64)
    names = [str(n) for n in class_names]
    norm = normalize_rows(m)
    if m.ndim == 3:  # one 2x2 panel per label
        cols = min(len(names), 4)
        rows = math.ceil(len(names) / cols)
        fig = Figure(figsize=(3.2 * cols + 0.8, 3.0 * rows + 0.8), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
        for ax, name, values in zip(axes, names, norm, strict=False):
            image = _heatmap(ax, values, ["absent", "present"], ["absent", "present"], annotate=True)
            ax.set_title(name, fontsize=9)
        for ax in axes[len(names):]:
            ax.set_axis_off()
        fig.colorbar(image, ax=list(axes[: len(names)]), fraction=0.03, pad=0.04)
        fig.suptitle(title, fontsize=10)
    else:
        size = min(max(4.0, 0.45 * len(names) + 2.5), 30.0)
        fig = Figure(figsize=(size + 1.2, size), layout="constrained")
        ax = fig.subplots()
        empty = m.sum(axis=1) == 0
        ylabels = [f"{n} (no pixels)" if e else n for n, e in zip(names, empty, strict=True)]
        image = _heatmap(ax, norm, names, ylabels, annotate=len(names) <= ANNOTATE_MAX)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's pixels")
        ax.set_title(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)


def write_evaluation_outputs(
    output_dir: str | Path,
    class_names: Sequence[str],
    confusion: Mapping[str, Tensor],
    per_image: PerImageCounts | None,
    epochs: Mapping[str, int | None],
    families: Mapping[str, FamilyResults] | None = None,
) -> dict[str, Path]:
    """Write ``test_per_image.csv`` (when ``per_image`` is given; with the columns of ``families["test"]``)
    and, for each split of ``confusion`` (``{"val": (C, C) matrix, ...}``), ``confusion_<split>.csv`` and
    ``.png`` (title: split and ``epochs[split]``), and ``reliability_<split>.png`` where ``families`` has
    the split with calibration on, into ``output_dir``. Returns ``{"test_per_image": path,
    "confusion_<split>": csv, "confusion_<split>_png": png, "reliability_<split>_png": png}`` of the files
    written."""
    output_dir = Path(output_dir)
    families = families or {}
    written: dict[str, Path] = {}
    if per_image is not None:
        written["test_per_image"] = output_dir / PER_IMAGE_CSV
        write_per_image_csv(written["test_per_image"], per_image, class_names, families.get("test"))
    for split, matrix in confusion.items():
        csv_name, png_name = confusion_names(split)
        written[f"confusion_{split}"] = output_dir / csv_name
        write_confusion_csv(output_dir / csv_name, matrix, class_names)
        epoch = epochs.get(split)
        title = f"{split} confusion matrix" + ("" if epoch is None else f", epoch {epoch}")
        plot_confusion(output_dir / png_name, matrix, class_names, f"{title} (rows normalised)")
        written[f"confusion_{split}_png"] = output_dir / png_name
    for split, results in families.items():
        if results.calibration is not None and split in confusion:
            epoch = epochs.get(split)
            title = f"{split} reliability" + ("" if epoch is None else f", epoch {epoch}")
            path = output_dir / reliability_name(split)
            results.calibration.reliability_diagram(path, class_names, title)
            written[f"reliability_{split}_png"] = path
    return written
