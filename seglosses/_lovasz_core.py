"""The computation behind :mod:`seglosses.lovasz`: the ranking of the errors, the Lovász increments and the
hand-written gradient (formulas in :mod:`seglosses.lovasz`).

Cost: one sort per class on the device, of the N * S errors (of each image's S errors with
``per_image=True``), and only of those that add to the loss: pixels whose term is 0 wherever they rank are
dropped first (exactly: see :func:`_prune`), and ``torch.topk(sorted=True)`` ranks the rest. On the CPU
several classes go into one call, one row per thread. Device-to-host transfers: one per call (the classes
that count) and one per call of ``topk`` (its length). The gradient is formed in the forward pass (the
ranking scatters the increments back) and kept as one input-sized tensor, plus the softmax (multiclass
from logits); the sort buffers of one block of classes exist at a time. First derivatives only: a double
backward raises a ``RuntimeError`` (:func:`seglosses._shared.first_order_only`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from seglosses._shared import first_order_only, pixel_chunk

__all__ = ["lovasz_increments", "lovasz_per_class"]


def lovasz_increments(g_sorted: Tensor, dtype: torch.dtype, total: Tensor | None = None) -> Tensor:
    """``J_k - J_(k-1)`` along the last dim for targets ``g_sorted`` (bool or float in [0, 1], in the order of
    decreasing error), in ``dtype``. ``total``: the (rows, 1) target mass ``G`` of each row when ``g_sorted``
    holds only the first pixels of the ranking (default: its row sums). A full row sums to 1 (``J_L = 1``); a
    row without targets (``G = 0``) is ``[1, 0, 0, ...]``.

    With ``U_k = G + cb_k`` (the union): ``J_k - J_(k-1) = (U_k - k (1 - g_k)) / (U_k U_(k-1))`` and
    ``U_(k-1) = U_k - (1 - g_k)``, except ``J_1 - J_0 = 1 / U_1`` (``U_0 = G`` may be 0); the counts are
    exact (float32 holds integers up to 2**24, longer rows are counted in float64), so hard labels give exact
    counts and no difference of nearly equal numbers is formed.
    """
    length = g_sorted.shape[-1]
    count_type = dtype if length < 2**24 or dtype == torch.float64 else torch.float64
    g = g_sorted.to(count_type, copy=True)  # modified in place below
    k = torch.arange(1, length + 1, device=g.device, dtype=count_type)
    cg = g.cumsum(-1)
    union = (k - cg).add_(cg[..., -1:] if total is None else total.to(count_type))  # U_k = G + k - cg_k >= 1
    miss = g.sub_(1)  # g_k - 1
    numerator = torch.addcmul(union, k, miss)  # U_k - k (1 - g_k) = G - cg_k + k g_k
    denominator = miss.add_(union).mul_(union)  # U_(k-1) U_k
    denominator[..., 0] = 1.0
    numerator.clamp_min_(0).div_(denominator)
    numerator[..., 0] = union[..., 0].reciprocal()
    return numerator.to(dtype)


class _Lovasz(torch.autograd.Function):
    """Per-row and per-class Lovász losses, (R, C): R = 1 (pooled over the batch) or N (``per_image``).

    x: (N, C, S) logits (softmax or hinge) or probabilities; t: (N, S) class ids or (N, C, S) targets;
    valid: (N, S) / (N, C, S) bool or None; run: the classes to compute (the others are 0 and get no
    gradient). The forward keeps ``a`` = d loss_rc / d (p or x) for every class (one input-sized tensor,
    rows not yet weighted) and the softmax; the backward weighs ``a`` by the incoming (R, C) gradient and,
    for logits, applies the softmax Jacobian in place.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        t: Tensor,
        valid: Tensor | None,
        run: tuple[int, ...],
        per_image: bool,
        softmax: bool,
        hinge: bool,
    ) -> Tensor:
        need_grad = ctx.needs_input_grad[0]
        loss, a, p = _lovasz_forward(x, t, valid, run, per_image, softmax, hinge, need_grad)
        ctx.save_for_backward(x, t, valid)
        ctx.options = (run, per_image, softmax, hinge)
        # Plain attributes, not saved tensors: the backward overwrites them in place; a second backward
        # through a retained graph finds them consumed and recomputes them.
        ctx.buffers = (a, p) if need_grad else None
        return loss

    @staticmethod
    @first_order_only
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, t, valid = ctx.saved_tensors
        run, per_image, softmax, hinge = ctx.options
        buffers, ctx.buffers = ctx.buffers, None
        if buffers is None:
            _, a, p = _lovasz_forward(x, t, valid, run, per_image, softmax, hinge, True)
        else:
            a, p = buffers
        a.mul_(grad_out.unsqueeze(-1))  # (R, C, 1) broadcasts over (N, C, S)
        if softmax:  # dL/dx_j = p_j (a_j - sum_k a_k p_k), chunk by chunk, into a
            chunk = pixel_chunk(*a.shape)
            for lo in range(0, a.shape[2], chunk):
                sl = slice(lo, lo + chunk)
                a_sl, p_sl = a[:, :, sl], p[:, :, sl]
                a_sl.sub_((a_sl * p_sl).sum(1, keepdim=True)).mul_(p_sl)
        return a, None, None, None, None, None, None


