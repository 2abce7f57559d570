import math
import warnings

import numpy as np
import pytest
import torch

from seglosses.class_weights import METHODS, class_weights_from_counts


def close(actual, expected, rtol=1e-6):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), rtol=rtol, atol=0)


# ---------------------------------------------------------------------------------------------- methods


def test_inverse_by_hand():
    # n = [10, 30, 60], N = 100, C = 3: N / (C n) = [100/30, 100/90, 100/180] = [10/3, 10/9, 5/9]
    w = class_weights_from_counts([10, 30, 60], "inverse", normalize=False)
    close(w, [10 / 3, 10 / 9, 5 / 9])
    # mean = (30/9 + 10/9 + 5/9) / 3 = 5/3  ->  [2, 2/3, 1/3]
    close(class_weights_from_counts([10, 30, 60], "inverse"), [2.0, 2 / 3, 1 / 3])


def test_inverse_of_balanced_counts_is_one_without_normalising():
    close(class_weights_from_counts([7, 7, 7, 7], "inverse", normalize=False), [1.0] * 4)


def test_inverse_sqrt_by_hand():
    # n = [1, 4, 16], N = 21, C = 3: N / (C n) = [7, 7/4, 7/16] -> sqrt = [sqrt7, sqrt7/2, sqrt7/4]
    s7 = math.sqrt(7)
    close(class_weights_from_counts([1, 4, 16], "inverse_sqrt", normalize=False), [s7, s7 / 2, s7 / 4])
    # proportional to [1, 1/2, 1/4], mean 7/12 -> [12/7, 6/7, 3/7]
    close(class_weights_from_counts([1, 4, 16], "inverse_sqrt"), [12 / 7, 6 / 7, 3 / 7])


def test_median_frequency_odd_number_of_classes():
    # f = [10/100, 20/100, 30/60] = [0.1, 0.2, 0.5]; median 0.2 -> w = [2, 1, 0.4]
    w = class_weights_from_counts([10, 20, 30], "median_frequency", image_pixel_counts=[100, 100, 60],
                                  normalize=False)
    close(w, [2.0, 1.0, 0.4])


def test_median_frequency_even_number_of_classes_uses_the_mean_of_the_middle_two():
    # f = [0.1, 0.2, 0.5, 0.8]; median = (0.2 + 0.5) / 2 = 0.35 (numpy.median; torch.median would say 0.2)
    counts, images = [10, 20, 30, 40], [100, 100, 60, 50]
    w = class_weights_from_counts(counts, "median_frequency", image_pixel_counts=images, normalize=False)
    close(w, [3.5, 1.75, 0.7, 0.4375])
    f = np.array(counts) / np.array(images)
    close(w, (np.median(f) / f).tolist())


def test_median_frequency_differs_from_inverse_frequency_when_images_differ():
    # same pixel counts, but class 0 lives in few images -> it is frequent where it appears
    counts = [10, 10]
    w = class_weights_from_counts(counts, "median_frequency", image_pixel_counts=[20, 100])
    # f = [0.5, 0.1]; median 0.3 -> [0.6, 3.0]; mean 1.8 -> [1/3, 5/3]
    close(w, [1 / 3, 5 / 3])
    close(class_weights_from_counts(counts, "inverse"), [1.0, 1.0])


def test_enet_by_hand():
    # n = [2, 98], N = 100: 1 / ln(1.02 + 0.02) = 1 / ln(1.04), 1 / ln(1.02 + 0.98) = 1 / ln(2)
    w = class_weights_from_counts([2, 98], "enet", normalize=False)
    close(w, [1 / math.log(1.04), 1 / math.log(2.0)])
    # c = 1.5: 1 / ln(1.52), 1 / ln(2.48)
    w = class_weights_from_counts([2, 98], "enet", c=1.5, normalize=False)
    close(w, [1 / math.log(1.52), 1 / math.log(2.48)])


def test_effective_number_by_hand():
    # beta = 0.5: (1 - 0.5) / (1 - 0.5^n) for n = 1, 2, 3 -> 0.5/0.5, 0.5/0.75, 0.5/0.875 = 1, 2/3, 4/7
    w = class_weights_from_counts([1, 2, 3], "effective_number", beta=0.5, normalize=False)
    close(w, [1.0, 2 / 3, 4 / 7])
    # sum 47/21, mean 47/63 -> [63/47, 42/47, 36/47]
    close(class_weights_from_counts([1, 2, 3], "effective_number", beta=0.5), [63 / 47, 42 / 47, 36 / 47])


def test_effective_number_is_accurate_for_beta_close_to_one():
    # (1 - b) / (1 - b^3) = 1 / (1 + b + b^2) ~ 1/3 (a 0/0 form in float32 arithmetic)
    beta = 1 - 1e-12
    w = class_weights_from_counts([3], "effective_number", beta=beta, normalize=False)
    close(w, [1 / (1 + beta + beta**2)], rtol=1e-6)
    # beta^n underflows to 0 for huge n: the weight is 1 - beta, finite
    w = class_weights_from_counts([1e9, 1e10], "effective_number", normalize=False)
    close(w, [1e-3, 1e-3], rtol=1e-4)


