import pickle

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import seglosses._shared as shared_module
from seglosses.combined import CombinedLoss
from seglosses.dice import DiceLoss
from seglosses.focal import FocalLoss


class SquaredLogit(nn.Module):
    """Independent toy term: mean of squared logits (ignores the target)."""

    def forward(self, input, target):
        return input.pow(2).mean()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 3, (2, 4, 5), generator=g)
    return x, y


def test_weighted_sum_of_terms(batch):
    x, y = batch
    loss = CombinedLoss({"ce": nn.CrossEntropyLoss(), "sq": SquaredLogit()}, weights={"ce": 0.5, "sq": 2.0})
    expected = 0.5 * F.cross_entropy(x, y) + 2.0 * x.pow(2).mean()
    torch.testing.assert_close(loss(x, y), expected)


def test_weights_default_to_one_and_missing_weights_are_one(batch):
    x, y = batch
    ce, sq = F.cross_entropy(x, y), x.pow(2).mean()
    terms = {"ce": nn.CrossEntropyLoss(), "sq": SquaredLogit()}
    torch.testing.assert_close(CombinedLoss(terms)(x, y), ce + sq)
    partial = CombinedLoss(terms, weights={"sq": 3.0})
    assert partial.weights == {"ce": 1.0, "sq": 3.0}
    torch.testing.assert_close(partial(x, y), ce + 3.0 * sq)


def test_zero_weight_drops_the_term_but_still_logs_it(batch):
    x, y = batch
    loss = CombinedLoss({"ce": nn.CrossEntropyLoss(), "sq": SquaredLogit()}, weights={"sq": 0.0})
    torch.testing.assert_close(loss(x, y), F.cross_entropy(x, y))
    torch.testing.assert_close(loss.last_values["sq"], x.pow(2).mean().detach())


def test_last_values_hold_each_unweighted_term_detached(batch):
    x, y = batch
    loss = CombinedLoss({"ce": nn.CrossEntropyLoss(), "sq": SquaredLogit()}, weights={"ce": 4.0})
    assert loss.last_values == {}
    loss(x, y)
    assert list(loss.last_values) == ["ce", "sq"]
    torch.testing.assert_close(loss.last_values["ce"], F.cross_entropy(x, y).detach())
    torch.testing.assert_close(loss.last_values["sq"], x.pow(2).mean().detach())
    assert all(not v.requires_grad for v in loss.last_values.values())
    # updated on every call
    loss(2 * x, y)
    torch.testing.assert_close(loss.last_values["sq"], (2 * x).pow(2).mean().detach())


def test_gradient_is_the_weighted_sum_of_term_gradients(batch):
    x, y = batch
    loss = CombinedLoss({"ce": nn.CrossEntropyLoss(), "sq": SquaredLogit()}, weights={"ce": 0.5, "sq": 2.0})
    (g,) = torch.autograd.grad(loss(x, y), x)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(x, y), x)
    (g_sq,) = torch.autograd.grad(x.pow(2).mean(), x)
    torch.testing.assert_close(g, 0.5 * g_ce + 2.0 * g_sq)


def test_focal_plus_dice_equals_separate_terms_and_trains(batch):
    x, y = batch
    focal = FocalLoss(mode="multiclass", gamma=2.0)
    dice = DiceLoss(mode="multiclass")
    loss = CombinedLoss({"focal": focal, "dice": dice}, weights={"focal": 1.0, "dice": 0.5})
    out = loss(x, y)
    torch.testing.assert_close(out, focal(x, y) + 0.5 * dice(x, y))
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # the gamma schedule callback mutates gamma through the ModuleDict; the next call uses it
    before = loss.last_values["focal"]
    loss.losses["focal"].gamma = 0.0
    loss(x, y)
    torch.testing.assert_close(loss.last_values["focal"], F.cross_entropy(x, y).detach())
    assert loss.last_values["focal"] > before


def test_terms_live_in_a_module_dict_and_move_with_the_module():
    w = torch.tensor([1.0, 2.0, 3.0])
    loss = CombinedLoss({"ce": nn.CrossEntropyLoss(weight=w), "sq": SquaredLogit()})
    assert isinstance(loss.losses, nn.ModuleDict)
    assert "losses.ce.weight" in loss.state_dict()
    loss.to(torch.float64)
    assert loss.losses["ce"].weight.dtype == torch.float64
    assert "ce=1" in repr(loss)


def test_picklable(batch):
    x, y = batch
    loss = CombinedLoss({"ce": nn.CrossEntropyLoss(), "sq": SquaredLogit()}, weights={"sq": 2.0})
    clone = pickle.loads(pickle.dumps(loss))
    torch.testing.assert_close(clone(x, y), loss(x, y))


