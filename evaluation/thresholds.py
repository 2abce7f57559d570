"""Per-label decision thresholds for binary and multilabel segmentation: the threshold of the foreground
probability that maximises the Dice of each label on validation, and the rule that applies it.

The rule (:data:`POSITIVE_RULE`), used by the search and by :func:`apply_threshold` alike: a pixel is
predicted positive for a label when its probability ``p >= t``. (The metrics' default ``logit > 0`` is
``p > 0.5``; the two differ only on probabilities exactly 0.5, i.e. logits within ~1e-7 of 0.)

- :class:`ThresholdHistogram`: per label, the positive and negative pixels counted on a fixed grid of
  :data:`GRID_STEPS` + 1 = 1001 thresholds ``t_k = k / 1000`` (float32 values, :func:`grid_thresholds`),
  bin k holding ``t_k <= p < t_(k+1)`` (the last bin: ``p = 1``). Its state sums over batches and DDP
  processes; the Dice at every grid threshold follows from cumulative sums and is exact there.
- :func:`exact_dice_thresholds`: the optimum over every threshold, from probabilities sorted once
  (O(N log N)); the reference of the grid, and the search for data that fits in memory.

Both return per label the best threshold (ties: the largest threshold of the best Dice, i.e. the fewest
positives), its Dice, and the Dice at :data:`DEFAULT_THRESHOLD` = 0.5. A label without positive pixels
has no best threshold: it gets :data:`DEFAULT_THRESHOLD` and the Dice there (0, or NaN when nothing is
predicted either). Dice = 2 TP / (2 TP + FP + FN), in float64.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from evaluation.pixels import all_reduce_sum, flat_pixels, one_vs_rest, per_channel
from seglosses.modes import MULTICLASS_MODE, check_mode, check_num_classes

__all__ = ["DEFAULT_THRESHOLD", "GRID_STEPS", "POSITIVE_RULE", "ThresholdHistogram", "apply_threshold",
           "best_thresholds", "exact_dice_thresholds", "grid_thresholds"]

#: Predicted positive when the probability is at least the threshold.
POSITIVE_RULE = "p >= t"
#: The threshold of the metrics without a search.
DEFAULT_THRESHOLD = 0.5
#: The grid of :class:`ThresholdHistogram`: thresholds k / GRID_STEPS, k = 0 .. GRID_STEPS.
GRID_STEPS = 1000


def apply_threshold(probs: Tensor, thresholds: Tensor | float) -> Tensor:
    """Predictions by :data:`POSITIVE_RULE`: int64 {0, 1} of ``probs``' shape, 1 where ``probs >= t``.
    ``thresholds``: a scalar, or (C,) per label compared along dim 1 of (N, C, *) probabilities; cast to
    ``probs``' dtype (search and apply in float32, as the sigmoid here, for the same result)."""
    return (probs >= per_channel(thresholds, probs, "thresholds")).long()


def grid_thresholds(steps: int = GRID_STEPS, device: torch.device | str | None = None) -> Tensor:
    """The ``steps + 1`` grid thresholds ``k / steps`` as float32 (the values the histogram bins by)."""
    return (torch.arange(steps + 1, dtype=torch.float64, device=device) / steps).float()


def _dice(tp: Tensor, fp: Tensor, positives: Tensor) -> Tensor:
    """Dice 2 TP / (TP + FP + positives) in float64 (FN = positives - TP); 0 / 0 is NaN."""
    tp, fp, positives = tp.double(), fp.double(), torch.as_tensor(positives).double()
    return 2 * tp / (tp + fp + positives)


