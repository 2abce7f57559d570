"""Focal loss (Lin et al., 2017) and cross-entropy for segmentation, exact and numerically stable.

The hot paths (class-index targets from logits, binary/multilabel from logits) are
:class:`torch.autograd.Function`\\ s that compute the analytic gradient in the forward pass and save
only that gradient (one float32 tensor of the input's size). All terms are evaluated in log space,
so loss and gradient stay finite for logits up to about 1e4 in magnitude and every ``gamma >= 0``,
including ``0 < gamma < 1`` where ``(1 - p) ** gamma`` has an infinite derivative at ``p = 1``.

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from seglosses._inputs import Prepared, as_class_vector, check_class_values, check_reduction, prepare
from seglosses._shared import (
    ClassValues,
    SavedGradient,
    focal_factors,
    option_values,
    options_repr,
    set_class_values,
)
from seglosses.checks import check_ignore_index, check_number
from seglosses.modes import MULTICLASS_MODE, check_mode

__all__ = ["CrossEntropyLoss", "FocalLoss", "cross_entropy", "focal_loss"]

# Same clamps as F.binary_cross_entropy: log-probabilities >= -100, gradient denominators >= 1e-12.
_LOG_MIN = -100.0
_GRAD_EPS = 1e-12


# --------------------------------------------------------------------------------------------------
# autograd Functions
# --------------------------------------------------------------------------------------------------


class _SoftmaxFocal(SavedGradient):
    """Per-pixel softmax focal loss for class-index targets.

    input (N, C, S) logits, target (N, S) int64, weight (N, S) or None -> loss (N, S).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, y: Tensor, w: Tensor | None, gamma: float) -> Tensor:
        need_grad = ctx.needs_input_grad[0]
        logp = torch.log_softmax(x, dim=1)
        y1 = y.unsqueeze(1)
        l = logp.gather(1, y1).squeeze(1)
        if gamma == 0:
            loss = l.neg()
            g = w  # None stands for all ones
        else:
            f, h = focal_factors(l, gamma, need_grad)
            loss = f.mul_(l).neg_()
            g = h if w is None or h is None else h.mul_(w)
        if w is not None:
            loss = loss.mul_(w)
        if need_grad:
            # d loss / d z_j = w * h * (softmax_j - [j == y]), built in place on the log-softmax buffer
            grad = logp.exp_()
            if g is None:
                src = torch.full_like(y1, -1, dtype=grad.dtype)
            else:
                grad.mul_(g.unsqueeze(1))
                src = g.neg().unsqueeze(1)
            grad.scatter_add_(1, y1, src)
            ctx.save_for_backward(grad)
        return loss


