"""What the spatial metrics (``evaluation.objects``, ``evaluation.boundaries``, ``evaluation.topology``)
share: the checks of one image's masks, the per-class masks of a class-id map, the bounding box of a mask,
the counts of the empty-mask cases and NaN-safe ratios.

Every spatial metric scores ONE image and ONE class: ``pred`` and ``target`` boolean (H, W) numpy arrays
(a CPU tensor or an int {0, 1} array is converted with ``np.asarray(x, dtype=bool)``), and an optional
``valid`` (H, W) boolean mask: pixels outside it are set to background in both masks before anything is
computed (they are neither objects, surfaces nor skeletons, and no pixel count includes them).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["EMPTY_FIELDS", "binary_pair", "bounding_box", "class_masks", "empty_counts", "image_diagonal",
           "nan_ratio"]

#: Summable counts of the empty-mask cases of one image and class (the first fields of the sums of
#: ``evaluation.boundaries`` and ``evaluation.topology``): ``scored`` (not both empty: the value counts in
#: a mean), ``both_empty`` (value NaN, left out), ``missed`` (target present, prediction empty) and
#: ``spurious`` (prediction present, target empty).
EMPTY_FIELDS = ("scored", "both_empty", "missed", "spurious")


def _as_mask(x: Any, name: str) -> np.ndarray:
    mask = np.asarray(x)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be one image's (H, W) mask, got shape {mask.shape}")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{name} must be boolean or hold only 0 and 1 (one class's mask)")
        mask = mask.astype(bool)
    return mask


def binary_pair(pred: Any, target: Any, valid: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``target`` as boolean (H, W) arrays of one shape, both ``& valid`` when ``valid`` is
    given (a boolean (H, W) mask of the scored pixels). Raises ValueError on other shapes or values."""
    p, t = _as_mask(pred, "pred"), _as_mask(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and target {t.shape} differ in shape")
    if valid is not None:
        v = _as_mask(valid, "valid")
        if v.shape != t.shape:
            raise ValueError(f"valid {v.shape} and target {t.shape} differ in shape")
        p, t = p & v, t & v
    return p, t


def class_masks(pred: Any, target: Any, num_classes: int,
                ignore_index: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, Any]]:
    """``(pred == c, target == c, valid)`` for c in ``range(num_classes)`` of one image's (H, W) class-id
    maps; ``valid`` is ``target != ignore_index`` (``None`` without ``ignore_index``). Feed each triple to
    a spatial metric: ``[object_counts(*m) for m in class_masks(p, t, C, 255)]``."""
    p, t = np.asarray(pred), np.asarray(target)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and target {t.shape} must be one (H, W) class-id map each")
    valid = None if ignore_index is None else t != ignore_index
    for c in range(num_classes):
        yield p == c, t == c, valid


def bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box of ``mask``'s True pixels as (rows, cols) slices, ``None`` for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def image_diagonal(shape: tuple[int, ...]) -> float:
    """``sqrt(H^2 + W^2)`` of an (H, W) shape, in pixels."""
    return math.hypot(shape[0], shape[1])


def empty_counts(pred_empty: bool, target_empty: bool) -> tuple[int, int, int, int]:
    """The :data:`EMPTY_FIELDS` counts (0 or 1 each) of one image and class."""
    both = pred_empty and target_empty
    missed, spurious = pred_empty and not target_empty, target_empty and not pred_empty
    return int(not both), int(both), int(missed), int(spurious)


def nan_ratio(num: Any, den: Any) -> Any:
    """``num / den`` in float64, NaN where ``den`` is 0 (scalars give a float, arrays an array)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out
