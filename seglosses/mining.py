"""Hard-pixel mining for cross-entropy: OHEM (as mmsegmentation's OHEM pixel sampler) and top-k (as
nnU-Net's ``TopKLoss``).

Both compute the per-pixel cross-entropy of :func:`seglosses.focal.cross_entropy` (its hand-written
gradient, first derivatives only; every mode, ``ignore_index``, fp16/bf16 in float32) and keep a subset of
the counted pixels, chosen by a k-th value selection (``torch.kthvalue``, linear time) rather than a full
sort. The selection itself carries no gradient. One device-to-host transfer more than the cross-entropy
(the number of counted pixels, which fixes ``k``). NaN losses are always selected, so that a NaN logit still
gives a NaN loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from seglosses._inputs import as_class_vector, check_class_values, check_reduction
from seglosses._options import PER_CLASS, LossModule
from seglosses._shared import ClassValues
from seglosses.checks import check_ignore_index, check_int, check_number
from seglosses.focal import cross_entropy
from seglosses.modes import BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE, check_mode

__all__ = [
    "OhemCrossEntropyLoss", "OhemOptions", "TopKCrossEntropyLoss", "TopKOptions", "ohem_cross_entropy",
    "topk_cross_entropy",
]  # fmt: skip


def _check_common(options: OhemOptions | TopKOptions) -> None:
    """The checks of the options both losses have, but ``weight``."""
    check_mode(options.mode)
    check_reduction(options.reduction)
    check_ignore_index(options.ignore_index)


@dataclass(frozen=True)
class OhemOptions:
    """The options of :func:`ohem_cross_entropy` and :class:`OhemCrossEntropyLoss` (their meaning there),
    with their defaults and checks; ``weight`` is kept as None, a number or a tuple of floats.

    Raises:
        ValueError: unknown mode or reduction, ``thresh`` outside [0, 1], ``min_kept`` not an int >= 0,
            ``weight`` negative or not 1-D, a non-integer ignore_index.
    """

    mode: str = "multiclass"
    thresh: float = 0.7
    min_kept: int = 100000
    weight: ClassValues = field(default=None, metadata=PER_CLASS)
    ignore_index: int | None = None
    reduction: str = "mean"

    def __post_init__(self) -> None:
        _check_common(self)
        object.__setattr__(self, "weight", check_class_values("weight", self.weight, self.mode))
        check_number(self.thresh, "thresh", minimum=0, maximum=1)
        check_int(self.min_kept, "min_kept", minimum=0)


@dataclass(frozen=True)
class TopKOptions:
    """The options of :func:`topk_cross_entropy` and :class:`TopKCrossEntropyLoss` (their meaning there),
    with their defaults and checks; ``weight`` is kept as None, a number or a tuple of floats.

    Raises:
        ValueError: unknown mode or reduction, ``k`` outside (0, 1], ``weight`` negative or not 1-D, a
            non-integer ignore_index.
    """

    mode: str = "multiclass"
    k: float = 0.1
    weight: ClassValues = field(default=None, metadata=PER_CLASS)
    ignore_index: int | None = None
    reduction: str = "mean"

    def __post_init__(self) -> None:
        _check_common(self)
        object.__setattr__(self, "weight", check_class_values("weight", self.weight, self.mode))
        check_number(self.k, "k", maximum=1, greater_than=0)


def _pixel_terms(
    input: Tensor, target: Tensor, mode: str, weight: ClassValues, ignore_index: int | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Per pixel (multiclass; per element otherwise), each of the shape of ``cross_entropy(...,
    reduction="none")``: the unweighted cross-entropy (no gradient: the hardness), the weighted one (the
    loss terms, with gradient), the weight of each pixel in ``"mean"`` (``None``: 1) and the counted
    pixels (``None``: all)."""
    ce = cross_entropy(input, target, mode=mode, ignore_index=ignore_index, reduction="none")
    valid = None if ignore_index is None else (target != ignore_index).reshape(ce.shape)
    if weight is None:
        return ce.detach(), ce, None, valid
    index = mode == MULTICLASS_MODE and not target.is_floating_point()
    if mode == MULTICLASS_MODE and not index:  # probability targets: the weight is inside the class sum
        values = cross_entropy(input, target, mode=mode, weight=weight, reduction="none")
        return ce.detach(), values, None, valid
    w = as_class_vector("weight", weight, 1 if mode == BINARY_MODE else input.shape[1], like=ce)
    assert w is not None
    if index:  # F.cross_entropy(weight=w): loss w[y] ce, "mean" divides by the sum of w[y]
        y = target.reshape(ce.shape).long()
        pixel_weight = w[y if valid is None else y.masked_fill(~valid, 0)]
        return ce.detach(), ce * pixel_weight, pixel_weight, valid
    shape = [1] * ce.ndim
    if mode == MULTILABEL_MODE:
        shape[1] = -1  # one weight per channel (dim 1); binary: one number
    return ce.detach(), ce * w.view(shape), None, valid


