"""Tests of seglosses.mining (OHEM and top-k cross-entropy) against brute-force sorts of the per-pixel
cross-entropy, gradients, extreme logits and argument errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from seglosses import OhemCrossEntropyLoss, TopKCrossEntropyLoss, ohem_cross_entropy, topk_cross_entropy

pytestmark = pytest.mark.usefixtures("single_thread")

N, C = 2, 4
WEIGHT = [0.5, 2.0, 1.0, 3.0]


def make_case(mode, spatial=(4, 5), ignore=False, seed=0, soft=False, n=N):
    gen = torch.Generator().manual_seed(seed)
    if mode == "multiclass":
        x = torch.randn(n, C, *spatial, generator=gen, dtype=torch.float64) * 2
        if soft:
            return x, torch.softmax(torch.randn(x.shape, generator=gen, dtype=torch.float64) * 2, 1), None
        y = torch.randint(0, C, (n, *spatial), generator=gen)
        if ignore:
            return x, torch.where(torch.rand(y.shape, generator=gen) < 0.3, 255, y), 255
        return x, y, None
    shape = (n, 1 if mode == "binary" else C, *spatial)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2
    t = torch.rand(shape, generator=gen, dtype=torch.float64)
    t = t if soft else (t < 0.4).double()
    if ignore:
        return x, torch.where(torch.rand(shape, generator=gen, dtype=torch.float64) < 0.3, 255.0, t), 255
    return x, t, None


def pixel_ce(x, t, mode, weight=None, ignore_index=None):
    """Per-pixel (per-element) cross-entropy from torch, the counted mask and each pixel's "mean" weight."""
    if mode == "multiclass":
        w = None if weight is None else torch.tensor(weight, dtype=x.dtype)
        if t.is_floating_point():
            return F.cross_entropy(x, t, weight=w, reduction="none"), torch.ones(t.shape[:1] + t.shape[2:],
                                                                                   dtype=torch.bool), None
        ii = -100 if ignore_index is None else ignore_index
        valid = t != ii
        pixel_w = None if w is None else w[torch.where(valid, t, 0)]
        return F.cross_entropy(x, t, weight=w, ignore_index=ii, reduction="none"), valid, pixel_w
    valid = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    w = None
    if weight is not None and mode == "multilabel":
        w = torch.tensor(weight, dtype=x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
    elif weight is not None:
        w = torch.tensor(weight[0], dtype=x.dtype)
    ce = F.binary_cross_entropy_with_logits(x, torch.where(valid, t, 0.0), weight=w, reduction="none")
    return ce * valid, valid, None


def brute_force_ohem(x, t, mode, thresh, min_kept, weight=None, ignore_index=None):
    """Sort every counted pixel by its unweighted loss; keep p < thresh or rank <= K (ties at the K-th
    value kept); mean of the weighted loss with F.cross_entropy's denominators."""
    hardness, valid, _ = pixel_ce(x, t, mode, None, ignore_index)
    values, _, pixel_w = pixel_ce(x, t, mode, weight, ignore_index)
    h = hardness[valid]
    order = torch.sort(h, descending=True).values
    k = min(min_kept * x.shape[0], h.numel())
    kept = torch.exp(-h) < thresh
    if k > 0:
        kept |= h >= order[k - 1]
    denominator = kept.sum() if pixel_w is None else (pixel_w[valid] * kept).sum()
    return (values[valid] * kept).sum() / denominator if denominator > 0 else values.new_zeros(())


def brute_force_topk(x, t, mode, k, weight=None, ignore_index=None):
    values, valid, _ = pixel_ce(x, t, mode, weight, ignore_index)
    v = values[valid]
    count = math.ceil(round(k * v.numel(), 6))
    return torch.sort(v, descending=True).values[:count].mean()


# (mode, soft targets)
MODES = [("multiclass", False), ("multiclass", True), ("binary", False), ("multilabel", False)]


@pytest.mark.parametrize(("mode", "soft"), MODES)
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_ohem_matches_brute_force_sort(mode, soft, ignore, weighted):
    if soft and ignore:
        return  # probability targets have no ignore_index
    x, t, ignore_index = make_case(mode, ignore=ignore, seed=3, soft=soft)
    weight = (WEIGHT if mode != "binary" else [2.0]) if weighted else None
    for thresh, min_kept in itertools.product((0.0, 0.3, 0.7, 1.0), (0, 1, 7, 1000)):
        got = ohem_cross_entropy(x, t, mode=mode, thresh=thresh, min_kept=min_kept, weight=weight,
                                 ignore_index=ignore_index)  # fmt: skip
        want = brute_force_ohem(x, t, mode, thresh, min_kept, weight, ignore_index)
        torch.testing.assert_close(got, want, msg=f"thresh={thresh}, min_kept={min_kept}")


@pytest.mark.parametrize(("mode", "soft"), MODES)
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_topk_matches_brute_force_sort(mode, soft, ignore, weighted):
    if soft and ignore:
        return
    x, t, ignore_index = make_case(mode, ignore=ignore, seed=5, soft=soft)
    weight = (WEIGHT if mode != "binary" else [2.0]) if weighted else None
    for k in (0.01, 0.1, 0.3, 0.5, 1.0):
        got = topk_cross_entropy(x, t, mode=mode, k=k, weight=weight, ignore_index=ignore_index)
        torch.testing.assert_close(got, brute_force_topk(x, t, mode, k, weight, ignore_index), msg=f"k={k}")


def test_limits_equal_cross_entropy():
    x, y, _ = make_case("multiclass", ignore=True, seed=7)
    w = torch.tensor(WEIGHT, dtype=torch.float64)
    ce = F.cross_entropy(x, y, weight=w, ignore_index=255)
    every_pixel = ohem_cross_entropy(x, y, thresh=1.0, min_kept=10**6, weight=w, ignore_index=255)
    torch.testing.assert_close(every_pixel, ce)
    unweighted = F.cross_entropy(x, y, ignore_index=255)
    torch.testing.assert_close(topk_cross_entropy(x, y, k=1.0, ignore_index=255), unweighted)


def test_ties_at_the_kth_value():
    x = torch.zeros(1, 2, 6, dtype=torch.float64, requires_grad=True)  # every pixel: ce = log 2
    y = torch.tensor([[0, 1, 0, 1, 0, 1]])
    # OHEM keeps every tie; top-k's value is exact and its gradient is shared evenly
    assert ohem_cross_entropy(x, y, thresh=0.0, min_kept=2, reduction="none").ne(0).all()
    loss = topk_cross_entropy(x, y, k=0.5)
    torch.testing.assert_close(loss, torch.tensor(math.log(2), dtype=torch.float64))
    (grad,) = torch.autograd.grad(topk_cross_entropy(x, y, k=0.5, reduction="sum"), x)
    torch.testing.assert_close(grad.abs().sum((0, 1)), torch.full((6,), 0.5, dtype=torch.float64))
    shares = topk_cross_entropy(x, y, k=0.5, reduction="none")
    torch.testing.assert_close(shares, torch.full((1, 6), math.log(2) / 2, dtype=torch.float64))


def test_reductions_and_shapes():
    x, y, _ = make_case("multiclass", spatial=(3, 4, 2), ignore=True, seed=9)
    none = ohem_cross_entropy(x, y, thresh=0.5, min_kept=3, ignore_index=255, reduction="none")
    assert none.shape == y.shape and (none[y == 255] == 0).all()
    torch.testing.assert_close(ohem_cross_entropy(x, y, thresh=0.5, min_kept=3, ignore_index=255,
                                                  reduction="sum"), none.sum())  # fmt: skip
    xb, tb, _ = make_case("binary", spatial=(4,), seed=9)
    assert topk_cross_entropy(xb, tb, mode="binary", reduction="none").shape == xb.shape
    assert topk_cross_entropy(xb[:, 0], tb[:, 0], mode="binary", reduction="none").shape == xb[:, 0].shape


@pytest.mark.parametrize(
    ("loss_fn", "kwargs"),
    [
        (ohem_cross_entropy, {"thresh": 0.6, "min_kept": 5, "ignore_index": 255, "weight": WEIGHT}),
        (topk_cross_entropy, {"k": 0.3, "ignore_index": 255, "weight": WEIGHT}),
        (topk_cross_entropy, {"k": 0.2, "mode": "multilabel"}),
        (ohem_cross_entropy, {"thresh": 0.5, "min_kept": 3, "mode": "binary"}),
    ],
)
def test_gradcheck(loss_fn, kwargs):
    mode = kwargs.get("mode", "multiclass")
    x, t, _ = make_case(mode, spatial=(3, 3), ignore="ignore_index" in kwargs, seed=11)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: loss_fn(inp, t, **kwargs), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_finite_at_extreme_logits(mode, dtype):
    x, t, _ = make_case(mode, seed=13)
    for scale in (100.0, 1e4):
        z = (torch.sign(x) * scale).to(dtype).requires_grad_(True)
        for loss in (ohem_cross_entropy(z, t, mode=mode, min_kept=3), topk_cross_entropy(z, t, mode=mode)):
            (grad,) = torch.autograd.grad(loss, z)
            assert loss.dtype == torch.float32 and grad.dtype == dtype
            assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_nothing_counted_gives_zero():
    x = torch.randn(2, 3, 4, requires_grad=True)
    y = torch.full((2, 4), 255)
    for loss in (ohem_cross_entropy(x, y, ignore_index=255), topk_cross_entropy(x, y, ignore_index=255)):
        (grad,) = torch.autograd.grad(loss, x)
        assert loss == 0 and (grad == 0).all()


def test_modules_store_options_and_weight_buffers():
    ohem = OhemCrossEntropyLoss(thresh=0.5, min_kept=3, weight=WEIGHT, ignore_index=255)
    topk = TopKCrossEntropyLoss(k=0.2, weight=WEIGHT)
    assert ohem.weight.dtype == torch.float32 and not ohem.state_dict()
    assert "thresh=0.5, min_kept=3" in repr(ohem) and "k=0.2" in repr(topk)
    x, y, _ = make_case("multiclass", ignore=True, seed=15)
    x, w = x.float(), torch.tensor(WEIGHT)
    want = ohem_cross_entropy(x, y, thresh=0.5, min_kept=3, weight=w, ignore_index=255)
    torch.testing.assert_close(ohem(x, y), want)
    labels = y.clamp_max(3)
    torch.testing.assert_close(topk(x, labels), topk_cross_entropy(x, labels, k=0.2, weight=w))


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        ("ohem", {"thresh": 1.5}, r"thresh must be in \[0, 1\], got 1.5"),
        ("ohem", {"thresh": float("nan")}, r"thresh must be a finite number in \[0, 1\]"),
        ("ohem", {"min_kept": -1}, "min_kept must be an int >= 0"),
        ("ohem", {"min_kept": 10.0}, "min_kept must be an int >= 0"),
        ("topk", {"k": 0.0}, r"k must be in \(0, 1\], got 0.0"),
        ("topk", {"k": 1.5}, r"k must be in \(0, 1\], got 1.5"),
        ("topk", {"weight": [1.0, -1.0, 1.0, 1.0]}, "weight must be finite and >= 0"),
        ("topk", {"weight": "abc"}, "weight must be None, a number"),
        ("ohem", {"mode": "softmax"}, "mode must be one of"),
        ("topk", {"reduction": "avg"}, "reduction must be one of"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(fn, kwargs, match):
    x, y, _ = make_case("multiclass", seed=17)
    function, module = (ohem_cross_entropy, OhemCrossEntropyLoss) if fn == "ohem" else (topk_cross_entropy,
                                                                                         TopKCrossEntropyLoss)
    with pytest.raises(ValueError, match=match):
        function(x, y, **kwargs)
    with pytest.raises(ValueError, match=match):
        module(**kwargs)


def test_bad_inputs_raise_value_errors():
    x, y, _ = make_case("multiclass", seed=17)
    with pytest.raises(ValueError, match=r"one value per class \(4\)"):
        ohem_cross_entropy(x, y, weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="outside"):
        topk_cross_entropy(x, y + C)
