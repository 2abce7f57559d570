r"""Boundary metrics of one class in one image: Boundary IoU, HD95, ASSD and normalised surface Dice.

Definitions (distances Euclidean, in pixels, between pixel centres; ``pred`` = P and ``target`` = G boolean
(H, W) masks, cut to the ``valid`` pixels first; pixels beyond the image are background):

- **Surface** of a mask: the mask XOR its erosion by the 3x3 cross (4-connectivity) with background beyond
  the border, i.e. the mask's pixels with a 4-neighbour outside it. This is MONAI's ``get_mask_edges``
  (``scipy.ndimage.binary_erosion`` with its default structure), so HD95/ASSD/NSD agree with MONAI's.
- **Boundary IoU** (Cheng et al., CVPR 2021): :math:`BIoU = |G_d \cap P_d| / |G_d \cup P_d|`, ``G_d`` the
  pixels of G within distance ``d`` of its contour (of a pixel outside G), ``P_d`` likewise;
  ``d = max(1, round(dilation_ratio * diagonal))``, ``diagonal = sqrt(H^2 + W^2)`` of the image
  (``dilation_ratio`` 0.02 as the paper: 14 px at 512 x 512). The paper's code erodes ``d`` times with a
  3x3 square (chessboard distance); we use the Euclidean distance of the definition, so ``G_d`` is a
  little thinner at corners. The image border counts as contour, as in the paper's code.
- **HD95**: the 95th percentile (linear interpolation, as ``torch.quantile``) of the distances from each
  surface pixel of P to the nearest surface pixel of G, likewise from G to P, then the larger of the two
  (MONAI's ``compute_hausdorff_distance(percentile=95)``).
- **ASSD**: the mean of both directed distance sets pooled (MONAI's
  ``SurfaceDistanceMetric(symmetric=True)``).
- **NSD** (normalised surface Dice, Nikolov et al. 2018): the share of both surfaces' pixels within
  ``tolerance`` pixels (``<=``) of the other surface (MONAI's ``compute_surface_dice``, no sub-voxels).

Empty masks (after the ``valid`` cut):

- both empty: every value NaN (left out of means), ``both_empty`` counted;
- exactly one empty: ``hd95 = assd = diagonal`` (the largest distance in the image), ``nsd = 0``, ``biou
  = 0`` (the formula's value), counted as ``missed`` (target present, prediction empty) or ``spurious``
  (prediction present, target empty): MONAI would give inf/NaN with a warning, 0 would reward a miss.

:meth:`BoundaryScores.sums` gives summable fields; :func:`boundary_means` turns their sums into data-set
values. Cost, all on the bounding box of ``P | G`` and without a loop over pixels: two erosions by the
disk of radius ``d`` (the bands), two by the cross (the surfaces), two exact distance transforms
(``cv2.distanceTransform``, ``DIST_MASK_PRECISE``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from evaluation.masks import EMPTY_FIELDS, binary_pair, bounding_box, empty_counts, image_diagonal, nan_ratio
from seglosses.checks import check_number

__all__ = ["BOUNDARY_SUM_FIELDS", "BoundaryOptions", "BoundaryScores", "boundary_band", "boundary_means",
           "boundary_scores", "boundary_width", "surface", "surface_distances"]

#: The fields of :meth:`BoundaryScores.sums`: the empty-case counts, the sums of the four values over the
#: scored images (NaN taken as 0) and the Boundary IoU pixel counts.
BOUNDARY_SUM_FIELDS = (*EMPTY_FIELDS, "biou", "hd95", "assd", "nsd", "boundary_inter", "boundary_union")


@dataclass(frozen=True)
class BoundaryOptions:
    """How the boundary metrics are computed (every field checked).

    Args:
        dilation_ratio: the Boundary IoU band width as a share of the image diagonal, in (0, 1]; rounded to
            whole pixels, at least 1 (:func:`boundary_width`).
        tolerance: the NSD tolerance in pixels, >= 0 (a surface pixel counts when its distance to the other
            surface is ``<= tolerance``).
    """

    dilation_ratio: float = 0.02
    tolerance: float = 2.0

    def __post_init__(self) -> None:
        ratio = check_number(self.dilation_ratio, "boundaries.dilation_ratio", maximum=1, greater_than=0)
        tolerance = check_number(self.tolerance, "boundaries.tolerance", minimum=0)
        object.__setattr__(self, "dilation_ratio", float(ratio))
        object.__setattr__(self, "tolerance", float(tolerance))


_DEFAULT_OPTIONS = BoundaryOptions()


@dataclass(frozen=True)
class BoundaryScores:
    """The boundary metrics of one class in one image (module docstring for the definitions and the
    empty-mask rules). ``biou``, ``hd95``, ``assd`` (pixels), ``nsd``: NaN when both masks are empty;
    ``boundary_inter``, ``boundary_union``: ``|G_d ∩ P_d|``, ``|G_d ∪ P_d|`` in pixels; ``pred_empty``,
    ``target_empty``: which masks are empty."""

    biou: float
    hd95: float
    assd: float
    nsd: float
    boundary_inter: int
    boundary_union: int
    pred_empty: bool
    target_empty: bool

    def sums(self) -> np.ndarray:
        """(10,) float64 in :data:`BOUNDARY_SUM_FIELDS` order; NaN values as 0 (they are not ``scored``).
        Sum over images and processes, then :func:`boundary_means`."""
        values = np.nan_to_num([self.biou, self.hd95, self.assd, self.nsd], nan=0.0)
        return np.array([*empty_counts(self.pred_empty, self.target_empty), *values, self.boundary_inter,
                         self.boundary_union], dtype=np.float64)


def boundary_width(shape: tuple[int, ...], dilation_ratio: float = 0.02) -> int:
    """The Boundary IoU band width ``d`` in pixels of an (H, W) image: ``max(1, round(dilation_ratio *
    sqrt(H^2 + W^2)))`` (Python's ``round``, as the paper's code)."""
    return max(1, round(dilation_ratio * image_diagonal(shape)))


@functools.lru_cache(maxsize=16)
def _disk(radius: int) -> np.ndarray:
    """The digital disk ``{(i, j): i^2 + j^2 <= radius^2}`` as a (2r + 1, 2r + 1) uint8 kernel."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius).astype(np.uint8)


