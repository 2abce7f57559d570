"""Tests of seglosses.tversky against a float64 reference written from the formula, the Dice equivalence,
gradients, extreme logits and argument errors."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from seglosses import DiceLoss, TverskyLoss, dice_loss, tversky_loss
from tests.seglosses.references import CASES, SPATIAL, dense_reference

pytestmark = pytest.mark.usefixtures("single_thread")

N, C = 3, 4


def make_case(mode: str, spatial: tuple[int, ...], ignore: str, seed: int, n: int = N, soft: bool = False):
    """Logits and a target; ignore: "none", "class" (a valid class id, multiclass only) or "255"."""
    gen = torch.Generator().manual_seed(seed)
    if mode == "multiclass":
        x = torch.randn(n, C, *spatial, generator=gen, dtype=torch.float64) * 2
        if soft:
            return x, torch.softmax(torch.randn(x.shape, generator=gen, dtype=torch.float64), 1), None
        y = torch.randint(0, C, (n, *spatial), generator=gen)
        if ignore == "class":
            return x, y, 1
        if ignore == "255":
            return x, torch.where(torch.rand(y.shape, generator=gen) < 0.3, 255, y), 255
        return x, y, None
    shape = (n, 1 if mode == "binary" else C, *spatial)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2
    t = torch.rand(shape, generator=gen, dtype=torch.float64)
    t = t if soft else (t < 0.4).double()
    if ignore == "255":
        return x, torch.where(torch.rand(shape, generator=gen, dtype=torch.float64) < 0.3, 255.0, t), 255
    return x, t, None


def reference_tversky(x, t, *, mode, alpha=0.5, beta=0.5, gamma=1.0, smooth=1.0, class_weights=None,
                      ignore_index=None, per_image=False, include_background=True, from_logits=True,
                      reduction="mean"):  # fmt: skip
    """TI = (TP + s) / (TP + alpha FP + beta FN + s), loss (1 - TI)^gamma, written out in float64 with a
    one-hot target and a 0/1 mask per element."""
    x, p, g, v = dense_reference(x, t, mode, ignore_index, from_logits=from_logits)
    num_classes = x.shape[1]
    dims = [d for d in range(x.ndim) if d >= 2 or (d == 0 and not per_image)]

    def total(values):
        return values.sum(dims) if dims else values

    tp, fp, fn = total(p * g * v), total(p * (1 - g) * v), total((1 - p) * g * v)
    denominator = tp + alpha * fp + beta * fn + smooth
    ti = torch.where(denominator == 0, 1.0, (tp + smooth) / torch.where(denominator == 0, 1.0, denominator))
    loss = (1 - ti).clamp_min(0) ** gamma
    w = torch.ones(num_classes, dtype=torch.float64) if class_weights is None else torch.tensor(class_weights)
    w = w.double().clone()
    if not include_background and mode != "binary":
        w[0] = 0
    if mode == "multiclass" and ignore_index is not None and 0 <= ignore_index < num_classes:
        w[ignore_index] = 0
    loss = loss * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (w.sum() * (x.shape[0] if per_image else 1))


@pytest.mark.parametrize(("mode", "dims", "ignore"), CASES)
def test_matches_float64_reference(mode, dims, ignore):
    x, t, ignore_index = make_case(mode, SPATIAL[dims], ignore, seed=len(dims) + len(ignore))
    options = itertools.product(
        ((0.5, 0.5), (0.3, 0.7), (1.0, 0.0)),  # alpha, beta
        (1.0, 0.75, 2.0),  # gamma
        (False, True),  # per_image
        (None, [0.5, 2.0, 1.0, 3.0]),  # class_weights
    )
    for i, ((alpha, beta), gamma, per_image, weights) in enumerate(options):
        if mode == "binary" and weights is not None:
            weights = [2.0]
        kwargs = dict(
            mode=mode, alpha=alpha, beta=beta, gamma=gamma, per_image=per_image, class_weights=weights,
            ignore_index=ignore_index, reduction=("none", "mean", "sum")[i % 3], smooth=(1.0, 0.0)[i % 2],
            include_background=i % 4 != 3,
        )  # fmt: skip
        got = tversky_loss(x, t, **kwargs)
        assert got.dtype == torch.float64
        want = reference_tversky(x, t, **kwargs)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=str(kwargs))


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_soft_targets_and_probabilities_match_reference(mode):
    x, t, _ = make_case(mode, SPATIAL["2d"], "none", seed=5, soft=True)
    probs = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    for from_logits, per_image in itertools.product((True, False), (False, True)):
        inp = x if from_logits else probs
        kwargs = dict(mode=mode, alpha=0.3, beta=0.7, gamma=0.75, per_image=per_image,
                      from_logits=from_logits, reduction="none")  # fmt: skip
        torch.testing.assert_close(tversky_loss(inp, t, **kwargs), reference_tversky(inp, t, **kwargs))


@pytest.mark.parametrize(("mode", "dims", "ignore"), CASES)
def test_half_alpha_beta_is_dice_with_smooth_doubled(mode, dims, ignore):
    x, t, ignore_index = make_case(mode, SPATIAL[dims], ignore, seed=7)
    for smooth, per_image, reduction in itertools.product((0.0, 0.5, 1.0), (False, True), ("none", "mean")):
        kwargs = dict(mode=mode, ignore_index=ignore_index, per_image=per_image, reduction=reduction)
        torch.testing.assert_close(
            tversky_loss(x, t, alpha=0.5, beta=0.5, gamma=1.0, smooth=smooth, **kwargs),
            dice_loss(x, t, smooth=2 * smooth, **kwargs),
            rtol=1e-12, atol=1e-14,
        )  # fmt: skip
    module = TverskyLoss(mode=mode, ignore_index=ignore_index, smooth=1.0)
    torch.testing.assert_close(module(x, t), DiceLoss(mode=mode, ignore_index=ignore_index, smooth=2.0)(x, t))


def test_alpha_penalises_false_positives_and_beta_false_negatives():
    g = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]], dtype=torch.float64)  # binary target (N=1, 1, S=4)
    false_positive = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]], dtype=torch.float64)  # TP 2, FP 1, FN 0
    false_negative = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)  # TP 1, FP 0, FN 1
    options = dict(mode="binary", from_logits=False, smooth=0.0, reduction="none")
    # TI = TP / (TP + alpha FP + beta FN)
    torch.testing.assert_close(tversky_loss(false_positive, g, alpha=0.9, beta=0.1, **options),
                               torch.tensor([1 - 2 / 2.9], dtype=torch.float64))  # fmt: skip
    torch.testing.assert_close(tversky_loss(false_negative, g, alpha=0.9, beta=0.1, **options),
                               torch.tensor([1 - 1 / 1.1], dtype=torch.float64))  # fmt: skip
    torch.testing.assert_close(tversky_loss(false_negative, g, alpha=0.1, beta=0.9, **options),
                               torch.tensor([1 - 1 / 1.9], dtype=torch.float64))  # fmt: skip


def test_focal_exponent_is_applied_per_class_before_the_average():
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=9)
    plain = tversky_loss(x, y, alpha=0.3, beta=0.7, reduction="none")
    focal = tversky_loss(x, y, alpha=0.3, beta=0.7, gamma=0.75, reduction="none")
    torch.testing.assert_close(focal, plain**0.75)
    torch.testing.assert_close(tversky_loss(x, y, alpha=0.3, beta=0.7, gamma=0.75), (plain**0.75).mean())


def test_all_ignored_gives_zero_loss_and_gradient():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    for smooth, gamma in itertools.product((1.0, 0.0), (1.0, 0.75)):
        loss = tversky_loss(x, torch.full((2, 4, 4), 255), ignore_index=255, smooth=smooth, gamma=gamma)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss == 0 and (grad == 0).all()


@pytest.mark.parametrize(
    ("mode", "kwargs"),
    [
        ("multiclass", {}),
        ("multiclass", {"alpha": 0.3, "beta": 0.7, "gamma": 0.75, "ignore_index": 255, "per_image": True}),
        ("multiclass", {"gamma": 2.0, "class_weights": [1.0, 2.0, 0.5, 1.5], "smooth": 0.0}),
        ("multiclass", {"gamma": 0.75, "from_logits": False}),
        ("binary", {"gamma": 0.75, "ignore_index": 255}),
        ("multilabel", {"alpha": 0.7, "beta": 0.3, "per_image": True, "include_background": False}),
    ],
)
def test_gradcheck(mode, kwargs):
    x, t, _ = make_case(mode, (2, 2), "255" if "ignore_index" in kwargs else "none", seed=13, n=2)
    if not kwargs.get("from_logits", True):
        x = torch.softmax(x, 1) * 0.9 + 0.05
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: tversky_loss(inp, t, mode=mode, **kwargs), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_finite_at_extreme_logits(mode, dtype):
    x, t, _ = make_case(mode, SPATIAL["2d"], "none", seed=17)
    target_logits = t * 2 - 1 if mode != "multiclass" else F.one_hot(t, C).movedim(-1, 1).double() * 2 - 1
    for scale, logits in itertools.product((100.0, 1e4), (torch.sign(x), target_logits)):  # random, perfect
        z = (logits * scale).to(dtype).requires_grad_(True)
        for gamma, smooth in ((1.0, 1.0), (0.75, 1.0), (0.3, 0.0), (2.0, 0.0)):
            loss = tversky_loss(z, t, mode=mode, alpha=0.3, beta=0.7, gamma=gamma, smooth=smooth)
            (grad,) = torch.autograd.grad(loss, z)
            assert loss.dtype == torch.float32 and grad.dtype == dtype
            assert torch.isfinite(loss) and torch.isfinite(grad).all(), (scale, gamma, smooth)


def test_low_precision_matches_float32():
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=19)
    half = x.to(torch.bfloat16)
    torch.testing.assert_close(tversky_loss(half, y, gamma=0.75), tversky_loss(half.float(), y, gamma=0.75))


def test_module_options_and_buffer():
    loss = TverskyLoss(alpha=0.3, beta=0.7, gamma=0.75, class_weights=[1.0, 2.0, 1.0, 1.0])
    assert loss.class_weights.dtype == torch.float32 and not loss.state_dict()
    assert "alpha=0.3, beta=0.7, gamma=0.75" in repr(loss)
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=21)
    kwargs = dict(alpha=0.3, beta=0.7, gamma=0.75, class_weights=[1.0, 2.0, 1.0, 1.0])
    torch.testing.assert_close(loss(x.float(), y), tversky_loss(x.float(), y, **kwargs))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -0.1}, "alpha must be >= 0"),
        ({"beta": float("nan")}, "beta must be a finite number >= 0"),
        ({"gamma": 0.0}, r"gamma must be > 0, got 0.0 \(1: Tversky; 0.75: the focal Tversky"),
        ({"gamma": "1"}, "gamma must be a finite number > 0"),
        ({"smooth": -1.0}, "smooth must be >= 0"),
        ({"mode": "softmax"}, "mode must be one of"),
        ({"reduction": "avg"}, "reduction must be one of"),
        ({"ignore_index": 1.5}, "ignore_index must be an int"),
        ({"sync_ddp": 1}, "sync_ddp must be true or false"),
        ({"class_weights": [1.0, 2.0]}, r"one value per class \(4\)"),
        ({"include_background": False, "ignore_index": 1, "class_weights": [1.0, 0.0, 0.0, 0.0]}, "sum to 0"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=23)
    with pytest.raises(ValueError, match=match):
        tversky_loss(x, y, **kwargs)
    if "class_weights" not in kwargs:
        with pytest.raises(ValueError, match=match):
            TverskyLoss(**kwargs)
