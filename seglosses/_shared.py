"""Private pieces shared by the loss modules of :mod:`seglosses`.

The loss files import private helpers from the private modules only (this one, :mod:`seglosses._inputs`,
:mod:`seglosses._options`, :mod:`seglosses._overlap` and :mod:`seglosses._focal_core`), never from one
another.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

__all__ = [
    "CHUNK_ELEMENTS",
    "ClassValues",
    "SavedGradient",
    "first_order_only",
    "focal_factors",
    "hinted",
    "pixel_chunk",
]

#: A number, per-class values or None (alpha, weight, class_weights).
ClassValues = float | Sequence[float] | Tensor | None

#: The hand-written gradients (Dice backward, fused focal + Dice forward) work in pixel chunks whose
#: (N, C, chunk) temporaries hold about CHUNK_ELEMENTS elements (4 MiB in float32): little memory, and on
#: 2 CPU threads 10-15 % faster for the fused loss at (8, 12, 512, 512) than chunks of a quarter of the
#: input, the same for Dice (measured; 2**21 times like 2**20).
CHUNK_ELEMENTS = 2**20


def pixel_chunk(n: int, c: int, s: int) -> int:
    """Pixels per chunk (>= 1) for an (N, C, S) tensor: equal chunks of at most about
    ``CHUNK_ELEMENTS / (N * C)`` pixels."""
    chunk = max(1, CHUNK_ELEMENTS // max(1, n * c))
    return -(-s // -(-s // chunk)) if s else 1  # ceil(s / number of chunks)


def focal_factors(l: Tensor, gamma: float, need_h: bool) -> tuple[Tensor, Tensor | None]:
    """For log-probabilities ``l <= 0`` (any shape): ``f = (1 - e^l)^gamma`` and ``h = -d(f * l)/dl``.

    With ``p = e^l`` and ``r = -l / (1 - p)`` (-> 1 as ``l`` -> 0): ``h = f * (1 + gamma * p * r)``,
    finite for every ``gamma >= 0`` because ``f * r`` never forms ``0 * inf``. ``h`` is None unless
    ``need_h``.
    """
    em1 = torch.expm1(l)  # p - 1, accurate near p = 1
    f = em1.neg().pow_(gamma)  # pow(0, 0) = 1
    if not need_h:
        return f, None
    r = l.div(em1).nan_to_num_(nan=1.0)  # 0 / 0 only at l = 0, where the limit is 1
    h = em1.add_(1).mul_(r).mul_(gamma).add_(1).mul_(f)
    return f, h


#: The error of a second derivative through a hand-written gradient (see :func:`first_order_only`).
DOUBLE_BACKWARD_ERROR = (
    "seglosses: double backward (create_graph=True: gradient penalties, MAML, Hessian-vector products) is "
    "not supported by the hand-written gradients of the focal/cross-entropy losses, the multiclass Dice "
    "loss from logits and the fused focal + Dice of CombinedLoss. For a second derivative use a plain "
    "autograd formulation, e.g. F.cross_entropy, torchvision.ops.sigmoid_focal_loss, "
    "dice_loss(input.softmax(1), target, from_logits=False)"
)


def first_order_only(backward: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator of a hand-written ``backward``: run it without building a graph (like
    ``torch.autograd.function.once_differentiable``), and raise ``RuntimeError(DOUBLE_BACKWARD_ERROR)``
    when a graph of the gradient is asked for (``create_graph=True``, under which autograd runs backward
    with grad mode on).

    ``once_differentiable`` raises only when an incoming gradient itself requires grad, which the gradient
    of a ``mean``/``sum`` loss does not: a gradient penalty or a MAML step then silently lacks the loss's
    second derivative (or fails later with an unrelated "does not require grad" error). A
    ``create_graph=True`` backward that reaches this Function needs exactly that second derivative, so it
    fails here, with the alternatives in the message."""

    @functools.wraps(backward)
    def wrapper(ctx: FunctionCtx, *grad_outputs: Any) -> Any:
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD_ERROR)
        return backward(ctx, *grad_outputs)

    return wrapper


class SavedGradient(torch.autograd.Function):
    """Base of the Functions whose forward saves the gradient of the loss w.r.t. their first input.

    The forward calls ``ctx.save_for_backward(grad)`` with ``grad`` of the first input's shape; the
    backward multiplies it by the incoming gradient. An output that lacks the channel dim 1 of ``grad``
    (per-pixel (N, S) losses of (N, C, S) logits) is broadcast over it; a scalar output broadcasts as is.
    Every other input gets no gradient. A second derivative through it raises (:func:`first_order_only`).
    """

    @staticmethod
    @first_order_only
    def backward(ctx: FunctionCtx, grad_out: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        if 0 < grad_out.ndim < grad.ndim:
            grad_out = grad_out.unsqueeze(1)
        return (grad * grad_out,) + (None,) * (len(ctx.needs_input_grad) - 1)


@contextmanager
def hinted(hint: str) -> Iterator[None]:
    """Re-raise a ValueError of the block with ``hint`` appended to its message."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{e}{hint}") from None
