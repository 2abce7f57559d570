"""Dice-optimal thresholds of binary/multilabel segmentation (evaluation.thresholds): the grid histogram
against the exact sort-based search, a hand-computed optimum, the tie rule p >= t."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluation.thresholds import (
    DEFAULT_THRESHOLD,
    GRID_STEPS,
    POSITIVE_RULE,
    ThresholdHistogram,
    apply_threshold,
    exact_dice_thresholds,
    grid_thresholds,
)

IGNORE = 255


def _dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    tp = int((pred & target).sum())
    return 2 * tp / (int(pred.sum()) + int(target.sum()))


# ---- the rule -------------------------------------------------------------------------------------------


def test_apply_threshold_predicts_positive_at_equality_per_label():
    assert POSITIVE_RULE == "p >= t"
    t = torch.tensor([0.3, 0.7])
    below = torch.nextafter(t, torch.zeros(2))
    probs = torch.stack([t, below, torch.ones(2)]).reshape(3, 2, 1, 1)  # (N, C, H, W)
    pred = apply_threshold(probs, t.double())
    assert pred.dtype == torch.int64 and pred.shape == probs.shape
    assert pred[:, :, 0, 0].tolist() == [[1, 1], [0, 0], [1, 1]]
    assert apply_threshold(torch.tensor([0.5, 0.49]), 0.5).tolist() == [1, 0]
    assert apply_threshold(probs[:, :, 0, 0], t).tolist() == [[1, 1], [0, 0], [1, 1]]  # (n, C)
    with pytest.raises(ValueError, match="3 thresholds for 2 channels"):
        apply_threshold(probs, torch.ones(3))


# ---- exact and grid searches ----------------------------------------------------------------------------

# p:      0.9  0.8  0.7  0.3  0.2;  positives: 0.9, 0.8, 0.3 (3)
# t=0.9: TP 1 FP 0 -> 2/4; t=0.8: TP 2 FP 0 -> 4/5; t=0.7: 4/6; t=0.3: TP 3 FP 1 -> 6/7; t=0.2: 6/8
HAND_P = torch.tensor([0.9, 0.8, 0.7, 0.3, 0.2])
HAND_Y = torch.tensor([1, 1, 0, 1, 0])


def test_hand_made_optimum_exact_and_grid():
    exact = exact_dice_thresholds(HAND_P, HAND_Y)
    assert exact["threshold"].tolist() == [float(torch.tensor(0.3))]
    assert exact["dice"].tolist() == pytest.approx([6 / 7])
    assert exact["dice_at_default"].tolist() == pytest.approx([4 / 6])  # 0.9, 0.8, 0.7 predicted
    assert exact["rule"] == POSITIVE_RULE

    hist = ThresholdHistogram(1, "binary")
    hist.add_probabilities(HAND_P.unsqueeze(1), HAND_Y.unsqueeze(1) == 1)
    grid = hist.best()
    assert grid["threshold"].tolist() == exact["threshold"].tolist()  # 0.3 lies on the grid
    assert grid["dice"].tolist() == pytest.approx([6 / 7])
    assert grid["dice_at_default"].tolist() == pytest.approx([4 / 6])
    assert grid["steps"] == GRID_STEPS == 1000
    assert torch.equal(apply_threshold(HAND_P, grid["threshold"][0]), torch.tensor([1, 1, 1, 1, 0]))


def test_ties_take_the_largest_threshold():
    # t = 0.8 (TP 1, FP 0: 2/3) and t = 0.4 (TP 2, FP 2: 4/6) have the same Dice
    p = torch.tensor([0.8, 0.6, 0.5, 0.4])
    y = torch.tensor([1, 0, 0, 1])
    exact = exact_dice_thresholds(p, y)
    assert exact["threshold"].tolist() == [float(torch.tensor(0.8))]
    hist = ThresholdHistogram(1, "binary", steps=10)
    hist.add_probabilities(p.unsqueeze(1), y.unsqueeze(1) == 1)
    assert hist.best()["threshold"].tolist() == exact["threshold"].tolist()


def _on_grid(seed: int, n: int = 400, labels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Multilabel probabilities on the grid of 100 steps (values 1 .. 99 / 100), targets correlated with
    them, some ignored."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(1, 100, (n, labels), generator=g)
    probs = grid_thresholds(100)[k]
    target = (torch.rand(n, labels, generator=g) < probs).long()
    target[:20, 1] = IGNORE
    return probs, target


def test_grid_equals_the_exact_optimum_on_grid_probabilities():
    probs, target = _on_grid(0)
    exact = exact_dice_thresholds(probs, target, ignore_index=IGNORE)
    hist = ThresholdHistogram(3, "multilabel", steps=100, ignore_index=IGNORE)
    z = torch.log(probs.double() / (1 - probs.double())).float()
    sig = torch.sigmoid(z)
    hist.add_probabilities(probs, target == 1, target != IGNORE)  # the probabilities themselves
    grid = hist.best()
    for key in ("threshold", "dice", "dice_at_default"):
        torch.testing.assert_close(grid[key], exact[key], rtol=0, atol=0)
    # from logits (the sigmoid may move a value by an ulp, and the optimum must still agree)
    from_logits = ThresholdHistogram(3, "multilabel", steps=100, ignore_index=IGNORE)
    from_logits.update(z.T.unsqueeze(0), target.T.unsqueeze(0))  # (1, C, n)
    again = exact_dice_thresholds(sig, target, ignore_index=IGNORE)
    torch.testing.assert_close(from_logits.best()["dice"], again["dice"], rtol=0, atol=0)
    assert len(set(exact["threshold"].tolist())) > 1  # the labels' optima differ: per label, not one


def test_grid_dice_is_exact_at_every_grid_threshold_for_any_probabilities():
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(300, generator=g)
    probs[:30] = grid_thresholds(20)[torch.randint(0, 21, (30,), generator=g)]  # values on thresholds
    target = torch.rand(300, generator=g) < probs
    hist = ThresholdHistogram(1, "binary", steps=20)
    hist.add_probabilities(probs.unsqueeze(1), target.unsqueeze(1))
    curve = hist.dice_curve()[0]
    for k, t in enumerate(grid_thresholds(20)):
        pred = apply_threshold(probs, t).bool()
        assert float(curve[k]) == pytest.approx(_dice(pred, target), abs=1e-12), k
    exact = exact_dice_thresholds(probs, target.long())
    assert float(exact["dice"][0]) >= float(hist.best()["dice"][0])  # the grid is a subset of thresholds
    pred = apply_threshold(probs, exact["threshold"][0]).bool()
    assert float(exact["dice"][0]) == pytest.approx(_dice(pred, target), abs=1e-12)
    brute = max(_dice(probs >= t, target) for t in probs.tolist())
    assert float(exact["dice"][0]) == pytest.approx(brute, abs=1e-12)


def test_batches_and_ignored_pixels():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 2, 6, 7, generator=g) * 2
    target = torch.randint(0, 2, (3, 2, 6, 7), generator=g)
    target[0, 1] = IGNORE
    whole = ThresholdHistogram(2, "multilabel", ignore_index=IGNORE)
    whole.update(logits, target)
    parts = ThresholdHistogram(2, "multilabel", ignore_index=IGNORE)
    parts.update(logits[:2], target[:2])
    parts.update(logits[2:], target[2:])
    assert torch.equal(parts.state, whole.state)
    assert whole.state.sum(dim=(1, 2)).tolist() == [126, 84]
    probs = torch.sigmoid(logits).movedim(1, -1).reshape(-1, 2)
    flat = target.movedim(1, -1).reshape(-1, 2)
    direct = ThresholdHistogram(2, "multilabel")
    direct.add_probabilities(probs, flat == 1, flat != IGNORE)  # update() = the sigmoid's probabilities
    assert torch.equal(direct.state, whole.state)
    changed = logits.clone()
    changed[0, 1] = -logits[0, 1]
    again = ThresholdHistogram(2, "multilabel", ignore_index=IGNORE)
    again.update(changed, target)
    assert torch.equal(again.state, whole.state)
    whole.reset()
    assert int(whole.state.sum()) == 0


def test_binary_target_shapes_label_without_positives_and_errors():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 4, 4, generator=g)
    target = torch.randint(0, 2, (2, 4, 4), generator=g)
    a, b = ThresholdHistogram(1, "binary"), ThresholdHistogram(1, "binary")
    a.update(logits, target)
    b.update(logits, target.unsqueeze(1))
    assert torch.equal(a.state, b.state)
    none = ThresholdHistogram(1, "binary")
    none.update(logits, torch.zeros_like(target))
    best = none.best()
    assert best["threshold"].tolist() == [DEFAULT_THRESHOLD]
    predicted = int((torch.sigmoid(logits) >= 0.5).sum())
    assert predicted > 0 and best["dice"].tolist() == [0.0] == best["dice_at_default"].tolist()
    exact = exact_dice_thresholds(torch.sigmoid(logits).flatten(), torch.zeros(32, dtype=torch.long))
    assert exact["threshold"].tolist() == [DEFAULT_THRESHOLD]
    empty = exact_dice_thresholds(torch.rand(3), torch.full((3,), IGNORE), ignore_index=IGNORE)
    assert empty["threshold"].tolist() == [DEFAULT_THRESHOLD] and math.isnan(float(empty["dice"][0]))
    with pytest.raises(ValueError, match="binary and multilabel"):
        ThresholdHistogram(3, "multiclass")
    with pytest.raises(ValueError, match="even"):
        ThresholdHistogram(1, "binary", steps=999)


def test_synced_without_a_group_is_an_independent_copy():
    hist = ThresholdHistogram(2, "multilabel", steps=10)
    hist.update(torch.randn(1, 2, 3, 3), torch.ones(1, 2, 3, 3, dtype=torch.long))
    copy = hist.synced()
    assert torch.equal(copy.state, hist.state)
    hist.reset()
    assert int(copy.state.sum()) == 18 and np.isclose(float(copy.best()["dice"][0]), 1.0)