def test_effective_number_is_almost_uniform_for_pixel_counts():
    w = class_weights_from_counts([1e6, 1e7, 1e8], "effective_number", beta=0.999)
    close(w, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("method", ["inverse", "inverse_sqrt", "enet", "effective_number"])
def test_rarer_class_gets_larger_weight(method):
    w = class_weights_from_counts([5, 50, 500], method, beta=0.9)
    assert w[0] > w[1] > w[2]


# ------------------------------------------------------------------------------- inputs and normalising


@pytest.mark.parametrize(
    "counts",
    [[10, 30, 60], (10.0, 30.0, 60.0), np.array([10, 30, 60]), np.array([10, 30, 60], dtype=np.uint8),
     torch.tensor([10, 30, 60]), torch.tensor([10.0, 30.0, 60.0], dtype=torch.float64)],
)
def test_accepts_lists_numpy_and_tensors(counts):
    w = class_weights_from_counts(counts, "inverse")
    assert w.dtype == torch.float32 and w.shape == (3,)
    close(w, [2.0, 2 / 3, 1 / 3])


def test_counts_above_float32_precision_stay_exact():
    # 2**24 + 1 is not representable in float32; counting happens in float64
    n = [2**24 + 1, 2**24 - 1]
    w = class_weights_from_counts(n, "inverse", normalize=False)
    close(w, [(2**25) / (2 * (2**24 + 1)), (2**25) / (2 * (2**24 - 1))], rtol=1e-7)
    assert w[0] < 1 < w[1]


@pytest.mark.parametrize("method", METHODS)
def test_normalised_to_mean_one_over_present_classes(method):
    counts = [3, 0, 40, 700, 0, 9]
    with pytest.warns(UserWarning):
        w = class_weights_from_counts(counts, method, image_pixel_counts=[10, 0, 400, 900, 0, 90], beta=0.99)
    present = torch.tensor([c > 0 for c in counts])
    assert torch.all(w[~present] == 0)
    torch.testing.assert_close(w[present].mean(), torch.tensor(1.0))
    assert torch.isfinite(w).all() and (w[present] > 0).all()


def test_zero_count_class_gets_zero_weight_and_a_warning_naming_it():
    # present: n = [10, 30], N = 40, C = 2 (absent classes are not counted)
    # raw: [40 / 20, 40 / 60] = [2, 2/3]; mean 4/3 -> [1.5, 0.5]
    with pytest.warns(UserWarning, match=r"classes \[1, 3\] have no pixels"):
        w = class_weights_from_counts([10, 0, 30, 0], "inverse")
    close(w, [1.5, 0.0, 0.5, 0.0])
    with pytest.warns(UserWarning, match=r"\[1\]"):
        raw = class_weights_from_counts([10, 0, 30], "inverse", normalize=False)
    close(raw, [2.0, 0.0, 2 / 3])


@pytest.mark.parametrize("method", METHODS)
def test_no_warning_when_every_class_is_present(method):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        class_weights_from_counts([1, 2], method, image_pixel_counts=[4, 4])


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"median_frequency.*'bogus'"):
        class_weights_from_counts([1, 2], "bogus")


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        ([1, -2, 3], r"finite and >= 0; classes \[1\]"),
        ([1, float("nan")], r"classes \[1\]"),
        ([float("inf"), 1], r"classes \[0\]"),
        ([[1, 2], [3, 4]], r"shape \(C,\)"),
        ([], r"shape \(C,\)"),
        (5, r"shape \(C,\)"),
        ([0, 0, 0], "all zero"),
        (["a", "b"], "sequence of numbers"),
        ([True, False], "real numbers"),
    ],
)
def test_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        class_weights_from_counts(counts, "inverse")


@pytest.mark.parametrize("beta", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_beta_outside_open_unit_interval(beta):
    with pytest.raises(ValueError, match=r"beta must lie in the open interval \(0, 1\)"):
        class_weights_from_counts([1, 2], "effective_number", beta=beta)


@pytest.mark.parametrize("c", [1.0, 0.5, float("inf")])
def test_enet_constant_must_exceed_one(c):
    with pytest.raises(ValueError, match="c \\(ENet constant\\)"):
        class_weights_from_counts([1, 2], "enet", c=c)


def test_median_frequency_needs_image_pixel_counts():
    with pytest.raises(ValueError, match="needs image_pixel_counts"):
        class_weights_from_counts([1, 2], "median_frequency")


def test_median_frequency_image_counts_length_and_values():
    with pytest.raises(ValueError, match=r"one value per class \(2\), got 3"):
        class_weights_from_counts([1, 2], "median_frequency", image_pixel_counts=[4, 4, 4])
    with pytest.raises(ValueError, match=r"image_pixel_counts must be finite and >= 0"):
        class_weights_from_counts([1, 2], "median_frequency", image_pixel_counts=[4, -4])
    with pytest.raises(ValueError, match=r"violated for classes \[1\]"):
        class_weights_from_counts([1, 8], "median_frequency", image_pixel_counts=[4, 4])


def test_built_by_hydra_from_yaml():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        "_target_: seglosses.class_weights.class_weights_from_counts\n"
        "pixel_counts: [10, 20, 30, 40]\nmethod: median_frequency\n"
        "image_pixel_counts: [100, 100, 60, 50]\nnormalize: false\n"
    )
    close(instantiate(cfg), [3.5, 1.75, 0.7, 0.4375])
