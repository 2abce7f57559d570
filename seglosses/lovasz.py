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
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from seglosses._inputs import Prepared, check_reduction, prepare
from seglosses._overlap import class_weights_of
from seglosses._shared import (
    ClassValues,
    first_order_only,
    option_values,
    options_repr,
    pixel_chunk,
    set_class_values,
)
from seglosses.checks import check_bool, check_choice, check_ignore_index
from seglosses.modes import BINARY_MODE, MULTICLASS_MODE, check_mode

__all__ = ["CLASSES", "LovaszLoss", "lovasz_loss"]

#: ``"present"``: average over the classes present in the target (per image with ``per_image``);
#: ``"all"``: over every class.
CLASSES = ("present", "all")
_OPTIONS = ("mode", "per_image", "classes", "ignore_index", "from_logits", "reduction")


def _check_options(
    mode: str, per_image: bool, classes: str, ignore_index: int | None, from_logits: bool, reduction: str
) -> None:
    """The checks that need no input, shared by :func:`lovasz_loss` and :class:`LovaszLoss`."""
    check_mode(mode)
    check_reduction(reduction)
    check_bool(per_image, "per_image")
    check_choice(classes, "classes", CLASSES)
    check_ignore_index(ignore_index)
    check_bool(from_logits, "from_logits")
    if mode != MULTICLASS_MODE and not from_logits:
        raise ValueError(
            f"from_logits=False is not defined for the {mode} Lovász hinge, which works on logits "
            "(errors 1 - x (2g - 1)); pass the logits, or use mode='multiclass' with the probabilities "
            "of both classes"
        )


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
    index = t.dtype == torch.int64
    p = x.softmax(1) if softmax else x
    loss = x.new_zeros(rows, c)
    a = torch.zeros_like(x) if need_grad else None
    block = _class_block(rows, x.device)
    for start in range(0, len(run), block):
        ks = run[start : start + block]
        b = len(ks)

        def stacked(values: Tensor, ks: tuple[int, ...] = ks) -> Tensor:
            return torch.stack([values[:, k] for k in ks])  # (b, N, S), contiguous

        valid_k = None if valid is None else (valid if index else stacked(valid))
        if index:
            g = t == torch.tensor(ks, device=t.device).view(b, 1, 1)  # (b, N, S) bool
            if valid_k is not None:
                g &= valid_k
            p_k = stacked(p)
            errors = torch.where(g, 1 - p_k, p_k)  # |[y = k] - p_k|
        else:
            g = stacked(t)
            if hinge:
                signs = 2 * g - 1
                errors = 1 - stacked(x) * signs
            else:
                p_k = stacked(p)
                errors = (g - p_k).abs()
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
        g = g.view(b, n, s)
        for i, k in enumerate(ks):  # d e / d (p_k or x_k), written into a[:, k]
            if index:  # -1 on the class, +1 elsewhere
                torch.where(g[i], grad_e[i].neg(), grad_e[i], out=a[:, k])
            elif hinge:  # -(2g - 1)
                torch.mul(grad_e[i], signs[i], out=a[:, k]).neg_()
            else:
                torch.mul(grad_e[i], torch.sign(p_k[i] - g[i]), out=a[:, k])
    return loss, a, (p if softmax else None)


def lovasz_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    per_image: bool = False,
    classes: str = "present",
    class_weights: ClassValues = None,
    ignore_index: int | None = None,
    from_logits: bool = True,
    reduction: str = "mean",
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
    _check_options(mode, per_image, classes, ignore_index, from_logits, reduction)
    if isinstance(target, Tensor) and target.requires_grad:
        raise ValueError(
            "target requires grad, but the Lovász loss has no gradient for it; pass target.detach()"
        )
    prep = prepare(input, target, mode, ignore_index, from_logits=from_logits)
    x = prep.input
    n, num_classes, s = x.shape
    weights, _ = class_weights_of(mode, class_weights, num_classes, ignore_index, True, like=x)
    present, kept = _counts(prep, per_image)  # (R, C) each
    counted = kept > 0
    if classes == "present" and mode != BINARY_MODE:
        counted &= present > 0
    weight = weights * counted  # (R, C)
    run = tuple(k for k, on in enumerate((weight > 0).any(0).tolist()) if on) if n * s else ()
    softmax = mode == MULTICLASS_MODE and from_logits
    per_class = _Lovasz.apply(x, prep.target, prep.valid, run, per_image, softmax, mode != MULTICLASS_MODE)
    weighted = per_class * weight
    if reduction == "none":
        return weighted if per_image else weighted.squeeze(0)
    total = weighted.sum(-1)  # (R,)
    if reduction == "sum":
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


class LovaszLoss(nn.Module):
    r"""Lovász-softmax / Lovász hinge loss, the module form of :func:`lovasz_loss` (formula, arguments and
    reductions there).

    .. math::
        \ell_c = \sum_k e_{(k)} \, \Delta J_c(k), \qquad
        J_c(k) = 1 - \frac{G_c - \sum_{i \le k} g_{(i)}}{G_c + \sum_{i \le k} (1 - g_{(i)})}

    with the errors sorted in decreasing order; on hard predictions :math:`\ell_c = 1 - IoU_c`. The keyword
    arguments are stored as attributes of the same names; ``class_weights`` (if given) is a non-persistent
    (C,) float32 buffer that follows ``.to(device)``.

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
        mode: str = "multiclass",
        per_image: bool = False,
        classes: str = "present",
        class_weights: ClassValues = None,
        ignore_index: int | None = None,
        from_logits: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_options(mode, per_image, classes, ignore_index, from_logits, reduction)
        self.mode = mode
        self.per_image = per_image
        self.classes = classes
        self.ignore_index = ignore_index
        self.from_logits = from_logits
        self.reduction = reduction
        set_class_values(self, "class_weights", class_weights)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return lovasz_loss(input, target, **option_values(self, (*_OPTIONS, "class_weights")))

    def extra_repr(self) -> str:
        return options_repr(self, _OPTIONS)
