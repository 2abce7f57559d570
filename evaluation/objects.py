r"""Objects found: connected components of one class in one image, ground-truth objects matched to predicted
ones, counted so that the counts of all images (and DDP processes) add up to the data set's.

Objects: the connected components (8-connectivity by default, ``cv2.connectedComponentsWithStats``) of the
target mask (ground-truth objects) and of the prediction mask (predicted objects), after both masks are
cut to the ``valid`` pixels (ignored pixels belong to no object and to no area).

Matching, with :math:`IoU(G, P) = |G \cap P| / |G \cup P|` of a ground-truth object ``G`` and a predicted
object ``P`` (all pairwise overlaps from one ``bincount`` over the label pairs of the overlapping pixels):

- ``iou > 0`` (default 0.5, as instance-segmentation evaluation): one-to-one, greedy by IoU: the pairs with
  ``IoU >= iou``, highest IoU first, each object matched at most once (ties broken by the raster position
  of the objects' first pixels, so the result does not depend on OpenCV's label numbering). For ``iou >=
  0.5`` an object has at most one partner with IoU above 0.5 anyway, so the matching is the unique one.
  A matched ground-truth object is *detected*, a matched predicted object a *true positive*; its Dice is
  ``2 |G ∩ P| / (|G| + |P|)``.
- ``iou == 0``: the lenient "any overlap" rule of lesion-wise evaluation, NOT one-to-one: a ground-truth
  object is detected when any predicted object touches it (shares a pixel), a predicted object is a true
  positive when it touches any ground-truth object (one large prediction over two lesions detects both; a
  lesion split into two predictions counts two true positives). The Dice of a detected object is that
  of ``G`` and the union of the predicted objects touching it (as the BraTS lesion-wise Dice).

Size buckets of ground-truth objects by their area ``a`` in (valid) pixels, with ``size_bins = (s, m)``
(default COCO's ``(32**2, 96**2)`` = ``(1024, 9216)``): small ``a < s``, medium ``s <= a < m``, large
``a >= m``.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from typing import Any

import cv2
import numpy as np

from evaluation.masks import binary_pair, nan_ratio
from seglosses.checks import check_choice, check_int, check_number

__all__ = ["OBJECT_FIELDS", "SIZE_BUCKETS", "ObjectCounts", "ObjectOptions", "object_counts", "object_scores"]

SIZE_BUCKETS = ("small", "medium", "large")
#: Above this many label pairs the overlaps are counted by ``np.unique`` instead of a dense ``bincount``.
_DENSE_PAIRS = 1 << 22


@dataclass(frozen=True)
class ObjectOptions:
    """How objects are found and matched (every field checked).

    Args:
        iou: the IoU a ground-truth and a predicted object must reach to match, in [0, 1]; 0 means "any
            overlap" (the lenient, not one-to-one rule of the module docstring).
        connectivity: 8 (a pixel's 8 neighbours, diagonals included) or 4.
        size_bins: ``(s, m)``, ints with ``0 < s < m``: the area thresholds in pixels of the small /
            medium / large buckets (small ``< s``, large ``>= m``); stored as a tuple.
    """

    iou: float = 0.5
    connectivity: int = 8
    size_bins: tuple[int, int] = (1024, 9216)

    def __post_init__(self) -> None:
        object.__setattr__(self, "iou", float(check_number(self.iou, "objects.iou", 0, 1)))
        check_choice(self.connectivity, "objects.connectivity", (4, 8))
        bins = self.size_bins
        if not isinstance(bins, (tuple, list)) or len(bins) != 2:
            raise ValueError(f"objects.size_bins must be two area thresholds (small, medium) in pixels, "
                             f"got {bins!r}")
        small = check_int(bins[0], "objects.size_bins[0]", minimum=1)
        medium = check_int(bins[1], "objects.size_bins[1]", minimum=1)
        if small >= medium:
            raise ValueError(f"objects.size_bins must increase (small < medium), got {bins!r}")
        object.__setattr__(self, "size_bins", (small, medium))


@dataclass(frozen=True)
class ObjectCounts:
    """Object counts of one class in one image, or summed over images (``+``, :meth:`total`).

    ``gt``: ground-truth objects; ``gt_detected``: those detected; ``pred``: predicted objects;
    ``pred_matched``: those that are true positives (with ``iou > 0`` ``gt_detected == pred_matched``);
    ``gt_<bucket>`` / ``detected_<bucket>``: the ground-truth objects and the detected ones of each size
    bucket (:data:`SIZE_BUCKETS`); ``dice_sum``: the sum of the Dice of the detected objects (mean =
    ``dice_sum / gt_detected``). :func:`object_scores` turns them into recall, precision, F1.
    """

    gt: int = 0
    gt_detected: int = 0
    pred: int = 0
    pred_matched: int = 0
    gt_small: int = 0
    gt_medium: int = 0
    gt_large: int = 0
    detected_small: int = 0
    detected_medium: int = 0
    detected_large: int = 0
    dice_sum: float = 0.0

    def __add__(self, other: ObjectCounts) -> ObjectCounts:
        if not isinstance(other, ObjectCounts):
            return NotImplemented
        return ObjectCounts.from_array(self.to_array() + other.to_array())

    @classmethod
    def total(cls, counts: Any) -> ObjectCounts:
        """The sum of an iterable of :class:`ObjectCounts` (all zeros when it is empty)."""
        return cls.from_array(sum((c.to_array() for c in counts), np.zeros(len(OBJECT_FIELDS))))

    def to_array(self) -> np.ndarray:
        """The fields in :data:`OBJECT_FIELDS` order, (11,) float64 (exact for counts below 2**53): stack
        them to (N, C, 11) per image and class, sum over images, ``all_reduce`` across processes."""
        return np.array(astuple(self), dtype=np.float64)

    @classmethod
    def from_array(cls, values: Any) -> ObjectCounts:
        """The inverse of :meth:`to_array` (e.g. of a summed array)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(OBJECT_FIELDS),):
            raise ValueError(f"object counts must be ({len(OBJECT_FIELDS)},), got {values.shape}")
        ints = values[:-1].round().astype(np.int64).tolist()
        return cls(*ints, dice_sum=float(values[-1]))


