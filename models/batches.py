"""What :class:`models.SegmentationModule` checks about its inputs, with errors that say what was expected:
a batch (:func:`unpack_batch`), the network's output (:func:`check_logits`) and the class names
(:func:`class_names_for`); and the two mode rules of its steps: logits to classes (:func:`predicted_classes`),
masks to loss targets (:func:`loss_target`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from seglosses.modes import BINARY_MODE, MULTILABEL_MODE

__all__ = ["check_logits", "class_names_for", "loss_target", "predicted_classes", "unpack_batch"]


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def unpack_batch(batch: Mapping[str, Any], mode: str, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(images, mask)`` of a batch dict: ``"image"`` float (B, C, H, W); ``"mask"`` integer class ids
    (B, H, W) or, multilabel, {0, 1} flags (B, num_classes, H, W), of the images' batch size and H, W.
    The mask is returned as int64. ValueError naming what is wrong otherwise."""
    if not isinstance(batch, Mapping) or "image" not in batch or "mask" not in batch:
        got = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"a batch must be a dict with 'image' and 'mask' tensors, got {got}")
    images, mask = batch["image"], batch["mask"]
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"batch['image'] must be a float tensor (B, C, H, W), got {_describe(images)}")
    multilabel = mode == MULTILABEL_MODE
    if multilabel:
        ndim, what = 4, f"multilabel {{0, 1}} flags (B, {num_classes}, H, W)"
    else:
        ndim, what = 3, "class ids (B, H, W)"
    integer = isinstance(mask, Tensor) and not mask.is_floating_point() and mask.dtype != torch.bool
    if not integer or mask.ndim != ndim:
        raise ValueError(f"batch['mask'] must be integer {what}, got {_describe(mask)}")
    if multilabel and mask.shape[1] != num_classes:
        raise ValueError(
            f"batch['mask'] has {mask.shape[1]} label channels {tuple(mask.shape)}, expected num_classes="
            f"{num_classes}: (B, {num_classes}, H, W)"
        )
    if mask.shape[0] != images.shape[0] or mask.shape[-2:] != images.shape[2:]:
        raise ValueError(
            f"batch['mask'] {tuple(mask.shape)} does not match batch['image'] {tuple(images.shape)}: "
            f"expected {what} for images (B, C, H, W)"
        )
    return images, mask.long()


def check_logits(logits: Tensor, images: Tensor, mask: Tensor, mode: str, num_classes: int) -> None:
    """ValueError unless the network's ``logits`` are (batch, classes, mask H, W)."""
    expected = (images.shape[0], num_classes, *mask.shape[-2:])
    if tuple(logits.shape) != expected:
        raise ValueError(
            f"network output has shape {tuple(logits.shape)}, expected {expected} (batch, classes, "
            f"mask H, W) for mode={mode!r}, num_classes={num_classes}; check the model's "
            "classes and that the image size suits the architecture (e.g. divisible by 2**encoder_depth)"
        )


def class_names_for(names: Sequence[str] | None, num_classes: int, mode: str) -> list[str]:
    """One name per scored class: ``names`` (binary: a single name is the foreground's) or, when None,
    ``class_0``, ... (binary: ``background``, ``foreground``). ValueError for a wrong count or duplicates
    (the names are metric keys)."""
    if names is None:
        if mode == BINARY_MODE:
            return ["background", "foreground"]
        return [f"class_{i}" for i in range(num_classes)]
    names = [str(n) for n in names]
    if mode == BINARY_MODE and len(names) == 1:
        names = ["background", *names]
    if len(names) != num_classes:
        raise ValueError(
            f"class_names has {len(names)} names {names}, expected one per class ({num_classes})"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique (they name the metric keys), got {names}")
    return names


def predicted_classes(logits: Tensor, mode: str) -> Tensor:
    """(B, num_classes, H, W) logits -> (B, H, W) int64 class ids (binary: foreground where logit > 0);
    multilabel: (B, C, H, W) int64, 1 where the label's logit > 0 (sigmoid > 0.5)."""
    if mode == BINARY_MODE:
        return (logits[:, 0] > 0).long()
    if mode == MULTILABEL_MODE:
        return (logits > 0).long()
    return logits.argmax(dim=1)


def loss_target(mask: Tensor, mode: str) -> Tensor:
    """The mask in the form the losses expect: multiclass (B, H, W) int64; binary (B, 1, H, W) float;
    multilabel (B, C, H, W) float. Ignored elements keep the value ``ignore_index``."""
    if mode == BINARY_MODE:
        return mask.unsqueeze(1).float()
    if mode == MULTILABEL_MODE:
        return mask.float()
    return mask
