"""Validation and shape normalisation shared by every loss in ``seglosses``.

Every public loss funnels its ``input``/``target`` through :func:`prepare` so that shape rules,
error messages and the float32 upcast of half-precision inputs are defined once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from seglosses._shared import ClassValues
from seglosses.checks import check_choice, check_ignore_index
from seglosses.modes import BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE, check_mode

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`."""
    return check_choice(reduction, "reduction", REDUCTIONS)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Losses are computed in float32 for fp16/bf16 inputs and in the input's dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def as_class_vector(name: str, value: ClassValues, num_classes: int, like: Tensor) -> Tensor | None:
    """``None`` stays ``None``; a number or a length-``num_classes`` sequence becomes a (C,) tensor.

    ``like`` gives the device and dtype of the result.
    """
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(num_classes)
    if t.ndim != 1 or t.numel() != num_classes:
        raise ValueError(
            f"{name} must be a number or have one value per class ({num_classes}), "
            f"got shape {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{name} must be finite and >= 0, got {t.tolist()}")
    return t


def check_class_values(name: str, value: ClassValues, mode: str) -> float | tuple[float, ...] | None:
    """Checks that need no class count: a number or 1-D values, finite, >= 0; <= 1 for sigmoid alpha.

    Returns ``value`` as the options dataclasses keep it: None, a number as given (a 0-d tensor as a float),
    or a tuple of floats (from a sequence, an OmegaConf list or a 1-D tensor).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, Sequence, Tensor)):
        raise ValueError(f"{name} must be None, a number or a sequence of numbers, got {value!r}")
    if isinstance(value, Tensor):
        value = value.detach().cpu()
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be None, a number or a sequence of numbers, got {value!r}") from e
    if t.ndim > 1:
        raise ValueError(
            f"{name} must be a number or a 1-D sequence of per-class values, got shape {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{name} must be finite and >= 0, got {t.tolist()}")
    if name == "alpha" and mode != MULTICLASS_MODE:
        if (t > 1).any():
            raise ValueError(
                f"{mode} alpha weighs positives by alpha and negatives by 1 - alpha, so it "
                f"must lie in [0, 1], got {t.tolist()}"
            )
        if mode == BINARY_MODE and t.numel() != 1:
            raise ValueError(f"binary alpha must be a single number in [0, 1], got {t.tolist()}")
    if isinstance(value, (int, float)):
        return value
    return float(t) if t.ndim == 0 else tuple(t.tolist())


@dataclass
class Prepared:
    """Inputs of a loss in canonical, spatially flattened form.

    Attributes:
        input: (N, C, S) logits or probabilities in the compute dtype (C = 1 in binary mode).
        target: multiclass index targets: (N, S) int64 with ignored pixels replaced by 0;
            every other case: (N, C, S) float in the compute dtype, ignored elements replaced by 0.
        valid: ``None`` when nothing is ignored; else a bool mask, (N, S) for index targets
            and (N, C, S) for dense targets.
        index_target: whether ``target`` holds class indices.
        spatial_shape: the ``*`` of the original input, to restore per-pixel outputs.
        out_shape: shape of a per-element result before flattening: (N, *) for multiclass index
            targets and binary inputs given without a channel dim, else (N, C, *).
    """

    input: Tensor
    target: Tensor
    valid: Tensor | None
    index_target: bool
    spatial_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return self.input.shape[1]


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def prepare(
    input: Tensor,
    target: Tensor,
    mode: str,
    ignore_index: int | None = None,
    *,
    from_logits: bool = True,
) -> Prepared:
    """Validate ``input``/``target`` for ``mode`` and flatten spatial dims.

    Shapes as in :class:`Prepared`. One device-to-host transfer per call (target range and "anything
    ignored?"), plus one for the input's range with ``from_logits=False``.

    Logits are not checked for NaN/inf: even the cheapest exact test (a NaN-propagating ``input.sum()``
    folded into that one transfer) measured 2-12 % of a loss's forward + backward at (8, 12, 256, 256)
    float32 on 2 CPU threads (one more full read of the input; the loss's own passes are few). NaN logits
    give a NaN loss and NaN gradients on every path, so check the loss value where its transfer is paid
    anyway (logging, ``torch.isfinite(loss)`` in the training step). ``+inf``/``-inf`` logits saturate the
    softmax/sigmoid and give NaN or a finite loss depending on the path (``-inf`` for a class that is not
    the target is a valid mask in multiclass mode).

    Raises:
        ValueError: with the expected and the received shape, dtype or value range.
    """
    check_mode(mode)
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise ValueError(
            f"input and target must be tensors, got {type(input).__name__} and {type(target).__name__}"
        )
    if not input.is_floating_point():
        raise ValueError(f"input must be floating point (logits or probabilities), got {input.dtype}")
    check_ignore_index(ignore_index)
    if not from_logits:
        _check_probabilities(input)
    dtype = compute_dtype(input.dtype)
    if mode == MULTICLASS_MODE:
        return _prepare_multiclass(input, target, ignore_index, dtype)
    if mode == BINARY_MODE:
        return _prepare_binary(input, target, ignore_index, dtype)
    return _prepare_multilabel(input, target, ignore_index, dtype)


def _flatten(t: Tensor, dtype: torch.dtype) -> tuple[Tensor, tuple[int, ...]]:
    """(N, C, *) -> (N, C, S) in ``dtype``, and the spatial shape ``*``."""
    n, c = t.shape[:2]
    spatial = _shape(t)[2:]
    # explicit S: reshape(n, c, -1) is ambiguous for an empty batch
    return t.to(dtype).reshape(n, c, math.prod(spatial)), spatial


def _prepare_multiclass(
    input: Tensor, target: Tensor, ignore_index: int | None, dtype: torch.dtype
) -> Prepared:
    """Input (N, C, *); target (N, *) or (N, 1, *) class ids, or (N, C, *) probabilities."""
    if input.ndim < 2:
        raise ValueError(f"multiclass input must have shape (N, C, *), got {_shape(input)}")
    x, spatial = _flatten(input, dtype)
    n, c, s = x.shape
    if target.is_floating_point() and target.shape == input.shape:
        t, _ = _flatten(target, dtype)
        return _dense(x, t, ignore_index, spatial, _shape(input), MULTICLASS_MODE)
    if target.is_floating_point():
        raise ValueError(
            "multiclass target must be int64 class indices of shape (N, *) "
            f"= {(n, *spatial)} or float probabilities of the input's shape {_shape(input)}; "
            f"got a {target.dtype} target of shape {_shape(target)}"
        )
    if target.ndim == input.ndim and target.shape[1] == 1 and c != 1:
        target = target.squeeze(1)
    if _shape(target) != (n, *spatial):
        raise ValueError(
            f"multiclass index target must have shape (N, *) = {(n, *spatial)} for input of shape "
            f"{_shape(input)}, got {_shape(target)}"
        )
    if target.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise ValueError(f"multiclass index target must be an integer tensor, got {target.dtype}")
    raw = target.reshape(n, s).long()
    valid = None if ignore_index is None else raw != ignore_index
    y = raw if valid is None else raw.masked_fill(~valid, 0)
    if y.numel() > 0:
        # range and "anything ignored?" in one device-to-host transfer (one sync per call on GPU)
        lo, hi = torch.aminmax(y)
        all_valid = lo.new_ones(()) if valid is None else valid.all().to(lo.dtype)
        lo_, hi_, all_valid_ = torch.stack([lo, hi, all_valid]).tolist()
        if lo_ < 0 or hi_ >= c:
            _raise_index_range(raw, valid, c, ignore_index)
        if all_valid_:
            valid = None
    return Prepared(x, y, valid, True, spatial, (n, *spatial))


def _prepare_binary(input: Tensor, target: Tensor, ignore_index: int | None, dtype: torch.dtype) -> Prepared:
    """Input (N, 1, *) or (N, *) (no channel dim: it is added); target of the input's shape."""
    out_shape = _shape(input)
    if not (input.ndim >= 2 and input.shape[1] == 1):
        if input.ndim < 1:
            raise ValueError(f"binary input must have shape (N, *) or (N, 1, *), got {_shape(input)}")
        input = input.unsqueeze(1)
        if target.shape == out_shape:
            target = target.unsqueeze(1)
    if target.shape != input.shape:
        raise ValueError(f"binary target must have the input's shape {out_shape}, got {_shape(target)}")
    x, spatial = _flatten(input, dtype)
    t, _ = _flatten(target, dtype)
    return _dense(x, t, ignore_index, spatial, out_shape, BINARY_MODE)


def _prepare_multilabel(
    input: Tensor, target: Tensor, ignore_index: int | None, dtype: torch.dtype
) -> Prepared:
    """Input (N, C, *); target (N, C, *) of the input's shape."""
    if input.ndim < 2:
        raise ValueError(f"multilabel input must have shape (N, C, *), got {_shape(input)}")
    if target.shape != input.shape:
        raise ValueError(
            f"multilabel target must have the input's shape {_shape(input)}, got {_shape(target)}"
        )
    x, spatial = _flatten(input, dtype)
    t, _ = _flatten(target, dtype)
    return _dense(x, t, ignore_index, spatial, _shape(input), MULTILABEL_MODE)


def _dense(
    x: Tensor,
    t: Tensor,
    ignore_index: int | None,
    spatial: tuple[int, ...],
    out_shape: tuple[int, ...],
    mode: str,
) -> Prepared:
    valid = None
    if ignore_index is not None:
        if mode == MULTICLASS_MODE:
            raise ValueError(
                "ignore_index applies to class-index targets; with probability targets give ignored "
                "pixels a zero target row instead (got ignore_index="
                f"{ignore_index} with a float target of shape {_shape(t)})"
            )
        ignored = t == ignore_index
        valid = ~ignored
        t = t.masked_fill(ignored, 0.0)
    any_ignored, lo, hi = 0.0, 0.0, 0.0
    if t.numel() > 0:  # one device-to-host transfer for all three
        lo_t, hi_t = torch.aminmax(t)
        flag = lo_t.new_zeros(()) if valid is None else ignored.any().to(lo_t.dtype)
        any_ignored, lo, hi = torch.stack([flag, lo_t, hi_t]).tolist()
    if not any_ignored:
        valid = None
    if not (lo >= 0 and hi <= 1):  # also catches NaN
        what = "probabilities" if mode == MULTICLASS_MODE else f"{mode} targets"
        extra = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        raise ValueError(f"{what} must lie in [0, 1]{extra}, got values in [{lo:g}, {hi:g}]")
    return Prepared(x, t, valid, False, spatial, out_shape)


def _aminmax(t: Tensor) -> tuple[float, float]:
    if t.numel() == 0:
        return 0.0, 0.0
    lo, hi = torch.stack(torch.aminmax(t)).tolist()  # one device-to-host transfer
    return lo, hi


def _raise_index_range(y: Tensor, valid: Tensor | None, num_classes: int, ignore_index: int | None) -> None:
    """Raise the error for class ids outside [0, num_classes) among the counted pixels of ``y``."""
    bad = (y < 0) | (y >= num_classes)
    if valid is not None:
        bad &= valid
    values = torch.unique(y[bad])[:10].tolist()
    extra = "" if ignore_index is None else f" or ignore_index={ignore_index}"
    raise ValueError(
        f"target holds class ids outside [0, {num_classes}){extra}: {values} "
        f"({int(bad.sum())} pixels); check num_classes and ignore_index"
    )


def _check_probabilities(input: Tensor) -> None:
    lo, hi = _aminmax(input.detach())
    if not (lo >= 0 and hi <= 1):  # also catches NaN
        raise ValueError(
            f"from_logits=False expects probabilities in [0, 1], got values in [{lo:g}, {hi:g}]; "
            "pass from_logits=True for raw network outputs"
        )
