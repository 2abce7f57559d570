"""Lovász-softmax and Lovász hinge losses (Berman, Rannen Triki & Blaschko, CVPR 2018): convex surrogates of
the Jaccard loss 1 - IoU, one per class.

For class ``c`` and the errors ``e_i`` of the counted pixels, sorted in decreasing order (``e_(1) >= e_(2)
>= ...``), with ``g_(k)`` the target of the pixel of rank ``k``, ``G = sum g`` and the cumulative sums
``cg_k = g_(1) + ... + g_(k)``, ``cb_k = k - cg_k``::

    J_k = 1 - (G - cg_k) / (G + cb_k) = k / (G + cb_k)       (J_0 = 0)
    loss_c = sum_k e_(k) * (J_k - J_(k-1))

``J_k`` is the Jaccard loss of the set of the ``k`` largest errors and ``loss_c`` its Lovász extension at
``e``. The increments are formed without cancellation, ``J_k - J_(k-1) = (G - cg_k + k g_(k)) / ((G + cb_k)
(G + cb_(k-1)))``, from exact counts for hard labels. Errors: multiclass ``e = |g - p_c|`` with ``p`` the
softmax (Lovász-softmax); binary and multilabel ``e = max(0, 1 - x (2 g - 1))`` of the logit ``x`` (Lovász
hinge).

The computation (one sort per class of the pixels that add to the loss, the gradient formed in the forward
pass; first derivatives only) is in :mod:`seglosses._lovasz_core`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from seglosses._inputs import Prepared, check_class_values, check_reduction, prepare
from seglosses._lovasz_core import lovasz_per_class
from seglosses._options import PER_CLASS, LossModule
from seglosses._overlap import class_weights_of
from seglosses._shared import ClassValues
from seglosses.checks import check_bool, check_choice, check_ignore_index
from seglosses.modes import BINARY_MODE, MULTICLASS_MODE, check_mode

__all__ = ["CLASSES", "LovaszLoss", "LovaszOptions", "lovasz_loss"]

#: ``"present"``: average over the classes present in the target (per image with ``per_image``);
#: ``"all"``: over every class.
CLASSES = ("present", "all")


@dataclass(frozen=True)
class LovaszOptions:
    """The options of :func:`lovasz_loss` and :class:`LovaszLoss` (their meaning there), with their defaults
    and checks; ``class_weights`` is kept as None, a number or a tuple of floats.

    Raises:
        ValueError: unknown mode, reduction or classes, non-bool per_image or from_logits,
            ``class_weights`` negative or not 1-D, a non-integer ignore_index, ``from_logits=False`` in
            binary/multilabel mode.
    """

    mode: str = "multiclass"
    per_image: bool = False
    classes: str = "present"
    class_weights: ClassValues = field(default=None, metadata=PER_CLASS)
    ignore_index: int | None = None
    from_logits: bool = True
    reduction: str = "mean"

    def __post_init__(self) -> None:
        check_mode(self.mode)
        check_reduction(self.reduction)
        check_bool(self.per_image, "per_image")
        check_choice(self.classes, "classes", CLASSES)
        weights = check_class_values("class_weights", self.class_weights, self.mode)
        object.__setattr__(self, "class_weights", weights)
        check_ignore_index(self.ignore_index)
        check_bool(self.from_logits, "from_logits")
        if self.mode != MULTICLASS_MODE and not self.from_logits:
            raise ValueError(
                f"from_logits=False is not defined for the {self.mode} Lovász hinge, which works on logits "
                "(errors 1 - x (2g - 1)); pass the logits, or use mode='multiclass' with the probabilities "
                "of both classes"
            )


def lovasz_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = LovaszOptions.mode,
    per_image: bool = LovaszOptions.per_image,
    classes: str = LovaszOptions.classes,
    class_weights: ClassValues = LovaszOptions.class_weights,
    ignore_index: int | None = LovaszOptions.ignore_index,
    from_logits: bool = LovaszOptions.from_logits,
    reduction: str = LovaszOptions.reduction,
) -> Tensor:
    r"""Lovász-softmax (multiclass) or Lovász hinge (binary, multilabel) loss (Berman et al., 2018).

    For class ``c``, with the errors of the counted pixels sorted in decreasing order
    :math:`e_{(1)} \ge e_{(2)} \ge \dots` and the targets :math:`g_{(k)}` in that order:

    .. math::
        \ell_c = \sum_k e_{(k)} \, \Delta J_c(k), \qquad
        J_c(k) = 1 - \frac{G_c - \sum_{i \le k} g_{(i)}}{G_c + \sum_{i \le k} (1 - g_{(i)})}

    (:math:`\Delta J_c(k) = J_c(k) - J_c(k - 1)`, :math:`J_c(0) = 0`, :math:`G_c = \sum g`): the Lovász
    extension of the Jaccard loss :math:`1 - IoU_c` at the error vector. On a hard (one-hot) prediction
    it equals :math:`1 - IoU_c` exactly. Errors: multiclass :math:`e = |g - p_c|`, ``p`` the softmax of the
    logits (or ``input`` with ``from_logits=False``); binary/multilabel (the Lovász hinge on the logits
    ``x``): :math:`e = \max(0, 1 - x (2 g - 1))`. Soft targets allowed.

    The pixels are pooled over the batch (``per_image=False``) or taken per image. Classes averaged
    (weighted by ``class_weights``): multiclass and multilabel ``classes="present"`` (default) the classes
    present in the target (:math:`G_c > 0`; per image with ``per_image``), ``"all"`` every class with
    counted pixels; binary mode always counts its one class (Berman's Lovász hinge: an empty target costs
    the largest hinge error, so false positives on empty images are penalised). In multiclass mode an
    ``ignore_index`` that is a class id leaves the average.

    One sort per computed class on the device, of the pixels that add to the loss (see
    :mod:`seglosses.lovasz`); first derivatives only.

    Args:
        input: logits (multiclass also probabilities with ``from_logits=False``). multiclass: (N, C, \*);
            binary: (N, \*) or (N, 1, \*); multilabel: (N, C, \*). fp16/bf16 are computed in float32.
        target: multiclass: (N, \*) integer class ids or (N, C, \*) probabilities; binary/multilabel: the
            input's shape, values in [0, 1].
        mode: ``"multiclass"`` | ``"binary"`` | ``"multilabel"``.
        per_image: the loss of each image (Berman's ``per_image``) instead of pooling the batch.
        classes: ``"present"`` | ``"all"`` (see above).
        class_weights: ``w_c`` >= 0 of the class average, a number or one value per class. Default: 1
        ignore_index: target value whose pixels (multiclass) or elements (binary/multilabel) are left out.
        from_logits: multiclass only: ``input`` holds logits (default) or probabilities in [0, 1]; the
            hinge of binary/multilabel mode needs logits (``False`` raises).
        reduction: ``"none"``: the weighted per-class losses ``w_c * loss_c``, (C,), or (N, C) with
            ``per_image``, 0 for the classes not averaged; ``"sum"``: their sum; ``"mean"``: the weighted mean
            over the averaged classes, with ``per_image`` the mean over images of each image's weighted
            mean (images without a counted pixel leave it). 0 when nothing counts.

    Returns:
        The loss, float32 for half-precision input: a scalar, or (C,)/(N, C) for ``reduction="none"``.

    Raises:
        ValueError: bad ``mode``/``reduction``/``classes``/``class_weights``, ``from_logits=False`` in
            binary/multilabel mode, a target that requires grad, or inputs that do not fit ``mode`` (see
            :func:`seglosses._inputs.prepare`).
    """
    options = LovaszOptions(mode=mode, per_image=per_image, classes=classes, class_weights=class_weights,
                            ignore_index=ignore_index, from_logits=from_logits,
                            reduction=reduction)  # fmt: skip
    return _lovasz(input, target, options, options.class_weights)


def _lovasz(input: Tensor, target: Tensor, o: LovaszOptions, class_weights: ClassValues) -> Tensor:
    """The Lovász loss of the options ``o`` with the per-class ``class_weights`` (a module's buffer)."""
    if isinstance(target, Tensor) and target.requires_grad:
        raise ValueError(
            "target requires grad, but the Lovász loss has no gradient for it; pass target.detach()"
        )
    prep = prepare(input, target, o.mode, o.ignore_index, from_logits=o.from_logits)
    x = prep.input
    n, num_classes, s = x.shape
    weights, _ = class_weights_of(o.mode, class_weights, num_classes, o.ignore_index, True, like=x)
    present, kept = _counts(prep, o.per_image)  # (R, C) each
    counted = kept > 0
    if o.classes == "present" and o.mode != BINARY_MODE:
        counted &= present > 0
    weight = weights * counted  # (R, C)
    run = tuple(k for k, on in enumerate((weight > 0).any(0).tolist()) if on) if n * s else ()
    softmax = o.mode == MULTICLASS_MODE and o.from_logits
    hinge = o.mode != MULTICLASS_MODE
    per_class = lovasz_per_class(x, prep.target, prep.valid, run, o.per_image, softmax, hinge)
    weighted = per_class * weight
    if o.reduction == "none":
        return weighted if o.per_image else weighted.squeeze(0)
    total = weighted.sum(-1)  # (R,)
    if o.reduction == "sum":
        return total.sum()
    row_weight = weight.sum(-1)
    averaged = row_weight > 0
    means = total / torch.where(averaged, row_weight, torch.ones_like(row_weight))
    return means.sum() / averaged.sum().clamp_min(1)


def _counts(prep: Prepared, per_image: bool) -> tuple[Tensor, Tensor]:
    """Target mass ``G`` and counted pixels per row and class, (R, C) each (R = N or 1)."""
    x, t, valid = prep.input, prep.target, prep.valid
    n, c, s = x.shape
    if prep.index_target:
        ones = x.new_ones(()).expand(t.shape) if valid is None else valid.to(x.dtype)
        present = x.new_zeros(n, c).scatter_add_(1, t, ones)
        kept = ones.sum(-1, keepdim=True).expand(n, c)
    else:
        present = t.sum(-1)
        kept = x.new_full((n, c), float(s)) if valid is None else valid.sum(-1).to(x.dtype)
    if not per_image:
        present, kept = present.sum(0, keepdim=True), kept.sum(0, keepdim=True)
    return present, kept


class LovaszLoss(LossModule, options=LovaszOptions):
    r"""Lovász-softmax / Lovász hinge loss, the module form of :func:`lovasz_loss` (formula, arguments and
    reductions there).

    .. math::
        \ell_c = \sum_k e_{(k)} \, \Delta J_c(k), \qquad
        J_c(k) = 1 - \frac{G_c - \sum_{i \le k} g_{(i)}}{G_c + \sum_{i \le k} (1 - g_{(i)})}

    with the errors sorted in decreasing order; on hard predictions :math:`\ell_c = 1 - IoU_c`. The keyword
    arguments are kept in ``options`` (a :class:`LovaszOptions`) and read as attributes of the same names;
    ``class_weights`` (if given) is a non-persistent (C,) float32 buffer that follows ``.to(device)``.

    Shape:
        ``*`` is any number of spatial dims, including none.

        - multiclass: input (N, C, \*) logits (or probabilities); target (N, \*) class ids in [0, C) (or
          ``ignore_index``), or (N, C, \*) class probabilities.
        - binary: input (N, \*) or (N, 1, \*) logits; target of the input's shape, in [0, 1].
        - multilabel: input (N, C, \*) logits; target (N, C, \*), in [0, 1].
        - output: a scalar for ``reduction="mean"`` or ``"sum"``; for ``"none"`` the weighted per-class
          losses, (C,), or (N, C) with ``per_image=True``. float32 for fp16/bf16 input.

    Examples::

        >>> import torch
        >>> from seglosses import LovaszLoss
        >>> y = torch.tensor([[0, 0, 1, 1, 2, 2]])  # class ids (N=1, S=6)
        >>> hard = torch.tensor([[0, 1, 1, 1, 2, 0]])  # a hard prediction: IoU 1/3, 2/3, 1/2
        >>> probs = torch.nn.functional.one_hot(hard, 3).movedim(-1, 1).float()  # (N, C, S)
        >>> LovaszLoss(from_logits=False, reduction="none")(probs, y)  # 1 - IoU per class
        tensor([0.6667, 0.3333, 0.5000])
        >>> gen = torch.Generator().manual_seed(0)
        >>> x = torch.randn(2, 3, 8, 8, generator=gen)  # logits (N, C, H, W)
        >>> labels = torch.randint(0, 3, (2, 8, 8), generator=gen)
        >>> LovaszLoss(per_image=True, reduction="none")(x, labels).shape
        torch.Size([2, 3])
        >>> LovaszLoss(mode="binary")(x[:, 0], (labels > 0).float()).shape  # the Lovász hinge
        torch.Size([])
    """

    class_weights: Tensor | float | None

    def __init__(
        self,
        *,
        mode: str = LovaszOptions.mode,
        per_image: bool = LovaszOptions.per_image,
        classes: str = LovaszOptions.classes,
        class_weights: ClassValues = LovaszOptions.class_weights,
        ignore_index: int | None = LovaszOptions.ignore_index,
        from_logits: bool = LovaszOptions.from_logits,
        reduction: str = LovaszOptions.reduction,
    ) -> None:
        super().__init__(LovaszOptions(mode=mode, per_image=per_image, classes=classes,
                                       class_weights=class_weights, ignore_index=ignore_index,
                                       from_logits=from_logits, reduction=reduction))  # fmt: skip

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _lovasz(input, target, self.options, self.class_weights)
