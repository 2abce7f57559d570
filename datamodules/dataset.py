"""Map-style data sets yielding ``{"image", "mask", "name"}`` samples through an albumentations pipeline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .io import image_size, read_image
from .labels import LabelSpec
from .pairing import SamplePair
from .roi import read_labels

Transform = Callable[..., dict[str, Any]]


class SegmentationDataset(Dataset):
    """Base class: subclasses implement :meth:`load`; this class augments and converts to tensors.

    A sample is a dict with ``image`` float32 (in_channels, H, W) (normalised by the pipeline; scaled to
    [0, 1] when the pipeline leaves uint8), ``mask`` int64 (H, W) or (C, H, W) (see
    :mod:`datamodules.labels`) and ``name`` (str).

    Args:
        labels: the label encoding.
        in_channels: 1 or 3.
        transform: an albumentations-style callable ``transform(image=, mask=) -> dict`` applied to image
            and mask together, or None.
    """

    def __init__(self, labels: LabelSpec, in_channels: int, transform: Transform | None = None) -> None:
        self.labels = labels
        self.in_channels = in_channels
        self.transform = transform
        self._allowed = labels.allowed_values()
        self.decoded: Any = None  # a datamodules.ram_cache.DecodedSamples once cached

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Return uint8 image (H, W, in_channels), validated mask (H, W) and the sample name."""
        raise NotImplementedError

    def stored_size(self, index: int) -> tuple[int, int]:
        """(H, W) of sample ``index`` as :meth:`load` returns it (subclasses answer without decoding)."""
        return self.load(index)[1].shape[:2]

    def use_decoded(self, decoded: Any, transform: Transform | None) -> None:
        """Read samples from ``decoded`` (:class:`~datamodules.ram_cache.DecodedSamples`, which ran the
        pipeline's fixed first steps) and apply ``transform``, the rest of the pipeline."""
        if len(decoded) != len(self):
            raise ValueError(f"{len(decoded)} cached samples for a data set of {len(self)}")
        self.decoded = decoded
        self.transform = transform

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} samples")
        image, mask, name = self.load(index) if self.decoded is None else self.decoded.get(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
            self._check_transformed(image, mask, name)
        return {"image": self._image_tensor(image, name), "mask": self.labels.to_target(mask), "name": name}

    def _check_transformed(self, image: Any, mask: Any, name: str) -> None:
        if not isinstance(image, np.ndarray) or not isinstance(mask, np.ndarray):
            raise TypeError(
                f"sample {name}: the transform must return numpy arrays (leave tensor conversion to the "
                f"data set; no ToTensorV2), got {type(image).__name__} / {type(mask).__name__}"
            )
        if mask.shape[:2] != image.shape[:2]:
            raise ValueError(f"sample {name}: transform returned image {image.shape} and mask {mask.shape}")
        if not _values_allowed(mask, self._allowed):
            raise ValueError(
                f"sample {name}: the transform produced mask values that are not labels or ignore_index "
                f"(dtype {mask.dtype}); masks must use nearest interpolation and pad with "
                f"fill_mask=ignore_index ({self.labels.ignore_index})"
            )

    def _image_tensor(self, image: np.ndarray, name: str) -> Tensor:
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[2] != self.in_channels:
            raise ValueError(
                f"sample {name}: expected an image with {self.in_channels} channel(s), "
                f"got shape {image.shape}"
            )
        if image.dtype == np.uint8:
            t = torch.from_numpy(image.astype(np.float32)).div_(255.0)
        else:
            t = torch.from_numpy(np.array(image, dtype=np.float32))  # a copy: inputs may be read-only
        return t.permute(2, 0, 1).contiguous()


class FolderDataset(SegmentationDataset):
    """Image/mask pairs stored as files (see :func:`datamodules.pairing.find_pairs`).

    Masks are mapped and validated on every read; a size mismatch between image and mask raises.
    """

    def __init__(
        self,
        pairs: Sequence[SamplePair],
        labels: LabelSpec,
        in_channels: int,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(labels, in_channels, transform)
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def stored_size(self, index: int) -> tuple[int, int]:
        w, h = image_size(self.pairs[index].image)
        return h, w

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        pair = self.pairs[index]
        image = read_image(pair.image, self.in_channels)
        mask, _ = read_labels(pair, self.labels)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"size mismatch: image {pair.image} is {image.shape[1]}x{image.shape[0]} (WxH) but mask "
                f"{pair.mask} is {mask.shape[1]}x{mask.shape[0]}"
            )
        return image, mask, pair.name


def _values_allowed(mask: np.ndarray, allowed: np.ndarray) -> bool:
    """Whether an integer mask holds only values ``v`` with ``allowed[v]``."""
    if mask.dtype.kind not in "ui":
        return False
    if mask.size == 0:
        return True
    if int(mask.max()) >= allowed.size:
        return False
    return bool(allowed[mask].all())
