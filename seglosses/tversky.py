"""Tversky loss (Salehi et al., 2017) and focal Tversky loss (Abraham & Khan, 2019).

Per class ``c``, with ``p`` the predicted probability of ``c`` and ``g`` its target, summed over the counted
(not ignored) pixels of the batch (or of each image with ``per_image=True``)::

    TP = sum(p * g),  FP = sum(p * (1 - g)),  FN = sum((1 - p) * g)
    TI_c = (TP + smooth) / (TP + alpha * FP + beta * FN + smooth)
    loss_c = (1 - TI_c) ** gamma

``alpha`` weighs false positives and ``beta`` false negatives (as in smp and MONAI); ``alpha = beta = 0.5``
is the Dice coefficient with ``smooth`` doubled, ``gamma = 0.75`` the focal Tversky loss. The sums are
those of the Dice loss (:mod:`seglosses._overlap`: ``FP = P - TP``, ``FN = G - TP``), so the loss costs what
:func:`~seglosses.dice.dice_loss` costs and shares its hand-written multiclass backward (first derivatives
only; ``tversky_loss(input.softmax(1), target, from_logits=False)`` supports a double backward).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from seglosses._inputs import check_class_values, check_reduction, prepare
from seglosses._options import PER_CLASS, LossModule
from seglosses._overlap import class_weights_of, overlap_sums, reduce_per_class
from seglosses._shared import ClassValues, hinted
from seglosses.checks import check_bool, check_ignore_index, check_number
from seglosses.modes import check_mode

__all__ = ["TverskyLoss", "TverskyOptions", "tversky_loss"]

# For 0 < gamma < 1 the slope gamma * u ** (gamma - 1) of u ** gamma (u = 1 - TI) is infinite at u = 0, which
# a perfect prediction at large logits reaches exactly in float32. Below POW_FLOOR the loss continues
# linearly (u * POW_FLOOR ** (gamma - 1), continuous at POW_FLOOR, less than POW_FLOOR ** gamma), so the
# gradient stays finite.
POW_FLOOR = 1e-12


@dataclass(frozen=True)
class TverskyOptions:
    """The options of :func:`tversky_loss` and :class:`TverskyLoss` (their meaning there), with their
    defaults and checks; ``class_weights`` is kept as None, a number or a tuple of floats.

    Raises:
        ValueError: unknown mode or reduction, ``alpha``/``beta``/``smooth`` negative or not finite,
            ``gamma`` not a finite number > 0, ``class_weights`` negative or not 1-D, a non-integer
            ignore_index, a non-bool sync_ddp.
    """

    mode: str = "multiclass"
    alpha: float = 0.5
    beta: float = 0.5
    gamma: float = 1.0
    smooth: float = 1.0
    class_weights: ClassValues = field(default=None, metadata=PER_CLASS)
    ignore_index: int | None = None
    per_image: bool = False
    include_background: bool = True
    from_logits: bool = True
    reduction: str = "mean"
    sync_ddp: bool = False

    def __post_init__(self) -> None:
        check_mode(self.mode)
        check_reduction(self.reduction)
        check_number(self.alpha, "alpha", minimum=0)
        check_number(self.beta, "beta", minimum=0)
        with hinted(" (1: Tversky; 0.75: the focal Tversky loss of Abraham & Khan)"):
            check_number(self.gamma, "gamma", greater_than=0)
        check_number(self.smooth, "smooth", minimum=0)
        weights = check_class_values("class_weights", self.class_weights, self.mode)
        object.__setattr__(self, "class_weights", weights)
        check_ignore_index(self.ignore_index)
        check_bool(self.sync_ddp, "sync_ddp")


def _power(u: Tensor, gamma: float) -> Tensor:
    """``u ** gamma`` for ``u`` in [0, 1] with a finite gradient (see :data:`POW_FLOOR`)."""
    if gamma == 1:
        return u
    if gamma > 1:
        return u.pow(gamma)  # slope 0 at u = 0
    safe = u.clamp_min(POW_FLOOR)
    return torch.where(u >= POW_FLOOR, safe.pow(gamma), u * POW_FLOOR ** (gamma - 1))


def tversky_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = TverskyOptions.mode,
    alpha: float = TverskyOptions.alpha,
    beta: float = TverskyOptions.beta,
    gamma: float = TverskyOptions.gamma,
    smooth: float = TverskyOptions.smooth,
    class_weights: ClassValues = TverskyOptions.class_weights,
    ignore_index: int | None = TverskyOptions.ignore_index,
    per_image: bool = TverskyOptions.per_image,
    include_background: bool = TverskyOptions.include_background,
    from_logits: bool = TverskyOptions.from_logits,
    reduction: str = TverskyOptions.reduction,
    sync_ddp: bool = TverskyOptions.sync_ddp,
) -> Tensor:
    r"""Tversky loss; focal Tversky loss for ``gamma != 1``.

    For each class ``c``:

    .. math::
        TI_c = \frac{TP_c + s}{TP_c + \alpha FP_c + \beta FN_c + s}, \qquad
        \ell_c = (1 - TI_c)^{\gamma}

    with :math:`TP_c = \sum p g`, :math:`FP_c = \sum p (1 - g)`, :math:`FN_c = \sum (1 - p) g` over the
    counted pixels of the batch (``per_image=False``) or of each image (``per_image=True``); ``p`` is
    ``softmax(input, 1)`` (multiclass) or ``sigmoid(input)`` (binary, multilabel), or ``input`` itself with
    ``from_logits=False``; ``g`` is the (one-hot) target, soft targets allowed. ``1 - TI_c`` is computed as
    :math:`(\alpha FP_c + \beta FN_c) / (TP_c + \alpha FP_c + \beta FN_c + s)`, without cancellation. A zero
    denominator (only with ``smooth=0``) gives :math:`TI_c = 1`.

    ``alpha = beta = 0.5, gamma = 1`` equals :func:`~seglosses.dice.dice_loss` with ``smooth`` doubled.
    ``alpha > beta`` penalises false positives more, ``beta > alpha`` false negatives (better recall of small
    structures: Salehi et al. use ``alpha = 0.3, beta = 0.7``). ``gamma < 1`` (Abraham & Khan: 0.75) raises
    every per-class loss below 1 and steepens it near :math:`TI_c = 1`; below
    :math:`1 - TI_c = 10^{-12}` the power continues linearly, so that the gradient stays finite at
    :math:`TI_c = 1`.

    Args:
        input: logits (or probabilities, ``from_logits=False``). multiclass: (N, C, \*); binary: (N, \*) or
            (N, 1, \*); multilabel: (N, C, \*). fp16/bf16 are computed in float32.
        target: multiclass: (N, \*) integer class ids or (N, C, \*) probabilities; binary/multilabel: the
            input's shape, values in [0, 1].
        mode: ``"multiclass"`` | ``"binary"`` | ``"multilabel"``.
        alpha: weight of the false positives, >= 0. Default: 0.5
        beta: weight of the false negatives, >= 0. Default: 0.5
        gamma: exponent > 0 of ``1 - TI``; 1 is the Tversky loss, 0.75 the focal Tversky loss. Default: 1
        smooth: >= 0, added to numerator and denominator. Default: 1
        class_weights: ``w_c`` >= 0 of the class average, a number or one value per class. Default: 1
        ignore_index: target value whose pixels (multiclass) or elements (binary/multilabel) are left out of
            every sum; in multiclass mode a valid class id also leaves the average.
        per_image: Tversky index per image instead of pooled over the batch.
        include_background: ``False`` drops class 0 from the average (not in binary mode).
        from_logits: ``input`` holds logits (default) or probabilities in [0, 1].
        reduction: as :func:`~seglosses.dice.dice_loss`: ``"none"`` gives the weighted per-class losses
            ``w_c * loss_c``, (C,) or (N, C) with ``per_image``; ``"sum"`` their sum; ``"mean"`` divides
            it by the summed weights of the included classes (times N with ``per_image``).
        sync_ddp: batch Tversky over the global batch of a DDP job (the sums are all-reduced with
            gradient, exactly as :func:`~seglosses.dice.dice_loss` does). Ignored with ``per_image``.

    Returns:
        The loss, float32 for half-precision input: a scalar, or (C,)/(N, C) for ``reduction="none"``.

    Raises:
        ValueError: bad ``mode``/``reduction``/``alpha``/``beta``/``gamma``/``smooth``/``class_weights``,
            no class left to average over, or inputs that do not fit ``mode`` (see
            :func:`seglosses._inputs.prepare`).
    """
    options = TverskyOptions(mode=mode, alpha=alpha, beta=beta, gamma=gamma, smooth=smooth,
                             class_weights=class_weights, ignore_index=ignore_index, per_image=per_image,
                             include_background=include_background, from_logits=from_logits,
                             reduction=reduction, sync_ddp=sync_ddp)  # fmt: skip
    return _tversky(input, target, options, options.class_weights)


def _tversky(input: Tensor, target: Tensor, o: TverskyOptions, class_weights: ClassValues) -> Tensor:
    """The Tversky loss of the options ``o`` with the per-class ``class_weights`` (a module's buffer)."""
    prep = prepare(input, target, o.mode, o.ignore_index, from_logits=o.from_logits)
    x = prep.input
    n, num_classes, _ = x.shape
    weights, total_weight = class_weights_of(
        o.mode, class_weights, num_classes, o.ignore_index, o.include_background, like=x
    )
    tp, pred, card = overlap_sums(prep, mode=o.mode, from_logits=o.from_logits, per_image=o.per_image,
                                  sync_ddp=o.sync_ddp)  # fmt: skip
    # FP = P - TP and FN = G - TP are >= 0; the clamp removes rounding below 0
    errors = (pred - tp).clamp_min(0).mul(o.alpha) + (card - tp).clamp_min(0).mul(o.beta)
    denominator = tp + errors + o.smooth
    if o.smooth > 0:
        u = errors / denominator
    else:
        empty = denominator <= 0  # nothing predicted and nothing in the target: TI = 1
        u = torch.where(empty, 0.0, errors / denominator.masked_fill(empty, 1.0))
    loss = _power(u, float(o.gamma)) * weights
    return reduce_per_class(loss, total_weight, o.reduction, o.per_image, n)


class TverskyLoss(LossModule, options=TverskyOptions):
    r"""Tversky / focal Tversky loss, the module form of :func:`tversky_loss` (formula, arguments and
    reductions there).

    .. math::
        \ell_c = \left(1 - \frac{TP_c + s}{TP_c + \alpha FP_c + \beta FN_c + s}\right)^{\gamma}

    The keyword arguments are kept in ``options`` (a :class:`TverskyOptions`) and read as attributes of the
    same names; ``class_weights`` (if given) is a non-persistent (C,) float32 buffer that follows
    ``.to(device)``.

    Shape:
        ``*`` is any number of spatial dims, including none.

        - multiclass: input (N, C, \*) logits; target (N, \*) class ids in [0, C) (or ``ignore_index``), or
          (N, C, \*) class probabilities.
        - binary: input (N, \*) or (N, 1, \*) logits; target of the input's shape, in [0, 1].
        - multilabel: input (N, C, \*) logits; target (N, C, \*), in [0, 1].
        - output: a scalar for ``reduction="mean"`` or ``"sum"``; for ``"none"`` the weighted per-class
          losses, (C,), or (N, C) with ``per_image=True``. float32 for fp16/bf16 input.

    Examples::

        >>> import torch
        >>> from seglosses import DiceLoss, TverskyLoss
        >>> gen = torch.Generator().manual_seed(0)
        >>> x = torch.randn(2, 3, 8, 8, generator=gen)  # logits (N, C, H, W)
        >>> y = torch.randint(0, 3, (2, 8, 8), generator=gen)  # class ids (N, H, W)
        >>> TverskyLoss(alpha=0.3, beta=0.7)(x, y).shape
        torch.Size([])
        >>> TverskyLoss(reduction="none")(x, y).shape  # one loss per class
        torch.Size([3])
        >>> # alpha = beta = 0.5, gamma = 1 is the Dice loss with smooth doubled
        >>> torch.allclose(TverskyLoss(smooth=1.0)(x, y), DiceLoss(smooth=2.0)(x, y))
        True
        >>> focal = TverskyLoss(alpha=0.3, beta=0.7, gamma=0.75, reduction="none")(x, y)
        >>> plain = TverskyLoss(alpha=0.3, beta=0.7, reduction="none")(x, y)
        >>> torch.allclose(focal, plain ** 0.75)
        True
    """

    class_weights: Tensor | float | None

    def __init__(
        self,
        *,
        mode: str = TverskyOptions.mode,
        alpha: float = TverskyOptions.alpha,
        beta: float = TverskyOptions.beta,
        gamma: float = TverskyOptions.gamma,
        smooth: float = TverskyOptions.smooth,
        class_weights: ClassValues = TverskyOptions.class_weights,
        ignore_index: int | None = TverskyOptions.ignore_index,
        per_image: bool = TverskyOptions.per_image,
        include_background: bool = TverskyOptions.include_background,
        from_logits: bool = TverskyOptions.from_logits,
        reduction: str = TverskyOptions.reduction,
        sync_ddp: bool = TverskyOptions.sync_ddp,
    ) -> None:
        super().__init__(TverskyOptions(mode=mode, alpha=alpha, beta=beta, gamma=gamma, smooth=smooth,
                                        class_weights=class_weights, ignore_index=ignore_index,
                                        per_image=per_image, include_background=include_background,
                                        from_logits=from_logits, reduction=reduction,
                                        sync_ddp=sync_ddp))  # fmt: skip

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _tversky(input, target, self.options, self.class_weights)
