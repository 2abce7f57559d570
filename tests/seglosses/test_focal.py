"""Tests of seglosses.focal against torch, torchvision, MONAI and float64 references from the formulas."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from seglosses.focal import CrossEntropyLoss, FocalLoss, cross_entropy, focal_loss

REDUCTIONS = ("mean", "sum", "none")
GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
# (N, C, *spatial) for: no spatial dims, 2-D, 3-D
SHAPES = ((5, 4), (2, 4, 3, 5), (2, 3, 2, 3, 2))

pytestmark = pytest.mark.usefixtures("single_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(shape, scale=2.0, seed=0, dtype=torch.float32, requires_grad=True):
    x = (torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype)
    return x.requires_grad_(requires_grad)


def _labels(shape, c, seed=1):
    n, *spatial = shape[:1] + shape[2:]
    return torch.randint(0, c, (n, *spatial), generator=_gen(seed))


def _grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss.sum(), x)
    return g


# ------------------------------------------------------------------------------------------------
# float64 references written naively from the formulas (valid at moderate logits)
# ------------------------------------------------------------------------------------------------


def ref_softmax_focal(x, y, gamma, alpha=None, ignore_index=None, reduction="mean"):
    """Multiclass, index targets: -alpha[y] (1 - p_y)^gamma log p_y, mean weighted by alpha[y]."""
    x = x.double()
    p = torch.softmax(x, 1)
    valid = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != ignore_index
    y0 = torch.where(valid, y, 0)
    p_y = p.gather(1, y0.unsqueeze(1)).squeeze(1)
    a = torch.ones(x.shape[1], dtype=torch.float64) if alpha is None else torch.as_tensor(alpha).double()
    w = a[y0] * valid
    loss = -w * (1 - p_y) ** gamma * torch.log(p_y)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / w.sum()


def ref_softmax_focal_soft(x, t, gamma, alpha=None, reduction="mean"):
    """Multiclass, probability targets: -sum_c alpha_c t_c (1 - p_c)^gamma log p_c, mean over pixels."""
    x, t = x.double(), t.double()
    p = torch.softmax(x, 1)
    a = torch.ones(x.shape[1], dtype=torch.float64) if alpha is None else torch.as_tensor(alpha).double()
    a = a.view(1, -1, *([1] * (x.ndim - 2)))
    loss = -(a * t * (1 - p) ** gamma * torch.log(p)).sum(1)
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


def ref_sigmoid_focal(x, t, gamma, alpha=None, reduction="mean", probs=False):
    """Binary/multilabel: alpha_t (1 - p_t)^gamma BCE, alpha per channel (dim 1) allowed."""
    x, t = x.double(), t.double()
    p = x if probs else torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    loss = (1 - p_t) ** gamma * bce
    if alpha is not None:
        a = torch.as_tensor(alpha, dtype=torch.float64)
        if a.ndim == 1:
            a = a.view(1, -1, *([1] * (x.ndim - 2)))
        loss = (a * t + (1 - a) * (1 - t)) * loss
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


# ------------------------------------------------------------------------------------------------
# gamma = 0 against torch's cross-entropies
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [None, -100, 2])
def test_gamma0_equals_cross_entropy(shape, reduction, weighted, ignore_index):
    c = shape[1]
    x = _logits(shape)
    y = _labels(shape, c)
    if ignore_index is not None:
        y.view(-1)[::3] = ignore_index
    weight = torch.rand(c, generator=_gen(7)) + 0.1 if weighted else None
    ours = focal_loss(x, y, gamma=0.0, alpha=weight, ignore_index=ignore_index, reduction=reduction)
    ref = F.cross_entropy(
        x, y, weight=weight, ignore_index=-100 if ignore_index is None else ignore_index, reduction=reduction
    )
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), atol=1e-6, rtol=1e-6)
    module = CrossEntropyLoss(weight=weight, ignore_index=ignore_index, reduction=reduction)
    torch.testing.assert_close(module(x, y), ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_gamma0_equals_cross_entropy_probability_targets(shape, reduction, weighted):
    c = shape[1]
    x = _logits(shape)
    t = torch.softmax(torch.randn(shape, generator=_gen(3)), 1)
    weight = torch.rand(c, generator=_gen(7)) + 0.1 if weighted else None
    ours = focal_loss(x, t, gamma=0.0, alpha=weight, reduction=reduction)
    ref = F.cross_entropy(x, t, weight=weight, reduction=reduction)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        CrossEntropyLoss(weight=weight, reduction=reduction)(x, t), ref, atol=1e-6, rtol=1e-6
    )


@pytest.mark.parametrize("shape", [(6,), (2, 1, 3, 4), (2, 3, 4), (2, 1, 2, 3, 2)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True])
def test_binary_gamma0_equals_bce_with_logits(shape, reduction, soft):
    x = _logits(shape)
    t = torch.rand(shape, generator=_gen(2))
    t = t if soft else t.round()
    ours = focal_loss(x, t, mode="binary", gamma=0.0, reduction=reduction)
    ref = F.binary_cross_entropy_with_logits(x, t, reduction=reduction)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_sigmoid_modes_use_weight_like_bce(reduction):
    x = _logits((2, 3, 4, 5))
    t = torch.rand(2, 3, 4, 5, generator=_gen(2)).round()
    w = torch.tensor([0.5, 2.0, 1.5])
    ours = CrossEntropyLoss(mode="multilabel", weight=w, reduction=reduction)(x, t)
    ref = F.binary_cross_entropy_with_logits(x, t, weight=w.view(1, 3, 1, 1), reduction=reduction)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), atol=1e-6, rtol=1e-6)
    xb = x[:, :1]
    ours_b = CrossEntropyLoss(mode="binary", weight=2.5, reduction=reduction)(xb, t[:, :1])
    ref_b = F.binary_cross_entropy_with_logits(xb, t[:, :1], weight=torch.tensor(2.5), reduction=reduction)
    torch.testing.assert_close(ours_b, ref_b, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# torchvision's sigmoid focal loss
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,shape", [("binary", (2, 1, 4, 5)), ("binary", (3, 7)), ("multilabel", (2, 3, 4, 5))]
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True])
def test_equals_torchvision_sigmoid_focal_loss(mode, shape, reduction, soft):
    x = _logits(shape, scale=3.0)
    t = torch.rand(shape, generator=_gen(2))
    t = t if soft else t.round()
    ours = focal_loss(x, t, mode=mode, gamma=2.0, alpha=0.25, reduction=reduction)
    ref = torchvision.ops.sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction=reduction)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), atol=1e-6, rtol=1e-5)
    module = FocalLoss(mode=mode, gamma=2.0, alpha=0.25, reduction=reduction)
    torch.testing.assert_close(module(x, t), ref, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# float64 references, every mode and gamma
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("from_logits", [True, False])
def test_multiclass_matches_float64_reference(shape, from_logits):
    c = shape[1]
    x = _logits(shape, requires_grad=False)
    y = _labels(shape, c)
    y.view(-1)[::4] = -1
    alpha = [0.25 + 0.5 * i for i in range(c)]
    inp = x if from_logits else torch.softmax(x, 1)
    for gamma, reduction in itertools.product(GAMMAS, REDUCTIONS):
        ours = focal_loss(
            inp, y, gamma=gamma, alpha=alpha, ignore_index=-1, reduction=reduction, from_logits=from_logits
        )
        ref = ref_softmax_focal(x, y, gamma, alpha, ignore_index=-1, reduction=reduction)
        torch.testing.assert_close(ours.double(), ref, atol=2e-6, rtol=2e-5)


@pytest.mark.parametrize("from_logits", [True, False])
def test_multiclass_probability_targets_match_float64_reference(from_logits):
    x = _logits((2, 4, 3, 5), requires_grad=False)
    t = torch.softmax(3 * torch.randn(2, 4, 3, 5, generator=_gen(4)), 1)
    alpha = [0.5, 1.0, 2.0, 0.1]
    inp = x if from_logits else torch.softmax(x, 1)
    for gamma, reduction in itertools.product(GAMMAS, REDUCTIONS):
        ours = focal_loss(inp, t, gamma=gamma, alpha=alpha, reduction=reduction, from_logits=from_logits)
        ref = ref_softmax_focal_soft(x, t, gamma, alpha, reduction=reduction)
        torch.testing.assert_close(ours.double(), ref, atol=2e-6, rtol=2e-5)


@pytest.mark.parametrize(
    "mode,shape,alpha",
    [
        ("binary", (2, 1, 3, 5), 0.3),
        ("binary", (4, 6), None),
        ("binary", (5,), 0.75),
        ("multilabel", (2, 3, 4, 5), [0.2, 0.5, 0.9]),
        ("multilabel", (2, 3, 2, 2, 3), 0.25),
        ("multilabel", (6, 3), None),
    ],
)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("from_logits", [True, False])
def test_sigmoid_matches_float64_reference(mode, shape, alpha, soft, from_logits):
    x = _logits(shape, requires_grad=False)
    t = torch.rand(shape, generator=_gen(2))
    t = t if soft else t.round()
    inp = x if from_logits else torch.sigmoid(x)
    for gamma, reduction in itertools.product(GAMMAS, REDUCTIONS):
        ours = focal_loss(
            inp, t, mode=mode, gamma=gamma, alpha=alpha, reduction=reduction, from_logits=from_logits
        )
        ref = ref_sigmoid_focal(x, t, gamma, alpha, reduction=reduction)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours.double(), ref, atol=2e-6, rtol=2e-5)


def test_pinned_values():
    """Hand-computed numbers (pins the formula, not just agreement with another implementation)."""
    # multiclass: logits (0, ln 3) -> p = (1/4, 3/4); target 1, gamma 2: -(1/4)^2 ln(3/4)
    x = torch.tensor([[0.0, math.log(3.0)]])
    expected = -(0.25**2) * math.log(0.75)
    assert focal_loss(x, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-6)
    # alpha scales "sum" but cancels in "mean"
    assert focal_loss(x, torch.tensor([1]), alpha=[1.0, 3.0], reduction="sum").item() == pytest.approx(
        3 * expected, rel=1e-6
    )
    assert focal_loss(x, torch.tensor([1]), alpha=[1.0, 3.0]).item() == pytest.approx(expected, rel=1e-6)
    # binary: logit 0 -> p = 1/2, t = 1, gamma 2, alpha 0.25: 0.25 * 0.25 * ln 2
    xb = torch.zeros(1, 1)
    assert focal_loss(xb, torch.ones(1, 1), mode="binary", alpha=0.25).item() == pytest.approx(
        0.0625 * math.log(2.0), rel=1e-6
    )


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize(
    "case",
    [
        "multiclass",
        "multiclass_ignore",
        "multiclass_soft",
        "binary",
        "binary_soft",
        "multilabel",
        "multiclass_probs",
        "multiclass_probs_soft",
        "binary_probs",
    ],
)
def test_gradcheck(gamma, case):
    x = _logits((2, 3, 2, 3), dtype=torch.float64, requires_grad=False)
    kwargs = {"gamma": gamma, "reduction": "sum"}
    if case.startswith("multiclass"):
        if case.endswith("soft"):
            target = torch.softmax(torch.randn(2, 3, 2, 3, generator=_gen(5), dtype=torch.float64), 1)
        else:
            target = _labels((2, 3, 2, 3), 3)
            kwargs["alpha"] = [0.5, 1.0, 2.0]
        if case == "multiclass_ignore":
            target.view(-1)[::3] = 255
            kwargs.update(ignore_index=255, reduction="mean")
        if "probs" in case:
            x = torch.softmax(x, 1)
            kwargs["from_logits"] = False
    else:
        mode = case.split("_")[0]
        if mode == "binary":
            x = x[:, :1].contiguous()
        target = torch.rand(x.shape, generator=_gen(6), dtype=torch.float64)
        if not case.endswith("soft"):
            target = target.round()
        kwargs.update(mode=mode, alpha=[0.2, 0.6, 0.7] if mode == "multilabel" else 0.4)
        if case.endswith("probs"):
            x = torch.sigmoid(x)
            kwargs["from_logits"] = False
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: focal_loss(inp, target, **kwargs), (x,))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("magnitude", [100.0, 1e4])
@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_finite_at_extreme_logits(gamma, magnitude, mode):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        _check_extreme_logits(gamma, dtype, magnitude, mode)


def _check_extreme_logits(gamma, dtype, magnitude, mode):
    # every sign combination of confident logits: right and wrong predictions, easy and hard pixels
    if mode == "multiclass":
        # pixels (columns): confident right, confident wrong (gap 2 * magnitude), right with a tie below
        pixels = torch.tensor([[1.0, -1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 1.0]])
        x = (pixels.T * magnitude).view(1, 4, 3).to(dtype).requires_grad_()
        target = torch.tensor([[0, 1, 3]])
    else:
        c = 1 if mode == "binary" else 2
        x = torch.tensor([1.0, -1.0, 1.0, -1.0]).repeat(c).view(1, c, 4) * magnitude
        x = x.to(dtype).requires_grad_()
        target = torch.tensor([1.0, 1.0, 0.0, 0.0]).repeat(c).view(1, c, 4)
    loss = focal_loss(x, target, mode=mode, gamma=gamma, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    assert g.dtype == dtype
    # confident right pixels cost nothing; confident wrong ones cost about the logit gap
    if mode == "multiclass":
        assert loss[0, 0].item() == pytest.approx(0.0, abs=1e-30)
        assert g[0, :, 0].abs().max().item() == pytest.approx(0.0, abs=1e-30)
        assert loss[0, 1].item() == pytest.approx(2 * magnitude, rel=1e-2)
        assert loss[0, 2].item() == pytest.approx(0.0, abs=1e-30)
        # wrong pixel: the gradient is softmax - onehot = +1 on the predicted class, -1 on the target
        assert g[0, 0, 1].float().item() == pytest.approx(1.0)
        assert g[0, 1, 1].float().item() == pytest.approx(-1.0)
    else:
        assert loss[0, 0, 0].item() == pytest.approx(0.0, abs=1e-30)
        assert loss[0, 0, 3].item() == pytest.approx(0.0, abs=1e-30)
        assert loss[0, 0, 1].item() == pytest.approx(magnitude, rel=1e-2)
        # the gradient of a confident wrong prediction is -1 (t = 1) or +1 (t = 0) for every gamma
        assert g[0, 0, 1].float().item() == pytest.approx(-1.0, rel=1e-2)
        assert g[0, 0, 2].float().item() == pytest.approx(1.0, rel=1e-2)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_half_precision_computed_in_float32(gamma):
    x = _logits((2, 4, 3, 3), requires_grad=False)
    y = _labels((2, 4, 3, 3), 4)
    ref = focal_loss(x.to(torch.bfloat16).float(), y, gamma=gamma)
    for dtype in (torch.float16, torch.bfloat16):
        out = focal_loss(x.to(dtype), y, gamma=gamma)
        assert out.dtype == torch.float32
        if dtype == torch.bfloat16:
            torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("mode", ["multiclass", "multiclass_soft", "binary", "multilabel"])
def test_probabilities_finite_at_zero_and_one(gamma, mode):
    if mode.startswith("multiclass"):
        p = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).T.reshape(1, 3, 3)
        target = torch.tensor([[0, 0, 2]])
        if mode == "multiclass_soft":
            target = torch.eye(3)[[0, 0, 2]].T.reshape(1, 3, 3)
        mode = "multiclass"
    else:
        c = 1 if mode == "binary" else 2
        p = torch.tensor([1.0, 0.0, 1.0, 0.0]).repeat(c).view(1, c, 4)
        target = torch.tensor([1.0, 1.0, 0.0, 0.0]).repeat(c).view(1, c, 4)
    p.requires_grad_()
    loss = focal_loss(p, target, mode=mode, gamma=gamma, reduction="none", from_logits=False)
    (g,) = torch.autograd.grad(loss.sum(), p)
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    # a certain right answer costs 0, a certain wrong one costs 100 (log clamped at -100)
    flat = loss.flatten()
    assert flat.min().item() == 0.0 and flat.max().item() == pytest.approx(100.0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("mode", ["multiclass", "multiclass_soft", "binary", "multilabel"])
def test_probabilities_equal_logits_path(gamma, mode):
    shape = (2, 1, 3, 4) if mode == "binary" else (2, 3, 3, 4)
    x = _logits(shape)
    if mode == "multiclass":
        target = _labels(shape, 3)
    elif mode == "multiclass_soft":
        target = torch.softmax(torch.randn(shape, generator=_gen(3)), 1)
    else:
        target = torch.rand(shape, generator=_gen(3))
    m = "multiclass" if mode.startswith("multiclass") else mode
    probs = torch.softmax(x, 1) if m == "multiclass" else torch.sigmoid(x)
    ours = focal_loss(probs, target, mode=m, gamma=gamma, from_logits=False)
    ref = focal_loss(x, target, mode=m, gamma=gamma)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # chain rule through softmax/sigmoid gives the same gradient w.r.t. the logits
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# ignore_index
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("from_logits", [True, False])
def test_ignored_pixels_contribute_nothing(gamma, from_logits):
    x = _logits((2, 4, 3, 5), requires_grad=False)
    inp = (x if from_logits else torch.softmax(x, 1)).requires_grad_()
    y = _labels((2, 4, 3, 5), 4)
    ignored = torch.rand(2, 3, 5, generator=_gen(9)) < 0.4
    y_ign = y.masked_fill(ignored, 255)
    alpha = [1.0, 2.0, 0.5, 3.0]
    kw = {"gamma": gamma, "alpha": alpha, "from_logits": from_logits}
    none = focal_loss(inp, y_ign, ignore_index=255, reduction="none", **kw)
    assert (none[ignored] == 0).all()
    torch.testing.assert_close(none[~ignored], focal_loss(inp, y, reduction="none", **kw)[~ignored])
    # "mean" equals the alpha-weighted mean over the kept pixels only
    mean = focal_loss(inp, y_ign, ignore_index=255, **kw)
    w = torch.tensor(alpha)[y][~ignored]
    torch.testing.assert_close(mean, none[~ignored].sum() / w.sum())
    g = _grad(mean, inp)
    assert (g.permute(0, 2, 3, 1)[ignored] == 0).all()
    assert (g.permute(0, 2, 3, 1)[~ignored] != 0).any()
    # an ignore_index that matches no pixel changes nothing (MONAI 1.6.1 scales by C here)
    torch.testing.assert_close(focal_loss(inp, y, ignore_index=255, **kw), focal_loss(inp, y, **kw))


def test_sigmoid_ignore_index_is_per_element():
    x = _logits((2, 3, 4, 4))
    t = torch.rand(2, 3, 4, 4, generator=_gen(2)).round()
    ignored = torch.rand(2, 3, 4, 4, generator=_gen(9)) < 0.3
    t_ign = t.masked_fill(ignored, -1)
    mean = focal_loss(x, t_ign, mode="multilabel", alpha=0.25, ignore_index=-1)
    full = focal_loss(x, t, mode="multilabel", alpha=0.25, reduction="none")
    torch.testing.assert_close(mean, full[~ignored].mean())
    g = _grad(mean, x)
    assert (g[ignored] == 0).all() and (g[~ignored] != 0).all()


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_all_ignored_mean_is_zero_not_nan(mode, gamma):
    x = _logits((2, 3, 4))
    target = torch.full((2, 4), 7) if mode == "multiclass" else torch.full((2, 3, 4), 7.0)
    loss = focal_loss(x, target, mode=mode, gamma=gamma, ignore_index=7)
    assert loss.item() == 0.0
    assert (_grad(loss, x) == 0).all()
    assert focal_loss(x, target, mode=mode, gamma=gamma, ignore_index=7, reduction="sum").item() == 0.0


# ------------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.01, 50.0),
    gamma=st.floats(0.01, 6.0),
    mode=st.sampled_from(["multiclass", "binary", "multilabel"]),
    soft=st.booleans(),
)
def test_property_non_negative_and_at_most_cross_entropy(seed, scale, gamma, mode, soft):
    g = _gen(seed)
    c = 1 if mode == "binary" else 3
    x = torch.randn(2, c, 3, 2, generator=g) * scale
    if mode == "multiclass":
        if soft:
            target = torch.softmax(torch.randn(2, c, 3, 2, generator=g), 1)
        else:
            target = torch.randint(0, c, (2, 3, 2), generator=g)
    else:
        target = torch.rand(2, c, 3, 2, generator=g)
        target = target if soft else target.round()
    fl = focal_loss(x, target, mode=mode, gamma=gamma, reduction="none")
    ce = focal_loss(x, target, mode=mode, gamma=0.0, reduction="none")
    assert (fl >= 0).all() and (ce >= 0).all()
    assert (fl <= ce + 1e-6 * (1 + ce)).all()


# ------------------------------------------------------------------------------------------------
# MONAI: its published test values, and MONAI called as a peer reference
# ------------------------------------------------------------------------------------------------

# MONAI tests/losses/test_focal_loss.py: logits (1, 3, 2, 2), labels [[0, 1], [2, 0]], gamma 2
_MONAI_X = torch.tensor([[[[1.0, 1.0], [0.5, 0.0]], [[1.0, 1.0], [0.5, 0.0]], [[1.0, 1.0], [0.5, 0.0]]]])
_MONAI_Y = torch.tensor([[[0, 1], [2, 0]]])
_MONAI_ONEHOT = F.one_hot(_MONAI_Y, 3).permute(0, 3, 1, 2).float()


def test_monai_published_values_sigmoid():
    # MONAI's sigmoid focal on one-hot labels is our multilabel mode (mean over all elements)
    assert focal_loss(_MONAI_X, _MONAI_ONEHOT, mode="multilabel").item() == pytest.approx(0.34959, abs=1e-4)
    assert focal_loss(_MONAI_X, _MONAI_ONEHOT, mode="multilabel", alpha=0.8).item() == pytest.approx(
        0.08423, abs=1e-4
    )
    expected_none = torch.tensor(
        [
            [
                [[0.02266, 0.70187], [0.37741, 0.17329]],
                [[0.70187, 0.02266], [0.37741, 0.17329]],
                [[0.70187, 0.70187], [0.06757, 0.17329]],
            ]
        ]
    )
    torch.testing.assert_close(
        focal_loss(_MONAI_X, _MONAI_ONEHOT, mode="multilabel", reduction="none"),
        expected_none,
        atol=1e-4,
        rtol=1e-4,
    )
    # MONAI test_foreground: background channel all ones but one pixel
    bg, fg = torch.ones(1, 1, 5, 5), torch.zeros(1, 1, 5, 5)
    target = torch.cat((bg, fg), 1)
    target[:, 0, 2, 2], target[:, 1, 2, 2] = 0, 1
    fgbg = focal_loss(torch.cat((bg, fg), 1), target, mode="multilabel")
    assert fgbg.item() == pytest.approx(0.1116, abs=1e-3)


def test_monai_published_values_softmax():
    # MONAI's softmax "mean" averages over N*C*H*W class terms; ours averages over N*H*W pixels
    assert focal_loss(_MONAI_X, _MONAI_Y).item() / 3 == pytest.approx(0.16276, abs=1e-4)
    # MONAI's scalar alpha=0.8 with softmax weighs class 0 by 0.2 and the others by 0.8
    ours = focal_loss(_MONAI_X, _MONAI_Y, alpha=[0.2, 0.8, 0.8], reduction="sum").item()
    ours /= _MONAI_ONEHOT.numel()
    assert ours == pytest.approx(0.08138, abs=1e-4)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_monai_as_peer_reference(gamma):
    monai = pytest.importorskip("monai")  # dev dependency; imported here since it takes seconds
    x = _logits((2, 4, 3, 5), requires_grad=False)
    y = _labels((2, 4, 3, 5), 4)
    alpha = [0.1, 0.2, 0.3, 0.4]
    peer = monai.losses.FocalLoss(
        to_onehot_y=True, use_softmax=True, gamma=gamma, alpha=alpha, reduction="none"
    )
    torch.testing.assert_close(
        focal_loss(x, y, gamma=gamma, alpha=alpha, reduction="none"),
        peer(x, y.unsqueeze(1)).sum(1),
        atol=1e-6,
        rtol=1e-5,
    )
    t = torch.rand(2, 4, 3, 5, generator=_gen(2)).round()
    peer = monai.losses.FocalLoss(gamma=gamma, alpha=0.25)
    assert focal_loss(x, t, mode="multilabel", gamma=gamma, alpha=0.25).item() == pytest.approx(
        peer(x, t).item(), rel=1e-5
    )


# ------------------------------------------------------------------------------------------------
# modules, shapes, memory
# ------------------------------------------------------------------------------------------------


def test_module_gamma_is_mutable_and_matches_functional():
    x = _logits((2, 4, 3, 3))
    y = _labels((2, 4, 3, 3), 4)
    loss = FocalLoss(gamma=2.0, alpha=[1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(loss(x, y), focal_loss(x, y, gamma=2.0, alpha=[1.0, 2.0, 3.0, 4.0]))
    loss.gamma = 0.0
    torch.testing.assert_close(loss(x, y), F.cross_entropy(x, y, weight=torch.tensor([1.0, 2.0, 3.0, 4.0])))
    assert loss.gamma == 0.0
    assert isinstance(CrossEntropyLoss(), FocalLoss)
    assert CrossEntropyLoss().gamma == 0.0
    with pytest.raises(ValueError, match="gamma must be >= 0"):  # checked when set, as at construction
        loss.gamma = -1.0
    assert loss.gamma == 0.0


def test_module_alpha_follows_dtype_and_device_moves():
    loss = FocalLoss(alpha=[1.0, 2.0, 3.0]).double()
    assert loss.alpha.dtype == torch.float64
    x = _logits((2, 3, 4), dtype=torch.float64)
    y = _labels((2, 3, 4), 3)
    assert loss(x, y).dtype == torch.float64
    assert loss.state_dict() == {}


@pytest.mark.parametrize(
    "mode,input_shape,target_shape,out_shape",
    [
        ("multiclass", (2, 4, 3, 5), (2, 3, 5), (2, 3, 5)),
        ("multiclass", (2, 4, 3, 5), (2, 1, 3, 5), (2, 3, 5)),
        ("multiclass", (2, 4), (2,), (2,)),
        ("binary", (2, 3, 5), (2, 3, 5), (2, 3, 5)),
        ("binary", (2, 1, 3, 5), (2, 1, 3, 5), (2, 1, 3, 5)),
        ("multilabel", (2, 4, 3, 2, 2), (2, 4, 3, 2, 2), (2, 4, 3, 2, 2)),
    ],
)
def test_reduction_none_shapes(mode, input_shape, target_shape, out_shape):
    x = torch.randn(input_shape)
    target = torch.randint(0, 4, target_shape) if mode == "multiclass" else torch.rand(target_shape).round()
    assert focal_loss(x, target, mode=mode, reduction="none").shape == out_shape
    assert focal_loss(x, target, mode=mode).shape == ()


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_hot_paths_save_one_input_sized_tensor(mode):
    shape = (2, 1, 8, 8) if mode == "binary" else (2, 5, 8, 8)
    x = torch.randn(shape, requires_grad=True)
    target = torch.randint(0, 5, (2, 8, 8)) if mode == "multiclass" else torch.rand(shape).round()
    saved: list[int] = []

    def pack(t):
        # scalars (e.g. the divisor of "mean") aside, only float tensors count
        saved.append(t.numel() if t.is_floating_point() and t.numel() > 1 else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = focal_loss(x, target, mode=mode, gamma=0.5, alpha=0.25, reduction="mean")
    assert sum(saved) <= x.numel()
    loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_empty_batch_gives_zero(mode):
    shape = (0, 4, 4) if mode == "binary" else (0, 3, 4, 4)
    x = torch.randn(shape, requires_grad=True)
    target = torch.zeros(0, 4, 4, dtype=torch.long) if mode == "multiclass" else torch.zeros(shape)
    assert focal_loss(x, target, mode=mode).item() == 0.0
    assert focal_loss(x, target, mode=mode, reduction="none").numel() == 0
    focal_loss(x, target, mode=mode, gamma=0.5).backward()
    assert x.grad.shape == x.shape


def test_no_grad_inputs_work():
    x = _logits((2, 3, 4), requires_grad=False)
    y = _labels((2, 3, 4), 3)
    with torch.no_grad():
        assert torch.isfinite(focal_loss(x, y, gamma=0.5))


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------

_X = torch.linspace(-2.0, 2.0, 24).reshape(2, 3, 4)
_Y = torch.randint(0, 3, (2, 4))
_T = torch.rand(2, 3, 4).round()


@pytest.mark.parametrize(
    "kwargs,target,match",
    [
        ({"gamma": -0.5}, _Y, "gamma must be >= 0"),
        ({"gamma": float("nan")}, _Y, "gamma must be a finite number >= 0, got nan"),
        ({"gamma": float("inf")}, _Y, "gamma must be a finite number >= 0, got inf"),
        ({"gamma": "2"}, _Y, "gamma must be a finite number >= 0, got '2'"),
        ({"alpha": [1.0, 2.0]}, _Y, r"one value per class \(3\)"),
        ({"alpha": [1.0, -2.0, 1.0]}, _Y, "alpha must be finite and >= 0"),
        ({"alpha": [[1.0, 2.0, 3.0]]}, _Y, "1-D"),
        ({"alpha": "abc"}, _Y, "alpha must be None, a number"),
        ({"alpha": 1.5, "mode": "multilabel"}, _T, r"must lie in \[0, 1\]"),
        ({"alpha": [0.1, 0.2], "mode": "multilabel"}, _T, r"one value per class \(3\)"),
        ({"mode": "softmax"}, _Y, "mode must be one of"),
        ({"reduction": "avg"}, _Y, "reduction must be one of"),
        ({}, torch.randint(0, 3, (2, 5)), r"target must have shape \(N, \*\)"),
        ({}, torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0]]), "outside"),
        ({}, torch.rand(2, 4), "multiclass target must be int64"),
        ({"ignore_index": 255}, torch.softmax(torch.randn(2, 3, 4), 1), "ignore_index applies"),
        ({"mode": "multilabel"}, torch.rand(2, 3, 5), "multilabel target must have the input's shape"),
        ({"mode": "multilabel"}, torch.rand(2, 3, 4) * 2, r"must lie in \[0, 1\]"),
        ({"from_logits": False}, _Y, "from_logits=False expects probabilities"),
        ({}, torch.randint(0, 3, (2, 4)).float().requires_grad_(), "requires grad"),
    ],
)
def test_value_errors(kwargs, target, match):
    with pytest.raises(ValueError, match=match):
        focal_loss(_X, target, **kwargs)


def test_binary_alpha_errors():
    x, t = torch.randn(2, 4), torch.rand(2, 4).round()
    with pytest.raises(ValueError, match=r"binary alpha must lie in \[0, 1\]|must lie in \[0, 1\]"):
        focal_loss(x, t, mode="binary", alpha=1.2)
    with pytest.raises(ValueError, match="binary alpha must be a single number"):
        focal_loss(x, t, mode="binary", alpha=[0.2, 0.3])
    with pytest.raises(ValueError, match="binary target must have the input's shape"):
        focal_loss(x, torch.rand(2, 5).round(), mode="binary")


def test_module_errors_at_construction():
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        FocalLoss(mode="sigmoid")
    with pytest.raises(ValueError, match="reduction must be one of"):
        CrossEntropyLoss(reduction="batchmean")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        FocalLoss(mode="binary", alpha=2.0)
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        CrossEntropyLoss(weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="ignore_index must be an int"):
        FocalLoss(ignore_index=1.5)
    ce = CrossEntropyLoss()
    with pytest.raises(ValueError, match="gamma fixed at 0"):
        ce.gamma = 2.0


# ------------------------------------------------------------------------------------------------
# label smoothing
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [None, 2])
@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_cross_entropy_label_smoothing_equals_torch(shape, reduction, weighted, ignore_index, eps):
    c = shape[1]
    x = _logits(shape, dtype=torch.float64)
    y = _labels(shape, c)
    if ignore_index is not None:
        y.view(-1)[::3] = ignore_index
    weight = torch.rand(c, generator=_gen(7), dtype=torch.float64) + 0.1 if weighted else None
    options = dict(weight=weight, reduction=reduction, label_smoothing=eps)
    ours = cross_entropy(x, y, ignore_index=ignore_index, **options)
    ref = F.cross_entropy(x, y, ignore_index=-100 if ignore_index is None else ignore_index, **options)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(_grad(ours, x), _grad(ref, x))
    module = CrossEntropyLoss(ignore_index=ignore_index, **options)
    torch.testing.assert_close(module(x.float(), y), ref.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_label_smoothing_probability_targets_equal_torch(weighted):
    x = _logits((2, 4, 3, 5), dtype=torch.float64)
    t = torch.softmax(torch.randn(2, 4, 3, 5, generator=_gen(3), dtype=torch.float64), 1)
    weight = torch.rand(4, generator=_gen(7), dtype=torch.float64) + 0.1 if weighted else None
    for reduction in REDUCTIONS:
        ours = cross_entropy(x, t, weight=weight, reduction=reduction, label_smoothing=0.2)
        torch.testing.assert_close(ours, F.cross_entropy(x, t, weight=weight, reduction=reduction,
                                                         label_smoothing=0.2))  # fmt: skip


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_sigmoid_label_smoothing_is_bce_of_the_smoothed_target(mode):
    shape = (2, 1, 3, 4) if mode == "binary" else (2, 3, 3, 4)
    x = _logits(shape, dtype=torch.float64)
    t = torch.rand(shape, generator=_gen(2), dtype=torch.float64).round()
    smoothed = t * 0.8 + 0.1
    ours = cross_entropy(x, t, mode=mode, label_smoothing=0.2, reduction="none")
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(x, smoothed, reduction="none"))
    for gamma in (0.5, 2.0):
        torch.testing.assert_close(
            focal_loss(x, t, mode=mode, gamma=gamma, alpha=0.25, label_smoothing=0.2),
            ref_sigmoid_focal(x, smoothed, gamma, alpha=0.25),
        )


def ref_smoothed_focal(x, y, gamma, eps, alpha=None, ignore_index=None, reduction="mean"):
    """The documented formula: t = (1 - eps) one_hot(y) + eps / C (0 at ignored pixels),
    -sum_c alpha_c t_c (1 - p_c)^gamma log p_c per pixel; "mean" divides by the sum of alpha[y] over the
    kept pixels."""
    x = x.double()
    c = x.shape[1]
    valid = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != ignore_index
    y0 = torch.where(valid, y, 0)
    t = (1 - eps) * F.one_hot(y0, c).movedim(-1, 1).double() + eps / c
    t = t * valid.unsqueeze(1)
    a = torch.ones(c, dtype=torch.float64) if alpha is None else torch.as_tensor(alpha).double()
    a = a.view(1, -1, *([1] * (x.ndim - 2)))
    p = torch.softmax(x, 1)
    loss = -(a * t * (1 - p) ** gamma * torch.log(p)).sum(1)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / (a.flatten()[y0] * valid).sum()


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("from_logits", [True, False])
def test_focal_label_smoothing_matches_the_documented_formula(gamma, reduction, from_logits):
    x = _logits((2, 4, 3, 5), dtype=torch.float64)
    y = _labels((2, 4, 3, 5), 4)
    y.view(-1)[::4] = 255
    alpha = [0.5, 1.0, 2.0, 1.5]
    inp = x if from_logits else torch.softmax(x, 1)
    ours = focal_loss(inp, y, gamma=gamma, alpha=alpha, ignore_index=255, reduction=reduction,
                      label_smoothing=0.1, from_logits=from_logits)  # fmt: skip
    ref = ref_smoothed_focal(x, y, gamma, 0.1, alpha=alpha, ignore_index=255, reduction=reduction)
    torch.testing.assert_close(ours, ref)
    if from_logits:
        torch.testing.assert_close(_grad(ours, x), _grad(ref, x))


def test_focal_label_smoothing_gradcheck_and_extreme_logits():
    x = _logits((2, 3, 2, 3), dtype=torch.float64)
    y = _labels((2, 3, 2, 3), 3)
    for gamma in (0.5, 2.0):
        fn = functools.partial(focal_loss, target=y, gamma=gamma, label_smoothing=0.1)
        assert torch.autograd.gradcheck(fn, (x,))
    for dtype, scale in itertools.product((torch.float32, torch.float16, torch.bfloat16), (100.0, 1e4)):
        z = (torch.sign(x.detach()) * scale).to(dtype).requires_grad_(True)
        for gamma, mode in itertools.product((0.0, 0.5, 2.0), ("multiclass", "binary")):
            target = y if mode == "multiclass" else (y > 0).double()[:, None].expand(-1, 3, -1, -1)[:, :1]
            inp = z if mode == "multiclass" else z[:, :1]
            loss = focal_loss(inp, target, mode=mode, gamma=gamma, label_smoothing=0.1)
            (grad,) = torch.autograd.grad(loss, z)
            assert torch.isfinite(loss) and torch.isfinite(grad).all(), (dtype, scale, gamma, mode)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.1", True])
def test_label_smoothing_out_of_range_raises(bad):
    with pytest.raises(ValueError, match=r"label_smoothing must be (a finite number )?in \[0, 1\]"):
        focal_loss(_X, _Y, label_smoothing=bad)
    with pytest.raises(ValueError, match=r"label_smoothing must be (a finite number )?in \[0, 1\]"):
        CrossEntropyLoss(label_smoothing=bad)
