"""Tests for seglosses.dice against a naive float64 one-hot reference, MONAI's published values and
MONAI's DiceLoss itself."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import seglosses._shared as shared_module
from seglosses.dice import DiceLoss, dice_loss
from tests.seglosses.references import CASES, SPATIAL, dense_reference

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- naive reference (float64, one-hot)
REFERENCE_DEFAULTS = {
    "mode": "multiclass", "smooth": 1.0, "power": 1, "class_weights": None, "ignore_index": None,
    "per_image": False, "log_loss": False, "include_background": True, "from_logits": True,
    "reduction": "mean",
}  # fmt: skip


def reference_dice(
    input: torch.Tensor, target: torch.Tensor, keep_graph: bool = False, **options
) -> torch.Tensor:
    """The documented formula in float64, written out with a one-hot target and a 0/1 mask per element.

    ``options``: the keywords of ``dice_loss`` (defaults in REFERENCE_DEFAULTS); ``keep_graph`` keeps
    the input's graph for gradient comparisons.
    """
    assert set(options) <= set(REFERENCE_DEFAULTS), set(options) - set(REFERENCE_DEFAULTS)
    o = {**REFERENCE_DEFAULTS, **options}
    mode, ignore = o["mode"], o["ignore_index"]
    x, p, g, v = dense_reference(input, target, mode, ignore, from_logits=o["from_logits"],
                                 keep_graph=keep_graph)  # fmt: skip
    num_classes = x.shape[1]
    summed = [d for d in range(x.ndim) if d >= 2 or (d == 0 and not o["per_image"])]

    def pooled(values: torch.Tensor) -> torch.Tensor:
        return values.sum(summed) if summed else values

    numerator = 2 * pooled(p * g * v) + o["smooth"]
    denominator = pooled(p ** o["power"] * v) + pooled(g ** o["power"] * v) + o["smooth"]
    zero = denominator == 0
    dice = torch.where(zero, torch.ones_like(denominator), numerator / torch.where(zero, 1.0, denominator))
    per_class = -dice.clamp_min(1e-7).log() if o["log_loss"] else 1 - dice
    weights = [1.0] * num_classes if o["class_weights"] is None else [float(w) for w in o["class_weights"]]
    for k in range(num_classes):
        background_dropped = k == 0 and mode != "binary" and not o["include_background"]
        if background_dropped or (mode == "multiclass" and k == ignore):
            weights[k] = 0.0
    w = torch.tensor(weights, dtype=torch.float64)
    weighted = per_class * w
    if o["reduction"] == "none":
        return weighted
    if o["reduction"] == "sum":
        return weighted.sum()
    images = x.shape[0] if o["per_image"] else 1
    return weighted.sum() / (images * w.sum())


# ---------------------------------------------------------------- inputs
N, C = 3, 4


def make_case(mode: str, spatial: tuple[int, ...], ignore: str, seed: int, n: int = N):
    """Logits and a target; ignore: "none", "class" (a valid class id, multiclass only) or "255"."""
    gen = torch.Generator().manual_seed(seed)
    if mode == "multiclass":
        x = torch.randn(n, C, *spatial, generator=gen, dtype=torch.float64) * 2
        y = torch.randint(0, C, (n, *spatial), generator=gen)
        ignore_index = None
        if ignore == "class":
            ignore_index = 1
        elif ignore == "255":
            ignore_index = 255
            y = torch.where(torch.rand(y.shape, generator=gen) < 0.3, 255, y)
        return x, y, ignore_index
    channels = 1 if mode == "binary" else C
    shape = (n, channels, *spatial)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2
    t = (torch.rand(shape, generator=gen) < 0.4).double()
    ignore_index = None
    if ignore == "255":
        ignore_index = 255
        t = torch.where(torch.rand(shape, generator=gen, dtype=torch.float64) < 0.3, 255.0, t)
    return x, t, ignore_index


@pytest.mark.parametrize(("mode", "dims", "ignore"), CASES)
def test_matches_naive_reference(mode, dims, ignore):
    x, t, ignore_index = make_case(mode, SPATIAL[dims], ignore, seed=len(dims) + len(ignore))
    options = itertools.product(
        (False, True),  # per_image
        (1, 2),  # power
        (False, True),  # log_loss
        (None, [0.5, 2.0, 1.0, 3.0]),  # class_weights
        (True, False),  # include_background
    )
    for i, (per_image, power, log_loss, weights, background) in enumerate(options):
        reduction = ("none", "mean", "sum")[i % 3]  # each reduction meets every other option
        if mode == "binary" and weights is not None:
            weights = [2.0]
        kwargs = dict(
            mode=mode, per_image=per_image, power=power, log_loss=log_loss, class_weights=weights,
            include_background=background, ignore_index=ignore_index, reduction=reduction,
        )  # fmt: skip
        got = dice_loss(x, t, **kwargs)
        want = reference_dice(x, t, **kwargs)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=str(kwargs))


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_from_logits_false_and_smooth_zero_match_reference(mode):
    x, t, _ = make_case(mode, SPATIAL["2d"], "none", seed=3)
    probs = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    for smooth, per_image in itertools.product((0.0, 0.5), (False, True)):
        kwargs = dict(mode=mode, smooth=smooth, per_image=per_image, from_logits=False, reduction="none")
        torch.testing.assert_close(dice_loss(probs, t, **kwargs), reference_dice(probs, t, **kwargs))


def test_multiclass_probability_target_matches_reference():
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=5)
    soft = torch.softmax(torch.randn(x.shape, dtype=torch.float64), 1)
    for per_image, power in itertools.product((False, True), (1, 2)):
        kwargs = dict(per_image=per_image, power=power, reduction="none")
        torch.testing.assert_close(dice_loss(x, soft, **kwargs), reference_dice(x, soft, **kwargs))
    # a one-hot probability target is the same as the index target
    one_hot = torch.nn.functional.one_hot(y, C).movedim(-1, 1).double()
    torch.testing.assert_close(dice_loss(x, one_hot), dice_loss(x, y))


def test_binary_with_and_without_channel_dim_agree():
    x, t, _ = make_case("binary", SPATIAL["2d"], "none", seed=7)
    torch.testing.assert_close(
        dice_loss(x, t, mode="binary"), dice_loss(x.squeeze(1), t.squeeze(1), mode="binary")
    )


def test_reductions_follow_cross_entropy_weight_semantics():
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=11)
    w = torch.tensor([1.0, 2.0, 0.5, 4.0], dtype=torch.float64)
    per_class = dice_loss(x, y, reduction="none")  # unweighted 1 - D_c
    weighted = dice_loss(x, y, class_weights=w, reduction="none")
    torch.testing.assert_close(weighted, w * per_class)
    torch.testing.assert_close(dice_loss(x, y, class_weights=w, reduction="sum"), weighted.sum())
    torch.testing.assert_close(dice_loss(x, y, class_weights=w), weighted.sum() / w.sum())
    # per_image: (N, C), mean divides by N * sum(w)
    none = dice_loss(x, y, class_weights=w, per_image=True, reduction="none")
    assert none.shape == (N, C)
    torch.testing.assert_close(dice_loss(x, y, class_weights=w, per_image=True), none.sum() / (N * w.sum()))
    # excluded classes are 0 in "none" and leave the denominator of "mean"
    excluded = dice_loss(x, y, class_weights=w, ignore_index=2, include_background=False, reduction="none")
    assert excluded[0] == 0 and excluded[2] == 0
    mean = dice_loss(x, y, class_weights=w, ignore_index=2, include_background=False)
    torch.testing.assert_close(mean, excluded.sum() / (w[1] + w[3]))


# ---------------------------------------------------------------- empty masks and ignored pixels
def test_class_absent_from_target_and_prediction_costs_zero():
    probs = torch.tensor([[[0.7, 0.2, 1.0], [0.3, 0.8, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    y = torch.tensor([[0, 1, 0]])  # class 2 in neither target nor prediction
    loss = dice_loss(probs, y, from_logits=False, reduction="none")
    assert loss[2] == 0
    assert (loss[:2] > 0).all()
    binary = dice_loss(torch.zeros(2, 5), torch.zeros(2, 5), mode="binary", from_logits=False)
    assert binary == 0


def test_false_positives_on_empty_mask_are_penalised():
    x = torch.zeros(2, 3, 4, 4, requires_grad=True)  # every class predicted with p = 1/3
    y = torch.randint(0, 2, (2, 4, 4))  # class 2 never in the target
    loss = dice_loss(x, y, reduction="none")
    assert loss[2] > 0.9  # D_2 = 1 / (32 / 3 + 1)
    loss[2].backward()
    assert (x.grad[:, 2] > 0).all()  # descent lowers the logit of the absent class everywhere
    # and the total loss drops when the absent class's logit goes down
    with torch.no_grad():
        lowered = x.clone()
        lowered[:, 2] -= 1.0
        assert dice_loss(lowered, y) < dice_loss(x, y)

    logits = torch.full((1, 1, 3, 3), 2.0, requires_grad=True)
    empty = torch.zeros(1, 1, 3, 3)
    binary = dice_loss(logits, empty, mode="binary")
    assert binary > 0.5
    binary.backward()
    assert (logits.grad > 0).all()


@pytest.mark.parametrize("smooth", [1.0, 0.0])
@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_all_pixels_ignored_gives_zero_loss_and_gradient(mode, smooth):
    shape = (2, 4, 4) if mode == "binary" else (2, 3, 4, 4)
    x = torch.randn(shape, requires_grad=True)
    t = torch.full((2, 4, 4), 255) if mode == "multiclass" else torch.full(shape, 255.0)
    for log_loss, per_image in itertools.product((False, True), (False, True)):
        options = dict(smooth=smooth, log_loss=log_loss, per_image=per_image)
        loss = dice_loss(x, t, mode=mode, ignore_index=255, **options)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss == 0
        assert (grad == 0).all()


@pytest.mark.parametrize("power", [1, 2])
def test_ignored_pixels_get_exactly_zero_gradient(power):
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = torch.randint(0, 3, (2, 4, 4))
    y[:, 2:] = 255
    dice_loss(x, y, ignore_index=255, power=power, per_image=True).backward()
    assert (x.grad[:, :, 2:] == 0).all()
    assert (x.grad[:, :, :2] != 0).any()
    # and the ignored pixels change nothing: same loss as the cropped input
    torch.testing.assert_close(
        dice_loss(x, y, ignore_index=255, power=power), dice_loss(x[:, :, :2], y[:, :2], power=power)
    )


def test_smooth_zero_empty_class_is_finite():
    probs = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0, 0]])
    loss = dice_loss(probs, y, smooth=0.0, from_logits=False, reduction="none")
    # class 1: zero denominator, D = 1 by definition
    torch.testing.assert_close(loss.detach(), torch.zeros(2, dtype=torch.float64))
    loss.sum().backward()
    assert torch.isfinite(probs.grad).all()
    # zero intersection with smooth = 0: D = 0, the log loss is capped, not infinite
    log = dice_loss(
        probs, torch.tensor([[1, 1]]), smooth=0.0, from_logits=False, log_loss=True, reduction="none"
    )
    assert torch.isfinite(log).all() and log[1] > 10


# ---------------------------------------------------------------- per-image vs batch
def test_per_image_and_batch_dice_differ_where_they_must():
    # image 0: 4 foreground pixels, all found; image 1: 1 foreground pixel, missed
    probs = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    kwargs = dict(mode="binary", smooth=0.0, from_logits=False)
    batch = dice_loss(probs, target, **kwargs)
    per_image = dice_loss(probs, target, per_image=True, **kwargs)
    torch.testing.assert_close(batch, torch.tensor(1 - 8 / 9))  # 2 * 4 / (4 + 5)
    torch.testing.assert_close(per_image, torch.tensor(0.5))  # mean of 1 - 1 and 1 - 0


# ---------------------------------------------------------------- gradients and numerics
@pytest.mark.parametrize(
    "mode, kwargs",
    [
        ("multiclass", {}),
        ("multiclass", {"ignore_index": 255, "per_image": True}),
        ("multiclass", {"power": 2, "log_loss": True, "class_weights": [1.0, 2.0, 0.5, 1.5]}),
        ("multiclass", {"power": 1.5, "ignore_index": 1, "smooth": 0.0}),
        ("multiclass", {"from_logits": False}),
        ("binary", {"ignore_index": 255}),
        ("binary", {"power": 2, "per_image": True, "log_loss": True}),
        ("multilabel", {"include_background": False}),
        ("multilabel", {"power": 2, "ignore_index": 255, "per_image": True}),
    ],
)
def test_gradcheck(mode, kwargs):
    ignore = "255" if kwargs.get("ignore_index") == 255 else "none"
    x, t, _ = make_case(mode, (2, 2), ignore, seed=13, n=2)
    if not kwargs.get("from_logits", True):
        x = torch.softmax(x, 1) * 0.9 + 0.05  # inside (0, 1) so finite differences stay valid
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: dice_loss(inp, t, mode=mode, **kwargs), (x,))


def test_backward_twice_and_without_grad():
    """The softmax kept for the backward is consumed in place; a retained graph must recompute it."""
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "255", seed=41)
    x.requires_grad_(True)
    loss = dice_loss(x, y, ignore_index=255, per_image=True)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    (second,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    (naive,) = torch.autograd.grad(reference_dice(x, y, ignore_index=255, per_image=True, keep_graph=True), x)
    torch.testing.assert_close(first, naive)
    with torch.no_grad():
        torch.testing.assert_close(dice_loss(x, y, ignore_index=255, per_image=True), loss.detach())


@pytest.mark.slow
@pytest.mark.parametrize("power", [1, 2])
def test_chunked_backward_matches_single_chunk(monkeypatch, power):
    x, y, _ = make_case("multiclass", (5, 7), "255", seed=43)
    x.requires_grad_(True)
    kwargs = dict(ignore_index=255, power=power, class_weights=[1.0, 2.0, 0.5, 1.5])
    (whole,) = torch.autograd.grad(dice_loss(x, y, **kwargs), x)
    monkeypatch.setattr(shared_module, "CHUNK_ELEMENTS", 84)  # (3, 4, 35): 84 // 12 = 7, 5 chunks of 7 pixels
    (chunked,) = torch.autograd.grad(dice_loss(x, y, **kwargs), x)
    torch.testing.assert_close(chunked, whole)
    assert torch.autograd.gradcheck(lambda inp: dice_loss(inp, y, **kwargs), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_finite_at_extreme_logits_in_low_precision(mode, dtype):
    x, t, _ = make_case(mode, SPATIAL["2d"], "none", seed=17)
    for scale in (100.0, 1e4):
        logits = (torch.sign(x) * scale).to(dtype).requires_grad_(True)
        for log_loss, smooth in ((False, 1.0), (True, 1.0), (False, 0.0), (True, 0.0)):
            loss = dice_loss(logits, t, mode=mode, log_loss=log_loss, smooth=smooth)
            (grad,) = torch.autograd.grad(loss, logits)
            assert loss.dtype == torch.float32  # computed in float32
            assert grad.dtype == dtype
            assert torch.isfinite(loss) and torch.isfinite(grad).all(), (scale, log_loss, smooth)


def test_half_precision_matches_float32():
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=19)
    half = x.to(torch.bfloat16)
    torch.testing.assert_close(dice_loss(half, y), dice_loss(half.float(), y))


# ---------------------------------------------------------------- properties
@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["multiclass", "binary", "multilabel"]),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.0, 50.0),
    smooth=st.sampled_from([0.0, 1e-5, 1.0, 10.0]),
    power=st.sampled_from([1, 1.5, 2]),
    per_image=st.booleans(),
)
def test_loss_and_dice_in_unit_interval(mode, seed, scale, smooth, power, per_image):
    x, t, _ = make_case(mode, (3, 2), "none", seed=seed)
    x = x * scale
    per_class = dice_loss(x, t, mode=mode, smooth=smooth, power=power, per_image=per_image, reduction="none")
    dice = 1 - per_class
    assert ((dice >= 0) & (dice <= 1)).all()
    loss = dice_loss(x, t, mode=mode, smooth=smooth, power=power, per_image=per_image)
    assert 0 <= loss <= 1


# ---------------------------------------------------------------- MONAI
def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# MONAI's published DiceLoss test cases whose configuration our options express exactly:
# smooth_nr == smooth_dr, plain sigmoid/softmax (or none), batch=False (= per_image=True), soft_label off.
LOGITS_2x2 = [[[[1.0, -1.0], [-1.0, 1.0]]]]
LOGITS_2x3 = [[[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
INDEX_2x3 = torch.tensor([[1, 0, 0], [1, 1, 0]])
TARGET_2x2 = [[[[1.0, 0.0], [1.0, 1.0]]]]
MONAI_PUBLISHED = [
    ("sigmoid 1e-6", dict(mode="binary", smooth=1e-6), LOGITS_2x2, TARGET_2x2, 0.307576),
    (
        "sigmoid 1e-4, 2 images",
        dict(mode="binary", smooth=1e-4),
        LOGITS_2x2 * 2,
        [[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 0.0], [1.0, 0.0]]]],
        0.416657,
    ),
    (
        "probabilities as input and target",
        dict(mode="multilabel", smooth=1e-4, from_logits=False),
        [[[[0.3, 0.4], [0.7, 0.9]]], [[[1.0, 0.1], [0.5, 0.3]]]],
        [[[[0.3, 0.4], [0.7, 0.9]]], [[[1.0, 0.1], [0.5, 0.3]]]],
        0.307773,
    ),
    (
        "no background, exact prediction, smooth 0",
        dict(mode="multiclass", smooth=0.0, include_background=False, from_logits=False),
        [[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]],
        torch.tensor([[0, 0, 1], [0, 1, 0]]),
        0.0,
    ),
    (
        "sigmoid on one-hot",
        dict(mode="multilabel", smooth=1e-4),
        LOGITS_2x3,
        [[[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]],
        0.435050,
    ),
    (
        "sigmoid on one-hot, none",
        dict(mode="multilabel", smooth=1e-4, reduction="none"),
        LOGITS_2x3,
        [[[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]],
        [[0.296529, 0.415136], [0.599976, 0.428559]],
    ),
    ("softmax", dict(mode="multiclass", smooth=1e-4), LOGITS_2x3, INDEX_2x3, 0.383713),
    (
        "softmax, sum",
        dict(mode="multiclass", smooth=1e-4, reduction="sum"),
        LOGITS_2x3,
        INDEX_2x3,
        1.534853,
    ),
    ("sigmoid squared", dict(mode="binary", smooth=1e-5, power=2), LOGITS_2x2, TARGET_2x2, 0.178337),
]


@pytest.mark.parametrize(("name", "kwargs", "input", "target", "expected"), MONAI_PUBLISHED)
def test_monai_published_values(name, kwargs, input, target, expected):
    # MONAI's one-hot cases used to_onehot_y on the index targets [[1, 0, 0]], [[1, 1, 0]]
    target = target if isinstance(target, torch.Tensor) else _t(target)
    got = dice_loss(_t(input), target, per_image=True, **kwargs)
    torch.testing.assert_close(got, _t(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("power", [1, 2])
def test_matches_monai_dice_loss(batch, include_background, power):
    monai_losses = pytest.importorskip("monai.losses", reason="MONAI (dev extra) is the peer reference")
    x, y, _ = make_case("multiclass", (5, 6), "none", seed=23)
    x = x.float()
    monai = monai_losses.DiceLoss(
        softmax=True, to_onehot_y=True, include_background=include_background, squared_pred=power == 2,
        smooth_nr=0.5, smooth_dr=0.5, batch=batch, reduction="none",
    )  # fmt: skip
    want = monai(x, y.unsqueeze(1))  # (N or 1, C, 1, 1)
    got = dice_loss(
        x, y, smooth=0.5, power=power, per_image=not batch, include_background=include_background,
        reduction="none",
    )  # fmt: skip
    if not include_background:
        got = got[..., 1:]
    torch.testing.assert_close(got, want.reshape(got.shape))
    # weighted per-class losses (MONAI's `weight`) agree too
    w = [2.0, 1.0, 0.5, 3.0]
    weighted = monai_losses.DiceLoss(
        sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, batch=batch, weight=w, reduction="none"
    )(x, torch.nn.functional.one_hot(y, C).movedim(-1, 1).float())
    ours = dice_loss(x, torch.nn.functional.one_hot(y, C).movedim(-1, 1).float(), mode="multilabel",
                     class_weights=w, per_image=not batch, reduction="none")  # fmt: skip
    torch.testing.assert_close(ours, weighted.reshape(ours.shape))


# ---------------------------------------------------------------- module
def test_module_stores_options_and_matches_function():
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "255", seed=29)
    kwargs = dict(
        mode="multiclass", smooth=0.5, power=2, class_weights=[1.0, 2.0, 3.0, 4.0], ignore_index=255,
        per_image=True, log_loss=True, include_background=False, from_logits=True, reduction="sum",
    )  # fmt: skip
    module = DiceLoss(**kwargs)
    for key, value in kwargs.items():
        stored = getattr(module, key)
        assert (stored.tolist() if isinstance(stored, torch.Tensor) else stored) == value
    assert "class_weights" not in module.state_dict()
    module = module.double()
    assert module.class_weights.dtype == torch.float64
    torch.testing.assert_close(module(x, y), dice_loss(x, y, **kwargs))
    assert "per_image=True" in repr(module)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"smooth": -1.0}, "smooth must be >= 0"),
        ({"smooth": float("nan")}, "smooth must be a finite number >= 0"),
        ({"smooth": float("inf")}, "smooth must be a finite number >= 0"),
        ({"power": 0.5}, r"power must be >= 1, got 0.5 \(1: standard soft Dice"),
        ({"power": float("inf")}, "power must be a finite number >= 1"),
        ({"power": True}, "power must be a finite number >= 1"),
        ({"power": "2"}, "power must be a finite number >= 1"),
        ({"mode": "multi-class"}, "mode must be one of"),
        ({"reduction": "avg"}, "reduction must be one of"),
    ],
)
def test_option_errors(kwargs, message):
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=31)
    with pytest.raises(ValueError, match=message):
        dice_loss(x, y, **kwargs)
    with pytest.raises(ValueError, match=message):
        DiceLoss(**kwargs)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y: dice_loss(x, y, class_weights=[1.0, 2.0]), r"one value per class \(4\)"),
        (lambda x, y: dice_loss(x, y, class_weights=[1.0, -2.0, 1.0, 1.0]), "finite and >= 0"),
        (lambda x, y: dice_loss(x, y, class_weights=[1.0, float("nan"), 1.0, 1.0]), "finite and >= 0"),
        (lambda x, y: dice_loss(x, y, class_weights=[0.0, 0.0, 0.0, 0.0]), "sum to 0"),
        (lambda x, y: dice_loss(x, y, class_weights=[1, 0, 0, 0], include_background=False), "sum to 0"),
        (lambda x, y: dice_loss(x[:, :1], y * 0, include_background=False), "no class is left"),
        (lambda x, y: dice_loss(x[:, :2], y % 2, ignore_index=1, include_background=False), "no class is"),
        (lambda x, y: dice_loss(x, y[:, :2]), "multiclass index target must have shape"),
        (lambda x, y: dice_loss(x, y + 4), r"class ids outside \[0, 4\)"),
        (lambda x, y: dice_loss(x, y.double()), "multiclass target must be int64 class indices"),
        (lambda x, y: dice_loss(x, y, from_logits=False), "from_logits=False expects probabilities"),
        (lambda x, y: dice_loss(x, x.sigmoid() * 2, mode="multilabel"), r"must lie in \[0, 1\]"),
        (lambda x, y: dice_loss(x, y, mode="binary"), "binary target must have the input's shape"),
        (lambda x, y: dice_loss(x.long(), y), "input must be floating point"),
    ],
)
def test_input_errors(call, message):
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=37)
    with pytest.raises(ValueError, match=message):
        call(x, y)