YAML = """
_target_: seglosses.combined.CombinedLoss
losses:
  focal:
    _target_: seglosses.focal.FocalLoss
    mode: multiclass
    gamma: 2.0
  dice:
    _target_: seglosses.dice.DiceLoss
    mode: multiclass
weights:
  focal: 1.0
  dice: ${dice_weight}
"""


@pytest.mark.parametrize("convert", ["none", "partial", "all", "object"])
def test_built_by_hydra_instantiate_from_yaml(batch, convert):
    x, y = batch
    root = OmegaConf.create({"loss": OmegaConf.create(YAML), "dice_weight": 0.25})
    loss = instantiate(root.loss, _convert_=convert)
    assert isinstance(loss, CombinedLoss)
    assert isinstance(loss.losses["focal"], FocalLoss) and isinstance(loss.losses["dice"], DiceLoss)
    assert loss.weights == {"focal": 1.0, "dice": 0.25}
    expected = FocalLoss(mode="multiclass", gamma=2.0)(x, y) + 0.25 * DiceLoss(mode="multiclass")(x, y)
    torch.testing.assert_close(loss(x, y), expected)


def test_hydra_errors_surface_as_clear_messages():
    cfg = OmegaConf.create(
        {
            "_target_": "seglosses.combined.CombinedLoss",
            "losses": {"ce": {"_target_": "torch.nn.CrossEntropyLoss"}},
            "weights": {"dice": 1.0},
        }
    )
    with pytest.raises(Exception, match=r"unknown terms \['dice'\]; the terms are \['ce'\]"):
        instantiate(cfg)


@pytest.mark.parametrize(
    ("losses", "weights", "error", "match"),
    [
        ({}, None, ValueError, "non-empty mapping"),
        (None, None, ValueError, "non-empty mapping"),
        ([nn.CrossEntropyLoss()], None, ValueError, "non-empty mapping"),
        ({"ce": nn.CrossEntropyLoss()}, {"dice": 1.0}, ValueError, r"unknown terms \['dice'\]"),
        ({"ce": nn.CrossEntropyLoss()}, {"ce": -1.0}, ValueError, "weight of 'ce' must be >= 0"),
        ({"ce": nn.CrossEntropyLoss()}, {"ce": float("nan")}, ValueError, "finite number >= 0"),
        ({"ce": nn.CrossEntropyLoss()}, {"ce": "1"}, ValueError, "finite number >= 0"),
        ({"ce": nn.CrossEntropyLoss()}, [1.0], ValueError, "weights must be a mapping"),
        ({"a.b": nn.CrossEntropyLoss()}, None, ValueError, "without '.'"),
        ({"": nn.CrossEntropyLoss()}, None, ValueError, "non-empty strings"),
        ({"keys": nn.CrossEntropyLoss()}, None, ValueError, "'keys' is reserved"),
        ({"ce": F.cross_entropy}, None, TypeError, "term 'ce' must be an nn.Module"),
    ],
)
def test_invalid_construction(losses, weights, error, match):
    with pytest.raises(error, match=match):
        CombinedLoss(losses, weights)


def test_terms_with_different_output_shapes(batch):
    x, y = batch
    loss = CombinedLoss({"ce": nn.CrossEntropyLoss(reduction="none"), "sq": SquaredLogit()})
    with pytest.raises(ValueError, match=r"'ce' gave \(2, 4, 5\), 'sq' gave \(\)"):
        loss(x, y)


# ------------------------------------------------------------------- shared-softmax focal + Dice fast path


def focal_dice(gamma=2.0, smooth=1.0, weights=None, fused=True, **dice_kwargs):
    terms = {"focal": FocalLoss(mode="multiclass", gamma=gamma),
             "dice": DiceLoss(mode="multiclass", smooth=smooth, **dice_kwargs)}
    return CombinedLoss(terms, weights=weights, fused=fused)


def separate(loss, x, y):
    """The reference: every term called on its own, weighted and summed."""
    return sum(loss.weights[k] * term(x, y) for k, term in loss.losses.items())


