"""Pixels as rows, the shared input of :mod:`evaluation.calibration` and :mod:`evaluation.thresholds`: a
batch's logits and target flattened to one row per pixel (:func:`flat_pixels`), each class's probability
against "is it this class" (:func:`one_vs_rest`), and the DDP collectives of their fixed-size states
(:func:`all_reduce_sum`, :func:`all_gather_cat`).

Modes (:mod:`seglosses.modes`): ``multiclass`` logits (N, C, *) with a softmax over C, target (N, *) class
ids; ``binary`` logits (N, 1, *) with a sigmoid, target (N, *) or (N, 1, *) in {0, 1}; ``multilabel``
logits (N, C, *) with one sigmoid per label, target (N, C, *) in {0, 1}. ``*`` may be empty: (n, C)
logits are n pixels already. A target equal to ``ignore_index`` is not scored (multilabel: per element).
Nothing here reads a value back to the host: the functions can run on every batch of a GPU epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seglosses.distributed import distributed_world
from seglosses.modes import BINARY_MODE, MULTICLASS_MODE, check_mode

__all__ = [
    "all_gather_cat",
    "all_reduce_sum",
    "flat_pixels",
    "one_vs_rest",
    "per_channel",
]


def flat_pixels(logits: Tensor, target: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """``(z, t)``: the (N, C, *) ``logits`` as (P, C) rows, one per pixel (P = N times the pixels of ``*``),
    and the target as multiclass (P,) class ids, binary/multilabel (P, C) flags (binary: C = 1). The rows
    of both are in the same pixel order. ValueError when the shapes do not fit ``mode``."""
    check_mode(mode)
    if logits.ndim < 2:
        raise ValueError(f"logits must be (N, C, *), got shape {tuple(logits.shape)}")
    c = logits.shape[1]
    z = logits.movedim(1, -1).reshape(-1, c)
    if mode == MULTICLASS_MODE:
        expected = (logits.shape[0], *logits.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(f"multiclass target must be (N, *) class ids {expected} for logits "
                             f"{tuple(logits.shape)}, got {tuple(target.shape)}")
        return z, target.reshape(-1)
    if mode == BINARY_MODE:
        if c != 1:
            raise ValueError(f"binary logits must have one channel (N, 1, *), got {tuple(logits.shape)}")
        if target.ndim == logits.ndim - 1:
            target = target.unsqueeze(1)
    if tuple(target.shape) != tuple(logits.shape):
        raise ValueError(f"{mode} target must have the logits' shape {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    return z, target.movedim(1, -1).reshape(-1, c)


def one_vs_rest(z: Tensor, t: Tensor, mode: str, ignore_index: int | None,
                probabilities: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``(probs, positive, valid)``, each (P, C), of :func:`flat_pixels`' rows: the probability of class c
    (float32: multiclass the softmax over the row, binary/multilabel the sigmoid of each logit; with
    ``probabilities`` the rows are probabilities already, e.g. those ``predict.py`` saved), whether
    the pixel is of class c (multiclass ``t == c``, else ``t == 1``), and whether the element is scored
    (its target is not ``ignore_index``; multiclass: the pixel's). Targets are not range-checked (that
    would read them back to the host): a multiclass id outside [0, C) is of no class, a binary/multilabel
    value other than 1 is negative."""
    if mode == MULTICLASS_MODE:
        probs = z.float() if probabilities else torch.softmax(z.float(), dim=1)
        classes = torch.arange(z.shape[1], device=z.device)
        positive = t.unsqueeze(1) == classes
        scored = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
        valid = scored.unsqueeze(1).expand_as(positive)
    else:
        probs = z.float() if probabilities else torch.sigmoid(z.float())
        positive = t == 1
        valid = torch.ones_like(positive) if ignore_index is None else t != ignore_index
    return probs, positive, valid


def _comm_device(tensor: Tensor) -> torch.device:
    """The device ``tensor`` must be on for the default group's backend (NCCL: the current CUDA device)."""
    if torch.distributed.get_backend() == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """A copy of ``tensor`` summed over every DDP process (a collective: every rank calls it with a
    tensor of the same shape and dtype); the copy itself without a multi-process group. On ``tensor``'s
    device."""
    if distributed_world() is None:
        return tensor.clone()
    total = tensor.to(_comm_device(tensor), copy=True).contiguous()
    torch.distributed.all_reduce(total)
    return total.to(tensor.device)


def all_gather_cat(tensor: Tensor) -> Tensor:
    """``tensor`` of every DDP process concatenated along dim 0 in rank order (a collective: every rank
    calls it with a tensor of the same shape and dtype); ``tensor`` itself without a multi-process group."""
    world = distributed_world()
    if world is None:
        return tensor
    local = tensor.to(_comm_device(tensor)).contiguous()
    parts = [torch.empty_like(local) for _ in range(world[1])]
    torch.distributed.all_gather(parts, local)
    return torch.cat(parts).to(tensor.device)


def per_channel(values: Tensor | float, like: Tensor, what: str) -> Tensor:
    """``values`` (a scalar, or (C,) one per channel of dim 1 of ``like`` (N, C, *)) in ``like``'s dtype and
    device, shaped to broadcast against it; ValueError naming ``what`` for any other shape."""
    t = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    if t.ndim == 1 and like.ndim >= 2:
        if t.shape[0] != like.shape[1]:
            raise ValueError(f"{t.shape[0]} {what} for {like.shape[1]} channels")
        return t.reshape(1, -1, *([1] * (like.ndim - 2)))
    if t.ndim != 0:
        raise ValueError(f"{what} must be a scalar or (C,), got shape {tuple(t.shape)}")
    return t
