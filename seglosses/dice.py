"""Soft Dice loss for binary, multiclass and multilabel segmentation.

Per class ``c`` the soft Dice coefficient is

    D_c = (2 * sum(p * g) + smooth) / (sum(p ** power) + sum(g ** power) + smooth)

with ``p`` the predicted probability of ``c`` and ``g`` its target, summed over the valid (not ignored)
pixels of every image (``per_image=False``) or of each image separately (``per_image=True``).

Index targets never become a one-hot tensor: the intersection is a ``scatter_add`` of the probability
of the target class, the target cardinality a per-image class count, and the predicted cardinality a
plain sum (or a batched matrix-vector product with the valid mask when pixels are ignored). With
logits, a hand-written backward turns the forward's softmax into the gradient in place, so the loss
keeps one (N, C, S) tensor between forward and backward and allocates no other full-size one.

That hand-written backward (multiclass, class-index targets, ``from_logits=True``) gives first derivatives
only: a double backward through it (``create_graph=True``: gradient penalties, MAML) raises a
``RuntimeError``. ``dice_loss(input.softmax(1), target, from_logits=False)`` computes the same loss with
plain autograd and supports it, as do the binary, multilabel and probability-target paths.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seglosses._inputs import Prepared, as_class_vector, check_reduction, prepare
from seglosses._shared import (
    ClassValues,
    first_order_only,
    hinted,
    option_values,
    options_repr,
    pixel_chunk,
)
from seglosses.checks import check_bool, check_ignore_index, check_number
from seglosses.distributed import distributed_world
from seglosses.modes import BINARY_MODE, MULTICLASS_MODE, check_mode

__all__ = ["DiceLoss", "dice_loss"]

# Lower bound of the Dice coefficient inside ``-log`` (log_loss): caps a class's loss at about 16.1.
LOG_CLAMP = 1e-7
# The options of DiceLoss shown by its repr, and (with class_weights) passed on to dice_loss.
_REPR_OPTIONS = (
    "mode", "smooth", "power", "ignore_index", "per_image", "log_loss", "include_background",
    "from_logits", "reduction", "sync_ddp",
)  # fmt: skip


def _check_options(
    mode: str, smooth: float, power: float, ignore_index: int | None, reduction: str, sync_ddp: bool
) -> None:
    """The checks that need no input, shared by :func:`dice_loss` and :class:`DiceLoss`."""
    check_mode(mode)
    check_reduction(reduction)
    check_number(smooth, "smooth", minimum=0)
    with hinted(
        " (1: standard soft Dice, 2: squared denominator as in V-Net); below 1 the gradient of "
        "p ** power is infinite at p = 0"
    ):
        check_number(power, "power", minimum=1)
    check_ignore_index(ignore_index)
    check_bool(sync_ddp, "sync_ddp")


def _all_reduce_sums(*sums: Tensor) -> tuple[Tensor, ...]:
    """Sum the (C,) Dice sums over all processes with gradient, in one collective."""
    from torch.distributed.nn.functional import all_reduce

    sizes = [s.numel() for s in sums]
    # contiguous: the all-reduce backward fails on the non-contiguous gradients of split views
    total = all_reduce(torch.cat(sums).contiguous())
    return tuple(t.contiguous() for t in total.split(sizes))


def _included_classes(
    mode: str, num_classes: int, ignore_index: int | None, include_background: bool, device: torch.device
) -> Tensor:
    """(C,) bool mask of the classes that enter the average."""
    include = torch.ones(num_classes, dtype=torch.bool, device=device)
    if not include_background and mode != BINARY_MODE:
        include[0] = False
    if mode == MULTICLASS_MODE and ignore_index is not None and 0 <= ignore_index < num_classes:
        include[ignore_index] = False
    if not bool(include.any()):
        raise ValueError(
            f"no class is left to average over: {mode} input with {num_classes} class(es), "
            f"include_background={include_background}, ignore_index={ignore_index}"
        )
    return include


def _power(p: Tensor, power: float) -> Tensor:
    if power == 1:
        return p
    if power == 2:
        return p * p
    return p.pow(power)


def _index_sums(p: Tensor, y: Tensor, valid: Tensor | None, power: float) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection sum(p * g) and predicted cardinality sum(p ** power) per image and class, (N, C).

    ``p``: (N, C, S) probabilities; ``y``: (N, S) class ids (0 where ignored); ``valid``: (N, S) float
    0/1 mask or ``None``. Also returns the (N, S) probability of the target class, 0 where ignored.
    """
    p_true = p.gather(1, y.unsqueeze(1)).squeeze(1)
    if valid is None:
        pred = _power(p, power).sum(-1)
    else:
        p_true = p_true * valid
        # (N, 1, S) @ (N, S, C): ~10x faster on CPU than (N, C, S) @ (N, S, 1) for contiguous p.
        pred = torch.bmm(valid.unsqueeze(1), _power(p, power).transpose(1, 2)).squeeze(1)
    inter = p.new_zeros(p.shape[:2]).scatter_add_(1, y, p_true)
    return inter, pred, p_true