#: ``lovasz_per_class(x, t, valid, run, per_image, softmax, hinge)``: the per-row and per-class Lovász losses,
#: (R, C), with the hand-written gradient (see :class:`_Lovasz`).
lovasz_per_class = _Lovasz.apply


def _class_block(rows: int, device: torch.device) -> int:
    """Classes ranked together in one ``torch.topk`` call. On the CPU it sorts one row per thread, and a row
    holds one class of the batch (or of one image with ``per_image``): blocks of classes give every thread a
    row; on other devices one class at a time (one row already uses the whole device)."""
    if device.type != "cpu":
        return 1
    return max(1, -(-torch.get_num_threads() // rows))


def _prune(errors: Tensor, g: Tensor, valid: Tensor | None) -> Tensor:
    """``errors`` (rows, L) with ``-inf`` at the pixels whose term of the Lovász sum is 0 whatever their rank,
    which the ranking then leaves out. ``g``: the targets, ``valid`` the counted pixels (None: all), both
    (rows, L).

    Dropped per row: ignored pixels; pixels with ``e <= 0`` (they add ``max(0, e) = 0`` and rank after every
    positive error, so they change no other term); and non-target pixels (``g = 0``) whose error is at most
    the smallest error ``m`` of the row's target pixels: they rank after every target pixel, where
    ``G - cg_k = 0`` makes their increment 0 (a tie with ``m`` does not matter: a tie group adds
    ``e (J_after - J_before)`` in every order, and ``J_after = 1``). A row without target pixels (``G = 0``)
    keeps its positive errors. Exact: only zero terms are dropped; early in training, when the target
    pixels' errors are large, most non-target pixels go. NaN errors are kept (a NaN loss).
    """
    target = g > 0
    smallest = torch.where(target, errors, torch.inf).amin(-1, keepdim=True)
    smallest.masked_fill_(smallest == torch.inf, 0.0).clamp_min_(0)  # no target pixel: drop e <= 0 only
    limit = torch.where(target, 0.0, smallest)  # target pixels: dropped at e <= 0; others at e <= max(m, 0)
    drop = errors <= limit
    if valid is not None:
        drop |= ~valid
    return errors.masked_fill_(drop, -torch.inf)


def _stacked(values: Tensor, ks: tuple[int, ...]) -> Tensor:
    """``values[:, k]`` of the classes ``ks``, stacked: (b, N, S), contiguous."""
    return torch.stack([values[:, k] for k in ks])


def _block_errors(
    x: Tensor, p: Tensor, t: Tensor, valid: Tensor | None, ks: tuple[int, ...], hinge: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """For the b classes ``ks``: the targets ``g`` (bool for class ids) and the errors ``e``, (b, N, S) each;
    the counted pixels (None: all; ``valid`` itself, (N, S), for class ids); and what the slope of ``e``
    needs besides ``g`` (see :func:`_error_gradient`): the signs ``2g - 1`` (hinge), ``p_k`` (probability
    targets) or None (class ids)."""
    if t.dtype == torch.int64:
        g = t == torch.tensor(ks, device=t.device).view(len(ks), 1, 1)  # (b, N, S) bool
        if valid is not None:
            g &= valid
        p_k = _stacked(p, ks)
        return g, torch.where(g, 1 - p_k, p_k), valid, None  # |[y = k] - p_k|
    valid_k = None if valid is None else _stacked(valid, ks)
    g = _stacked(t, ks)
    if hinge:
        signs = 2 * g - 1
        return g, 1 - _stacked(x, ks) * signs, valid_k, signs
    p_k = _stacked(p, ks)
    return g, (g - p_k).abs(), valid_k, p_k


def _error_gradient(
    a: Tensor, grad_e: Tensor, g: Tensor, ks: tuple[int, ...], slope: Tensor | None, hinge: bool
) -> None:
    """Write ``grad_e * d e / d (p_k or x_k)`` into ``a[:, k]`` for each class ``k`` of ``ks``; ``grad_e``,
    ``g`` and ``slope`` as :func:`_block_errors` gives them, (b, N, S)."""
    for i, k in enumerate(ks):
        if slope is None:  # class ids: -1 on the class, +1 elsewhere
            torch.where(g[i], grad_e[i].neg(), grad_e[i], out=a[:, k])
        elif hinge:  # -(2g - 1)
            torch.mul(grad_e[i], slope[i], out=a[:, k]).neg_()
        else:
            torch.mul(grad_e[i], torch.sign(slope[i] - g[i]), out=a[:, k])


def _lovasz_forward(
    x: Tensor,
    t: Tensor,
    valid: Tensor | None,
    run: tuple[int, ...],
    per_image: bool,
    softmax: bool,
    hinge: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(losses (R, C), a or None, softmax or None); see :class:`_Lovasz`."""
    n, c, s = x.shape
    rows = n if per_image else 1
    p = x.softmax(1) if softmax else x
    loss = x.new_zeros(rows, c)
    a = torch.zeros_like(x) if need_grad else None
    block = _class_block(rows, x.device)
    for start in range(0, len(run), block):
        ks = run[start : start + block]
        b = len(ks)
        g, errors, valid_k, slope = _block_errors(x, p, t, valid, ks, hinge)
        g = g.reshape(b * rows, -1)
        total = g.sum(-1, keepdim=True)  # G of each row, pruned target pixels included
        kept = None if valid_k is None else valid_k.expand(b, n, s).reshape(b * rows, -1)
        errors = _prune(errors.reshape(b * rows, -1), g, kept)
        # rank only the kept pixels: the largest `longest` errors of each row, a partial sort
        longest = int((errors != -torch.inf).sum(-1).max()) if errors.numel() else 0
        if longest == 0:
            continue  # nothing adds to the loss
        errors, order = errors.topk(longest, dim=-1, sorted=True)
        del kept
        increments = lovasz_increments(g.gather(-1, order), x.dtype, total)
        positive = errors.clamp_min_(0)  # hinge: max(0, e); pruned and ignored pixels: 0
        loss[:, list(ks)] = (positive * increments).sum(-1).view(b, rows).T
        if a is None:
            continue
        # no gradient to pruned pixels (the hinge is flat below 0); 0 * NaN keeps a NaN error's gradient NaN
        increments = torch.where(positive > 0, increments, positive * 0)
        # d loss / d e, back in pixel order
        grad_e = increments.new_zeros(b * rows, n * s // rows).scatter_(-1, order, increments).view(b, n, s)
        del errors, order, increments, positive
        _error_gradient(a, grad_e, g.view(b, n, s), ks, slope, hinge)
    return loss, a, (p if softmax else None)
