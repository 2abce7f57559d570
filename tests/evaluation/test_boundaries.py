"""Boundary metrics (evaluation.boundaries): HD95, ASSD, NSD against MONAI's compute functions; Boundary IoU
against its definition with brute-force distances in float64; a hand-made case with known distances; the
empty-mask rules, the ignored pixels, the sums and the options."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from evaluation.boundaries import (
    BOUNDARY_SUM_FIELDS,
    BoundaryOptions,
    boundary_band,
    boundary_means,
    boundary_scores,
    boundary_width,
    surface,
    surface_distances,
)


def blobs(rng: np.random.Generator, shape: tuple[int, int], share: float, sigma: float = 2.0) -> np.ndarray:
    """A random mask of blobs covering about ``share`` of the image (touching the border often)."""
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    return field > np.quantile(field, 1 - share)


def monai_values(pred: np.ndarray, target: np.ndarray, tolerance: float) -> tuple[float, float, float]:
    """MONAI's HD95, ASSD (symmetric) and NSD at ``tolerance`` of one image and class. Importing MONAI
    takes about 10 s on 2 cores: the tests that call this are marked slow."""
    import torch

    metrics = pytest.importorskip("monai.metrics", reason="MONAI (dev extra) is the peer reference")
    p, t = (torch.from_numpy(m)[None, None].float() for m in (pred, target))
    hd95 = metrics.compute_hausdorff_distance(p, t, include_background=True, percentile=95)
    assd = metrics.compute_average_surface_distance(p, t, include_background=True, symmetric=True)
    nsd = metrics.compute_surface_dice(p, t, class_thresholds=[tolerance], include_background=True)
    return float(hd95), float(assd), float(nsd)


@pytest.mark.slow
@pytest.mark.parametrize("tolerance", [1.0, 2.0, 3.5])
def test_hd95_assd_nsd_agree_with_monai_on_random_masks(tolerance):
    rng = np.random.default_rng(int(tolerance * 10))
    options = BoundaryOptions(tolerance=tolerance)
    for _ in range(6):
        shape = (int(rng.integers(20, 48)), int(rng.integers(20, 48)))
        target = blobs(rng, shape, rng.uniform(0.05, 0.5))
        pred = blobs(rng, shape, rng.uniform(0.05, 0.5)) if rng.random() < 0.5 else np.roll(target, 3, axis=1)
        scores = boundary_scores(pred, target, options=options)
        expected = monai_values(pred, target, tolerance)
        np.testing.assert_allclose([scores.hd95, scores.assd, scores.nsd], expected, rtol=1e-5, atol=1e-5)
    pred, target = concentric_squares()
    scores = boundary_scores(pred, target, options=options)
    expected = monai_values(pred, target, tolerance)
    np.testing.assert_allclose([scores.hd95, scores.assd, scores.nsd], expected, rtol=1e-6)


def concentric_squares() -> tuple[np.ndarray, np.ndarray]:
    """Target: an 11 x 11 square; prediction: the 7 x 7 square 2 px inside it."""
    target, pred = np.zeros((21, 21), bool), np.zeros((21, 21), bool)
    target[5:16, 5:16] = True
    pred[7:14, 7:14] = True
    return pred, target


def test_concentric_squares_have_the_distances_worked_out_by_hand():
    # pred surface: 24 px, each 2 from the target's; target surface: 40 px, 28 at 2, 8 next to a corner at
    # sqrt(5), 4 corners at sqrt(8); the 95th percentile of the 40 lies among the corners.
    pred, target = concentric_squares()
    to_target, to_pred = surface_distances(pred, target)
    assert sorted(to_target) == [2.0] * 24
    assert sorted(to_pred) == [2.0] * 28 + [math.sqrt(5)] * 8 + [math.sqrt(8)] * 4
    for tolerance, nsd in [(2.0, 52 / 64), (2.5, 60 / 64), (3.0, 1.0), (1.9, 0.0)]:
        scores = boundary_scores(pred, target, options=BoundaryOptions(tolerance=tolerance))
        assert scores.nsd == pytest.approx(nsd)
    assert scores.hd95 == pytest.approx(math.sqrt(8))
    assert scores.assd == pytest.approx((24 * 2 + 28 * 2 + 8 * math.sqrt(5) + 4 * math.sqrt(8)) / 64)


def brute_band(mask: np.ndarray, width: int) -> np.ndarray:
    """G_d from the definition: the pixels of ``mask`` with a pixel outside it (beyond the border included)
    within Euclidean distance ``width``, by a float64 distance to every background pixel."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), bool)
    padded[1:-1, 1:-1] = mask
    outside = np.argwhere(~padded).astype(np.float64) - 1
    band = np.zeros_like(mask)
    for r, c in np.argwhere(mask):
        band[r, c] = np.sqrt(((outside - (r, c)) ** 2).sum(axis=1)).min() <= width
    return band