@pytest.fixture
def count_term_calls(monkeypatch):
    calls = []
    for cls in (FocalLoss, DiceLoss):
        def counted(self, *args, _original=cls.forward, **kwargs):
            calls.append(type(self).__name__)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", counted)
    return calls


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("smooth", [1.0, 1e-5])
@pytest.mark.parametrize("weights", [{"focal": 0.3, "dice": 2.0}, {"dice": 0.0}])
def test_fast_path_equals_separate_terms(gamma, smooth, weights, count_term_calls):
    g = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(2, 4, 5, 6, generator=g)).requires_grad_(True)
    y = torch.randint(0, 4, (2, 5, 6), generator=g)
    loss = focal_dice(gamma, smooth, weights)
    out = loss(x, y)
    assert count_term_calls == []  # the fused Function ran, not the terms
    (grad,) = torch.autograd.grad(out, x)
    expected = separate(loss, x, y)
    (expected_grad,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, expected_grad)
    for name in ("focal", "dice"):
        torch.testing.assert_close(loss.last_values[name], loss.losses[name](x, y).detach())
    assert list(loss.last_values) == ["focal", "dice"]


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 3, 2, 3, 4), (1, 2, 1, 1)])
def test_fast_path_any_spatial_rank_and_absent_classes(shape):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g, requires_grad=True)
    y = torch.zeros((shape[0], *shape[2:]), dtype=torch.long)  # only class 0 present
    loss = focal_dice()
    (grad,) = torch.autograd.grad(loss(x, y), x)
    (expected,) = torch.autograd.grad(separate(loss, x, y), x)
    torch.testing.assert_close(grad, expected)


def test_fast_path_extreme_logits_stay_finite_and_exact():
    g = torch.Generator().manual_seed(3)
    x = (200 * torch.randn(2, 3, 4, 4, generator=g)).requires_grad_(True)
    y = torch.randint(0, 3, (2, 4, 4), generator=g)
    for gamma in (0.5, 2.0):
        loss = focal_dice(gamma)
        out = loss(x, y)
        (grad,) = torch.autograd.grad(out, x)
        assert torch.isfinite(out) and torch.isfinite(grad).all()
        (expected,) = torch.autograd.grad(separate(loss, x, y), x)
        torch.testing.assert_close(grad, expected)


def test_fast_path_scales_with_upstream_gradient_and_sees_new_gamma(batch):
    x, y = batch
    loss = focal_dice()
    (g1,) = torch.autograd.grad(loss(x, y), x)
    (g3,) = torch.autograd.grad(3 * loss(x, y), x)
    torch.testing.assert_close(g3, 3 * g1)
    loss.losses["focal"].gamma = 0.0
    loss(x, y)
    torch.testing.assert_close(loss.last_values["focal"], F.cross_entropy(x, y).detach())


def test_fast_path_half_precision_and_no_grad(batch):
    x, y = batch
    loss = focal_dice()
    xh = x.detach().half().requires_grad_(True)
    out = loss(xh, y)
    assert out.dtype == torch.float32
    out.backward()
    assert xh.grad.dtype == torch.float16
    (expected,) = torch.autograd.grad(separate(loss, xh, y), xh)
    torch.testing.assert_close(xh.grad, expected)
    with torch.no_grad():
        torch.testing.assert_close(loss(x, y), separate(loss, x, y))


def test_fast_path_validates_like_the_terms(batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"class ids outside \[0, 3\)"):
        focal_dice()(x, y + 5)
    with pytest.raises(ValueError, match="index target must have shape"):
        focal_dice()(x, y[:, :2])


@pytest.mark.parametrize(
    "make",
    [
        lambda: focal_dice(fused=False),
        lambda: focal_dice(smooth=0.0),
        lambda: focal_dice(per_image=True),
        lambda: focal_dice(log_loss=True),
        lambda: focal_dice(power=2),
        lambda: focal_dice(ignore_index=1),
        lambda: focal_dice(sync_ddp=True),
        lambda: focal_dice(include_background=False),
        lambda: focal_dice(class_weights=[1.0, 2.0, 3.0]),
        lambda: CombinedLoss({"focal": FocalLoss(mode="multiclass", alpha=[1.0, 2.0, 3.0]),
                              "dice": DiceLoss(mode="multiclass")}),
        lambda: CombinedLoss({"focal": FocalLoss(mode="multiclass", label_smoothing=0.1),
                              "dice": DiceLoss(mode="multiclass")}),
        lambda: CombinedLoss({"focal": FocalLoss(mode="multiclass"), "dice": DiceLoss(mode="multiclass"),
                              "sq": SquaredLogit()}),
    ],
)
def test_other_configurations_call_the_terms(make, batch, count_term_calls):
    x, y = batch
    loss = make()
    out = loss(x, y)
    assert len(count_term_calls) == 2
    count_term_calls.clear()
    torch.testing.assert_close(out, separate(loss, x, y))


@pytest.mark.parametrize("gamma", [-1.0, float("nan")])
def test_invalid_gamma_set_later_is_reported_by_the_focal_term(batch, gamma):
    """Setting the option checks it (as a schedule would set it); the term keeps its gamma."""
    x, y = batch
    loss = focal_dice()
    before = loss(x, y)
    with pytest.raises(ValueError, match="gamma"):
        loss.losses["focal"].gamma = gamma
    assert loss.losses["focal"].gamma == 2.0
    torch.testing.assert_close(loss(x, y), before)