def best_thresholds(thresholds: Tensor, tp: Tensor, fp: Tensor, positives: Tensor,
                    default_dice: Tensor) -> dict[str, Tensor]:
    """Per label (rows) the best of T candidate ``thresholds`` (T,) or (C, T) with their (C, T) counts
    ``tp``, ``fp`` (pixels with ``p >= t``) and (C,) ``positives``: ``{"threshold", "dice",
    "dice_at_default"}``, each (C,) float64; ties and labels without positives as the module says."""
    dice = _dice(tp, fp, positives.unsqueeze(-1))
    thr = torch.broadcast_to(thresholds.double(), dice.shape)
    best = dice.nan_to_num(-1.0).amax(dim=-1, keepdim=True)
    chosen = thr.masked_fill(dice.nan_to_num(-1.0) != best, -torch.inf).argmax(dim=-1, keepdim=True)
    threshold, best_dice = thr.gather(-1, chosen)[:, 0], dice.gather(-1, chosen)[:, 0]
    default_dice = default_dice.double()
    none = positives == 0
    return {"threshold": threshold.masked_fill(none, DEFAULT_THRESHOLD),
            "dice": torch.where(none, default_dice, best_dice), "dice_at_default": default_dice}


class ThresholdHistogram:
    """Per label, the scored pixels' foreground probabilities binned on the grid of :func:`grid_thresholds`
    (``steps`` = :data:`GRID_STEPS` by default), apart for negative and positive pixels, batch by batch on
    the batches' device (no host sync per batch).

    Args:
        num_classes: C labels (binary: 1, the foreground).
        mode: ``"binary"`` or ``"multilabel"`` (:mod:`evaluation.pixels`).
        steps: grid thresholds ``k / steps``, k = 0 .. steps (even: 0.5 is one).
        ignore_index: target value left out (per element); ``None``: none.
        device: where the state starts; it moves to the device of the first batch (one copy).

    ``state``: (C, 2, steps + 1) int64, ``state[c, y, k]`` = pixels of label c with target y (0: negative,
    1: positive) and ``t_k <= p < t_(k+1)``. Sums of batches (and of DDP processes: :meth:`synced`, one
    ``all_reduce``) are the state of their union. :meth:`best` picks the thresholds.
    """

    def __init__(self, num_classes: int, mode: str, steps: int = GRID_STEPS, ignore_index: int | None = None,
                 device: torch.device | str | None = None) -> None:
        check_num_classes(check_mode(mode), num_classes)
        if mode == MULTICLASS_MODE:
            raise ValueError("thresholds are for binary and multilabel modes (multiclass takes the argmax)")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2 or steps % 2:
            raise ValueError(f"steps must be a positive even int (0.5 a grid threshold), got {steps!r}")
        self.num_classes, self.mode, self.steps, self.ignore_index = num_classes, mode, steps, ignore_index
        self.state = torch.zeros(num_classes, 2, steps + 1, dtype=torch.long, device=device)

    def reset(self) -> None:
        self.state.zero_()

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch: ``logits`` (N, C, *) (sigmoid probabilities in float32) and its target."""
        z, t = flat_pixels(logits, target, self.mode)
        if z.shape[1] != self.num_classes:
            raise ValueError(f"logits have {z.shape[1]} channels, the histogram {self.num_classes} labels")
        probs, positive, valid = one_vs_rest(z, t, self.mode, self.ignore_index)
        self.add_probabilities(probs, positive, valid)

    def add_probabilities(self, probs: Tensor, positive: Tensor, valid: Tensor | None = None) -> None:
        """Add (P, C) probabilities, whether each element is positive and whether it is scored."""
        if self.state.device != probs.device:
            self.state = self.state.to(probs.device)
        edges = grid_thresholds(self.steps, probs.device).to(probs.dtype)
        # k = (the number of grid thresholds t <= p) - 1: p >= t_j exactly when k >= j
        k = (torch.bucketize(probs.contiguous(), edges, right=True) - 1).clamp_(0, self.steps)
        labels = torch.arange(self.num_classes, device=probs.device) * 2
        index = ((labels + positive.long()) * (self.steps + 1) + k).reshape(-1)
        weight = torch.ones_like(index) if valid is None else valid.reshape(-1).long()
        self.state.view(-1).scatter_add_(0, index, weight)

    def synced(self) -> ThresholdHistogram:
        """A histogram whose state is this one summed over every DDP process (``all_reduce``, a collective:
        call it on every rank); a copy of this one without a multi-process group."""
        other = ThresholdHistogram(self.num_classes, self.mode, self.steps, self.ignore_index)
        other.state = all_reduce_sum(self.state)
        return other

    def counts(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(tp, fp, positives)``: (C, steps + 1) pixels with ``p >= t_k`` that are positive, negative, and
        (C,) positive pixels (reverse cumulative sums of the state)."""
        above = self.state.flip(-1).cumsum(-1).flip(-1)  # [c, y, k]: pixels with p >= t_k
        return above[:, 1], above[:, 0], self.state[:, 1].sum(-1)

    def dice_curve(self) -> Tensor:
        """(C, steps + 1) float64 Dice at each grid threshold (exact: the pixels' own probabilities)."""
        tp, fp, positives = self.counts()
        return _dice(tp, fp, positives.unsqueeze(-1))

    def best(self) -> dict[str, Any]:
        """``{"threshold": (C,), "dice": (C,) its Dice, "dice_at_default": (C,) Dice at 0.5, "steps":
        the grid's steps, "rule": POSITIVE_RULE}``; float64 tensors on the state's device, thresholds the
        grid's float32 values (for :func:`apply_threshold`)."""
        tp, fp, positives = self.counts()
        thresholds = grid_thresholds(self.steps, tp.device)
        default = self.steps // 2  # t = 0.5 exactly
        result: dict[str, Any] = best_thresholds(thresholds, tp, fp, positives,
                                                 _dice(tp[:, default], fp[:, default], positives))
        return {**result, "steps": self.steps, "rule": POSITIVE_RULE}