def _counted(valid: Tensor | None, like: Tensor) -> int:
    """Number of counted pixels (one device-to-host transfer with a mask)."""
    return like.numel() if valid is None else int(valid.sum())


def _kth_largest(values: Tensor, valid: Tensor | None, k: int) -> Tensor:
    """The ``k``-th largest of the counted ``values`` (1 <= k <= their number), a 0-dim tensor."""
    flat = values.reshape(-1) if valid is None else values.masked_fill(~valid, -torch.inf).reshape(-1)
    return torch.kthvalue(flat, flat.numel() - k + 1).values


def _reduce(terms: Tensor, reduction: str, denominator: Tensor) -> Tensor:
    if reduction == "none":
        return terms
    total = terms.sum()
    if reduction == "sum":
        return total
    return total / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def ohem_cross_entropy(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = OhemOptions.mode,
    thresh: float = OhemOptions.thresh,
    min_kept: int = OhemOptions.min_kept,
    weight: ClassValues = OhemOptions.weight,
    ignore_index: int | None = OhemOptions.ignore_index,
    reduction: str = OhemOptions.reduction,
) -> Tensor:
    r"""Cross-entropy over the hard pixels (OHEM), as mmsegmentation's ``OHEMPixelSampler``.

    A counted pixel is kept when its ground-truth probability is below ``thresh`` (:math:`p_y <
    \text{thresh}`, i.e. :math:`\ell > -\log \text{thresh}` for its cross-entropy :math:`\ell`), and in any
    case the ``K = min(N * min_kept, M)`` hardest of the M counted pixels are kept (largest :math:`\ell`,
    ties with the K-th all kept; ``min_kept`` counts per image, as in mmsegmentation):

    .. math::
        \text{kept} = \{ i : \ell_i > -\log \text{thresh} \} \cup \{ i : \ell_i \ge \ell_{(K)} \},
        \qquad \text{loss} = \frac{\sum_{i \in \text{kept}} w_{y_i} \ell_i}{\sum_{i \in \text{kept}} w_{y_i}}

    i.e. :func:`~seglosses.focal.cross_entropy` (``F.cross_entropy(weight=...)`` semantics) over the kept
    pixels, the others treated as ignored. :math:`\ell` is the unweighted cross-entropy; ``weight`` only
    weighs the kept pixels. Binary/multilabel: the same per element with the binary cross-entropy
    (:math:`p_y` the probability of the target label; for soft targets :math:`e^{-\ell}`); ``"mean"`` divides
    by the number of kept elements. The K-th value is found by ``torch.kthvalue``, not a full sort.

    Args:
        input: logits. multiclass: (N, C, \*); binary: (N, \*) or (N, 1, \*); multilabel: (N, C, \*).
        target: multiclass: (N, \*) class ids or (N, C, \*) probabilities; binary/multilabel: the input's
            shape, values in [0, 1].
        mode: ``"multiclass"`` | ``"binary"`` | ``"multilabel"``.
        thresh: probability threshold in [0, 1]; 0 keeps only the ``min_kept`` hardest pixels. Default: 0.7
        min_kept: int >= 0, pixels kept at least per image. Default: 100000 (mmsegmentation's default;
            with images of fewer pixels every pixel is kept, which is plain cross-entropy).
        weight: per-class weights as in :class:`~seglosses.focal.CrossEntropyLoss`.
        ignore_index: target value whose pixels (elements) are never kept.
        reduction: ``"mean"`` (above; 0 when nothing is kept), ``"sum"``, or ``"none"``: the weighted
            per-pixel losses with 0 at the pixels not kept, (N, \*) in multiclass mode, else the input's
            shape.

    Returns:
        The loss (float32 for half-precision input).

    Raises:
        ValueError: bad ``mode``/``reduction``/``thresh``/``min_kept``/``weight``, and the checks of
            :func:`~seglosses.focal.cross_entropy`.
    """
    options = OhemOptions(mode=mode, thresh=thresh, min_kept=min_kept, weight=weight,
                          ignore_index=ignore_index, reduction=reduction)  # fmt: skip
    return _ohem(input, target, options, options.weight)


