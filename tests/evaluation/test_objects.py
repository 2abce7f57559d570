"""Objects found (evaluation.objects): counts against brute-force component matching (scipy.ndimage.label and
Python loops over object pairs), hand-made cases with known answers, the scores' NaN rules, the options."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import ndimage

from evaluation import objects
from evaluation.masks import class_masks
from evaluation.objects import OBJECT_FIELDS, ObjectCounts, ObjectOptions, object_counts, object_scores


def blobs(rng: np.random.Generator, shape: tuple[int, int], share: float, sigma: float = 1.2) -> np.ndarray:
    """A random mask of blobs covering about ``share`` of the image."""
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    return field > np.quantile(field, 1 - share)


def brute_counts(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None, iou: float,
                 connectivity: int, size_bins: tuple[int, int]) -> dict[str, float]:
    """The counts from their definition: scipy labels (raster order), exact IoU of every object pair in
    Python, greedy one-to-one matching by (IoU descending, GT label, predicted label)."""
    if valid is not None:
        pred, target = pred & valid, target & valid
    structure = np.ones((3, 3)) if connectivity == 8 else None
    gl, ng = ndimage.label(target, structure)
    pl, npr = ndimage.label(pred, structure)
    gts = [gl == i for i in range(1, ng + 1)]
    preds = [pl == j for j in range(1, npr + 1)]
    inter = [[int(np.sum(g & q)) for q in preds] for g in gts]
    detected, matched, dice = set(), set(), {}
    if iou == 0:
        for i, g in enumerate(gts):
            partners = [j for j in range(npr) if inter[i][j] > 0]
            matched.update(partners)
            if partners:
                detected.add(i)
                union = np.logical_or.reduce([preds[j] for j in partners])
                dice[i] = 2 * np.sum(g & union) / (g.sum() + union.sum())
    else:
        pairs = []
        for i, g in enumerate(gts):
            for j, q in enumerate(preds):
                score = Fraction(inter[i][j], int(np.sum(g | q)))
                if inter[i][j] > 0 and score >= Fraction(iou).limit_denominator(10**6):
                    pairs.append((-score, i, j))
        for _, i, j in sorted(pairs):
            if i not in detected and j not in matched:
                detected.add(i)
                matched.add(j)
                dice[i] = 2 * inter[i][j] / (gts[i].sum() + preds[j].sum())
    out = {"gt": ng, "gt_detected": len(detected), "pred": npr, "pred_matched": len(matched),
           "dice_sum": sum(dice.values())}
    for name in ("small", "medium", "large"):
        out[f"gt_{name}"] = out[f"detected_{name}"] = 0
    for i, g in enumerate(gts):
        a = int(g.sum())
        name = "small" if a < size_bins[0] else "medium" if a < size_bins[1] else "large"
        out[f"gt_{name}"] += 1
        out[f"detected_{name}"] += i in detected
    return out


def assert_counts(counts: ObjectCounts, expected: dict[str, float]) -> None:
    got = dict(zip(OBJECT_FIELDS, counts.to_array().tolist(), strict=True))
    assert got.pop("dice_sum") == pytest.approx(expected.pop("dice_sum"), abs=1e-12)
    assert got == expected


@pytest.mark.parametrize("iou", [0.0, 0.2, 0.5, 0.75])
@pytest.mark.parametrize("connectivity", [8, 4])
def test_counts_match_brute_force_matching_on_random_masks(iou, connectivity):
    rng = np.random.default_rng(int(iou * 100) + connectivity)
    options = ObjectOptions(iou=iou, connectivity=connectivity, size_bins=(6, 20))
    for _ in range(12):
        shape = (int(rng.integers(8, 30)), int(rng.integers(8, 30)))
        target = blobs(rng, shape, rng.uniform(0.1, 0.5))
        pred = target.copy() if rng.random() < 0.5 else blobs(rng, shape, rng.uniform(0.1, 0.5))
        pred ^= rng.random(shape) < 0.08  # split, merge and add objects
        valid = rng.random(shape) > 0.1 if rng.random() < 0.5 else None
        counts = object_counts(pred, target, valid, options)
        assert_counts(counts, brute_counts(pred, target, valid, iou, connectivity, options.size_bins))


def test_the_sparse_overlap_count_matches_the_dense_one(monkeypatch):
    rng = np.random.default_rng(3)
    target, pred = rng.random((20, 20)) < 0.3, rng.random((20, 20)) < 0.3
    for iou in (0.0, 0.3):
        options = ObjectOptions(iou=iou)
        dense = object_counts(pred, target, options=options)
        monkeypatch.setattr(objects, "_DENSE_PAIRS", 0)  # np.unique over the pair codes
        sparse = object_counts(pred, target, options=options)
        monkeypatch.undo()
        assert sparse == dense
        assert_counts(sparse, brute_counts(pred, target, None, iou, 8, options.size_bins))


def test_two_blobs_one_found():
    target = np.zeros((12, 12), bool)
    target[1:5, 1:5] = target[7:11, 7:11] = True
    pred = np.zeros_like(target)
    pred[1:5, 1:5] = True
    counts = object_counts(pred, target)
    assert (counts.gt, counts.gt_detected, counts.pred, counts.pred_matched) == (2, 1, 1, 1)
    assert counts.dice_sum == 1.0 and counts.gt_small == 2 and counts.detected_small == 1
    scores = object_scores(counts)
    assert (scores["recall"], scores["precision"], scores["dice_detected"]) == (0.5, 1.0, 1.0)
    assert scores["f1"] == pytest.approx(2 / 3)


def test_a_split_prediction_is_one_match_one_to_one_but_two_hits_by_any_overlap():
    target = np.zeros((4, 10), bool)
    target[:, :] = True  # one object of 40 pixels
    pred = target.copy()
    pred[:, 5] = False  # two predicted halves: 20 pixels (IoU 1/2) and 16 pixels (IoU 2/5)
    strict = object_counts(pred, target, options=ObjectOptions(iou=0.5))
    assert (strict.gt, strict.gt_detected, strict.pred, strict.pred_matched) == (1, 1, 2, 1)
    assert strict.dice_sum == pytest.approx(2 * 20 / (40 + 20))
    assert object_counts(pred, target, options=ObjectOptions(iou=0.51)).gt_detected == 0
    lenient = object_counts(pred, target, options=ObjectOptions(iou=0))
    assert (lenient.gt, lenient.gt_detected, lenient.pred, lenient.pred_matched) == (1, 1, 2, 2)
    assert lenient.dice_sum == pytest.approx(2 * 36 / (40 + 36))  # G against the union of both halves
    assert object_scores(lenient)["f1"] == 1.0 and object_scores(strict)["f1"] == pytest.approx(2 / 3)


def test_a_merged_prediction_detects_both_objects_only_by_any_overlap():
    target = np.zeros((3, 9), bool)
    target[:, :4] = target[:, 5:] = True
    pred = np.ones_like(target)
    lenient = object_counts(pred, target, options=ObjectOptions(iou=0))
    assert (lenient.gt_detected, lenient.pred, lenient.pred_matched) == (2, 1, 1)
    strict = object_counts(pred, target)  # IoU 12/27 each
    assert (strict.gt_detected, strict.pred_matched) == (0, 0)
    assert object_counts(pred, target, options=ObjectOptions(iou=0.4)).gt_detected == 1


def test_matching_is_greedy_by_iou_not_by_object_order():
    # One row: G1 = [0, 10), G2 = [11, 17); P2 = [0, 3), P1 = [4, 17). IoU(G1, P1) = 6/17 is G1's best,
    # but IoU(G2, P1) = 6/13 is higher: P1 goes to G2, G1 takes P2 (IoU 3/10).
    target, pred = np.zeros((1, 17), bool), np.zeros((1, 17), bool)
    target[0, :10] = target[0, 11:] = True
    pred[0, :3] = pred[0, 4:] = True
    counts = object_counts(pred, target, options=ObjectOptions(iou=0.25))
    assert (counts.gt_detected, counts.pred_matched) == (2, 2)
    assert counts.dice_sum == pytest.approx(2 * 6 / (6 + 13) + 2 * 3 / (10 + 3))
    counts = object_counts(pred, target, options=ObjectOptions(iou=0.31))  # G1 and P2 no longer a pair
    assert (counts.gt_detected, counts.dice_sum) == (1, pytest.approx(12 / 19))


def test_size_buckets_split_at_the_thresholds():
    target = np.zeros((10, 20), bool)
    target[0, 0:4] = True  # 4 px: small
    target[3, 0:5] = True  # 5 px: medium (a threshold belongs to the bucket above)
    target[6:8, 0:10] = True  # 20 px: large
    target[0:2, 12:14] = True  # 4 px: small
    pred = np.zeros_like(target)
    pred[3, 0:5] = pred[0:2, 12:14] = True
    counts = object_counts(pred, target, options=ObjectOptions(size_bins=(5, 20)))
    assert (counts.gt_small, counts.gt_medium, counts.gt_large) == (2, 1, 1)
    assert (counts.detected_small, counts.detected_medium, counts.detected_large) == (1, 1, 0)
    scores = object_scores(counts)
    assert (scores["recall_small"], scores["recall_medium"], scores["recall_large"]) == (0.5, 1.0, 0.0)
    assert ObjectOptions().size_bins == (32**2, 96**2)


def test_ignored_pixels_belong_to_no_object_and_to_no_area():
    target = np.zeros((6, 12), bool)
    target[1:5, 1:11] = True
    valid = np.ones_like(target)
    valid[:, 6] = False  # the ignored column splits the ground-truth object in two
    valid[:, 9:] = False
    pred = np.zeros_like(target)
    pred[1:5, 1:6] = True  # the left part exactly
    pred[0:2, 10:12] = True  # only in ignored pixels: no object
    counts = object_counts(pred, target, valid)
    assert (counts.gt, counts.gt_detected, counts.pred, counts.pred_matched) == (2, 1, 1, 1)
    assert counts.dice_sum == 1.0
    whole = object_counts(pred, target)  # one object of 40 px; the left part has IoU 20/40
    assert (whole.gt, whole.gt_detected, whole.pred, whole.pred_matched) == (1, 1, 2, 1)
    assert whole.dice_sum == pytest.approx(2 * 20 / (40 + 20))


def test_diagonal_neighbours_are_one_object_with_8_connectivity_only():
    mask = np.eye(4, dtype=bool)
    assert object_counts(mask, mask).gt == 1
    eight, four = object_counts(mask, mask), object_counts(mask, mask, options=ObjectOptions(connectivity=4))
    assert (four.gt, four.gt_detected, four.pred_matched) == (4, 4, 4) and eight.dice_sum == 1.0


def test_scores_are_nan_only_when_undefined():
    nothing = object_scores(ObjectCounts())
    assert all(math.isnan(v) for v in nothing.values())
    only_predicted = object_scores(ObjectCounts(pred=3))
    assert math.isnan(only_predicted["recall"]) and only_predicted["precision"] == 0.0
    assert only_predicted["f1"] == 0.0 and math.isnan(only_predicted["dice_detected"])
    only_true = object_scores(ObjectCounts(gt=2, gt_small=2))
    assert only_true["recall"] == 0.0 and math.isnan(only_true["precision"]) and only_true["f1"] == 0.0
    assert math.isnan(only_true["recall_large"]) and only_true["recall_small"] == 0.0


def test_counts_add_up_over_images_and_scores_take_arrays():
    a = ObjectCounts(4, 3, 5, 3, 2, 1, 1, 1, 1, 1, 2.5)
    b = ObjectCounts(2, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0.0)
    total = a + b
    assert total == ObjectCounts.total([a, b]) == ObjectCounts(6, 3, 6, 3, 4, 1, 1, 1, 1, 1, 2.5)
    assert ObjectCounts.total([]) == ObjectCounts()
    assert ObjectCounts.from_array(a.to_array()) == a
    per_class = np.stack([a.to_array(), b.to_array(), ObjectCounts().to_array()])  # (C, 11)
    scores = object_scores(per_class)
    np.testing.assert_allclose(scores["recall"], [3 / 4, 0, np.nan])
    np.testing.assert_allclose(scores["f1"], [2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4), 0, np.nan])
    assert scores["dice_detected"][0] == 2.5 / 3
    assert object_scores(total)["precision"] == 0.5
    with pytest.raises(ValueError, match="11"):
        object_scores(np.zeros(3))


def test_class_masks_feed_one_class_at_a_time_with_the_ignored_pixels_left_out():
    target = np.array([[0, 1, 1, 255], [2, 2, 0, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
    rows = [object_counts(*m) for m in class_masks(pred, target, 3, ignore_index=255)]
    assert [(r.gt, r.gt_detected, r.pred) for r in rows] == [(2, 0, 1), (1, 1, 1), (1, 1, 1)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"iou": 1.5}, r"objects.iou must be in \[0, 1\]"),
    ({"iou": "0.5"}, "objects.iou must be a finite number"),
    ({"connectivity": 6}, r"objects.connectivity must be one of \(4, 8\)"),
    ({"size_bins": (9216,)}, "two area thresholds"),
    ({"size_bins": (100, 50)}, "must increase"),
    ({"size_bins": (0, 50)}, r"size_bins\[0\] must be an int >= 1"),
])
def test_options_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ObjectOptions(**kwargs)
    assert ObjectOptions(size_bins=[10, 20]).size_bins == (10, 20)


def test_masks_are_checked():
    with pytest.raises(ValueError, match="differ in shape"):
        object_counts(np.zeros((3, 4), bool), np.zeros((4, 3), bool))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        object_counts(np.zeros((1, 3, 4), bool), np.zeros((1, 3, 4), bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        object_counts(np.full((3, 4), 2), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="valid"):
        object_counts(np.zeros((3, 4), bool), np.zeros((3, 4), bool), np.ones((4, 4), bool))
