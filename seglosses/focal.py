"""Focal loss (Lin et al., 2017) and cross-entropy for segmentation, exact and numerically stable.

The options of each loss are a frozen dataclass, :class:`FocalOptions` and :class:`CrossEntropyOptions`:
their defaults and checks are written there once (see :mod:`seglosses._options`). The computation is in
:mod:`seglosses._focal_core`: hand-written :class:`torch.autograd.Function`\\ s that compute the analytic
gradient in the forward pass and save only that gradient (one float32 tensor of the input's size). All
terms are evaluated in log space, so loss and gradient stay finite for logits up to about 1e4 in magnitude
and every ``gamma >= 0``, including ``0 < gamma < 1`` where ``(1 - p) ** gamma`` has an infinite derivative
at ``p = 1``.

First derivatives only: every path of :func:`focal_loss`, :class:`FocalLoss` and :class:`CrossEntropyLoss`
uses such a Function, so a double backward through them (``create_graph=True``: gradient penalties,
MAML, Hessian-vector products) raises a ``RuntimeError`` that says so. For a second derivative use an
autograd formulation: ``F.cross_entropy`` (``gamma = 0``), ``torchvision.ops.sigmoid_focal_loss``
(binary), or ``-((1 - p_y) ** gamma * log p_y)`` written with ``F.log_softmax`` and ``gather``
(derivatives finite for integer ``gamma``).

NaN logits are not checked (the check would cost 2-12 % of a loss step, see
:func:`seglosses._inputs.prepare`): they give a NaN loss, which a check of the loss value catches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from seglosses._focal_core import focal_terms
from seglosses._inputs import check_class_values, check_reduction
from seglosses._options import PER_CLASS, LossModule
from seglosses._shared import ClassValues
from seglosses.checks import check_ignore_index, check_number
from seglosses.modes import check_mode

__all__ = [
    "CrossEntropyLoss", "CrossEntropyOptions", "FocalLoss", "FocalOptions", "cross_entropy", "focal_loss",
]  # fmt: skip


def _check_common(options: FocalOptions | CrossEntropyOptions) -> None:
    """The checks of the options both losses have."""
    check_mode(options.mode)
    check_reduction(options.reduction)
    check_ignore_index(options.ignore_index)
    check_number(options.label_smoothing, "label_smoothing", minimum=0, maximum=1)


@dataclass(frozen=True)
class FocalOptions:
    """The options of :func:`focal_loss` and :class:`FocalLoss` (their meaning there), with their defaults
    and checks; ``alpha`` is kept as None, a number or a tuple of floats.

    Raises:
        ValueError: unknown mode or reduction, negative or non-finite gamma, alpha negative, not 1-D, or
            (binary/multilabel) outside [0, 1], a non-integer ignore_index, label_smoothing outside [0, 1].
    """

    mode: str = "multiclass"
    gamma: float = 2.0
    alpha: ClassValues = field(default=None, metadata=PER_CLASS)
    ignore_index: int | None = None
    reduction: str = "mean"
    from_logits: bool = True
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        _check_common(self)
        check_number(self.gamma, "gamma", minimum=0)
        object.__setattr__(self, "alpha", check_class_values("alpha", self.alpha, self.mode))


@dataclass(frozen=True)
class CrossEntropyOptions:
    """The options of :func:`cross_entropy` and :class:`CrossEntropyLoss` (their meaning at
    :func:`focal_loss`), with their defaults and checks; ``weight`` is kept as None, a number or a tuple of
    floats.

    Raises:
        ValueError: unknown mode or reduction, weight negative or not 1-D, a non-integer ignore_index,
            label_smoothing outside [0, 1].
    """

    mode: str = "multiclass"
    weight: ClassValues = field(default=None, metadata=PER_CLASS)
    ignore_index: int | None = None
    reduction: str = "mean"
    from_logits: bool = True
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        _check_common(self)
        object.__setattr__(self, "weight", check_class_values("weight", self.weight, self.mode))


def focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = FocalOptions.mode,
    gamma: float = FocalOptions.gamma,
    alpha: ClassValues = FocalOptions.alpha,
    ignore_index: int | None = FocalOptions.ignore_index,
    reduction: str = FocalOptions.reduction,
    from_logits: bool = FocalOptions.from_logits,
    label_smoothing: float = FocalOptions.label_smoothing,
) -> Tensor:
    r"""Focal loss, ``FL = -alpha_t (1 - p_t)^gamma log p_t`` (Lin et al., 2017).

    Args:
        input: logits (or probabilities if ``from_logits=False``).
            multiclass: (N, C, \*); binary: (N, \*) or (N, 1, \*); multilabel: (N, C, \*).
            ``*`` is any number of spatial dims, including none. fp16/bf16 are computed in float32.
        target: multiclass: (N, \*) int64 class indices or (N, C, \*) class probabilities;
            binary/multilabel: the input's shape, values in [0, 1] (soft labels allowed).
        mode: ``"multiclass"`` (softmax over dim 1), ``"binary"`` or ``"multilabel"`` (sigmoid).
        gamma: focusing parameter >= 0; 0 gives cross-entropy.
        alpha: multiclass: None, a number or C per-class weights (``alpha[y]`` multiplies a
            pixel's loss). binary/multilabel: None or a number in [0, 1] (multilabel also C values,
            one per channel) weighting positives by ``alpha`` and negatives by ``1 - alpha``.
        ignore_index: target value whose pixels (multiclass index targets) or elements
            (binary/multilabel) contribute neither loss nor gradient.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
            ``"none"``: per-pixel losses, shape (N, \*) in multiclass mode, else the input's shape.
            ``"mean"``: multiclass index targets divide the sum by the sum of ``alpha[y]`` over
            non-ignored pixels (like ``F.cross_entropy(weight=alpha)``, so a scalar alpha cancels);
            multiclass probability targets divide by N times the number of pixels;
            binary/multilabel divide by the number of non-ignored elements. If nothing counts
            (every pixel ignored), ``"mean"`` returns 0 with zero gradient, where
            ``F.cross_entropy`` returns NaN.
        from_logits: if False, ``input`` holds probabilities in [0, 1] (softmax outputs in
            multiclass mode); logs are clamped at -100 as in ``F.binary_cross_entropy``.
        label_smoothing: ``eps`` in [0, 1]; the target becomes the smoothed distribution, which goes
            through the probability-target formula. multiclass: ``t_c = (1 - eps) [y = c] + eps / C``
            (index targets; 0 at ignored pixels, and ``"mean"`` keeps the index targets' denominator)
            or ``(1 - eps) t_c + eps / C`` (probability targets), so the loss per pixel is
            ``-sum_c alpha_c t_c (1 - p_c)^gamma log p_c``; binary/multilabel: ``(1 - eps) t + eps / 2``
            per element (soft-target focal term). At ``gamma=0`` this is
            ``F.cross_entropy(..., label_smoothing=eps)``. Costs one (N, C, \*) target tensor.

    Returns:
        A scalar, or per-pixel losses for ``reduction="none"``; float32 for fp16/bf16 input.

    Raises:
        ValueError: unknown mode or reduction, negative or non-finite gamma, alpha of the wrong
            length, negative, or (binary/multilabel) outside [0, 1], label_smoothing outside [0, 1],
            and every shape, dtype and range check of :func:`seglosses._inputs.prepare`.

    With ``gamma=0`` and multiclass index targets this is
    ``F.cross_entropy(input, target, weight=alpha, ignore_index=ignore_index)``; binary with
    ``gamma=2, alpha=0.25`` equals ``torchvision.ops.sigmoid_focal_loss``.
    """
    options = FocalOptions(mode=mode, gamma=gamma, alpha=alpha, ignore_index=ignore_index,
                           reduction=reduction, from_logits=from_logits,
                           label_smoothing=label_smoothing)  # fmt: skip
    return focal_terms(input, target, options, gamma=options.gamma, alpha=options.alpha, weight=None)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = CrossEntropyOptions.mode,
    weight: ClassValues = CrossEntropyOptions.weight,
    ignore_index: int | None = CrossEntropyOptions.ignore_index,
    reduction: str = CrossEntropyOptions.reduction,
    from_logits: bool = CrossEntropyOptions.from_logits,
    label_smoothing: float = CrossEntropyOptions.label_smoothing,
) -> Tensor:
    r"""Cross-entropy, the functional form of :class:`CrossEntropyLoss` (:func:`focal_loss` at
    ``gamma=0`` with per-class ``weight``); arguments, shapes and reductions as there.

    multiclass: ``F.cross_entropy(input, target, weight, ignore_index=..., label_smoothing=...)``;
    binary/multilabel: ``F.binary_cross_entropy_with_logits`` with ``weight`` broadcast over dim 1 and the
    target smoothed to ``(1 - eps) t + eps / 2``. An all-ignored ``"mean"`` gives 0 instead of NaN.
    """
    options = CrossEntropyOptions(mode=mode, weight=weight, ignore_index=ignore_index, reduction=reduction,
                                  from_logits=from_logits, label_smoothing=label_smoothing)  # fmt: skip
    return focal_terms(input, target, options, gamma=0.0, alpha=None, weight=options.weight)


class FocalLoss(LossModule, options=FocalOptions):
    r"""Focal loss ``-alpha_t (1 - p_t)^gamma log p_t``, the module form of :func:`focal_loss`.

    The keyword arguments and their semantics are those of :func:`focal_loss`; they are kept in
    ``options`` (a :class:`FocalOptions`, checked once) and read as attributes of the same names
    (per-class ``alpha`` as a non-persistent float32 buffer). A training callback may set ``loss.gamma``
    between steps; the new value is checked.

    Shape:
        ``*`` is any number of spatial dims, including none.

        - multiclass: input (N, C, \*) logits; target (N, \*) integer class ids in [0, C) (or
          ``ignore_index``), or (N, C, \*) class probabilities.
        - binary: input (N, \*) or (N, 1, \*) logits; target of the input's shape, in [0, 1].
        - multilabel: input (N, C, \*) logits; target (N, C, \*), in [0, 1].
        - output: a scalar for ``reduction="mean"`` or ``"sum"``; for ``"none"`` the per-pixel losses,
          (N, \*) in multiclass mode, else the input's shape. float32 for fp16/bf16 input.

    Examples::

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from seglosses import FocalLoss
        >>> gen = torch.Generator().manual_seed(0)
        >>> x = torch.randn(2, 3, 4, 4, generator=gen)  # logits (N, C, H, W)
        >>> y = torch.randint(0, 3, (2, 4, 4), generator=gen)  # class ids (N, H, W)
        >>> loss = FocalLoss(mode="multiclass", gamma=2.0)
        >>> loss(x, y).shape
        torch.Size([])
        >>> FocalLoss(mode="multiclass", reduction="none")(x, y).shape
        torch.Size([2, 4, 4])
        >>> torch.allclose(FocalLoss(mode="multiclass", gamma=0.0)(x, y), F.cross_entropy(x, y))
        True
        >>> bool(loss(x, y) < F.cross_entropy(x, y))  # easy pixels weigh less
        True
        >>> t = torch.randint(0, 2, (2, 1, 4, 4), generator=gen).float()  # binary targets (N, 1, H, W)
        >>> FocalLoss(mode="binary", alpha=0.25, reduction="none")(x[:, :1], t).shape
        torch.Size([2, 1, 4, 4])
        >>> # label smoothing: the target distribution (1 - eps) one_hot(y) + eps / C
        >>> smooth = (0.9 * F.one_hot(y, 3).movedim(-1, 1) + 0.1 / 3).float()
        >>> torch.allclose(FocalLoss(label_smoothing=0.1)(x, y), FocalLoss()(x, smooth))
        True
    """

    alpha: Tensor | float | None

    def __init__(
        self,
        *,
        mode: str = FocalOptions.mode,
        gamma: float = FocalOptions.gamma,
        alpha: ClassValues = FocalOptions.alpha,
        ignore_index: int | None = FocalOptions.ignore_index,
        reduction: str = FocalOptions.reduction,
        from_logits: bool = FocalOptions.from_logits,
        label_smoothing: float = FocalOptions.label_smoothing,
    ) -> None:
        super().__init__(FocalOptions(mode=mode, gamma=gamma, alpha=alpha, ignore_index=ignore_index,
                                      reduction=reduction, from_logits=from_logits,
                                      label_smoothing=label_smoothing))  # fmt: skip

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return focal_terms(input, target, self.options, gamma=self.gamma, alpha=self.alpha, weight=None)


class CrossEntropyLoss(FocalLoss, options=CrossEntropyOptions):
    r"""Cross-entropy: :class:`FocalLoss` with ``gamma`` fixed at 0 and per-class ``weight``.

    multiclass: equals ``F.cross_entropy(input, target, weight=weight, ignore_index=...,
    label_smoothing=...)`` (index or probability targets), except that an all-ignored ``"mean"`` gives 0
    instead of NaN. binary/multilabel: equals ``F.binary_cross_entropy_with_logits(input, target, weight=w)``
    with ``w`` the per-class ``weight`` broadcast over channel dim 1 (a number in binary mode) and the target
    smoothed to ``(1 - eps) t + eps / 2``; ``"mean"`` divides by the number of non-ignored elements.

    Label smoothing (``eps = label_smoothing``), multiclass index targets, per pixel:

    .. math::
        \ell = -(1 - \varepsilon)\, w_y \log p_y - \frac{\varepsilon}{C} \sum_c w_c \log p_c,

    and ``"mean"`` divides the sum by :math:`\sum w_y` over the counted pixels, as ``F.cross_entropy``.

    Shape:
        As :class:`FocalLoss`: multiclass input (N, C, \*), target (N, \*) class ids or (N, C, \*)
        probabilities; binary input (N, \*) or (N, 1, \*) and multilabel input (N, C, \*), each with a
        target of the input's shape. Output: a scalar for ``"mean"``/``"sum"``; for ``"none"`` (N, \*)
        in multiclass mode, else the input's shape.

    Examples::

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from seglosses import CrossEntropyLoss
        >>> x = torch.tensor([[[2.0, -1.0], [0.5, 0.0], [-1.0, 3.0]]])  # (N=1, C=3, S=2)
        >>> y = torch.tensor([[0, 2]])
        >>> w = torch.tensor([1.0, 2.0, 0.5])
        >>> loss = CrossEntropyLoss(mode="multiclass", weight=w)
        >>> torch.allclose(loss(x, y), F.cross_entropy(x, y, weight=w))
        True
        >>> CrossEntropyLoss(ignore_index=2, reduction="none")(x, y)
        tensor([[0.2413, 0.0000]])
        >>> smoothed = CrossEntropyLoss(weight=w, label_smoothing=0.1)
        >>> torch.allclose(smoothed(x, y), F.cross_entropy(x, y, weight=w, label_smoothing=0.1))
        True
    """

    weight: Tensor | float | None
    #: No focal alpha (as :class:`FocalLoss` without one).
    alpha = None

    def __init__(
        self,
        *,
        mode: str = CrossEntropyOptions.mode,
        weight: ClassValues = CrossEntropyOptions.weight,
        ignore_index: int | None = CrossEntropyOptions.ignore_index,
        reduction: str = CrossEntropyOptions.reduction,
        from_logits: bool = CrossEntropyOptions.from_logits,
        label_smoothing: float = CrossEntropyOptions.label_smoothing,
    ) -> None:
        # LossModule's __init__, not FocalLoss's: the options are CrossEntropyOptions
        LossModule.__init__(self, CrossEntropyOptions(mode=mode, weight=weight, ignore_index=ignore_index,
                                                      reduction=reduction, from_logits=from_logits,
                                                      label_smoothing=label_smoothing))  # fmt: skip

    @property
    def gamma(self) -> float:
        return 0.0

    @gamma.setter
    def gamma(self, value: float) -> None:
        if value != 0:
            raise ValueError(
                f"CrossEntropyLoss has gamma fixed at 0, got gamma={value!r}; "
                "use FocalLoss for gamma > 0 or a gamma schedule"
            )

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return focal_terms(input, target, self.options, gamma=0.0, alpha=None, weight=self.weight)