class _SoftmaxIndexSums(torch.autograd.Function):
    """Intersection and predicted cardinality of ``softmax(x, 1)`` (see :func:`_index_sums`).

    The backward turns the softmax kept from the forward into the gradient in place, so the loss
    holds one (N, C, S) tensor and allocates no other. A second backward through the same graph
    (``retain_graph=True``) finds it consumed and recomputes it from ``x``.
    With a = dL/dpred, b = dL/dinter, v the mask:
        dL/dx_c = v * p_c * (power * a_c * p_c ** (power - 1) - t) + [y = c] * v * p_y * b_y,
        t = sum_k p_k dL/dp_k = power * sum_k a_k p_k ** power + p_y * b_y.
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, valid: Tensor | None, power: float) -> tuple[Tensor, Tensor]:
        p = x.softmax(1)
        inter, pred, p_true = _index_sums(p, y, valid, power)
        ctx.save_for_backward(x, y, valid, p_true)
        ctx.power = power
        # Kept as a plain attribute, not saved: the backward overwrites it, which a saved tensor forbids.
        ctx.probs = p if ctx.needs_input_grad[0] else None
        return inter, pred

    @staticmethod
    @first_order_only
    def backward(ctx, grad_inter: Tensor, grad_pred: Tensor) -> tuple[Tensor | None, ...]:
        x, y, valid, p_true = ctx.saved_tensors
        power = ctx.power
        grad, ctx.probs = ctx.probs, None  # p, turned into dL/dx in place
        if grad is None:
            grad = x.softmax(1)
        pb = (p_true * grad_inter.gather(1, y)).unsqueeze(1)  # (N, 1, S): v * p_y * b_y
        a = grad_pred.unsqueeze(-1)  # (N, C, 1)
        a_row = grad_pred.unsqueeze(1)  # (N, 1, C)
        if power == 1:
            t = torch.baddbmm(pb, a_row, grad)  # (N, 1, S)
        chunk = pixel_chunk(*grad.shape)
        for lo in range(0, grad.shape[2], chunk):
            sl = slice(lo, lo + chunk)
            p = grad[:, :, sl]
            if power == 1:
                factor = a - t[:, :, sl]
            else:
                t_sl = torch.baddbmm(pb[:, :, sl], a_row, p.pow(power), alpha=power)
                factor = p.pow(power - 1).mul_(power * a).sub_(t_sl)
            if valid is not None:
                factor.mul_(valid[:, None, sl])
            p.mul_(factor)
            del factor  # free before the next chunk allocates its own
        grad.scatter_add_(1, y.unsqueeze(1), pb)
        return grad, None, None, None


def _dice_sums(prep: Prepared, power: float, from_logits: bool, mode: str) -> tuple[Tensor, Tensor, Tensor]:
    """Per image and class intersection, predicted and target cardinality, each (N, C)."""
    x = prep.input
    valid = prep.valid
    if prep.index_target:
        y = prep.target  # (N, S), ignored pixels already hold class 0
        mask = None if valid is None else valid.to(x.dtype)
        if from_logits:
            inter, pred = _SoftmaxIndexSums.apply(x, y, mask, power)
        else:
            inter, pred, _ = _index_sums(x, y, mask, power)
        # Hard labels: g ** power == g, the cardinality is the (valid) pixel count of each class.
        ones = x.new_ones(()).expand(y.shape) if mask is None else mask
        card = x.new_zeros(x.shape[:2]).scatter_add_(1, y, ones)
        return inter, pred, card

    if from_logits:
        p = x.softmax(1) if mode == MULTICLASS_MODE else x.sigmoid()
    else:
        p = x
    g = prep.target  # (N, C, S), ignored elements already 0
    inter = torch.einsum("ncs,ncs->nc", p, g)
    if valid is None:
        pred = _power(p, power).sum(-1)
    else:
        pred = torch.einsum("ncs,ncs->nc", _power(p, power), valid.to(p.dtype))
    card = _power(g, power).sum(-1)
    return inter, pred, card


def dice_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    smooth: float = 1.0,
    power: float = 1,
    class_weights: ClassValues = None,
    ignore_index: int | None = None,
    per_image: bool = False,
    log_loss: bool = False,
    include_background: bool = True,
    from_logits: bool = True,
    reduction: str = "mean",
    sync_ddp: bool = False,
) -> Tensor:
    r"""Soft Dice loss.

    For each class ``c``::

        D_c = (2 * sum(p * g) + smooth) / (sum(p ** power) + sum(g ** power) + smooth)
        loss_c = 1 - D_c            (log_loss=False)
        loss_c = -log(max(D_c, 1e-7))  (log_loss=True)

    ``p`` is ``softmax(input, dim=1)`` (multiclass) or ``sigmoid(input)`` (binary, multilabel), or
    ``input`` itself when ``from_logits=False``; ``g`` is the (one-hot) target. The sums run over all
    spatial positions of all images (``per_image=False``, "batch Dice") or of each image
    (``per_image=True``). Ignored pixels leave every sum. Where the denominator is 0 (only possible with
    ``smooth=0``) ``D_c = 1``. With ``smooth > 0`` a class absent from target and prediction costs 0,
    one absent from the target but predicted costs more than 0.

    Args:
        input: logits (or probabilities, ``from_logits=False``).
            multiclass: (N, C, *); binary: (N, *) or (N, 1, *); multilabel: (N, C, *).
            ``*`` is any number of spatial dims, including none. fp16/bf16 are computed in float32.
        target: multiclass: (N, *) integer class ids, or (N, C, *) class probabilities;
            binary: the input's shape, values in [0, 1] (the foreground probability);
            multilabel: (N, C, *) in [0, 1].
        mode: ``"binary"`` | ``"multiclass"`` | ``"multilabel"``. Binary has one class, the foreground.
        smooth: >= 0, added to numerator and denominator.
        power: exponent of the cardinality terms, a finite number >= 1 (1: standard soft Dice,
            2: V-Net's squared form). Below 1 the gradient at ``p = 0`` would be infinite.
        class_weights: ``w_c`` >= 0, a number or one value per class; default 1 for all.
        ignore_index: target value whose pixels are ignored. In multiclass mode a valid class id
            (``0 <= ignore_index < C``) also removes that class from the average. In binary/multilabel
            mode it marks ignored elements of the dense target (e.g. 255).
        per_image: Dice per image instead of pooled over the batch.
        log_loss: use ``-log(D_c)`` instead of ``1 - D_c``; ``D_c`` is clamped at 1e-7 inside the log.
        include_background: ``False`` drops class 0 from the average (multiclass/multilabel; binary
            mode has only the foreground class and ignores this flag).
        from_logits: ``input`` holds logits (default) or probabilities in [0, 1].
        reduction: mirrors ``F.cross_entropy``'s ``weight`` semantics, with ``W = sum`` of ``w_c`` over
            the included classes (excluded classes: ``include_background=False`` or ``ignore_index``):

            - ``"none"``: the weighted per-class losses ``w_c * loss_c``, shape (C,), or (N, C) with
              ``per_image=True``; excluded classes hold 0.
            - ``"sum"``: the sum of the ``"none"`` output.
            - ``"mean"``: that sum divided by ``W`` (``N * W`` with ``per_image=True``), i.e. the weighted
              mean of the per-class (per-image) losses.
        sync_ddp: batch Dice over the global batch of a data-parallel job: with ``per_image=False`` and
            ``torch.distributed`` initialised (world size > 1), the (C,) intersection and cardinality sums
            are summed over all processes (``torch.distributed.nn.functional.all_reduce``, which carries the
            gradient) before the division, so every process gets the Dice loss of the union of all local
            batches. Its gradient w.r.t. the local ``input`` is ``world_size`` times the gradient of that
            loss (the backward of the all-reduce sums the gradients of all processes); DDP's gradient
            averaging divides by ``world_size``, so parameter gradients equal those of one process
            computing the loss on the global batch. Every process must call the loss (a collective).
            Ignored with ``per_image=True`` (per-image Dice needs no communication) or without an
            initialised process group.

    Returns:
        The loss in the compute dtype (float32 for half-precision inputs): a scalar, or (C,)/(N, C) for
        ``reduction="none"``. If every pixel is ignored, every ``D_c = 1`` and the loss is 0.

    Raises:
        ValueError: bad ``mode``/``reduction``/``smooth``/``power``/``class_weights``, no class left to
            average over, all included weights 0, or input/target shapes, dtypes or values that do not
            fit ``mode`` (see :func:`seglosses._inputs.prepare`).
    """
    _check_options(mode, smooth, power, ignore_index, reduction, sync_ddp)
    prep = prepare(input, target, mode, ignore_index, from_logits=from_logits)
    x = prep.input
    n, num_classes, _ = x.shape
    include = _included_classes(mode, num_classes, ignore_index, include_background, x.device)
    weights = as_class_vector("class_weights", class_weights, num_classes, like=x)
    weights = include.to(x.dtype) if weights is None else weights * include
    total_weight = weights.sum()
    if class_weights is not None and not bool(total_weight > 0):
        raise ValueError(
            f"class_weights of the included classes sum to 0 (class_weights={weights.tolist()}, "
            f"included classes={include.nonzero().flatten().tolist()})"
        )

    inter, pred, card = _dice_sums(prep, power, from_logits, mode)
    if not per_image:
        inter, pred, card = inter.sum(0), pred.sum(0), card.sum(0)
        if sync_ddp and distributed_world() is not None:
            inter, pred, card = _all_reduce_sums(inter, pred, card)

    numerator = 2 * inter + smooth
    denominator = pred + card + smooth
    if smooth > 0:
        dice = numerator / denominator
    else:
        # Zero denominator (nothing predicted, nothing in the target): D = 1 with a finite gradient.
        empty = denominator <= 0
        dice = torch.where(empty, 1.0, numerator / denominator.masked_fill(empty, 1.0))
    loss = -dice.clamp_min(LOG_CLAMP).log() if log_loss else 1 - dice
    loss = loss * weights  # broadcasts over the leading N with per_image

    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / (total_weight * max(n, 1) if per_image else total_weight)


class DiceLoss(nn.Module):
    r"""Soft Dice loss module; see :func:`dice_loss` for the formula, the arguments and the reductions.

    The keyword arguments are stored as attributes of the same names; ``class_weights`` (if given) is
    a non-persistent (C,) float32 buffer so that it follows ``.to(device)``.

    Shape:
        ``*`` is any number of spatial dims, including none.

        - multiclass: input (N, C, \*) logits; target (N, \*) integer class ids in [0, C) (or
          ``ignore_index``), or (N, C, \*) class probabilities.
        - binary: input (N, \*) or (N, 1, \*) logits, one class (C = 1); target of the input's shape,
          in [0, 1].
        - multilabel: input (N, C, \*) logits; target (N, C, \*), in [0, 1].
        - output: a scalar for ``reduction="mean"`` or ``"sum"``; for ``"none"`` the weighted per-class
          losses, (C,), or (N, C) with ``per_image=True``. float32 for fp16/bf16 input.

    Examples::

        >>> import torch
        >>> from torch.nn.functional import one_hot
        >>> from seglosses import DiceLoss
        >>> gen = torch.Generator().manual_seed(0)
        >>> logits = torch.randn(2, 3, 8, generator=gen)  # (N, C, S): one spatial dim
        >>> labels = torch.randint(0, 3, (2, 8), generator=gen)  # (N, S)
        >>> DiceLoss(reduction="none")(logits, labels).shape  # one loss per class
        torch.Size([3])
        >>> DiceLoss(per_image=True, reduction="none")(logits, labels).shape
        torch.Size([2, 3])
        >>> p, g = logits.softmax(1), one_hot(labels, 3).movedim(-1, 1).float()
        >>> d = (2 * (p * g).sum((0, 2)) + 1.0) / (p.sum((0, 2)) + g.sum((0, 2)) + 1.0)  # batch Dice
        >>> torch.allclose(DiceLoss(smooth=1.0)(logits, labels), 1 - d.mean())
        True
        >>> perfect = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])  # probabilities (N=1, C=2, S=3)
        >>> DiceLoss(from_logits=False, smooth=0.0)(perfect, torch.tensor([[0, 1, 1]]))
        tensor(0.)
    """

    class_weights: Tensor | None

    def __init__(
        self,
        *,
        mode: str = "multiclass",
        smooth: float = 1.0,
        power: float = 1,
        class_weights: ClassValues = None,
        ignore_index: int | None = None,
        per_image: bool = False,
        log_loss: bool = False,
        include_background: bool = True,
        from_logits: bool = True,
        reduction: str = "mean",
        sync_ddp: bool = False,
    ) -> None:
        super().__init__()
        _check_options(mode, smooth, power, ignore_index, reduction, sync_ddp)
        self.mode = mode
        self.smooth = smooth
        self.power = power
        self.ignore_index = ignore_index
        self.per_image = per_image
        self.log_loss = log_loss
        self.include_background = include_background
        self.from_logits = from_logits
        self.reduction = reduction
        self.sync_ddp = sync_ddp
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32).detach().clone()
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return dice_loss(input, target, **option_values(self, (*_REPR_OPTIONS, "class_weights")))

    def extra_repr(self) -> str:
        return options_repr(self, _REPR_OPTIONS)