@pytest.mark.parametrize("width", [1, 2, 3])
def test_boundary_iou_matches_its_definition_on_random_masks(width):
    rng = np.random.default_rng(width)
    for _ in range(5):
        shape = (int(rng.integers(8, 20)), int(rng.integers(8, 20)))
        target, pred = blobs(rng, shape, 0.4, 1.0), blobs(rng, shape, 0.4, 1.0)
        options = BoundaryOptions(dilation_ratio=width / math.hypot(*shape))
        assert boundary_width(shape, options.dilation_ratio) == width
        gb, pb = brute_band(target, width), brute_band(pred, width)
        np.testing.assert_array_equal(boundary_band(target, width), gb)
        scores = boundary_scores(pred, target, options=options)
        assert (scores.boundary_inter, scores.boundary_union) == ((gb & pb).sum(), (gb | pb).sum())
        assert scores.biou == (gb & pb).sum() / (gb | pb).sum()


def test_boundary_band_width_and_a_thick_mask():
    assert boundary_width((512, 512)) == 14  # 0.02 * 724.1
    assert boundary_width((10, 10)) == 1 and boundary_width((100, 100), 0.05) == 7
    mask = np.zeros((12, 12), bool)
    mask[2:10, 2:10] = True
    band = boundary_band(mask, 2)
    inner = np.zeros_like(mask)
    inner[4:8, 4:8] = True  # 3 px or more from the outside: not in the band
    np.testing.assert_array_equal(band, mask & ~inner)
    full = np.ones((6, 6), bool)  # the image border is contour
    assert boundary_band(full, 1).sum() == 20


def test_surface_is_the_mask_xor_its_cross_erosion_with_background_beyond_the_border():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((15, 17)) < 0.7
        np.testing.assert_array_equal(surface(mask), mask ^ ndimage.binary_erosion(mask))


def test_empty_masks_follow_the_documented_rules():
    target = np.zeros((20, 30), bool)
    target[5:10, 5:10] = True
    empty = np.zeros_like(target)
    both = boundary_scores(empty, empty)
    assert all(math.isnan(v) for v in (both.biou, both.hd95, both.assd, both.nsd))
    assert both.pred_empty and both.target_empty
    missed, spurious = boundary_scores(empty, target), boundary_scores(target, empty)
    for scores in (missed, spurious):
        assert scores.hd95 == scores.assd == math.hypot(20, 30)
        assert (scores.nsd, scores.biou, scores.boundary_inter, scores.boundary_union) == (0.0, 0.0, 0, 16)
    assert missed.pred_empty and not missed.target_empty
    assert not spurious.pred_empty and spurious.target_empty
    total = both.sums() + missed.sums() + spurious.sums()
    sums = dict(zip(BOUNDARY_SUM_FIELDS, total.tolist(), strict=True))
    assert [sums[k] for k in ("scored", "both_empty", "missed", "spurious")] == [2, 1, 1, 1]
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(empty, target)


def test_ignored_pixels_are_background_in_both_masks():
    target = np.zeros((16, 16), bool)
    target[3:9, 3:9] = True
    pred = np.roll(target, 1, axis=0)
    valid = np.ones_like(target)
    valid[:, 11:] = False
    extra_pred, extra_target = pred.copy(), target.copy()
    extra_pred[2:6, 12:15] = True  # only in ignored pixels
    extra_target[10:14, 11:16] = True
    assert boundary_scores(extra_pred, extra_target, valid) == boundary_scores(pred, target)
    assert boundary_scores(extra_pred, extra_target) != boundary_scores(pred, target)


def test_means_of_summed_records():
    pred, target = concentric_squares()
    a = boundary_scores(pred, target)
    b = boundary_scores(target, target)
    c = boundary_scores(np.zeros_like(target), target)
    d = boundary_scores(np.zeros_like(target), np.zeros_like(target))
    means = boundary_means(a.sums() + b.sums() + c.sums() + d.sums())
    assert means["hd95"] == pytest.approx((a.hd95 + 0.0 + math.hypot(21, 21)) / 3)
    assert means["nsd"] == pytest.approx((a.nsd + 1.0 + 0.0) / 3)
    assert means["biou"] == pytest.approx((a.biou + 1.0 + 0.0) / 3)
    inter = a.boundary_inter + b.boundary_inter
    assert means["biou_pooled"] == inter / (a.boundary_union + b.boundary_union + c.boundary_union)
    assert (means["scored"], means["both_empty"], means["missed"], means["spurious"]) == (3, 1, 1, 0)
    per_class = boundary_means(np.stack([a.sums(), d.sums()]))  # (C, 10)
    assert per_class["hd95"][0] == a.hd95 and math.isnan(per_class["hd95"][1])
    assert per_class["scored"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="10"):
        boundary_means(np.zeros(4))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dilation_ratio": 0}, r"boundaries.dilation_ratio must be in \(0, 1\]"),
    ({"dilation_ratio": 1.5}, r"boundaries.dilation_ratio must be in \(0, 1\]"),
    ({"tolerance": -1}, "boundaries.tolerance must be >= 0"),
    ({"tolerance": math.inf}, "boundaries.tolerance must be a finite number"),
])
def test_options_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BoundaryOptions(**kwargs)


@pytest.mark.slow
def test_monai_returns_no_finite_hd95_where_we_return_the_diagonal():
    # The documented difference: MONAI gives inf or NaN for a missed mask; we give the image diagonal and
    # count the case.
    pred, target = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    target[2:4, 2:4] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95, _, nsd = monai_values(pred, target, 1.0)
    assert not math.isfinite(hd95) and nsd == 0.0
    ours = boundary_scores(pred, target)
    assert ours.hd95 == math.hypot(8, 8) and ours.nsd == nsd