class _SigmoidFocal(SavedGradient):
    """Element-wise sigmoid focal loss.

    x: (N, C, S) logits; t: (N, C, S) targets in [0, 1]; alpha, class_weight: (C,) or None;
    valid: (N, C, S) bool or None; hard: whether every target is 0 or 1 -> loss (N, C, S).
    Written to keep at most about five input-sized buffers alive at once.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        t: Tensor,
        alpha: Tensor | None,
        class_weight: Tensor | None,
        valid: Tensor | None,
        gamma: float,
        hard: bool,
    ) -> Tensor:
        need_grad = ctx.needs_input_grad[0]
        nlp = F.softplus(x, beta=-1.0).neg_()  # -log p = softplus(-x)
        nln = F.softplus(x)  # -log(1 - p); both accurate where they are tiny
        bce = torch.lerp(nln, nlp, t)  # -(t log p + (1 - t) log(1 - p)), exact at t in {0, 1}
        grad = None
        if gamma == 0:
            del nln
            if need_grad:
                grad = nlp.neg_().exp_().sub_(t)  # sigmoid(x) - t
            loss = bce
        else:
            # log q = log(1 - p_t), 1 - p_t = (1 - t) p + t (1 - p); finite for any finite logit
            if hard:
                logq = torch.lerp(nlp, nln, t).neg_()
            else:
                logq = torch.log1p(t.neg()).sub_(nlp)
                torch.logaddexp(logq, torch.log(t).sub_(nln), out=logq)
            if need_grad:
                # f * [gamma (1 - 2t) p (1 - p) / q * bce + p - t]; the ratio p (1 - p) / q <= 1
                # comes from log space, so no 0 * inf even where f -> 0 for gamma < 1
                grad = (nlp + nln).add_(logq).neg_().exp_()
                del nln
                grad.mul_(bce).mul_(gamma)
                grad.addcmul_(grad, t, value=-2.0)
                grad.add_(nlp.neg_().exp_()).sub_(t)
            else:
                del nln
            del nlp
            f = logq.mul_(gamma).exp_()
            if grad is not None:
                grad.mul_(f)
            loss = bce.mul_(f)
            del f, logq
        weight = None
        if alpha is not None:
            a = alpha.view(1, -1, 1)
            weight = torch.lerp(1 - a, a, t)  # alpha_t = alpha t + (1 - alpha)(1 - t)
        if class_weight is not None:
            cw = class_weight.view(1, -1, 1)
            weight = cw if weight is None else weight.mul_(cw)
        if valid is not None:
            weight = valid if weight is None else weight.mul_(valid)
        if weight is not None:
            loss = loss.mul_(weight)
            if grad is not None:
                grad.mul_(weight)
        if need_grad:
            ctx.save_for_backward(grad)
        return loss


class _FocalOfLogProb(SavedGradient):
    """Element-wise ``-(1 - e^l)^gamma * l`` for log-probabilities ``l``, with a finite gradient."""

    @staticmethod
    def forward(ctx: FunctionCtx, l: Tensor, gamma: float) -> Tensor:
        need_grad = ctx.needs_input_grad[0]
        f, h = focal_factors(l, gamma, need_grad)
        if need_grad:
            assert h is not None
            ctx.save_for_backward(h.neg_())  # d loss / d l = -h
        return f.mul_(l).neg_()


class _FocalOfProb(SavedGradient):
    """Element-wise ``-(1 - p)^gamma * max(log p, -100)`` for probabilities ``p`` in [0, 1].

    The derivative of ``log p`` uses ``1 / max(p, 1e-12)`` (as F.binary_cross_entropy does), so the
    gradient is finite at ``p = 0``; the focal factor's part uses the bounded ratio ``-log p / (1 - p)``.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, p: Tensor, gamma: float) -> Tensor:
        log_p = torch.log(p).clamp_(min=_LOG_MIN)
        one_minus = 1 - p
        f = one_minus.pow(gamma)
        if ctx.needs_input_grad[0]:
            r = torch.where(one_minus == 0, torch.ones_like(p), log_p.neg() / one_minus)
            neg_grad = f * (r.mul_(gamma) + p.clamp(min=_GRAD_EPS).reciprocal_())
            ctx.save_for_backward(neg_grad.neg_())
        return f.mul_(log_p).neg_()


class _SigmoidFocalOfProb(SavedGradient):
    """Element-wise binary focal loss of probabilities ``p`` and targets ``t`` (same shape), logs
    clamped at -100 and the BCE gradient's denominator at 1e-12 like F.binary_cross_entropy."""

    @staticmethod
    def forward(ctx: FunctionCtx, p: Tensor, t: Tensor, gamma: float) -> Tensor:
        lp = torch.log(p).clamp_(min=_LOG_MIN)
        ln = torch.log1p(-p).clamp_(min=_LOG_MIN)
        bce = torch.lerp(ln, lp, t).neg_()
        q = torch.lerp(p, 1 - p, t)  # 1 - p_t
        f = q.pow(gamma)
        if ctx.needs_input_grad[0]:
            dbce = (p - t).div_((p * (1 - p)).clamp_(min=_GRAD_EPS))
            # d f / d p * bce = gamma (1 - 2t) f * bce / q; bce / q stays bounded as q -> 0
            ratio = torch.where(q > 0, bce / q, torch.ones_like(q))
            grad = ratio.mul_(t * -2 + 1).mul_(gamma).add_(dbce).mul_(f)
            ctx.save_for_backward(grad)
        return f.mul_(bce)


# --------------------------------------------------------------------------------------------------
# functional API
# --------------------------------------------------------------------------------------------------


def _check_options(
    mode: str,
    gamma: float,
    alpha: ClassValues,
    weight: ClassValues,
    ignore_index: int | None,
    reduction: str,
    label_smoothing: float = 0.0,
) -> None:
    """The checks that need no input, shared by :func:`focal_loss` and the modules."""
    check_mode(mode)
    check_reduction(reduction)
    check_number(gamma, "gamma", minimum=0)
    check_class_values("alpha", alpha, mode)
    check_class_values("weight", weight, mode)
    check_ignore_index(ignore_index)
    check_number(label_smoothing, "label_smoothing", minimum=0, maximum=1)


