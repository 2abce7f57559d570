"""Class-aware training crops (``datamodule.crop_focus``), as nnU-Net's foreground oversampling and MONAI's
``RandCropByLabelClassesd``.

With probability ``p`` a training crop is centred on a pixel of a class ``c`` drawn with probability
``q_c`` (``class_probs``; default the inverse pixel frequency of the training labels,
q_c = (1/f_c) / sum_k (1/f_k) over the classes with f_c > 0), the pixel drawn uniformly among the class's
pixels of the image as it reaches the crop step (after the scaling and padding before it). The window is
clipped to the image, so near a border the pixel lies off centre but inside the crop. When the drawn class
is absent from the image, and with probability ``1 - p``, the crop is the pipeline's random crop.

:func:`install_focused_crop` puts a :class:`ClassFocusedCrop` in place of the ``RandomCrop`` step of an
albumentations pipeline; the other steps stay as they are. It draws from the transform's own random
generators, which ``Compose.set_random_seed`` seeds (:class:`~datamodules.base.SegDataModule` with
``datamodule.seed``, :func:`~datamodules.base.seed_worker` per loader worker): crops are reproducible per
seed and worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import numpy as np

from seglosses.checks import check_number

from .labels import LabelSpec

__all__ = [
    "ClassFocusedCrop",
    "CropFocus",
    "check_crop_focus",
    "install_focused_crop",
    "inverse_frequency_probs",
]

KEY = "datamodule.crop_focus"


@dataclass(frozen=True)
class CropFocus:
    """The checked ``datamodule.crop_focus``: ``p`` and the normalised ``class_probs`` (None: inverse
    frequency of the training labels)."""

    p: float = 0.0
    class_probs: tuple[float, ...] | None = None


def check_crop_focus(value: Mapping[str, Any] | None, num_classes: int) -> CropFocus:
    """``datamodule.crop_focus`` (``{p: float in [0, 1], class_probs: null | one weight >= 0 per class}``)
    as a :class:`CropFocus`, weights normalised to sum 1; a ValueError names the key at fault."""
    if value is None:
        return CropFocus()
    if not isinstance(value, Mapping):
        raise ValueError(f"{KEY} must be a mapping {{p: ..., class_probs: ...}}, got {value!r}")
    unknown = sorted(str(k) for k in value if k not in ("p", "class_probs"))
    if unknown:
        raise ValueError(f"{KEY} has unknown keys {unknown}; expected p and class_probs")
    p = float(check_number(value.get("p", 0.0), f"{KEY}.p", 0.0, 1.0))
    probs = value.get("class_probs")
    if probs is None:
        return CropFocus(p, None)
    if isinstance(probs, (str, bytes)) or not isinstance(probs, Sequence) or len(probs) != num_classes:
        raise ValueError(
            f"{KEY}.class_probs must be null (inverse class frequency) or one weight >= 0 per class "
            f"({num_classes} values), got {probs!r}"
        )
    weights = [float(check_number(w, f"{KEY}.class_probs[{i}]", 0.0)) for i, w in enumerate(probs)]
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"{KEY}.class_probs must have a positive sum, got {list(probs)!r}")
    return CropFocus(p, tuple(w / total for w in weights))


def inverse_frequency_probs(frequencies: Sequence[float] | np.ndarray) -> np.ndarray:
    """q_c = (1/f_c) / sum_k (1/f_k) over the classes with f_c > 0; classes without pixels get 0."""
    f = np.asarray(frequencies, dtype=np.float64)
    present = f > 0
    if not present.any():
        raise ValueError(f"{KEY}: the training labels hold no pixel of any class, so no class can be focused")
    inv = np.zeros_like(f)
    inv[present] = 1.0 / f[present]
    return inv / inv.sum()


class ClassFocusedCrop(A.RandomCrop):
    """``RandomCrop`` that, with probability ``focus_p``, centres the crop on a pixel of a drawn class.

    Args:
        height, width: crop size.
        focus_p: probability of a focused crop.
        labels: the mask encoding (which pixels belong to class c: :meth:`LabelSpec.class_mask`).
        class_probs: (C,) probabilities q_c of the focused class, or None to be set before the first call
            (:meth:`set_class_probs`; the data module sets the inverse frequency of the training labels).
        pad_if_needed, pad_position, border_mode, fill, fill_mask, p: as ``RandomCrop`` (padding of images
            smaller than the crop; the focused pixel keeps its place in the padded image).
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        focus_p: float,
        labels: LabelSpec,
        class_probs: Sequence[float] | None = None,
        pad_if_needed: bool = False,
        pad_position: str = "center",
        border_mode: int = 0,
        fill: Any = 0.0,
        fill_mask: Any = 0.0,
        p: float = 1.0,
    ) -> None:
        super().__init__(
            height=height,
            width=width,
            pad_if_needed=pad_if_needed,
            pad_position=pad_position,
            border_mode=border_mode,
            fill=fill,
            fill_mask=fill_mask,
            p=p,
        )
        self.focus_p = float(check_number(focus_p, f"{KEY}.p", 0.0, 1.0))
        self.labels = labels
        self.class_probs: np.ndarray | None = None
        if class_probs is not None:
            self.set_class_probs(class_probs)

    @classmethod
    def replacing(
        cls, crop: A.RandomCrop, focus_p: float, labels: LabelSpec, class_probs: Sequence[float] | None = None
    ) -> ClassFocusedCrop:
        """A focused crop with the size, padding and ``p`` of ``crop``."""
        return cls(
            crop.height,
            crop.width,
            focus_p=focus_p,
            labels=labels,
            class_probs=class_probs,
            pad_if_needed=crop.pad_if_needed,
            pad_position=crop.pad_position,
            border_mode=crop.border_mode,
            fill=crop.fill,
            fill_mask=crop.fill_mask,
            p=crop.p,
        )

    def set_class_probs(self, class_probs: Sequence[float] | np.ndarray) -> None:
        """Set q_c: one weight >= 0 per class (normalised here)."""
        q = np.asarray(class_probs, dtype=np.float64)
        c = self.labels.num_classes
        if q.shape != (c,) or not np.isfinite(q).all() or (q < 0).any() or q.sum() <= 0:
            raise ValueError(
                f"{KEY}.class_probs must be {c} finite weights >= 0 with a positive sum, got {q.tolist()}"
            )
        self.class_probs = q / q.sum()

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return (*super().get_transform_init_args_names(), "focus_p")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        if self.focus_p > 0 and self.random_generator.random() < self.focus_p:
            focused = self._focused_params(params, data)
            if focused is not None:
                return focused
        return super().get_params_dependent_on_data(params, data)  # the random crop

    def _focused_params(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any] | None:
        """Crop and pad parameters centred on a pixel of a drawn class; None when the class is absent
        from this mask (or the image is too small and not padded: RandomCrop raises for that)."""
        if self.class_probs is None:
            raise RuntimeError(
                "ClassFocusedCrop: class probabilities are not set (set_class_probs, or build the training "
                "data set through the data module, which sets the inverse label frequency)"
            )
        mask = data.get("mask")
        if mask is None:
            raise ValueError("ClassFocusedCrop needs the mask: call the pipeline with image= and mask=")
        mask = np.asarray(mask)
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[..., 0]
        rng = self.random_generator
        c = int(rng.choice(self.class_probs.size, p=self.class_probs))
        hits = np.flatnonzero(self.labels.class_mask(mask, c))
        if hits.size == 0:
            return None
        y, x = divmod(int(hits[rng.integers(hits.size)]), mask.shape[1])
        height, width = params["shape"][:2]
        if not self.pad_if_needed and (self.height > height or self.width > width):
            return None
        pad = self._get_pad_params((height, width), (self.height, self.width))
        if pad is not None:
            y, x = y + pad["pad_top"], x + pad["pad_left"]
            height += pad["pad_top"] + pad["pad_bottom"]
            width += pad["pad_left"] + pad["pad_right"]
        y0 = min(max(y - self.height // 2, 0), height - self.height)
        x0 = min(max(x - self.width // 2, 0), width - self.width)
        return {"crop_coords": (x0, y0, x0 + self.width, y0 + self.height), "pad_params": pad}


def _random_crops(transform: Any) -> list[tuple[Any, int]]:
    """(container, position) of every ``RandomCrop`` in a (nested) albumentations pipeline."""
    found = []
    for i, t in enumerate(getattr(transform, "transforms", None) or []):
        if isinstance(t, A.RandomCrop):
            found.append((transform, i))
        else:
            found.extend(_random_crops(t))
    return found


def install_focused_crop(
    transform: Any, focus_p: float, labels: LabelSpec, class_probs: Sequence[float] | None = None
) -> ClassFocusedCrop:
    """Replace the ``RandomCrop`` step of the albumentations pipeline ``transform`` (in place) by a
    :class:`ClassFocusedCrop` of the same size, padding and ``p``; return it.

    Raises:
        ValueError: the pipeline has no ``RandomCrop`` step, or more than one (naming the keys to change).
    """
    found = _random_crops(transform)
    if len(found) != 1:
        steps = [type(t).__name__ for t in getattr(transform, "transforms", None) or []]
        what = "no RandomCrop step" if not found else f"{len(found)} RandomCrop steps"
        raise ValueError(
            f"{KEY}.p={focus_p} replaces the RandomCrop step of the training pipeline "
            f"(datamodule.train_transform), and this one has {what} (steps: {steps}); use a pipeline with "
            "one, e.g. transforms/train@datamodule.train_transform=scale_crop_flip_jitter, or set "
            f"{KEY}.p=0"
        )
    container, i = found[0]
    focused = ClassFocusedCrop.replacing(container.transforms[i], focus_p, labels, class_probs)
    container.transforms[i] = focused
    return focused