def _ohem(input: Tensor, target: Tensor, o: OhemOptions, weight: ClassValues) -> Tensor:
    """OHEM cross-entropy of the options ``o`` with the per-class ``weight`` (a module's buffer)."""
    hardness, values, pixel_weight, valid = _pixel_terms(input, target, o.mode, weight, o.ignore_index)
    kept_count = min(o.min_kept * hardness.shape[0], _counted(valid, hardness))
    # "not (l <= t)": a NaN loss is always kept, so that it shows in the result
    limit = math.inf if o.thresh == 0 else -math.log(o.thresh)
    kept = ~(hardness <= limit)
    if kept_count > 0:
        kept |= ~(hardness < _kth_largest(hardness, valid, kept_count))
    if valid is not None:
        kept &= valid
    kept = kept.to(values.dtype)
    denominator = (kept if pixel_weight is None else kept * pixel_weight).sum()
    return _reduce(values * kept, o.reduction, denominator)


def topk_cross_entropy(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = TopKOptions.mode,
    k: float = TopKOptions.k,
    weight: ClassValues = TopKOptions.weight,
    ignore_index: int | None = TopKOptions.ignore_index,
    reduction: str = TopKOptions.reduction,
) -> Tensor:
    r"""Mean of the largest ``k * 100 %`` per-pixel cross-entropies, as nnU-Net's ``TopKLoss``.

    With :math:`v_i` the (weighted) per-pixel cross-entropy of :class:`~seglosses.focal.CrossEntropyLoss`
    over the M counted pixels and :math:`K = \lceil k M \rceil`:

    .. math::
        \text{loss} = \frac{1}{K} \sum_{j=1}^{K} v_{(j)} \qquad (v_{(1)} \ge v_{(2)} \ge \dots)

    a plain mean of the K largest values (as nnU-Net, not divided by the weights). Ties with the K-th value
    share its place: the value is exact and the gradient is split evenly among them. Binary/multilabel: the
    same over elements with the binary cross-entropy. Found by ``torch.kthvalue``, not a full sort.

    Args:
        input: logits. multiclass: (N, C, \*); binary: (N, \*) or (N, 1, \*); multilabel: (N, C, \*).
        target: multiclass: (N, \*) class ids or (N, C, \*) probabilities; binary/multilabel: the input's
            shape, values in [0, 1].
        mode: ``"multiclass"`` | ``"binary"`` | ``"multilabel"``.
        k: share of the counted pixels averaged, in (0, 1]; 1 is the mean cross-entropy. Default: 0.1
        weight: per-class weights as in :class:`~seglosses.focal.CrossEntropyLoss` (they scale the values
            before the selection, as in nnU-Net).
        ignore_index: target value whose pixels (elements) are never selected.
        reduction: ``"mean"`` (above; 0 without counted pixels), ``"sum"`` (the sum of the K largest), or
            ``"none"``: each pixel's share of that sum (its value, a fraction of it for ties, 0 for pixels not
            selected), (N, \*) in multiclass mode, else the input's shape.

    Returns:
        The loss (float32 for half-precision input).

    Raises:
        ValueError: bad ``mode``/``reduction``/``k``/``weight``, and the checks of
            :func:`~seglosses.focal.cross_entropy`.
    """
    options = TopKOptions(mode=mode, k=k, weight=weight, ignore_index=ignore_index, reduction=reduction)
    return _topk(input, target, options, options.weight)


def _topk(input: Tensor, target: Tensor, o: TopKOptions, weight: ClassValues) -> Tensor:
    """Top-k cross-entropy of the options ``o`` with the per-class ``weight`` (a module's buffer)."""
    _, values, _, valid = _pixel_terms(input, target, o.mode, weight, o.ignore_index)
    counted = _counted(valid, values)
    # round(., 6): k * M computed in floating point may land just above an integer (0.1 * 30)
    count = min(max(math.ceil(round(o.k * counted, 6)), 1), counted)
    v = values.detach()
    if count == 0:
        return _reduce(values * 0, o.reduction, v.new_zeros(()))
    kth = _kth_largest(v, valid, count)
    above = ~(v <= kth)  # NaN counts as above, so that it shows in the result
    tied = v == kth
    if valid is not None:
        above &= valid
        tied &= valid
    share = (count - above.sum()).clamp_min(0) / tied.sum().clamp_min(1)
    selected = above.to(v.dtype) + tied.to(v.dtype) * share
    return _reduce(values * selected, o.reduction, v.new_tensor(float(count)))


