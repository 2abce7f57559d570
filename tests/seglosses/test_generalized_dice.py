"""Tests of seglosses.generalized_dice against a float64 reference written from the formula and MONAI's
GeneralizedDiceLoss, the absent-class weight, gradients, extreme logits and argument errors."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

from seglosses import GeneralizedDiceLoss, generalized_dice_loss
from tests.seglosses.references import CASES, SPATIAL, dense_reference

pytestmark = pytest.mark.usefixtures("single_thread")

N, C = 3, 4


def make_case(mode, spatial, ignore, seed, n=N, soft=False):
    gen = torch.Generator().manual_seed(seed)
    if mode == "multiclass":
        x = torch.randn(n, C, *spatial, generator=gen, dtype=torch.float64) * 2
        if soft:
            return x, torch.softmax(torch.randn(x.shape, generator=gen, dtype=torch.float64) * 2, 1), None
        y = torch.randint(0, C - 1, (n, *spatial), generator=gen)  # class C - 1 absent: its weight matters
        if ignore == "class":
            return x, y, 1
        if ignore == "255":
            return x, torch.where(torch.rand(y.shape, generator=gen) < 0.3, 255, y), 255
        return x, y, None
    shape = (n, 1 if mode == "binary" else C, *spatial)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2
    t = torch.rand(shape, generator=gen, dtype=torch.float64)
    t = t if soft else (t < 0.4).double()
    if mode == "multilabel":
        t[:, -1] = 0
    if ignore == "255":
        return x, torch.where(torch.rand(shape, generator=gen, dtype=torch.float64) < 0.3, 255.0, t), 255
    return x, t, None


def reference_gdl(x, t, *, mode="multiclass", weight_type="square", smooth_nr=1e-5, smooth_dr=1e-5,
                  ignore_index=None, per_image=False, include_background=True, from_logits=True,
                  reduction="mean"):  # fmt: skip
    """1 - (2 sum_c w_c I_c + s_nr) / (sum_c w_c (P_c + G_c) + s_dr), w_c from the target volumes, absent
    classes at the largest present weight; float64, one-hot target, 0/1 mask."""
    x, p, g, v = dense_reference(x, t, mode, ignore_index, from_logits=from_logits)
    c = x.shape[1]
    include = torch.ones(c, dtype=torch.bool)
    if not include_background and mode != "binary":
        include[0] = False
    if mode == "multiclass" and ignore_index is not None and 0 <= ignore_index < c:
        include[ignore_index] = False
    losses = []
    for images in ([[i] for i in range(x.shape[0])] if per_image else [list(range(x.shape[0]))]):
        pi, gi, vi = p[images], g[images], v[images]
        dims = [0, *range(2, pi.ndim)]
        inter, pred, card = (pi * gi * vi).sum(dims), (pi * vi).sum(dims), gi.sum(dims)
        w = {"square": 1 / card**2, "simple": 1 / card, "uniform": torch.ones_like(card)}[weight_type]
        finite = torch.isfinite(w) & include
        largest = w[finite].max() if finite.any() else torch.zeros((), dtype=torch.float64)
        w = torch.where(torch.isfinite(w), w, largest) * include
        den = (w * (pred + card)).sum() + smooth_dr
        losses.append(torch.where(den > 0, 1 - (2 * (w * inter).sum() + smooth_nr) / den, 0.0))
    loss = torch.stack(losses)
    if not per_image:
        return loss[0]
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


@pytest.mark.parametrize(("mode", "dims", "ignore"), CASES)
def test_matches_float64_reference(mode, dims, ignore):
    x, t, ignore_index = make_case(mode, SPATIAL[dims], ignore, seed=len(dims) + len(ignore))
    smoothing = ((1e-5, 1e-5), (0.0, 1.0))
    options = itertools.product(("square", "simple", "uniform"), (False, True), (True, False), smoothing)
    for i, (weight_type, per_image, background, (nr, dr)) in enumerate(options):
        kwargs = dict(mode=mode, weight_type=weight_type, per_image=per_image, include_background=background,
                      smooth_nr=nr, smooth_dr=dr, ignore_index=ignore_index,
                      reduction=("none", "mean", "sum")[i % 3])  # fmt: skip
        got = generalized_dice_loss(x, t, **kwargs)
        assert got.dtype == torch.float64
        want = reference_gdl(x, t, **kwargs)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=str(kwargs))


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_soft_targets_and_probabilities_match_reference(mode):
    x, t, _ = make_case(mode, SPATIAL["2d"], "none", seed=5, soft=True)
    probs = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    for from_logits, per_image in itertools.product((True, False), (False, True)):
        inp = x if from_logits else probs
        kwargs = dict(mode=mode, per_image=per_image, from_logits=from_logits, reduction="none")
        torch.testing.assert_close(generalized_dice_loss(inp, t, **kwargs), reference_gdl(inp, t, **kwargs))


MONAI_CASES = [
    (mode, background)
    for mode in ("multiclass", "binary", "multilabel")
    for background in (True, False)
    if background or mode != "binary"  # binary mode has no background channel to drop
]


@pytest.mark.parametrize("weight_type", ["square", "simple", "uniform"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize(("mode", "include_background"), MONAI_CASES)
def test_equals_monai_generalized_dice_loss(weight_type, per_image, mode, include_background):
    monai_losses = pytest.importorskip("monai.losses")
    x, t, _ = make_case(mode, (4, 5), "none", seed=29)
    x, t = x.float(), (t if mode == "multiclass" else t.float())
    kwargs = dict(w_type=weight_type, batch=not per_image, include_background=include_background,
                  reduction="mean" if per_image else "sum")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "multiclass":
            peer_loss = monai_losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True, **kwargs)
            peer = peer_loss(x, t.unsqueeze(1))
        else:
            peer = monai_losses.GeneralizedDiceLoss(sigmoid=True, **kwargs)(x, t)
    ours = generalized_dice_loss(x, t, mode=mode, weight_type=weight_type, per_image=per_image,
                                 include_background=include_background)  # fmt: skip
    torch.testing.assert_close(ours, peer)


def test_absent_class_gets_the_largest_present_weight():
    # batch: class 0 has 3 target pixels, class 1 one, class 2 none (weights 1/9, 1, and 1 for class 2)
    p = torch.tensor(
        [[[0.5, 0.5, 0.5, 0.0], [0.2, 0.3, 0.2, 0.9], [0.3, 0.2, 0.3, 0.1]]], dtype=torch.float64
    )
    y = torch.tensor([[0, 0, 0, 1]])
    w = torch.tensor([1 / 9, 1.0, 1.0], dtype=torch.float64)
    inter = torch.tensor([1.5, 0.9, 0.0], dtype=torch.float64)
    pred, card = p[0].sum(1), torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)
    expected = 1 - (2 * (w * inter).sum()) / (w * (pred + card)).sum()
    got = generalized_dice_loss(p, y, from_logits=False, smooth_nr=0.0, smooth_dr=0.0)
    torch.testing.assert_close(got, expected)
    # the absent class's predicted mass costs: moving it to the present classes lowers the loss
    q = p.clone()
    q[0, 0] += q[0, 2]
    q[0, 2] = 0
    assert generalized_dice_loss(q, y, from_logits=False) < generalized_dice_loss(p, y, from_logits=False)


def test_perfect_prediction_and_all_ignored_give_zero():
    y = torch.randint(0, 3, (2, 4, 4))
    one_hot = F.one_hot(y, 3).movedim(-1, 1).double()
    assert generalized_dice_loss(one_hot, y, from_logits=False) == 0
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    for per_image in (False, True):
        loss = generalized_dice_loss(x, torch.full((2, 4, 4), 255), ignore_index=255, per_image=per_image)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss == 0 and (grad == 0).all()


@pytest.mark.parametrize(
    ("mode", "kwargs"),
    [
        ("multiclass", {}),
        ("multiclass", {"per_image": True, "ignore_index": 255, "weight_type": "simple"}),
        ("multiclass", {"from_logits": False, "smooth_nr": 0.0}),
        ("binary", {"ignore_index": 255}),
        ("multilabel", {"include_background": False, "per_image": True, "reduction": "none"}),
    ],
)
def test_gradcheck(mode, kwargs):
    x, t, _ = make_case(mode, (2, 3), "255" if "ignore_index" in kwargs else "none", seed=13, n=2)
    if not kwargs.get("from_logits", True):
        x = torch.softmax(x, 1) * 0.9 + 0.05 / C
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: generalized_dice_loss(inp, t, mode=mode, **kwargs), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_finite_at_extreme_logits(mode, dtype):
    x, t, _ = make_case(mode, SPATIAL["2d"], "none", seed=17)
    for scale, weight_type in itertools.product((100.0, 1e4), ("square", "simple")):
        z = (torch.sign(x) * scale).to(dtype).requires_grad_(True)
        loss = generalized_dice_loss(z, t, mode=mode, weight_type=weight_type, smooth_nr=0.0, smooth_dr=0.0)
        (grad,) = torch.autograd.grad(loss, z)
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_reduction_shapes_and_module():
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=21)
    assert generalized_dice_loss(x, y, reduction="none").shape == ()
    per_image = generalized_dice_loss(x, y, per_image=True, reduction="none")
    assert per_image.shape == (N,)
    torch.testing.assert_close(generalized_dice_loss(x, y, per_image=True), per_image.mean())
    torch.testing.assert_close(generalized_dice_loss(x, y, per_image=True, reduction="sum"), per_image.sum())
    module = GeneralizedDiceLoss(weight_type="simple", per_image=True)
    assert "weight_type='simple'" in repr(module)
    want = generalized_dice_loss(x, y, weight_type="simple", per_image=True)
    torch.testing.assert_close(module(x, y), want)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weight_type": "inverse"}, r"weight_type must be one of \('square', 'simple', 'uniform'\)"),
        ({"smooth_nr": -1.0}, "smooth_nr must be >= 0"),
        ({"smooth_dr": float("inf")}, "smooth_dr must be a finite number >= 0"),
        ({"mode": "softmax"}, "mode must be one of"),
        ({"reduction": "avg"}, "reduction must be one of"),
        ({"sync_ddp": "no"}, "sync_ddp must be true or false"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=23)
    with pytest.raises(ValueError, match=match):
        generalized_dice_loss(x, y, **kwargs)
    with pytest.raises(ValueError, match=match):
        GeneralizedDiceLoss(**kwargs)
