"""clDice (evaluation.topology): thin lines and rings whose skeleton is the shape itself, the formula against
skimage's skeleton of the whole image, the empty-mask rules, the ignored pixels and the sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import skeletonize

from evaluation.topology import CLDICE_SUM_FIELDS, cldice_means, cldice_scores, skeleton


def thin_ring() -> np.ndarray:
    """A closed 8-connected curve one pixel wide: the outline of an 11 x 11 square without its corners
    (36 pixels, each with exactly two neighbours), its own skeleton."""
    ring = np.zeros((15, 15), bool)
    ring[2, 3:12] = ring[12, 3:12] = ring[3:12, 2] = ring[3:12, 12] = True
    return ring


def test_a_one_pixel_line_and_ring_are_their_own_skeletons():
    line = np.zeros((9, 20), bool)
    line[5, 2:18] = True
    np.testing.assert_array_equal(skeleton(line), line)  # thinning keeps end points
    np.testing.assert_array_equal(skeleton(thin_ring()), thin_ring())
    bar = np.zeros((9, 20), bool)
    bar[3:6, 2:18] = True
    skel = skeleton(bar)
    assert skel.sum() < bar.sum() / 2 and (skel <= bar).all()


def test_a_shortened_line_loses_sensitivity_only():
    target, pred = np.zeros((9, 20), bool), np.zeros((9, 20), bool)
    target[5, 2:18] = True  # 16 px
    pred[5, 2:12] = True  # 10 px, all on the target
    scores = cldice_scores(pred, target)
    assert (scores.tprec, scores.tsens) == (1.0, 10 / 16)
    assert scores.cldice == pytest.approx(2 * 1.0 * (10 / 16) / (1 + 10 / 16))
    assert (scores.skel_pred, scores.skel_pred_in_target, scores.skel_target, scores.skel_target_in_pred) == (
        10, 10, 16, 10)


def test_a_broken_ring_and_a_thick_prediction_of_a_thin_ring():
    target = thin_ring()
    broken = target.copy()
    broken[12, 6:8] = False  # a 2-pixel gap: the loop is cut
    scores = cldice_scores(broken, target)
    assert (scores.tprec, scores.tsens) == (1.0, 34 / 36)
    assert scores.cldice == pytest.approx(2 * (34 / 36) / (1 + 34 / 36))
    # A 3-pixel-thick prediction thins back to the ring: clDice 1 where the pixel Dice is 0.5.
    thick = ndimage.binary_dilation(target, np.ones((3, 3)))
    np.testing.assert_array_equal(skeleton(thick), target)
    assert cldice_scores(thick, target).cldice == 1.0
    assert 2 * (thick & target).sum() / (thick.sum() + target.sum()) == pytest.approx(0.5, abs=0.05)


def test_scores_match_the_formula_with_skimage_on_whole_images():
    rng = np.random.default_rng(0)
    for _ in range(8):
        shape = (int(rng.integers(10, 40)), int(rng.integers(10, 40)))
        target = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5
        pred = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5
        if not target.any() or not pred.any():
            continue
        sp, st = skeletonize(pred), skeletonize(target)  # the whole image, no crop
        tprec, tsens = (sp & target).sum() / sp.sum(), (st & pred).sum() / st.sum()
        scores = cldice_scores(pred, target)
        assert (scores.tprec, scores.tsens) == (pytest.approx(tprec), pytest.approx(tsens))
        assert scores.cldice == pytest.approx(2 * tprec * tsens / (tprec + tsens))


def test_every_component_of_a_mask_keeps_a_skeleton_pixel():
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random((24, 24)) < rng.uniform(0.05, 0.9)
        labels, n = ndimage.label(mask, np.ones((3, 3)))
        assert len(np.setdiff1d(np.unique(labels[skeleton(mask)]), [0])) == n


def test_empty_masks_follow_the_documented_rules():
    target, empty = thin_ring(), np.zeros((15, 15), bool)
    both = cldice_scores(empty, empty)
    assert math.isnan(both.cldice) and math.isnan(both.tprec) and math.isnan(both.tsens)
    missed = cldice_scores(empty, target)
    assert missed.cldice == 0.0 and missed.tsens == 0.0 and math.isnan(missed.tprec)
    spurious = cldice_scores(target, empty)
    assert spurious.cldice == 0.0 and spurious.tprec == 0.0 and math.isnan(spurious.tsens)
    sums = both.sums() + missed.sums() + spurious.sums()
    total = dict(zip(CLDICE_SUM_FIELDS, sums.tolist(), strict=True))
    assert [total[k] for k in ("scored", "both_empty", "missed", "spurious", "cldice")] == [2, 1, 1, 1, 0]


def test_ignored_pixels_are_background_in_both_masks():
    target = thin_ring()
    pred = target.copy()
    pred[7, 4:11] = True  # a spurious bar inside the ring
    valid = np.ones_like(target)
    valid[6:9, 3:12] = False
    assert cldice_scores(pred, target, valid).tprec == 1.0
    assert cldice_scores(pred, target).tprec < 1.0


def test_means_of_summed_records():
    target = thin_ring()
    broken = target.copy()
    broken[12, 6:8] = False
    a, b = cldice_scores(broken, target), cldice_scores(np.zeros_like(target), target)
    c = cldice_scores(np.zeros_like(target), np.zeros_like(target))
    means = cldice_means(a.sums() + b.sums() + c.sums())
    assert means["cldice"] == pytest.approx(a.cldice / 2)  # b scored 0, c left out
    assert means["tprec_pooled"] == 1.0 and means["tsens_pooled"] == 34 / 72
    assert means["cldice_pooled"] == pytest.approx(2 * (34 / 72) / (1 + 34 / 72))
    assert (means["scored"], means["both_empty"], means["missed"], means["spurious"]) == (2, 1, 1, 0)
    per_class = cldice_means(np.stack([a.sums(), c.sums()]))
    assert per_class["cldice"][0] == a.cldice and math.isnan(per_class["cldice"][1])
    assert math.isnan(per_class["cldice_pooled"][1])
    with pytest.raises(ValueError, match="9"):
        cldice_means(np.zeros(3))
