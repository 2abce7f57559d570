"""seglosses: exact, numerically stable and lean segmentation losses for imbalanced data.

Depends on torch only. See the docstrings of :func:`focal_loss` and :func:`dice_loss` for shapes
and reduction semantics.
"""

from seglosses.class_weights import METHODS as CLASS_WEIGHT_METHODS
from seglosses.class_weights import class_weights_from_counts
from seglosses.combined import CombinedLoss
from seglosses.dice import DiceLoss, dice_loss
from seglosses.focal import CrossEntropyLoss, FocalLoss, focal_loss
from seglosses.schedules import GammaSchedule

__all__ = [
    "CLASS_WEIGHT_METHODS",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "GammaSchedule",
    "class_weights_from_counts",
    "dice_loss",
    "focal_loss",
]