_DEFAULT_OPTIONS = ObjectOptions()

#: The fields of :class:`ObjectCounts`, the last dimension of :meth:`ObjectCounts.to_array`.
OBJECT_FIELDS = tuple(f.name for f in fields(ObjectCounts))


def _components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (H, W) int32 (0 background, 1..n objects), areas (n + 1,) int64 (``[0]`` the background) and
    the bounding-box top rows (n + 1,) of ``mask``'s connected components."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S)
    return labels, stats[:, cv2.CC_STAT_AREA].astype(np.int64), stats[:, cv2.CC_STAT_TOP]


def _first_pixels(labels: np.ndarray, top: np.ndarray) -> np.ndarray:
    """(n + 1,) raster index of each component's first pixel: the leftmost pixel of its top row."""
    width = labels.shape[1]
    rows, cols = np.nonzero(labels)
    lab = labels[rows, cols]
    on_top = rows == top[lab]
    first = np.full(len(top), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, lab[on_top], rows[on_top].astype(np.int64) * width + cols[on_top])
    return first


def _overlaps(gt_labels: np.ndarray, n_gt: int, pred_labels: np.ndarray,
              n_pred: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(g, p, inter)``: every pair of a ground-truth object ``g`` and a predicted object ``p`` (labels
    from 1) that share pixels, and the number of pixels they share; one count over all pixel pairs."""
    both = (gt_labels > 0) & (pred_labels > 0)
    code = gt_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both]
    size = (n_gt + 1) * (n_pred + 1)
    if size <= _DENSE_PAIRS:
        counts = np.bincount(code, minlength=size)
        code = np.flatnonzero(counts)
        inter = counts[code]
    else:
        code, inter = np.unique(code, return_counts=True)
    return code // (n_pred + 1), code % (n_pred + 1), inter.astype(np.int64)


def _greedy(g: np.ndarray, p: np.ndarray, iou: np.ndarray, g_key: np.ndarray,
            p_key: np.ndarray) -> np.ndarray:
    """Indices of the candidate pairs matched one-to-one, greedily by descending ``iou`` (ties: by
    ``g_key`` then ``p_key``, the objects' raster positions)."""
    order = np.lexsort((p_key[p], g_key[g], -iou))
    used_g, used_p, chosen = set(), set(), []
    for i in order.tolist():  # a loop over candidate pairs (few), not over pixels
        gi, pi = int(g[i]), int(p[i])
        if gi not in used_g and pi not in used_p:
            used_g.add(gi)
            used_p.add(pi)
            chosen.append(i)
    return np.asarray(chosen, dtype=np.int64)


def _match(gt: tuple[np.ndarray, np.ndarray, np.ndarray], pred: tuple[np.ndarray, np.ndarray, np.ndarray],
           threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_gt + 1,) detected flags and Dice of the ground-truth objects, (n_pred + 1,) matched flags of
    the predicted ones (index 0, the background, always False / 0)."""
    (gt_labels, gt_area, gt_top), (pred_labels, pred_area, pred_top) = gt, pred
    n_gt, n_pred = len(gt_area) - 1, len(pred_area) - 1
    g, p, inter = _overlaps(gt_labels, n_gt, pred_labels, n_pred)
    detected, matched = np.zeros(n_gt + 1, bool), np.zeros(n_pred + 1, bool)
    dice = np.zeros(n_gt + 1)
    if threshold == 0:  # any overlap: every touching pair counts; Dice of G and the union of its partners
        detected[g], matched[p] = True, True
        shared = np.bincount(g, weights=inter, minlength=n_gt + 1)
        partner_area = np.bincount(g, weights=pred_area[p], minlength=n_gt + 1)
        dice[detected] = 2 * shared[detected] / (gt_area[detected] + partner_area[detected])
        return detected, matched, dice
    iou = inter / (gt_area[g] + pred_area[p] - inter)
    keep = iou >= threshold
    g, p, inter, iou = g[keep], p[keep], inter[keep], iou[keep]
    if len(np.unique(g)) < len(g) or len(np.unique(p)) < len(p):  # an object with several candidates
        chosen = _greedy(g, p, iou, _first_pixels(gt_labels, gt_top), _first_pixels(pred_labels, pred_top))
        g, p, inter = g[chosen], p[chosen], inter[chosen]
    detected[g], matched[p] = True, True
    dice[g] = 2 * inter / (gt_area[g] + pred_area[p])
    return detected, matched, dice


def object_counts(pred: Any, target: Any, valid: Any = None,
                  options: ObjectOptions | None = None) -> ObjectCounts:
    """The :class:`ObjectCounts` of one class in one image: ``pred`` and ``target`` boolean (H, W) masks,
    ``valid`` an optional boolean (H, W) mask of the scored pixels (the rest is removed from both masks
    before labelling), ``options`` an :class:`ObjectOptions` (default: IoU >= 0.5, 8-connectivity, COCO
    size buckets). Matching rules in the module docstring."""
    options = options or _DEFAULT_OPTIONS
    p, t = binary_pair(pred, target, valid)
    gt, pr = _components(t, options.connectivity), _components(p, options.connectivity)
    detected, matched, dice = _match(gt, pr, options.iou)
    bucket = np.searchsorted(np.asarray(options.size_bins), gt[1][1:], side="right")
    gt_by_size = np.bincount(bucket, minlength=3)
    detected_by_size = np.bincount(bucket[detected[1:]], minlength=3)
    return ObjectCounts(len(gt[1]) - 1, int(detected.sum()), len(pr[1]) - 1, int(matched.sum()),
                        *(int(n) for n in gt_by_size), *(int(n) for n in detected_by_size),
                        dice_sum=float(dice.sum()))


def object_scores(counts: ObjectCounts | Any) -> dict[str, Any]:
    r"""Detection scores from :class:`ObjectCounts` (one, or summed) or an array (..., 11) of them
    (:data:`OBJECT_FIELDS` last, e.g. (C, 11) summed per class): floats, or arrays (...).

    - ``recall`` = ``gt_detected / gt``, NaN without ground-truth objects;
    - ``precision`` = ``pred_matched / pred``, NaN without predicted objects;
    - ``f1`` = :math:`2PR / (P + R)`, i.e. :math:`2 \cdot pred\_matched \cdot gt\_detected /
      (pred\_matched \cdot gt + gt\_detected \cdot pred)`, with one-to-one matching ``2 TP / (2 TP + FP +
      FN)``; 0 when objects exist on either side but none match (e.g. no ground truth, some predictions),
      NaN only when there are no objects at all;
    - ``recall_small``, ``recall_medium``, ``recall_large``: recall per size bucket (NaN when empty);
    - ``dice_detected`` = ``dice_sum / gt_detected``: the mean Dice of the detected objects (NaN if none).
    """
    a = counts.to_array() if isinstance(counts, ObjectCounts) else np.asarray(counts, dtype=np.float64)
    if a.shape[-1:] != (len(OBJECT_FIELDS),):
        raise ValueError(f"object counts must be (..., {len(OBJECT_FIELDS)}), got {a.shape}")
    c = dict(zip(OBJECT_FIELDS, np.moveaxis(a, -1, 0), strict=True))
    f1 = nan_ratio(2 * c["pred_matched"] * c["gt_detected"],
                   c["pred_matched"] * c["gt"] + c["gt_detected"] * c["pred"])
    f1 = np.where((c["gt"] + c["pred"] > 0) & (c["gt_detected"] == 0), 0.0, f1)
    scores = {
        "recall": nan_ratio(c["gt_detected"], c["gt"]),
        "precision": nan_ratio(c["pred_matched"], c["pred"]),
        "f1": float(f1) if f1.ndim == 0 else f1,
        **{f"recall_{b}": nan_ratio(c[f"detected_{b}"], c[f"gt_{b}"]) for b in SIZE_BUCKETS},
        "dice_detected": nan_ratio(c["dice_sum"], c["gt_detected"]),
    }
    return scores
