"""Weighted sum of named loss terms, remembering each term's last value for logging.

Fast path: a focal + Dice pair in their plain multiclass configuration (see :func:`_fusable`) is
computed by one autograd Function sharing the log-softmax, the target gather and the gradient buffer;
it gives the same values and gradients as calling the two terms (up to float rounding, tested).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from seglosses._inputs import prepare
from seglosses.dice import DiceLoss
from seglosses.focal import FocalLoss, _focal_factors


class CombinedLoss(nn.Module):
    r"""``sum_k weights[k] * losses[k](input, target)`` over named terms.

    Args:
        losses: non-empty mapping name -> loss module (a ``dict`` or an OmegaConf ``DictConfig``, as
            ``hydra.utils.instantiate`` passes it); kept in an :class:`~torch.nn.ModuleDict` in the given
            order. Names must be non-empty strings without ``"."``.
        weights: name -> weight (finite, >= 0). ``None`` gives every term weight 1; a partial mapping gives
            the terms it leaves out weight 1.
        fused: allow the shared-softmax fast path for a :class:`~seglosses.focal.FocalLoss` +
            :class:`~seglosses.dice.DiceLoss` pair (checked at every call, so a changed ``gamma`` is
            seen). Values and gradients equal those of the separate terms; ``False`` always calls
            the terms one by one.

    Shape:
        ``input`` and ``target`` are passed unchanged to every term. Every term must return a tensor of the
        same shape (a scalar for ``reduction="mean"``/``"sum"``); the output has that shape.

    Attributes:
        losses: the terms (``nn.ModuleDict``), e.g. ``combined.losses["focal"].gamma = 3.0``.
        weights: ``dict[str, float]`` with a weight for every term.
        last_values: ``dict[str, Tensor]``, each term's unweighted value from the last forward, detached
            (for logging ``train/loss/<name>``); empty before the first call.

    Raises:
        ValueError: empty ``losses``, a bad name, ``weights`` naming an unknown term, a negative,
            non-finite or non-numeric weight, or terms returning tensors of different shapes.
        TypeError: a term that is not an ``nn.Module``.
    """

    def __init__(
        self,
        losses: Mapping[str, nn.Module],
        weights: Mapping[str, float] | None = None,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(losses, Mapping) or len(losses) == 0:
            raise ValueError(f"CombinedLoss needs a non-empty mapping name -> loss module, got {losses!r}")
        terms: dict[str, nn.Module] = {}
        for name, loss in losses.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(
                    f"CombinedLoss term names must be non-empty strings without '.', got {name!r}"
                )
            if not isinstance(loss, nn.Module):
                raise TypeError(
                    f"CombinedLoss term {name!r} must be an nn.Module (a loss object), "
                    f"got {type(loss).__name__}: {loss!r}"
                )
            terms[name] = loss
        self.losses = nn.ModuleDict()
        for name, loss in terms.items():
            try:
                self.losses[name] = loss
            except KeyError as e:  # e.g. "keys" or "items": ModuleDict attribute names
                raise ValueError(f"CombinedLoss term name {name!r} is reserved; choose another name") from e

        given = {} if weights is None else weights
        if not isinstance(given, Mapping):
            raise ValueError(f"CombinedLoss weights must be a mapping name -> weight, got {weights!r}")
        unknown = [k for k in given if k not in terms]
        if unknown:
            raise ValueError(
                f"CombinedLoss weights name unknown terms {unknown}; the terms are {list(terms)}"
            )
        self.weights: dict[str, float] = {}
        for name in terms:
            w = given.get(name, 1.0)
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
                raise ValueError(f"CombinedLoss weight of {name!r} must be a finite number >= 0, got {w!r}")
            self.weights[name] = float(w)
        if not isinstance(fused, bool):
            raise ValueError(f"CombinedLoss fused must be True or False, got {fused!r}")
        self.fused = fused
        self.last_values: dict[str, Tensor] = {}

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        pair = _fusable(self.losses, input, target) if self.fused else None
        if pair is not None:
            return self._forward_fused(input, target, *pair)
        values: dict[str, Tensor] = {}
        total: Tensor | None = None
        for name, loss in self.losses.items():
            value = loss(input, target)
            if total is not None and value.shape != total.shape:
                first = next(iter(values))
                raise ValueError(
                    f"CombinedLoss terms must return tensors of one shape; {first!r} gave "
                    f"{tuple(total.shape)}, {name!r} gave {tuple(value.shape)} (check their reduction)"
                )
            values[name] = value.detach()
            weighted = value * self.weights[name] if self.weights[name] != 1.0 else value
            total = weighted if total is None else total + weighted
        self.last_values = values
        assert total is not None  # losses is non-empty
        return total

    def _forward_fused(self, input: Tensor, target: Tensor, focal: str, dice: str) -> Tensor:
        prep = prepare(input, target, "multiclass")
        focal_loss, dice_loss = self.losses[focal], self.losses[dice]
        need_grad = torch.is_grad_enabled() and prep.input.requires_grad
        total, focal_value, dice_value = _FocalDice.apply(
            prep.input, prep.target, float(focal_loss.gamma), float(dice_loss.smooth),
            self.weights[focal], self.weights[dice], need_grad,
        )
        values = {focal: focal_value, dice: dice_value}
        self.last_values = {name: values[name] for name in self.losses}
        return total

    def extra_repr(self) -> str:
        return "weights=" + ", ".join(f"{k}={v:g}" for k, v in self.weights.items())


_MISSING = object()
_FOCAL_PLAIN = {"mode": "multiclass", "alpha": None, "ignore_index": None, "reduction": "mean",
                "from_logits": True}
_DICE_PLAIN = {"mode": "multiclass", "power": 1, "class_weights": None, "ignore_index": None,
               "per_image": False, "log_loss": False, "include_background": True, "from_logits": True,
               "reduction": "mean"}


def _plain(module: nn.Module, expected: dict[str, object]) -> bool:
    for name, value in expected.items():
        actual = getattr(module, name, _MISSING)
        if actual is _MISSING or isinstance(actual, Tensor):
            return False
        if isinstance(actual, bool) != isinstance(value, bool) or actual != value:
            return False
    return True


def _finite_real(value: object, minimum: float) -> bool:
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return number and math.isfinite(value) and value >= minimum  # type: ignore[arg-type]


def _fusable(losses: nn.ModuleDict, input: Tensor, target: Tensor) -> tuple[str, str] | None:
    """Names (focal, dice) when the terms are exactly a FocalLoss and a DiceLoss in the configuration the
    fused Function implements: multiclass, logits, class-index targets, nothing ignored, no per-class
    weights, mean reductions; batch Dice with ``smooth > 0`` and ``power = 1``. Else ``None``."""
    if len(losses) != 2:
        return None
    focal = next((k for k, m in losses.items() if type(m) is FocalLoss), None)
    dice = next((k for k, m in losses.items() if type(m) is DiceLoss), None)
    if focal is None or dice is None:
        return None
    if not (_plain(losses[focal], _FOCAL_PLAIN) and _plain(losses[dice], _DICE_PLAIN)):
        return None
    smooth = getattr(losses[dice], "smooth", None)
    if not (_finite_real(smooth, 0) and smooth > 0):  # type: ignore[operator]
        return None
    # an invalid gamma (e.g. set by a callback) takes the general path, whose checks name it
    if not _finite_real(getattr(losses[focal], "gamma", None), 0):
        return None
    # anything else (float targets, bad shapes, empty tensors) takes the general path and its checks
    if not (isinstance(input, Tensor) and isinstance(target, Tensor)) or input.ndim < 2:
        return None
    if target.is_floating_point() or target.requires_grad or input.numel() == 0:
        return None
    return focal, dice


# Pixels per chunk when forming the (N, C, S) gradient, bounding the temporary at about 2**20 elements.
_CHUNK_ELEMENTS = 2**20


class _FocalDice(torch.autograd.Function):
    r"""``wf * focal + wd * dice`` for logits x (N, C, S) and class ids y (N, S), with both terms.

    focal = mean over the M = N * S pixels of ``-(1 - p_y)^gamma log p_y`` (as ``FocalLoss``);
    dice = ``1 - mean_c D_c``, ``D_c = (2 I_c + smooth) / (P_c + G_c + smooth)`` pooled over the batch
    with ``I_c = sum p_c [y = c]``, ``P_c = sum p_c``, ``G_c = #{y = c}`` (as ``DiceLoss``).

    The gradient is formed in the forward pass into the log-softmax buffer (the only (N, C, S) tensor
    kept). With ``a_c = dL/dP_c``, ``b_c = dL/dI_c`` and the focal coefficient ``h`` (per pixel):
        dL/dx_j = p_j (wf h / M + a_j - t) - [j = y] (wf h / M - p_y b_y),  t = sum_k a_k p_k + p_y b_y.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, x: Tensor, y: Tensor, gamma: float, smooth: float, wf: float, wd: float,
        need_grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        n, c, s = x.shape
        m = n * s
        y1 = y.unsqueeze(1)
        logp = torch.log_softmax(x, dim=1)
        l = logp.gather(1, y1).squeeze(1)  # (N, S) log p_y
        f, h = _focal_factors(l, gamma, need_grad)
        focal = f.mul_(l).neg_().sum() / m

        p = logp.exp_()  # the log-softmax buffer now holds p
        p_true = l.exp_()  # (N, S)
        inter = x.new_zeros(c).scatter_add_(0, y.flatten(), p_true.flatten())
        pred = p.sum(dim=(0, 2))
        card = torch.bincount(y.flatten(), minlength=c).to(x.dtype)
        den = pred + card + smooth
        d = (2 * inter + smooth) / den
        dice = 1 - d.mean()
        total = wf * focal + wd * dice if wf != 1.0 or wd != 1.0 else focal + dice
        ctx.mark_non_differentiable(focal, dice)
        if not need_grad:
            ctx.save_for_backward(None)
            return total, focal, dice

        a = (wd / c) * d / den  # dL/dP_c
        b = (-2 * wd / c) / den  # dL/dI_c
        assert h is not None
        hs = h.mul_(wf / m)  # (N, S)
        pb = p_true.mul_(b[y])  # (N, S): p_y b_y
        coef = torch.matmul(a, p).add_(pb).sub_(hs).neg_().unsqueeze(1)  # (N, 1, S): wf h / M - t
        a3 = a.view(1, c, 1)
        chunk = max(1, _CHUNK_ELEMENTS // max(1, n * c))
        for lo in range(0, s, chunk):
            sl = slice(lo, lo + chunk)
            p[:, :, sl].mul_(coef[:, :, sl] + a3)
        p.scatter_add_(1, y1, pb.sub_(hs).unsqueeze(1))
        ctx.save_for_backward(p)
        return total, focal, dice

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_total: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_total, None, None, None, None, None, None

