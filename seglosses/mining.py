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

import torch
from torch import Tensor, nn

from seglosses._inputs import as_class_vector, check_class_values, check_reduction
from seglosses._shared import ClassValues, option_values, options_repr, set_class_values
from seglosses.checks import check_ignore_index, check_int, check_number
from seglosses.focal import cross_entropy
from seglosses.modes import BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE, check_mode

__all__ = ["OhemCrossEntropyLoss", "TopKCrossEntropyLoss", "ohem_cross_entropy", "topk_cross_entropy"]

_OHEM_OPTIONS = ("mode", "thresh", "min_kept", "weight", "ignore_index", "reduction")
_TOPK_OPTIONS = ("mode", "k", "weight", "ignore_index", "reduction")


def _check_common(mode: str, weight: ClassValues, ignore_index: int | None, reduction: str) -> None:
    """The checks that need no input, shared by both losses and their modules."""
    check_mode(mode)
    check_reduction(reduction)
    check_class_values("weight", weight, mode)
    check_ignore_index(ignore_index)


def _check_ohem(
    mode: str, thresh: float, min_kept: int, weight: ClassValues, ignore_index: int | None, reduction: str
) -> None:
    _check_common(mode, weight, ignore_index, reduction)
    check_number(thresh, "thresh", minimum=0, maximum=1)
    check_int(min_kept, "min_kept", minimum=0)


def _check_topk(mode: str, k: float, weight: ClassValues, ignore_index: int | None, reduction: str) -> None:
    _check_common(mode, weight, ignore_index, reduction)
    check_number(k, "k", maximum=1, greater_than=0)


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
    mode: str = "multiclass",
    thresh: float = 0.7,
    min_kept: int = 100000,
    weight: ClassValues = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
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
    _check_ohem(mode, thresh, min_kept, weight, ignore_index, reduction)
    hardness, values, pixel_weight, valid = _pixel_terms(input, target, mode, weight, ignore_index)
    kept_count = min(min_kept * hardness.shape[0], _counted(valid, hardness))
    # "not (l <= t)": a NaN loss is always kept, so that it shows in the result
    limit = math.inf if thresh == 0 else -math.log(thresh)
    kept = ~(hardness <= limit)
    if kept_count > 0:
        kept |= ~(hardness < _kth_largest(hardness, valid, kept_count))
    if valid is not None:
        kept &= valid
    kept = kept.to(values.dtype)
    denominator = (kept if pixel_weight is None else kept * pixel_weight).sum()
    return _reduce(values * kept, reduction, denominator)


def topk_cross_entropy(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    k: float = 0.1,
    weight: ClassValues = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
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
    _check_topk(mode, k, weight, ignore_index, reduction)
    _, values, _, valid = _pixel_terms(input, target, mode, weight, ignore_index)
    counted = _counted(valid, values)
    # round(., 6): k * M computed in floating point may land just above an integer (0.1 * 30)
    count = min(max(math.ceil(round(k * counted, 6)), 1), counted)
    v = values.detach()
    if count == 0:
        return _reduce(values * 0, reduction, v.new_zeros(()))
    kth = _kth_largest(v, valid, count)
    above = ~(v <= kth)  # NaN counts as above, so that it shows in the result
    tied = v == kth
    if valid is not None:
        above &= valid
        tied &= valid
    share = (count - above.sum()).clamp_min(0) / tied.sum().clamp_min(1)
    selected = above.to(v.dtype) + tied.to(v.dtype) * share
    return _reduce(values * selected, reduction, v.new_tensor(float(count)))


class OhemCrossEntropyLoss(nn.Module):
    r"""Cross-entropy over the hard pixels (OHEM, as mmsegmentation's ``OHEMPixelSampler``), the module form
    of :func:`ohem_cross_entropy` (selection rule, arguments and reductions there).

    .. math::
        \text{kept} = \{ i : p_{y_i} < \text{thresh} \} \cup \{ \text{the } N \cdot \text{min\_kept}
        \text{ hardest} \}, \qquad \text{loss} = \frac{\sum_{\text{kept}} w_{y_i} \ell_i}
        {\sum_{\text{kept}} w_{y_i}}

    The keyword arguments are stored as attributes of the same names (per-class ``weight`` as a
    non-persistent float32 buffer).

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
        mode: str = "multiclass",
        thresh: float = 0.7,
        min_kept: int = 100000,
        weight: ClassValues = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_ohem(mode, thresh, min_kept, weight, ignore_index, reduction)
        self.mode = mode
        self.thresh = thresh
        self.min_kept = min_kept
        set_class_values(self, "weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return ohem_cross_entropy(input, target, **option_values(self, _OHEM_OPTIONS))

    def extra_repr(self) -> str:
        return options_repr(self, _OHEM_OPTIONS)


class TopKCrossEntropyLoss(nn.Module):
    r"""Mean of the largest ``k * 100 %`` per-pixel cross-entropies (nnU-Net's ``TopKLoss``), the module form
    of :func:`topk_cross_entropy` (arguments and reductions there).

    .. math::
        \text{loss} = \frac{1}{K} \sum_{j=1}^{K} v_{(j)}, \qquad K = \lceil k M \rceil

    The keyword arguments are stored as attributes of the same names (per-class ``weight`` as a
    non-persistent float32 buffer).

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
        mode: str = "multiclass",
        k: float = 0.1,
        weight: ClassValues = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_topk(mode, k, weight, ignore_index, reduction)
        self.mode = mode
        self.k = k
        set_class_values(self, "weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return topk_cross_entropy(input, target, **option_values(self, _TOPK_OPTIONS))

    def extra_repr(self) -> str:
        return options_repr(self, _TOPK_OPTIONS)
