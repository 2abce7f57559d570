"""The computation behind :mod:`seglosses.focal` (focal loss and cross-entropy), shared by both.

The hot paths (class-index targets from logits, binary/multilabel from logits) are
:class:`torch.autograd.Function`\\ s that compute the analytic gradient in the forward pass and save
only that gradient (one float32 tensor of the input's size). All terms are evaluated in log space,
so loss and gradient stay finite for logits up to about 1e4 in magnitude and every ``gamma >= 0``,
including ``0 < gamma < 1`` where ``(1 - p) ** gamma`` has an infinite derivative at ``p = 1``.
Every path uses such a Function, so a double backward raises (see
:func:`seglosses._shared.first_order_only`).

:func:`focal_terms` takes the options of :class:`~seglosses.focal.FocalOptions` or
:class:`~seglosses.focal.CrossEntropyOptions` (checked when they were built) and the per-class values,
which a module keeps as buffers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

from seglosses._inputs import Prepared, as_class_vector, prepare
from seglosses._shared import ClassValues, SavedGradient, focal_factors
from seglosses.modes import MULTICLASS_MODE

if TYPE_CHECKING:
    from seglosses.focal import CrossEntropyOptions, FocalOptions

__all__ = ["focal_terms"]

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
# the loss from the options
# --------------------------------------------------------------------------------------------------


def focal_terms(
    input: Tensor,
    target: Tensor,
    options: FocalOptions | CrossEntropyOptions,
    *,
    gamma: float,
    alpha: ClassValues,
    weight: ClassValues,
) -> Tensor:
    """The focal loss of ``options`` (mode, ignore_index, reduction, from_logits, label_smoothing) with
    ``gamma`` and the per-class ``alpha`` and ``weight`` (their product in multiclass mode)."""
    if isinstance(target, Tensor) and target.requires_grad:
        raise ValueError(
            "target requires grad, but gradients with respect to the target are not "
            "supported; pass target.detach()"
        )
    prep = prepare(input, target, options.mode, options.ignore_index, from_logits=options.from_logits)
    c = prep.num_classes
    alpha_vec = as_class_vector("alpha", alpha, c, prep.input)
    weight_vec = as_class_vector("weight", weight, c, prep.input)
    if options.mode == MULTICLASS_MODE:
        if alpha_vec is not None and weight_vec is not None:
            alpha_vec = alpha_vec * weight_vec
        elif weight_vec is not None:
            alpha_vec = weight_vec
        return _multiclass(prep, options, float(gamma), alpha_vec)
    return _sigmoid(prep, options, float(gamma), alpha_vec, weight_vec)


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
    prep: Prepared, options: FocalOptions | CrossEntropyOptions, gamma: float, alpha: Tensor | None
) -> Tensor:
    x, n, c, s = prep.input, prep.input.shape[0], prep.input.shape[1], prep.input.shape[2]
    out_shape = (n, *prep.spatial_shape)
    eps, reduction, from_logits = float(options.label_smoothing), options.reduction, options.from_logits
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
    options: FocalOptions | CrossEntropyOptions,
    gamma: float,
    alpha: Tensor | None,
    class_weight: Tensor | None,
) -> Tensor:
    x, t = prep.input, prep.target
    label_smoothing, from_logits = float(options.label_smoothing), options.from_logits
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
    return _reduce(loss, options.reduction, denom, prep.out_shape)