class OhemCrossEntropyLoss(LossModule, options=OhemOptions):
    r"""Cross-entropy over the hard pixels (OHEM, as mmsegmentation's ``OHEMPixelSampler``), the module form
    of :func:`ohem_cross_entropy` (selection rule, arguments and reductions there).

    .. math::
        \text{kept} = \{ i : p_{y_i} < \text{thresh} \} \cup \{ \text{the } N \cdot \text{min\_kept}
        \text{ hardest} \}, \qquad \text{loss} = \frac{\sum_{\text{kept}} w_{y_i} \ell_i}
        {\sum_{\text{kept}} w_{y_i}}

    The keyword arguments are kept in ``options`` (an :class:`OhemOptions`) and read as attributes of the
    same names (per-class ``weight`` as a non-persistent float32 buffer).

    Shape:
        ``*`` is any number of spatial dims, including none.

        - multiclass: input (N, C, \*) logits; target (N, \*) class ids in [0, C) (or ``ignore_index``), or
          (N, C, \*) class probabilities.
        - binary: input (N, \*) or (N, 1, \*) logits; target of the input's shape, in [0, 1].
        - multilabel: input (N, C, \*) logits; target (N, C, \*), in [0, 1].
        - output: a scalar for ``reduction="mean"`` or ``"sum"``; for ``"none"`` the per-pixel losses (0 where
          not kept), (N, \*) in multiclass mode, else the input's shape. float32 for fp16/bf16 input.

    Examples::

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from seglosses import OhemCrossEntropyLoss
        >>> x = torch.tensor([[[4.0, 0.0, -1.0, 2.0], [0.0, 0.0, 1.0, 0.0]]])  # logits (N=1, C=2, S=4)
        >>> y = torch.tensor([[0, 0, 0, 1]])  # p_y = 0.98, 0.5, 0.12, 0.12
        >>> OhemCrossEntropyLoss(thresh=0.7, min_kept=0, reduction="none")(x, y)  # p_y < 0.7 kept
        tensor([[0.0000, 0.6931, 2.1269, 2.1269]])
        >>> loss = OhemCrossEntropyLoss(thresh=0.0, min_kept=1)  # only the hardest (ties kept)
        >>> torch.allclose(loss(x, y), F.cross_entropy(x, y, reduction="none")[0, 2:].mean())
        True
    """

    def __init__(
        self,
        *,
        mode: str = OhemOptions.mode,
        thresh: float = OhemOptions.thresh,
        min_kept: int = OhemOptions.min_kept,
        weight: ClassValues = OhemOptions.weight,
        ignore_index: int | None = OhemOptions.ignore_index,
        reduction: str = OhemOptions.reduction,
    ) -> None:
        super().__init__(OhemOptions(mode=mode, thresh=thresh, min_kept=min_kept, weight=weight,
                                     ignore_index=ignore_index, reduction=reduction))  # fmt: skip

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _ohem(input, target, self.options, self.weight)


class TopKCrossEntropyLoss(LossModule, options=TopKOptions):
    r"""Mean of the largest ``k * 100 %`` per-pixel cross-entropies (nnU-Net's ``TopKLoss``), the module form
    of :func:`topk_cross_entropy` (arguments and reductions there).

    .. math::
        \text{loss} = \frac{1}{K} \sum_{j=1}^{K} v_{(j)}, \qquad K = \lceil k M \rceil

    The keyword arguments are kept in ``options`` (a :class:`TopKOptions`) and read as attributes of the
    same names (per-class ``weight`` as a non-persistent float32 buffer).

    Shape:
        ``*`` is any number of spatial dims, including none.

        - multiclass: input (N, C, \*) logits; target (N, \*) class ids in [0, C) (or ``ignore_index``), or
          (N, C, \*) class probabilities.
        - binary: input (N, \*) or (N, 1, \*) logits; target of the input's shape, in [0, 1].
        - multilabel: input (N, C, \*) logits; target (N, C, \*), in [0, 1].
        - output: a scalar for ``reduction="mean"`` or ``"sum"``; for ``"none"`` each pixel's share of the
          sum, (N, \*) in multiclass mode, else the input's shape. float32 for fp16/bf16 input.

    Examples::

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from seglosses import TopKCrossEntropyLoss
        >>> gen = torch.Generator().manual_seed(0)
        >>> x = torch.randn(2, 3, 10, 10, generator=gen)  # logits (N, C, H, W)
        >>> y = torch.randint(0, 3, (2, 10, 10), generator=gen)  # 200 pixels
        >>> ce = F.cross_entropy(x, y, reduction="none").flatten()
        >>> top = TopKCrossEntropyLoss(k=0.1)(x, y)  # the mean of the 20 largest
        >>> torch.allclose(top, ce.sort(descending=True).values[:20].mean())
        True
        >>> torch.allclose(TopKCrossEntropyLoss(k=1.0)(x, y), F.cross_entropy(x, y))
        True
    """

    def __init__(
        self,
        *,
        mode: str = TopKOptions.mode,
        k: float = TopKOptions.k,
        weight: ClassValues = TopKOptions.weight,
        ignore_index: int | None = TopKOptions.ignore_index,
        reduction: str = TopKOptions.reduction,
    ) -> None:
        super().__init__(TopKOptions(mode=mode, k=k, weight=weight, ignore_index=ignore_index,
                                     reduction=reduction))  # fmt: skip

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _topk(input, target, self.options, self.weight)
