r"""clDice of one class in one image, a metric for thin, tubular structures (vessels, roads, cracks).

Shit et al. (CVPR 2021), with ``S`` the skeleton (``skimage.morphology.skeletonize``: Zhang-Suen thinning,
background beyond the border) and ``pred`` = P, ``target`` = G boolean (H, W) masks cut to the ``valid``
pixels first:

- topology precision :math:`T_{prec} = |S(P) \cap G| / |S(P)|`, NaN when P is empty;
- topology sensitivity :math:`T_{sens} = |S(G) \cap P| / |S(G)|`, NaN when G is empty;
- :math:`clDice = 2 T_{prec} T_{sens} / (T_{prec} + T_{sens})` (0 when both are 0).

Empty masks (the rules of ``evaluation.boundaries``): both empty: clDice NaN (left out of means),
``both_empty`` counted; exactly one empty: clDice 0, counted as ``missed`` (target present, prediction
empty) or ``spurious`` (prediction present, target empty). A non-empty mask always has a non-empty
skeleton (thinning keeps at least one pixel of each component).

:meth:`ClDiceScores.sums` gives summable fields; :func:`cldice_means` turns their sums into the mean
clDice over images and the pooled one (skeleton pixel counts summed over images first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.masks import EMPTY_FIELDS, binary_pair, bounding_box, empty_counts, nan_ratio

__all__ = ["CLDICE_SUM_FIELDS", "ClDiceScores", "cldice_means", "cldice_scores", "skeleton"]

#: The fields of :meth:`ClDiceScores.sums`: the empty-case counts, the sum of clDice over the scored images
#: (NaN taken as 0) and the skeleton pixel counts.
CLDICE_SUM_FIELDS = (*EMPTY_FIELDS, "cldice", "skel_pred", "skel_pred_in_target", "skel_target",
                     "skel_target_in_pred")


@dataclass(frozen=True)
class ClDiceScores:
    """clDice of one class in one image (module docstring for the definitions and the empty rules).

    ``tprec``, ``tsens``, ``cldice``: the values; ``skel_pred`` = ``|S(P)|``, ``skel_pred_in_target`` =
    ``|S(P) ∩ G|``, ``skel_target`` = ``|S(G)|``, ``skel_target_in_pred`` = ``|S(G) ∩ P|`` in pixels;
    ``pred_empty``, ``target_empty``: which masks are empty.
    """

    tprec: float
    tsens: float
    cldice: float
    skel_pred: int
    skel_pred_in_target: int
    skel_target: int
    skel_target_in_pred: int
    pred_empty: bool
    target_empty: bool

    def sums(self) -> np.ndarray:
        """(9,) float64 in :data:`CLDICE_SUM_FIELDS` order; a NaN clDice as 0 (it is not ``scored``). Sum
        over images and processes, then :func:`cldice_means`."""
        skeletons = (self.skel_pred, self.skel_pred_in_target, self.skel_target, self.skel_target_in_pred)
        return np.array([*empty_counts(self.pred_empty, self.target_empty), np.nan_to_num(self.cldice),
                         *skeletons], dtype=np.float64)


def skeleton(mask: Any) -> np.ndarray:
    """The skeleton of a boolean (H, W) mask (``skeletonize``, run on the mask's bounding box only: the
    thinning is local and sees background beyond the border, so the result is the same). scikit-image is
    imported here, on the first skeleton: importing it costs about half a second, which every process
    that imports the LightningModule would pay with clDice off."""
    from skimage.morphology import skeletonize

    mask = np.asarray(mask, dtype=bool)
    out = np.zeros_like(mask)
    box = bounding_box(mask)
    if box is not None:
        out[box] = skeletonize(mask[box])
    return out


def _harmonic(tprec: float, tsens: float) -> float:
    if tprec + tsens == 0:
        return 0.0
    return 2 * tprec * tsens / (tprec + tsens)


def cldice_scores(pred: Any, target: Any, valid: Any = None) -> ClDiceScores:
    """The :class:`ClDiceScores` of one class in one image: ``pred``, ``target`` boolean (H, W) masks,
    ``valid`` an optional boolean (H, W) mask of the scored pixels (the rest is background in both)."""
    p, t = binary_pair(pred, target, valid)
    skel_p, skel_t = skeleton(p), skeleton(t)
    n_p, n_t = int(skel_p.sum()), int(skel_t.sum())
    p_in_t, t_in_p = int((skel_p & t).sum()), int((skel_t & p).sum())
    tprec, tsens = nan_ratio(p_in_t, n_p), nan_ratio(t_in_p, n_t)
    pred_empty, target_empty = not p.any(), not t.any()
    if pred_empty and target_empty:
        cldice = math.nan
    elif pred_empty or target_empty:
        cldice = 0.0
    else:
        cldice = _harmonic(tprec, tsens)
    return ClDiceScores(tprec, tsens, cldice, n_p, p_in_t, n_t, t_in_p, pred_empty, target_empty)


def cldice_means(sums: Any) -> dict[str, Any]:
    """Data-set values from summed :meth:`ClDiceScores.sums` (..., 9) (e.g. (C, 9) per class): floats or
    arrays (...).

    ``cldice``: the mean over the scored images (not both empty; NaN if none); ``tprec_pooled`` =
    ``sum |S(P) ∩ G| / sum |S(P)|``, ``tsens_pooled`` likewise, ``cldice_pooled`` their harmonic mean
    (0 when both are 0, NaN when either is NaN); ``scored``, ``both_empty``, ``missed``, ``spurious``:
    the counts.
    """
    a = np.asarray(sums, dtype=np.float64)
    if a.shape[-1:] != (len(CLDICE_SUM_FIELDS),):
        raise ValueError(f"clDice sums must be (..., {len(CLDICE_SUM_FIELDS)}), got {a.shape}")
    s = dict(zip(CLDICE_SUM_FIELDS, np.moveaxis(a, -1, 0), strict=True))
    tprec = np.asarray(nan_ratio(s["skel_pred_in_target"], s["skel_pred"]))
    tsens = np.asarray(nan_ratio(s["skel_target_in_pred"], s["skel_target"]))
    pooled = np.where(tprec + tsens == 0, 0.0, nan_ratio(2 * tprec * tsens, tprec + tsens))
    means: dict[str, Any] = {
        "cldice": nan_ratio(s["cldice"], s["scored"]),
        "tprec_pooled": tprec if tprec.ndim else float(tprec),
        "tsens_pooled": tsens if tsens.ndim else float(tsens),
        "cldice_pooled": pooled if pooled.ndim else float(pooled),
    }
    for key in EMPTY_FIELDS:
        means[key] = s[key].astype(np.int64) if s[key].ndim else int(s[key])
    return means
