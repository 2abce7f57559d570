"""Weighted sum of named loss terms, remembering each term's last value for logging.

Fast path: a focal + Dice pair in their plain multiclass configuration (see :func:`_fusable`) is
computed by one autograd Function sharing the log-softmax, the target gather and the gradient buffer;
it gives the same values and gradients as calling the two terms (up to float rounding, tested).
Its gradient is formed in the forward pass, so a double backward (``create_graph=True``) raises a
``RuntimeError``, as it does through the focal term alone (see :mod:`seglosses.focal`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from seglosses._inputs import prepare
from seglosses._shared import SavedGradient, focal_factors, pixel_chunk
from seglosses.checks import check_bool, check_number
from seglosses.dice import DiceLoss
from seglosses.focal import FocalLoss
from seglosses.modes import MULTICLASS_MODE


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
        - input, target: passed unchanged to every term, so of the shapes the terms accept; for
          :class:`~seglosses.focal.FocalLoss` and :class:`~seglosses.dice.DiceLoss` in multiclass mode
          input (N, C, \*) logits and target (N, \*) class ids (or (N, C, \*) probabilities); binary
          (N, \*) or (N, 1, \*) and multilabel (N, C, \*) inputs with a target of the input's shape.
        - output: the terms' common shape: a scalar when every term reduces with ``"mean"``/``"sum"``.
          Terms of different output shapes (e.g. focal ``"none"`` (N, \*) and Dice ``"none"`` (C,))
          raise a ValueError.

    Examples::

        >>> import torch
        >>> from seglosses import CombinedLoss, DiceLoss, FocalLoss
        >>> gen = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(4, 5, 6, 6, generator=gen), torch.randint(0, 5, (4, 6, 6), generator=gen)
        >>> loss = CombinedLoss({"focal": FocalLoss(gamma=2.0), "dice": DiceLoss()}, weights={"dice": 0.5})
        >>> total = loss(x, y)
        >>> total.shape
        torch.Size([])
        >>> sorted(loss.last_values)
        ['dice', 'focal']
        >>> torch.allclose(total, loss.last_values["focal"] + 0.5 * loss.last_values["dice"])
        True
        >>> separate = FocalLoss(gamma=2.0)(x, y) + 0.5 * DiceLoss()(x, y)  # the fused path agrees
        >>> torch.allclose(total, separate)
        True

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
            w = check_number(given.get(name, 1.0), f"CombinedLoss weight of {name!r}", minimum=0)
            self.weights[name] = float(w)
        self.fused = check_bool(fused, "CombinedLoss fused")
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
        focal_loss, dice_loss = self.losses[focal], self.losses[dice]
        ignore_index = focal_loss.ignore_index
        prep = prepare(input, target, MULTICLASS_MODE, ignore_index)
        c = prep.num_classes
        # an ignore_index that is a class id also leaves the Dice average (as in DiceLoss)
        dropped = ignore_index if ignore_index is not None and 0 <= ignore_index < c else None
        need_grad = torch.is_grad_enabled() and prep.input.requires_grad
        total, focal_value, dice_value = _FocalDice.apply(
            prep.input, prep.target, prep.valid, dropped, float(focal_loss.gamma),
            float(dice_loss.smooth), self.weights[focal], self.weights[dice], need_grad,
        )
        values = {focal: focal_value, dice: dice_value}
        self.last_values = {name: values[name] for name in self.losses}
        return total

    def extra_repr(self) -> str:
        return "weights=" + ", ".join(f"{k}={v:g}" for k, v in self.weights.items())


_MISSING = object()
# The option values of the terms that the fused Function implements.
_FOCAL_PLAIN = {"mode": MULTICLASS_MODE, "alpha": None, "reduction": "mean", "from_logits": True,
                "label_smoothing": 0.0}
_DICE_PLAIN = {"mode": MULTICLASS_MODE, "power": 1, "class_weights": None, "per_image": False,
               "log_loss": False, "include_background": True, "from_logits": True, "reduction": "mean",
               "sync_ddp": False}


def _attributes_match(module: nn.Module, expected: dict[str, object]) -> bool:
    """Whether every attribute named in ``expected`` exists on ``module`` and equals its value: no tensor,
    and a bool only where a bool is expected (``True == 1`` does not count)."""
    for name, value in expected.items():
        actual = getattr(module, name, _MISSING)
        if actual is _MISSING or isinstance(actual, Tensor):
            return False
        if isinstance(actual, bool) != isinstance(value, bool) or actual != value:
            return False
    return True


def _fusable(losses: nn.ModuleDict, input: Tensor, target: Tensor) -> tuple[str, str] | None:
    """Names (focal, dice) when the terms are exactly a FocalLoss and a DiceLoss in the configuration the
    fused Function implements: multiclass, logits, class-index targets, one ``ignore_index`` shared by
    both terms, no per-class weights, no label smoothing, mean reductions; batch Dice with ``smooth > 0``,
    ``power = 1`` and no DDP synchronisation (``sync_ddp=False``). Else ``None``."""
    if len(losses) != 2:
        return None
    focal = next((k for k, m in losses.items() if type(m) is FocalLoss), None)
    dice = next((k for k, m in losses.items() if type(m) is DiceLoss), None)
    if focal is None or dice is None:
        return None
    if not (_attributes_match(losses[focal], _FOCAL_PLAIN) and _attributes_match(losses[dice], _DICE_PLAIN)):
        return None
    ignore_index = getattr(losses[focal], "ignore_index", _MISSING)
    if ignore_index is _MISSING or getattr(losses[dice], "ignore_index", _MISSING) != ignore_index:
        return None
    if not losses[dice].smooth > 0:  # the options are checked: a number >= 0, as is the focal gamma
        return None
    # anything else (float targets, bad shapes, empty tensors) takes the general path and its checks
    if not (isinstance(input, Tensor) and isinstance(target, Tensor)) or input.ndim < 2:
        return None
    if target.is_floating_point() or target.requires_grad or input.numel() == 0:
        return None
    if ignore_index is not None and input.shape[1] == 1 and ignore_index == 0:
        return None  # no class left for Dice: DiceLoss raises the error
    return focal, dice


class _FocalDice(SavedGradient):
    r"""``wf * focal + wd * dice`` for logits x (N, C, S) and class ids y (N, S), with both terms.

    ``valid`` (N, S) bool marks the counted pixels (``None``: all); ``dropped`` is a class id left out of
    the Dice average (an ``ignore_index`` inside [0, C)) or ``None``.
    focal = mean over the M counted pixels of ``-(1 - p_y)^gamma log p_y`` (as ``FocalLoss``; 0 if M = 0);
    dice = ``1 - mean_c D_c`` over the K averaged classes, ``D_c = (2 I_c + smooth) / (P_c + G_c + smooth)``
    pooled over the batch with ``I_c = sum p_c [y = c]``, ``P_c = sum p_c``, ``G_c = #{y = c}`` over counted
    pixels (as ``DiceLoss``).

    The gradient is formed in the forward pass into the log-softmax buffer (the only (N, C, S) tensor
    kept). With ``a_c = dL/dP_c``, ``b_c = dL/dI_c`` (0 for the dropped class) and the focal coefficient
    ``h`` (per pixel), at a counted pixel:
        dL/dx_j = p_j (wf h / M + a_j - t) - [j = y] (wf h / M - p_y b_y),  t = sum_k a_k p_k + p_y b_y,
    and 0 at the others.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, x: Tensor, y: Tensor, valid: Tensor | None, dropped: int | None, gamma: float,
        smooth: float, wf: float, wd: float, need_grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        n, c, s = x.shape
        v = None if valid is None else valid.to(x.dtype)  # (N, S)
        m = n * s if v is None else v.sum().clamp_(min=1)
        y1 = y.unsqueeze(1)
        logp = torch.log_softmax(x, dim=1)
        l = logp.gather(1, y1).squeeze(1)  # (N, S) log p_y
        f, h = focal_factors(l, gamma, need_grad)
        f = f.mul_(l).neg_()
        focal = (f if v is None else f.mul_(v)).sum() / m

        p = logp.exp_()  # the log-softmax buffer now holds p
        p_true = l.exp_()  # (N, S)
        if v is None:
            pred = p.sum(dim=(0, 2))
            card = torch.bincount(y.flatten(), minlength=c).to(x.dtype)
        else:
            p_true.mul_(v)
            pred = torch.bmm(p, v.unsqueeze(2)).sum(dim=(0, 2))
            card = torch.bincount(y.flatten(), weights=v.flatten(), minlength=c).to(x.dtype)
        inter = x.new_zeros(c).scatter_add_(0, y.flatten(), p_true.flatten())
        den = pred + card + smooth
        d = (2 * inter + smooth) / den
        k = c
        if dropped is not None:
            d[dropped] = 0.0  # out of the average: contributes neither value nor gradient
            k = c - 1
        dice = 1 - d.sum() / k
        total = wf * focal + wd * dice if wf != 1.0 or wd != 1.0 else focal + dice
        ctx.mark_non_differentiable(focal, dice)
        if not need_grad:
            ctx.save_for_backward(None)
            return total, focal, dice

        a = (wd / k) * d / den  # dL/dP_c
        b = (-2 * wd / k) / den  # dL/dI_c
        if dropped is not None:
            b[dropped] = 0.0
        assert h is not None
        hs = h.mul_(wf / m)  # (N, S)
        if v is not None:
            hs.mul_(v)
        pb = p_true.mul_(b[y])  # (N, S): p_y b_y (0 at pixels not counted)
        coef = torch.matmul(a, p).add_(pb).sub_(hs).neg_().unsqueeze(1)  # (N, 1, S): wf h / M - t
        a3 = a.view(1, c, 1)
        v3 = None if v is None else v.unsqueeze(1)
        chunk = pixel_chunk(n, c, s)
        for lo in range(0, s, chunk):
            sl = slice(lo, lo + chunk)
            factor = coef[:, :, sl] + a3
            p[:, :, sl].mul_(factor if v3 is None else factor.mul_(v3[:, :, sl]))
        p.scatter_add_(1, y1, pb.sub_(hs).unsqueeze(1))
        ctx.save_for_backward(p)
        return total, focal, dice