def _mean(total: Tensor, denom: Tensor | int) -> Tensor:
    """``total / denom`` with 0 (not NaN) when nothing counts (all pixels ignored or zero weight)."""
    if isinstance(denom, int):
        return total / denom if denom > 0 else total
    return total / torch.where(denom > 0, denom, torch.ones_like(denom))


def _reduce(loss: Tensor, reduction: str, denom: Tensor | int, out_shape: tuple[int, ...]) -> Tensor:
    if reduction == "none":
        return loss.reshape(out_shape)
    total = loss.sum()
    return total if reduction == "sum" else _mean(total, denom)


def _multiclass(
    prep: Prepared,
    gamma: float,
    alpha: Tensor | None,
    reduction: str,
    from_logits: bool,
    label_smoothing: float = 0.0,
) -> Tensor:
    x, n, c, s = prep.input, prep.input.shape[0], prep.input.shape[1], prep.input.shape[2]
    out_shape = (n, *prep.spatial_shape)
    eps = label_smoothing
    if not prep.index_target:
        # probability targets (smoothed: (1 - eps) t + eps / C); "mean" divides by the pixel count, like
        # F.cross_entropy
        t = prep.target if eps == 0 else prep.target.mul(1 - eps).add_(eps / c)
        return _soft_multiclass(x, t, gamma, alpha, reduction, from_logits, n * s, out_shape)

    y = prep.target
    w = None if alpha is None else alpha[y]
    if prep.valid is not None:
        w = prep.valid.to(x.dtype) if w is None else w * prep.valid
    # "mean" divides by the summed weights of the counted pixels, as F.cross_entropy(weight=...) does
    denom = n * s if w is None else w.sum()
    if eps > 0:
        # the smoothed target distribution (1 - eps) [y = c] + eps / C (0 at ignored pixels) through the
        # probability-target path, with the denominator of the index targets (as F.cross_entropy)
        t = torch.full_like(x, eps / c).scatter_(1, y.unsqueeze(1), 1 - eps + eps / c)
        if prep.valid is not None:
            t.mul_(prep.valid.unsqueeze(1))
        return _soft_multiclass(x, t, gamma, alpha, reduction, from_logits, denom, out_shape)
    if from_logits:
        loss = _SoftmaxFocal.apply(x, y, w, gamma)
    else:
        loss = _FocalOfProb.apply(x.gather(1, y.unsqueeze(1)).squeeze(1), gamma)
        if w is not None:
            loss = loss * w
    return _reduce(loss, reduction, denom, out_shape)


def _soft_multiclass(
    x: Tensor,
    t: Tensor,
    gamma: float,
    alpha: Tensor | None,
    reduction: str,
    from_logits: bool,
    denom: Tensor | int,
    out_shape: tuple[int, ...],
) -> Tensor:
    """Probability targets ``t`` (N, C, S): ``-sum_c alpha_c t_c (1 - p_c)^gamma log p_c`` per pixel."""
    if alpha is not None:
        t = t * alpha.view(1, -1, 1)
    if from_logits:
        terms = _FocalOfLogProb.apply(torch.log_softmax(x, dim=1), gamma)
    else:
        terms = _FocalOfProb.apply(x, gamma)
    return _reduce((terms * t).sum(1), reduction, denom, out_shape)


def _sigmoid(
    prep: Prepared,
    gamma: float,
    alpha: Tensor | None,
    class_weight: Tensor | None,
    reduction: str,
    from_logits: bool,
    label_smoothing: float = 0.0,
) -> Tensor:
    x, t = prep.input, prep.target
    if label_smoothing > 0:  # the two-class distribution of each element, smoothed: (1 - eps) t + eps / 2
        t = t.mul(1 - label_smoothing).add_(label_smoothing / 2)
    if from_logits:
        hard = gamma > 0 and label_smoothing == 0 and not bool(torch.count_nonzero(t.frac()))
        loss = _SigmoidFocal.apply(x, t, alpha, class_weight, prep.valid, gamma, hard)
    else:
        loss = _SigmoidFocalOfProb.apply(x, t, gamma)
        if alpha is not None:
            a = alpha.view(1, -1, 1)
            loss = loss * torch.lerp(1 - a, a, t)
        if class_weight is not None:
            loss = loss * class_weight.view(1, -1, 1)
        if prep.valid is not None:
            loss = loss * prep.valid
    denom = x.numel() if prep.valid is None else prep.valid.sum()
    return _reduce(loss, reduction, denom, prep.out_shape)


