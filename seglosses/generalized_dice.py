"""Generalized Dice loss (Sudre et al., 2017): one Dice coefficient over all classes, each class weighted by
the inverse (square) of its target volume, so that rare classes count as much as common ones.

With the overlap sums of the Dice loss (:mod:`seglosses._overlap`), pooled over the batch or per image::

    w_c = 1 / G_c ** 2 ("square"), 1 / G_c ("simple"), 1 ("uniform")
    loss = 1 - (2 * sum_c w_c * I_c + smooth_nr) / (sum_c w_c * (P_c + G_c) + smooth_dr)

A class absent from the target (``G_c = 0``) would get an infinite weight; it gets the largest weight of the
present classes instead (of the batch, or of the image with ``per_image=True``), as MONAI does, so that its
predicted mass ``P_c`` (false positives) is penalised like that of the rarest present class.

Multiclass class-index targets from logits share the Dice loss's hand-written backward: first derivatives only
(``generalized_dice_loss(input.softmax(1), target, from_logits=False)`` supports a double backward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from seglosses._inputs import check_reduction, prepare
from seglosses._options import LossModule
from seglosses._overlap import included_classes, overlap_sums
from seglosses.checks import check_bool, check_choice, check_ignore_index, check_number
from seglosses.modes import check_mode

__all__ = ["WEIGHT_TYPES", "GeneralizedDiceLoss", "GeneralizedDiceOptions", "generalized_dice_loss"]

#: The class weightings: 1 / G_c ** 2 (Sudre et al.), 1 / G_c, and 1 (no weighting).
WEIGHT_TYPES = ("square", "simple", "uniform")


@dataclass(frozen=True)
class GeneralizedDiceOptions:
    """The options of :func:`generalized_dice_loss` and :class:`GeneralizedDiceLoss` (their meaning there),
    with their defaults and checks.

    Raises:
        ValueError: unknown mode, reduction or weight_type, a smoothing term negative or not finite, a
            non-integer ignore_index, a non-bool sync_ddp.
    """

    mode: str = "multiclass"
    weight_type: str = "square"
    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5
    ignore_index: int | None = None
    per_image: bool = False
    include_background: bool = True
    from_logits: bool = True
    reduction: str = "mean"
    sync_ddp: bool = False

    def __post_init__(self) -> None:
        check_mode(self.mode)
        check_reduction(self.reduction)
        check_choice(self.weight_type, "weight_type", WEIGHT_TYPES)
        check_number(self.smooth_nr, "smooth_nr", minimum=0)
        check_number(self.smooth_dr, "smooth_dr", minimum=0)
        check_ignore_index(self.ignore_index)
        check_bool(self.sync_ddp, "sync_ddp")


def _volume_weights(card: Tensor, weight_type: str, include: Tensor) -> Tensor:
    """Class weights of the target volumes ``card`` ((C,) or (N, C)): ``weight_type`` of the present classes,
    the largest of those (per row) for absent ones, 0 for the classes ``include`` leaves out."""
    present = (card > 0) & include
    if weight_type == "uniform":
        return include.to(card.dtype).expand_as(card)
    safe = torch.where(present, card, torch.ones_like(card))
    w = safe.reciprocal()
    if weight_type == "square":
        w = w * w
    w = torch.where(present, w, torch.zeros_like(w))
    largest = w.amax(dim=-1, keepdim=True)  # 0 when no class is present: every weight 0, loss 0
    return torch.where(present, w, largest) * include


def generalized_dice_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = GeneralizedDiceOptions.mode,
    weight_type: str = GeneralizedDiceOptions.weight_type,
    smooth_nr: float = GeneralizedDiceOptions.smooth_nr,
    smooth_dr: float = GeneralizedDiceOptions.smooth_dr,
    ignore_index: int | None = GeneralizedDiceOptions.ignore_index,
    per_image: bool = GeneralizedDiceOptions.per_image,
    include_background: bool = GeneralizedDiceOptions.include_background,
    from_logits: bool = GeneralizedDiceOptions.from_logits,
    reduction: str = GeneralizedDiceOptions.reduction,
    sync_ddp: bool = GeneralizedDiceOptions.sync_ddp,
) -> Tensor:
    r"""Generalized Dice loss (Sudre et al., 2017).

    .. math::
        \ell = 1 - \frac{2 \sum_c w_c \sum p_c g_c + s_{nr}}{\sum_c w_c \sum (p_c + g_c) + s_{dr}},
        \qquad w_c = \frac{1}{G_c^2},\ \frac{1}{G_c}\ \text{or}\ 1, \qquad G_c = \sum g_c

    The inner sums run over the counted pixels of the batch (``per_image=False``, "batch" in MONAI) or of
    each image (``per_image=True``); ``p`` is ``softmax(input, 1)`` (multiclass) or ``sigmoid(input)``
    (binary, multilabel), or ``input`` with ``from_logits=False``; ``g`` the (one-hot) target, soft targets
    allowed. A class absent from the target gets the largest weight of the present classes (MONAI's rule:
    it replaces the infinite weights by the largest finite one). A zero denominator (``smooth_dr=0`` and
    nothing predicted or present) gives loss 0. Equal to MONAI's ``GeneralizedDiceLoss`` (``batch=True``
    for ``per_image=False``) on the options both have.

    The smoothing is not scaled with the weights: with ``"square"`` the denominator is about
    :math:`2 \sum_c 1 / G_c`, so for classes of more than about :math:`10^5` pixels the default
    ``smooth_nr = smooth_dr = 1e-5`` is no longer negligible (as in MONAI); lower them for large volumes.

    Args:
        input: logits (or probabilities, ``from_logits=False``). multiclass: (N, C, \*); binary: (N, \*) or
            (N, 1, \*); multilabel: (N, C, \*). fp16/bf16 are computed in float32.
        target: multiclass: (N, \*) integer class ids or (N, C, \*) probabilities; binary/multilabel: the
            input's shape, values in [0, 1].
        mode: ``"multiclass"`` | ``"binary"`` | ``"multilabel"``.
        weight_type: ``"square"`` (default, Sudre et al.) | ``"simple"`` | ``"uniform"``.
        smooth_nr: >= 0, added to the numerator. Default: 1e-5
        smooth_dr: >= 0, added to the denominator. Default: 1e-5
        ignore_index: target value whose pixels (multiclass) or elements (binary/multilabel) leave every sum;
            in multiclass mode a valid class id also leaves the class sums.
        per_image: one loss per image instead of one for the batch.
        include_background: ``False`` drops class 0 from the sums (not in binary mode).
        from_logits: ``input`` holds logits (default) or probabilities in [0, 1].
        reduction: ``"none"``: the loss of each image, (N,), with ``per_image=True``, else the batch loss
            (a scalar); ``"sum"``: their sum; ``"mean"``: their mean.
        sync_ddp: sums over the global batch of a DDP job (all-reduced with gradient, as
            :func:`~seglosses.dice.dice_loss` does); the weights then come from the global class volumes.
            Ignored with ``per_image``.

    Returns:
        The loss, float32 for half-precision input: a scalar, or (N,) for ``reduction="none"`` with
        ``per_image=True``.

    Raises:
        ValueError: bad ``mode``/``reduction``/``weight_type``/smoothing, no class left, or inputs that do
            not fit ``mode`` (see :func:`seglosses._inputs.prepare`).
    """
    options = GeneralizedDiceOptions(mode=mode, weight_type=weight_type, smooth_nr=smooth_nr,
                                     smooth_dr=smooth_dr, ignore_index=ignore_index, per_image=per_image,
                                     include_background=include_background, from_logits=from_logits,
                                     reduction=reduction, sync_ddp=sync_ddp)  # fmt: skip
    return _generalized_dice(input, target, options)


def _generalized_dice(input: Tensor, target: Tensor, o: GeneralizedDiceOptions) -> Tensor:
    """The generalized Dice loss of the options ``o``."""
    prep = prepare(input, target, o.mode, o.ignore_index, from_logits=o.from_logits)
    x = prep.input
    n, num_classes, _ = x.shape
    include = included_classes(o.mode, num_classes, o.ignore_index, o.include_background, x.device)
    inter, pred, card = overlap_sums(prep, mode=o.mode, from_logits=o.from_logits, per_image=o.per_image,
                                     sync_ddp=o.sync_ddp)  # fmt: skip
    w = _volume_weights(card.detach(), o.weight_type, include)
    numerator = 2 * (w * inter).sum(-1) + o.smooth_nr
    denominator = (w * (pred + card)).sum(-1) + o.smooth_dr
    empty = denominator <= 0
    loss = torch.where(empty, 0.0, 1 - numerator / denominator.masked_fill(empty, 1.0))
    if o.reduction == "none":
        return loss
    total = loss.sum()
    if o.reduction == "sum" or not o.per_image:
        return total
    return total / max(n, 1)


class GeneralizedDiceLoss(LossModule, options=GeneralizedDiceOptions):
    r"""Generalized Dice loss, the module form of :func:`generalized_dice_loss` (formula, arguments and
    reductions there).

    .. math::
        \ell = 1 - \frac{2 \sum_c w_c \sum p_c g_c + s_{nr}}{\sum_c w_c \sum (p_c + g_c) + s_{dr}},
        \qquad w_c = 1 / G_c^2 \text{ (default)}

    A class absent from the target gets the largest weight of the present classes (as in MONAI).

    Shape:
        ``*`` is any number of spatial dims, including none.

        - multiclass: input (N, C, \*) logits; target (N, \*) class ids in [0, C) (or ``ignore_index``), or
          (N, C, \*) class probabilities.
        - binary: input (N, \*) or (N, 1, \*) logits; target of the input's shape, in [0, 1].
        - multilabel: input (N, C, \*) logits; target (N, C, \*), in [0, 1].
        - output: a scalar; for ``reduction="none"`` with ``per_image=True`` the loss of each image, (N,).
          float32 for fp16/bf16 input.

    Examples::

        >>> import torch
        >>> from seglosses import GeneralizedDiceLoss
        >>> gen = torch.Generator().manual_seed(0)
        >>> x = torch.randn(2, 3, 8, 8, generator=gen)  # logits (N, C, H, W)
        >>> y = torch.randint(0, 3, (2, 8, 8), generator=gen)  # class ids (N, H, W)
        >>> loss = GeneralizedDiceLoss()
        >>> bool(0 < loss(x, y) < 1)
        True
        >>> GeneralizedDiceLoss(per_image=True, reduction="none")(x, y).shape
        torch.Size([2])
        >>> perfect = torch.nn.functional.one_hot(y, 3).movedim(-1, 1).float()  # probabilities = target
        >>> GeneralizedDiceLoss(from_logits=False)(perfect, y)
        tensor(0.)
    """

    def __init__(
        self,
        *,
        mode: str = GeneralizedDiceOptions.mode,
        weight_type: str = GeneralizedDiceOptions.weight_type,
        smooth_nr: float = GeneralizedDiceOptions.smooth_nr,
        smooth_dr: float = GeneralizedDiceOptions.smooth_dr,
        ignore_index: int | None = GeneralizedDiceOptions.ignore_index,
        per_image: bool = GeneralizedDiceOptions.per_image,
        include_background: bool = GeneralizedDiceOptions.include_background,
        from_logits: bool = GeneralizedDiceOptions.from_logits,
        reduction: str = GeneralizedDiceOptions.reduction,
        sync_ddp: bool = GeneralizedDiceOptions.sync_ddp,
    ) -> None:
        super().__init__(GeneralizedDiceOptions(mode=mode, weight_type=weight_type, smooth_nr=smooth_nr,
                                                smooth_dr=smooth_dr, ignore_index=ignore_index,
                                                per_image=per_image, include_background=include_background,
                                                from_logits=from_logits, reduction=reduction,
                                                sync_ddp=sync_ddp))  # fmt: skip

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _generalized_dice(input, target, self.options)