def _eroded(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``mask`` eroded by ``kernel`` with background beyond the border: True where every pixel the kernel
    covers is in ``mask``."""
    image = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    return cv2.erode(image, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)


def surface(mask: np.ndarray) -> np.ndarray:
    """The surface of a boolean (H, W) mask: its pixels with a 4-neighbour outside it or beyond the border
    (mask XOR its erosion by the 3x3 cross, as MONAI's ``get_mask_edges``)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~_eroded(mask, _disk(1))  # the radius-1 disk is the cross


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """``G_d`` of Boundary IoU: the pixels of the boolean (H, W) ``mask`` within Euclidean distance
    ``width`` of a pixel outside it (beyond the image border included): the mask minus its erosion by
    the digital disk of radius ``width``."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~_eroded(mask, _disk(width))


def _distances_to(surface_mask: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Euclidean distance (float64) of the pixels ``where`` (raster order) to the nearest pixel of the
    non-empty ``surface_mask``. ``cv2``'s precise transform is exact in float32: the squared distance
    rounded to its integer gives the exact float64 value."""
    image = np.ascontiguousarray(~surface_mask).view(np.uint8)
    distance = cv2.distanceTransform(image, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[where].astype(np.float64)
    return np.sqrt(np.rint(distance * distance))


def surface_distances(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pred -> target, target -> pred)``: for each surface pixel of ``pred`` (raster order) the distance
    to the nearest surface pixel of ``target``, and the reverse; float64, in pixels. Both boolean (H, W)
    masks must be non-empty."""
    pred_surface, target_surface = surface(pred), surface(target)
    if not pred_surface.any() or not target_surface.any():
        raise ValueError("surface distances need two non-empty masks")
    return _distances_to(target_surface, pred_surface), _distances_to(pred_surface, target_surface)


def _surface_values(pred: np.ndarray, target: np.ndarray, tolerance: float) -> tuple[float, float, float]:
    """HD95, ASSD, NSD of two non-empty masks."""
    to_target, to_pred = surface_distances(pred, target)
    hd95 = max(float(np.percentile(to_target, 95)), float(np.percentile(to_pred, 95)))
    total = len(to_target) + len(to_pred)
    assd = (float(to_target.sum()) + float(to_pred.sum())) / total
    nsd = (int((to_target <= tolerance).sum()) + int((to_pred <= tolerance).sum())) / total
    return hd95, assd, nsd


def boundary_scores(pred: Any, target: Any, valid: Any = None,
                    options: BoundaryOptions | None = None) -> BoundaryScores:
    """The :class:`BoundaryScores` of one class in one image: ``pred``, ``target`` boolean (H, W) masks,
    ``valid`` an optional boolean (H, W) mask of the scored pixels (the rest is background in both),
    ``options`` a :class:`BoundaryOptions` (default: band 2 % of the diagonal, NSD tolerance 2 px)."""
    options = options or _DEFAULT_OPTIONS
    p, t = binary_pair(pred, target, valid)
    width = boundary_width(t.shape, options.dilation_ratio)
    diagonal = image_diagonal(t.shape)
    box = bounding_box(p | t)
    if box is None:
        return BoundaryScores(math.nan, math.nan, math.nan, math.nan, 0, 0, True, True)
    # Both masks, hence every surface pixel, lie in the box; beyond it is background to the erosions, as
    # beyond the image: on the box the values are those of the whole image.
    p, t = p[box], t[box]
    pred_band, target_band = boundary_band(p, width), boundary_band(t, width)
    inter, union = int((pred_band & target_band).sum()), int((pred_band | target_band).sum())
    pred_empty, target_empty = not p.any(), not t.any()
    if pred_empty or target_empty:
        hd95, assd, nsd = diagonal, diagonal, 0.0
    else:
        hd95, assd, nsd = _surface_values(p, t, options.tolerance)
    return BoundaryScores(inter / union, hd95, assd, nsd, inter, union, pred_empty, target_empty)


def boundary_means(sums: Any) -> dict[str, Any]:
    """Data-set values from summed :meth:`BoundaryScores.sums` (..., 10) (e.g. (C, 10) per class): floats
    or arrays (...).

    ``biou``, ``hd95``, ``assd``, ``nsd``: the mean over the scored images (not both empty; NaN if none);
    ``biou_pooled``: ``sum |G_d ∩ P_d| / sum |G_d ∪ P_d|`` over all images (as a pooled IoU);
    ``scored``, ``both_empty``, ``missed``, ``spurious``: the counts.
    """
    a = np.asarray(sums, dtype=np.float64)
    if a.shape[-1:] != (len(BOUNDARY_SUM_FIELDS),):
        raise ValueError(f"boundary sums must be (..., {len(BOUNDARY_SUM_FIELDS)}), got {a.shape}")
    s = dict(zip(BOUNDARY_SUM_FIELDS, np.moveaxis(a, -1, 0), strict=True))
    means = {key: nan_ratio(s[key], s["scored"]) for key in ("biou", "hd95", "assd", "nsd")}
    means["biou_pooled"] = nan_ratio(s["boundary_inter"], s["boundary_union"])
    for key in EMPTY_FIELDS:
        means[key] = s[key].astype(np.int64) if s[key].ndim else int(s[key])
    return means