def _focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str,
    gamma: float,
    alpha: ClassValues,
    weight: ClassValues,
    ignore_index: int | None,
    reduction: str,
    from_logits: bool,
    label_smoothing: float = 0.0,
) -> Tensor:
    _check_options(mode, gamma, alpha, weight, ignore_index, reduction, label_smoothing)
    if isinstance(target, Tensor) and target.requires_grad:
        raise ValueError(
            "target requires grad, but gradients with respect to the target are not "
            "supported; pass target.detach()"
        )
    prep = prepare(input, target, mode, ignore_index, from_logits=from_logits)
    c = prep.num_classes
    alpha_vec = as_class_vector("alpha", alpha, c, prep.input)
    weight_vec = as_class_vector("weight", weight, c, prep.input)
    gamma, eps = float(gamma), float(label_smoothing)
    if mode == MULTICLASS_MODE:
        if alpha_vec is not None and weight_vec is not None:
            alpha_vec = alpha_vec * weight_vec
        elif weight_vec is not None:
            alpha_vec = weight_vec
        return _multiclass(prep, gamma, alpha_vec, reduction, from_logits, eps)
    return _sigmoid(prep, gamma, alpha_vec, weight_vec, reduction, from_logits, eps)


def focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    gamma: float = 2.0,
    alpha: ClassValues = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    from_logits: bool = True,
    label_smoothing: float = 0.0,
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
    return _focal_loss(
        input,
        target,
        mode=mode,
        gamma=gamma,
        alpha=alpha,
        weight=None,
        ignore_index=ignore_index,
        reduction=reduction,
        from_logits=from_logits,
        label_smoothing=label_smoothing,
    )


def cross_entropy(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    weight: ClassValues = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    from_logits: bool = True,
    label_smoothing: float = 0.0,
) -> Tensor:
    r"""Cross-entropy, the functional form of :class:`CrossEntropyLoss` (:func:`focal_loss` at
    ``gamma=0`` with per-class ``weight``); arguments, shapes and reductions as there.

    multiclass: ``F.cross_entropy(input, target, weight, ignore_index=..., label_smoothing=...)``;
    binary/multilabel: ``F.binary_cross_entropy_with_logits`` with ``weight`` broadcast over dim 1 and the
    target smoothed to ``(1 - eps) t + eps / 2``. An all-ignored ``"mean"`` gives 0 instead of NaN.
    """
    return _focal_loss(
        input,
        target,
        mode=mode,
        gamma=0.0,
        alpha=None,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        from_logits=from_logits,
        label_smoothing=label_smoothing,
    )


# --------------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------------


_FOCAL_OPTIONS = ("mode", "gamma", "alpha", "ignore_index", "reduction", "from_logits", "label_smoothing")
_CROSS_ENTROPY_OPTIONS = ("mode", "weight", "ignore_index", "reduction", "from_logits", "label_smoothing")


class FocalLoss(nn.Module):
    r"""Focal loss ``-alpha_t (1 - p_t)^gamma log p_t``, the module form of :func:`focal_loss`.

    The keyword arguments and their semantics are those of :func:`focal_loss`; they are stored as
    attributes of the same names (per-class ``alpha`` as a non-persistent float32 buffer). ``gamma`` is
    a plain attribute, so a training callback may set ``loss.gamma`` between steps.

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

    def __init__(
        self,
        *,
        mode: str = "multiclass",
        gamma: float = 2.0,
        alpha: ClassValues = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        from_logits: bool = True,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        _check_options(mode, gamma, alpha, None, ignore_index, reduction, label_smoothing)
        self.mode = mode
        self.gamma = gamma
        set_class_values(self, "alpha", alpha)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.from_logits = from_logits
        self.label_smoothing = label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _focal_loss(input, target, weight=None, **option_values(self, _FOCAL_OPTIONS))

    def extra_repr(self) -> str:
        return options_repr(self, _FOCAL_OPTIONS)


class CrossEntropyLoss(FocalLoss):
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

    def __init__(
        self,
        *,
        mode: str = "multiclass",
        weight: ClassValues = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        from_logits: bool = True,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            mode=mode, gamma=0.0, alpha=None, ignore_index=ignore_index, reduction=reduction,
            from_logits=from_logits, label_smoothing=label_smoothing,
        )  # fmt: skip
        check_class_values("weight", weight, mode)
        set_class_values(self, "weight", weight)

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
        options = option_values(self, _CROSS_ENTROPY_OPTIONS)
        return _focal_loss(input, target, gamma=0.0, alpha=None, **options)

    def extra_repr(self) -> str:
        return options_repr(self, _CROSS_ENTROPY_OPTIONS)
