"""seglosses: exact, numerically stable and lean segmentation losses for imbalanced data.

Depends on torch only. See the docstrings of :func:`focal_loss` and :func:`dice_loss` for shapes
and reduction semantics; the Tversky, Lovász, generalized Dice, OHEM and top-k losses follow the same
conventions. The options of each loss, their defaults and their checks are a frozen dataclass in its module
(``seglosses.focal.FocalOptions``, ``seglosses.dice.DiceOptions``, ...), kept by the module form as
``loss.options``.
"""

from seglosses.class_weights import METHODS as CLASS_WEIGHT_METHODS
from seglosses.class_weights import class_weights_from_counts
from seglosses.combined import CombinedLoss
from seglosses.dice import DiceLoss, dice_loss
from seglosses.focal import CrossEntropyLoss, FocalLoss, cross_entropy, focal_loss
from seglosses.generalized_dice import GeneralizedDiceLoss, generalized_dice_loss
from seglosses.lovasz import LovaszLoss, lovasz_loss
from seglosses.mining import (
    OhemCrossEntropyLoss,
    TopKCrossEntropyLoss,
    ohem_cross_entropy,
    topk_cross_entropy,
)
from seglosses.schedules import GammaSchedule
from seglosses.tversky import TverskyLoss, tversky_loss

__all__ = [
    "CLASS_WEIGHT_METHODS",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "GammaSchedule",
    "GeneralizedDiceLoss",
    "LovaszLoss",
    "OhemCrossEntropyLoss",
    "TopKCrossEntropyLoss",
    "TverskyLoss",
    "class_weights_from_counts",
    "cross_entropy",
    "dice_loss",
    "focal_loss",
    "generalized_dice_loss",
    "lovasz_loss",
    "ohem_cross_entropy",
    "topk_cross_entropy",
    "tversky_loss",
]
