"""Soft Dice loss for binary, multiclass and multilabel segmentation.

Per class ``c`` the soft Dice coefficient is

    D_c = (2 * sum(p * g) + smooth) / (sum(p ** power) + sum(g ** power) + smooth)

with ``p`` the predicted probability of ``c`` and ``g`` its target, summed over the valid (not ignored)
pixels of every image (``per_image=False``) or of each image separately (``per_image=True``).

The sums come from :mod:`seglosses._overlap` (shared with the Tversky and generalized Dice losses): index
targets never become a one-hot tensor, and with logits a hand-written backward turns the forward's softmax
into the gradient in place, so the loss keeps one (N, C, S) tensor between forward and backward and
allocates no other full-size one.

That hand-written backward (multiclass, class-index targets, ``from_logits=True``) gives first derivatives
only: a double backward through it (``create_graph=True``: gradient penalties, MAML) raises a
``RuntimeError``. ``dice_loss(input.softmax(1), target, from_logits=False)`` computes the same loss with
plain autograd and supports it, as do the binary, multilabel and probability-target paths.
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

__all__ = ["DiceLoss", "DiceOptions", "dice_loss"]

# Lower bound of the Dice coefficient inside ``-log`` (log_loss): caps a class's loss at about 16.1.
LOG_CLAMP = 1e-7


@dataclass(frozen=True)
class DiceOptions:
    """The options of :func:`dice_loss` and :class:`DiceLoss` (their meaning there), with their defaults and
    checks; ``class_weights`` is kept as None, a number or a tuple of floats.

    Raises:
        ValueError: unknown mode or reduction, ``smooth`` negative or not finite, ``power`` below 1 or not
            finite, ``class_weights`` negative or not 1-D, a non-integer ignore_index, a non-bool sync_ddp.
    """

    mode: str = "multiclass"
    smooth: float = 1.0
    power: float = 1
    class_weights: ClassValues = field(default=None, metadata=PER_CLASS)
    ignore_index: int | None = None
    per_image: bool = False
    log_loss: bool = False
    include_background: bool = True
    from_logits: bool = True
    reduction: str = "mean"
    sync_ddp: bool = False

    def __post_init__(self) -> None:
        check_mode(self.mode)
        check_reduction(self.reduction)
        check_number(self.smooth, "smooth", minimum=0)
        with hinted(
            " (1: standard soft Dice, 2: squared denominator as in V-Net); below 1 the gradient of "
            "p ** power is infinite at p = 0"
        ):
            check_number(self.power, "power", minimum=1)
        weights = check_class_values("class_weights", self.class_weights, self.mode)
        object.__setattr__(self, "class_weights", weights)
        check_ignore_index(self.ignore_index)
        check_bool(self.sync_ddp, "sync_ddp")


def dice_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = DiceOptions.mode,
    smooth: float = DiceOptions.smooth,
    power: float = DiceOptions.power,
    class_weights: ClassValues = DiceOptions.class_weights,
    ignore_index: int | None = DiceOptions.ignore_index,
    per_image: bool = DiceOptions.per_image,
    log_loss: bool = DiceOptions.log_loss,
    include_background: bool = DiceOptions.include_background,
    from_logits: bool = DiceOptions.from_logits,
    reduction: str = DiceOptions.reduction,
    sync_ddp: bool = DiceOptions.sync_ddp,
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
    options = DiceOptions(mode=mode, smooth=smooth, power=power, class_weights=class_weights,
                          ignore_index=ignore_index, per_image=per_image, log_loss=log_loss,
                          include_background=include_background, from_logits=from_logits, reduction=reduction,
                          sync_ddp=sync_ddp)  # fmt: skip
    return _dice(input, target, options, options.class_weights)


def _dice(input: Tensor, target: Tensor, o: DiceOptions, class_weights: ClassValues) -> Tensor:
    """The Dice loss of the options ``o`` with the per-class ``class_weights`` (a module's buffer)."""
    prep = prepare(input, target, o.mode, o.ignore_index, from_logits=o.from_logits)
    x = prep.input
    n, num_classes, _ = x.shape
    weights, total_weight = class_weights_of(
        o.mode, class_weights, num_classes, o.ignore_index, o.include_background, like=x
    )
    inter, pred, card = overlap_sums(prep, mode=o.mode, from_logits=o.from_logits, power=o.power,
                                     per_image=o.per_image, sync_ddp=o.sync_ddp)  # fmt: skip
    numerator = 2 * inter + o.smooth
    denominator = pred + card + o.smooth
    if o.smooth > 0:
        dice = numerator / denominator
    else:
        # Zero denominator (nothing predicted, nothing in the target): D = 1 with a finite gradient.
        empty = denominator <= 0
        dice = torch.where(empty, 1.0, numerator / denominator.masked_fill(empty, 1.0))
    loss = -dice.clamp_min(LOG_CLAMP).log() if o.log_loss else 1 - dice
    loss = loss * weights  # broadcasts over the leading N with per_image
    return reduce_per_class(loss, total_weight, o.reduction, o.per_image, n)


class DiceLoss(LossModule, options=DiceOptions):
    r"""Soft Dice loss module; see :func:`dice_loss` for the formula, the arguments and the reductions.

    The keyword arguments are kept in ``options`` (a :class:`DiceOptions`, checked once) and read as
    attributes of the same names; ``class_weights`` (if given) is a non-persistent (C,) float32 buffer so
    that it follows ``.to(device)``.

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

    class_weights: Tensor | float | None

    def __init__(
        self,
        *,
        mode: str = DiceOptions.mode,
        smooth: float = DiceOptions.smooth,
        power: float = DiceOptions.power,
        class_weights: ClassValues = DiceOptions.class_weights,
        ignore_index: int | None = DiceOptions.ignore_index,
        per_image: bool = DiceOptions.per_image,
        log_loss: bool = DiceOptions.log_loss,
        include_background: bool = DiceOptions.include_background,
        from_logits: bool = DiceOptions.from_logits,
        reduction: str = DiceOptions.reduction,
        sync_ddp: bool = DiceOptions.sync_ddp,
    ) -> None:
        super().__init__(DiceOptions(mode=mode, smooth=smooth, power=power, class_weights=class_weights,
                                     ignore_index=ignore_index, per_image=per_image, log_loss=log_loss,
                                     include_background=include_background, from_logits=from_logits,
                                     reduction=reduction, sync_ddp=sync_ddp))  # fmt: skip

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _dice(input, target, self.options, self.class_weights)
