"""The options dataclasses of the losses: defaults written once, checks in ``__post_init__``, the function
and the module agreeing on them, the module's attributes and repr derived from them."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import pytest
import torch

from seglosses.dice import DiceLoss, DiceOptions, dice_loss
from seglosses.focal import (
    CrossEntropyLoss,
    CrossEntropyOptions,
    FocalLoss,
    FocalOptions,
    cross_entropy,
    focal_loss,
)
from seglosses.generalized_dice import GeneralizedDiceLoss, GeneralizedDiceOptions, generalized_dice_loss
from seglosses.lovasz import LovaszLoss, LovaszOptions, lovasz_loss
from seglosses.mining import (
    OhemCrossEntropyLoss,
    OhemOptions,
    TopKCrossEntropyLoss,
    TopKOptions,
    ohem_cross_entropy,
    topk_cross_entropy,
)
from seglosses.tversky import TverskyLoss, TverskyOptions, tversky_loss

pytestmark = pytest.mark.usefixtures("single_thread")

C = 3
WEIGHTS = [0.5, 2.0, 1.0]
# (function, module, options, options other than the defaults)
LOSSES = [
    (focal_loss, FocalLoss, FocalOptions,
     dict(gamma=1.5, alpha=WEIGHTS, ignore_index=255, reduction="sum", label_smoothing=0.1)),
    (cross_entropy, CrossEntropyLoss, CrossEntropyOptions,
     dict(weight=WEIGHTS, ignore_index=255, reduction="none", label_smoothing=0.05)),
    (dice_loss, DiceLoss, DiceOptions,
     dict(smooth=0.5, power=2, class_weights=WEIGHTS, ignore_index=255, per_image=True, log_loss=True,
          include_background=False)),
    (tversky_loss, TverskyLoss, TverskyOptions,
     dict(alpha=0.3, beta=0.7, gamma=0.75, class_weights=WEIGHTS, ignore_index=255, reduction="none")),
    (lovasz_loss, LovaszLoss, LovaszOptions,
     dict(per_image=True, classes="all", class_weights=WEIGHTS, ignore_index=255)),
    (generalized_dice_loss, GeneralizedDiceLoss, GeneralizedDiceOptions,
     dict(weight_type="simple", smooth_nr=0.0, per_image=True, ignore_index=255, reduction="none")),
    (ohem_cross_entropy, OhemCrossEntropyLoss, OhemOptions,
     dict(thresh=0.5, min_kept=3, weight=WEIGHTS, ignore_index=255)),
    (topk_cross_entropy, TopKCrossEntropyLoss, TopKOptions, dict(k=0.2, weight=WEIGHTS, ignore_index=255)),
]  # fmt: skip
IDS = [options.__name__ for _, _, options, _ in LOSSES]


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, C, 4, 5, generator=gen)
    y = torch.randint(0, C, (2, 4, 5), generator=gen)
    y[0, 0, :2] = 255
    return x, y


@pytest.mark.parametrize(("function", "module", "options", "kwargs"), LOSSES, ids=IDS)
def test_signatures_take_their_defaults_from_the_options(function, module, options, kwargs):
    """Function and module take exactly the options' fields, in their order, with their defaults."""
    fields = [(f.name, f.default) for f in dataclasses.fields(options)]
    for signature in (inspect.signature(function), inspect.signature(module)):
        params = [p for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        assert [(p.name, p.default) for p in params] == fields


@pytest.mark.parametrize(("function", "module", "options", "kwargs"), LOSSES, ids=IDS)
def test_function_and_module_agree_on_the_same_options(function, module, options, kwargs):
    x, y = batch()
    opts = options(**kwargs)
    loss = module(**dataclasses.asdict(opts))
    assert loss.options == opts
    torch.testing.assert_close(loss(x, y), function(x, y, **dataclasses.asdict(opts)), rtol=0, atol=0)


@pytest.mark.parametrize(("function", "module", "options", "kwargs"), LOSSES, ids=IDS)
def test_repr_and_attributes_show_the_options(function, module, options, kwargs):
    loss = module(**kwargs)
    shown = [f"{f.name}={getattr(loss.options, f.name)!r}" for f in dataclasses.fields(options)]
    per_class = repr(tuple(WEIGHTS))
    assert repr(loss) == f"{module.__name__}({', '.join(shown)})".replace(per_class, repr(WEIGHTS))
    for f in dataclasses.fields(options):
        value = getattr(loss, f.name)
        if isinstance(value, torch.Tensor):  # per-class values: a non-persistent float32 buffer
            assert value.dtype == torch.float32 and f.name not in loss.state_dict()
            value = tuple(value.tolist())
        assert value == getattr(loss.options, f.name)


def test_per_class_values_are_kept_as_tuples():
    assert FocalOptions(alpha=[1, 2]).alpha == (1.0, 2.0)
    assert FocalOptions(alpha=torch.tensor([1.0, 2.0])).alpha == (1.0, 2.0)
    assert FocalOptions(mode="binary", alpha=torch.tensor(0.25)).alpha == 0.25
    assert DiceOptions(class_weights=2).class_weights == 2
    hash(FocalOptions(alpha=[1.0, 2.0]))  # frozen and hashable


@pytest.mark.parametrize(
    ("options", "kwargs", "message"),
    [
        (FocalOptions, {"mode": "softmax"}, r"^mode must be one of"),
        (FocalOptions, {"gamma": -1.0}, r"^gamma must be >= 0"),
        (FocalOptions, {"gamma": float("nan")}, r"^gamma must be a finite number >= 0"),
        (FocalOptions, {"alpha": [1.0, -1.0]}, r"^alpha must be finite and >= 0"),
        (FocalOptions, {"mode": "binary", "alpha": [0.2, 0.3]}, r"^binary alpha must be a single number"),
        (FocalOptions, {"ignore_index": 1.5}, r"^ignore_index must be an int or None"),
        (FocalOptions, {"reduction": "avg"}, r"^reduction must be one of"),
        (FocalOptions, {"label_smoothing": 1.5}, r"^label_smoothing must be in \[0, 1\]"),
        (CrossEntropyOptions, {"weight": "abc"}, r"^weight must be None, a number or a sequence"),
        (CrossEntropyOptions, {"label_smoothing": -0.1}, r"^label_smoothing must be in \[0, 1\]"),
        (DiceOptions, {"smooth": -1.0}, r"^smooth must be >= 0"),
        (DiceOptions, {"power": 0.5}, r"^power must be >= 1, got 0.5 \(1: standard soft Dice"),
        (DiceOptions, {"class_weights": [[1.0]]}, r"^class_weights must be a number or a 1-D sequence"),
        (DiceOptions, {"sync_ddp": 1}, r"^sync_ddp must be true or false"),
        (TverskyOptions, {"alpha": -0.1}, r"^alpha must be >= 0"),
        (TverskyOptions, {"beta": float("inf")}, r"^beta must be a finite number >= 0"),
        (TverskyOptions, {"gamma": 0.0}, r"^gamma must be > 0, got 0.0 \(1: Tversky"),
        (TverskyOptions, {"class_weights": [-1.0]}, r"^class_weights must be finite and >= 0"),
        (LovaszOptions, {"per_image": "yes"}, r"^per_image must be true or false"),
        (LovaszOptions, {"classes": "some"}, r"^classes must be one of"),
        (LovaszOptions, {"mode": "binary", "from_logits": False}, r"^from_logits=False is not defined"),
        (GeneralizedDiceOptions, {"weight_type": "inverse"}, r"^weight_type must be one of"),
        (GeneralizedDiceOptions, {"smooth_nr": -1.0}, r"^smooth_nr must be >= 0"),
        (GeneralizedDiceOptions, {"smooth_dr": float("nan")}, r"^smooth_dr must be a finite number >= 0"),
        (OhemOptions, {"thresh": 1.5}, r"^thresh must be in \[0, 1\]"),
        (OhemOptions, {"min_kept": 1.0}, r"^min_kept must be an int >= 0"),
        (OhemOptions, {"weight": [1.0, float("nan")]}, r"^weight must be finite and >= 0"),
        (TopKOptions, {"k": 0.0}, r"^k must be in \(0, 1\]"),
        (TopKOptions, {"reduction": "mean-ish"}, r"^reduction must be one of"),
    ],
)
def test_bad_options_are_rejected_naming_the_option(options, kwargs, message):
    with pytest.raises(ValueError, match=message):
        options(**kwargs)


@pytest.mark.parametrize(("function", "module", "options", "kwargs"), LOSSES, ids=IDS)
def test_options_are_frozen(function, module, options, kwargs):
    opts = options(**kwargs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.mode = "binary"


def test_setting_an_option_replaces_the_checked_options():
    kwargs = dict(alpha=0.3, beta=0.7, class_weights=WEIGHTS, ignore_index=255)
    loss = TverskyLoss(**kwargs)
    loss.gamma = 0.75  # as a checkpoint restores the gamma of a schedule
    assert loss.options == TverskyOptions(gamma=0.75, **kwargs)
    x, y = batch()
    torch.testing.assert_close(loss(x, y), tversky_loss(x, y, gamma=0.75, **kwargs), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^gamma must be > 0"):
        loss.gamma = 0.0
    with pytest.raises(ValueError, match=r"^mode must be one of"):
        loss.mode = "softmax"
    assert loss.gamma == 0.75 and loss.mode == "multiclass"


def test_cross_entropy_gamma_stays_fixed_at_zero():
    loss = CrossEntropyLoss()
    assert isinstance(loss, FocalLoss) and loss.gamma == 0.0 and loss.alpha is None
    loss.gamma = 0  # a schedule at 0 is accepted
    with pytest.raises(ValueError, match="gamma fixed at 0"):
        loss.gamma = 1.0
    assert not hasattr(loss.options, "gamma")


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_modules_copy_and_pickle_with_their_options(clone):
    loss = FocalLoss(gamma=1.0, alpha=WEIGHTS, ignore_index=255)
    loss.gamma = 0.5
    copied = clone(loss)
    assert copied.options == loss.options and repr(copied) == repr(loss)
    x, y = batch()
    torch.testing.assert_close(copied(x, y), loss(x, y), rtol=0, atol=0)