def test_fused_flag_must_be_a_bool():
    with pytest.raises(ValueError, match="fused must be true or false"):
        CombinedLoss({"sq": SquaredLogit()}, fused="yes")


def test_probability_targets_call_the_terms(batch, count_term_calls):
    x, y = batch
    soft = F.one_hot(y, 3).movedim(-1, 1).float()
    loss = focal_dice()
    torch.testing.assert_close(loss(x, soft), loss(x, y))
    assert len(count_term_calls) == 2


@pytest.mark.parametrize("ignore_index", [255, 1, 0, 3])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_fast_path_with_ignore_index_equals_separate_terms(ignore_index, fraction, count_term_calls):
    g = torch.Generator().manual_seed(4)
    x = (3 * torch.randn(2, 4, 5, 6, generator=g)).requires_grad_(True)
    y = torch.randint(0, 4, (2, 5, 6), generator=g)
    y[torch.rand(y.shape, generator=g) < fraction] = ignore_index
    loss = CombinedLoss({"focal": FocalLoss(mode="multiclass", gamma=0.5, ignore_index=ignore_index),
                         "dice": DiceLoss(mode="multiclass", ignore_index=ignore_index)},
                        weights={"focal": 0.7, "dice": 1.5})
    out = loss(x, y)
    assert count_term_calls == []  # the fused Function ran
    (grad,) = torch.autograd.grad(out, x)
    expected = separate(loss, x, y)
    (expected_grad,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, expected_grad)
    ignored = (y == ignore_index).unsqueeze(1).expand_as(grad)
    assert torch.all(grad[ignored] == 0)
    for name in ("focal", "dice"):
        torch.testing.assert_close(loss.last_values[name], loss.losses[name](x, y).detach())


def test_fast_path_needs_the_same_ignore_index_in_both_terms(batch, count_term_calls):
    x, y = batch
    loss = CombinedLoss({"focal": FocalLoss(mode="multiclass", ignore_index=255),
                         "dice": DiceLoss(mode="multiclass", ignore_index=1)})
    out = loss(x, y)
    assert len(count_term_calls) == 2
    torch.testing.assert_close(out, separate(loss, x, y))


@pytest.mark.parametrize("ignore_index", [None, 255])
def test_fast_path_in_several_pixel_chunks_equals_one_chunk(monkeypatch, ignore_index):
    g = torch.Generator().manual_seed(5)
    x = (3 * torch.randn(2, 4, 5, 7, generator=g)).requires_grad_(True)
    y = torch.randint(0, 4, (2, 5, 7), generator=g)
    if ignore_index is not None:
        y[torch.rand(y.shape, generator=g) < 0.3] = ignore_index
    loss = CombinedLoss({"focal": FocalLoss(mode="multiclass", gamma=2.0, ignore_index=ignore_index),
                         "dice": DiceLoss(mode="multiclass", ignore_index=ignore_index)})
    out = loss(x, y)
    (whole,) = torch.autograd.grad(out, x)
    monkeypatch.setattr(shared_module, "CHUNK_ELEMENTS", 56)  # (2, 4, 35): 56 // 8 = 7 pixels a chunk
    assert shared_module.pixel_chunk(2, 4, 35) == 7
    chunked_out = loss(x, y)
    (chunked,) = torch.autograd.grad(chunked_out, x)
    torch.testing.assert_close(chunked_out, out)
    torch.testing.assert_close(chunked, whole)
    (expected,) = torch.autograd.grad(separate(loss, x, y), x)
    torch.testing.assert_close(chunked, expected)


def test_new_terms_combine(batch):
    """The Tversky, Lovász, generalized Dice, OHEM and top-k losses are plain terms of a CombinedLoss."""
    from seglosses import (
        GeneralizedDiceLoss,
        LovaszLoss,
        OhemCrossEntropyLoss,
        TopKCrossEntropyLoss,
        TverskyLoss,
    )

    x, y = batch
    terms = {
        "lovasz": LovaszLoss(),
        "tversky": TverskyLoss(alpha=0.3, beta=0.7, gamma=0.75),
        "gdl": GeneralizedDiceLoss(),
        "ohem": OhemCrossEntropyLoss(min_kept=5),
        "topk": TopKCrossEntropyLoss(),
    }
    loss = CombinedLoss(terms, weights={"lovasz": 2.0})
    total = loss(x, y)
    expected = sum(loss.weights[name] * term(x, y) for name, term in terms.items())
    torch.testing.assert_close(total, expected)
    assert sorted(loss.last_values) == sorted(terms)
    total.backward()
    assert torch.isfinite(x.grad).all()