def exact_dice_thresholds(probs: Tensor, target: Tensor, ignore_index: int | None = None) -> dict[str, Any]:
    """The Dice-optimal threshold of each label over every possible threshold: ``probs`` (n,) or (n, C)
    foreground probabilities and ``target`` of their shape ({0, 1}, or ``ignore_index``: left out).

    Per label, the probabilities are sorted once (descending); the candidates are their distinct values
    (a threshold between two values predicts what the larger one does), with TP/FP their cumulative counts
    at the last pixel of each run of equal values. Returns :func:`best_thresholds`' dict (the thresholds
    are data values) plus ``"rule"``."""
    p, y = (probs.unsqueeze(1), target.unsqueeze(1)) if probs.ndim == 1 else (probs, target)
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"probs and target must be (n,) or (n, C) of one shape, got {tuple(probs.shape)} "
                         f"and {tuple(target.shape)}")
    rows = []
    for c in range(p.shape[1]):
        keep = torch.ones_like(y[:, c], dtype=torch.bool) if ignore_index is None else y[:, c] != ignore_index
        pc, yc = p[keep, c], y[keep, c] == 1
        positives = yc.sum()
        default = pc >= DEFAULT_THRESHOLD
        default_dice = _dice((default & yc).sum(), (default & ~yc).sum(), positives)
        pc, order = torch.sort(pc, descending=True, stable=True)
        tp, fp = yc[order].cumsum(0), (~yc[order]).cumsum(0)
        last = torch.ones_like(pc, dtype=torch.bool)
        last[:-1] = pc[1:] != pc[:-1]
        if pc.numel() == 0:  # nothing scored: one candidate predicting nothing
            pc, tp, fp, last = (torch.full((1,), DEFAULT_THRESHOLD, device=pc.device), tp.new_zeros(1),
                                fp.new_zeros(1), torch.ones(1, dtype=torch.bool, device=pc.device))
        row = best_thresholds(pc[last].double(), tp[last].unsqueeze(0), fp[last].unsqueeze(0),
                              positives.reshape(1), default_dice.reshape(1))
        rows.append(row)
    result: dict[str, Any] = {key: torch.cat([row[key] for row in rows]) for key in rows[0]}
    return {**result, "rule": POSITIVE_RULE}
