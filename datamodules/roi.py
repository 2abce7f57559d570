"""Regions of interest (``datamodule.roi``): a second mask per sample, e.g. a retina's field of view or the
body outline of a scan, outside of which nothing is learnt or scored.

A region mask is a single-channel image the size of the sample's mask; nonzero pixels are inside. The
pixels outside are set to ``ignore_index`` in the label mask when it is read, so the loss, every metric,
the label statistics and the class weights leave them out without knowing about regions. Region masks
are found like masks, by the image's file stem: ``<dir>/<stem><suffix><extension>``, where ``dir`` is
relative to the data set root and may name the split (``"{split}/fov"``), or, without a ``dir``, beside
the mask (``<mask folder>/<stem><suffix><extension>``, ``suffix`` then required).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import read_mask
from .labels import LabelSpec

__all__ = ["RoiSpec", "apply_roi", "read_labels", "read_roi"]


@dataclass(frozen=True)
class RoiSpec:
    """Where the region masks are (see the module docstring).

    Args:
        dir: folder of the region masks relative to the root, ``{split}`` replaced by the split name; None:
            the mask's folder.
        suffix: region file = ``<image stem><suffix><extension>``.
        extension: as ``suffix``.
    """

    dir: str | None = None
    suffix: str = ""
    extension: str = ".png"

    def __post_init__(self) -> None:
        if self.dir is None and not self.suffix:
            raise ValueError(
                "datamodule.roi needs a dir (e.g. datamodule.roi.dir='{split}/fov') or a suffix (region "
                "masks beside the masks, e.g. datamodule.roi.suffix=_roi): without either it names the mask"
            )
        if not str(self.extension).startswith("."):
            object.__setattr__(self, "extension", f".{self.extension}")

    @classmethod
    def from_config(cls, value: Mapping[str, Any] | None) -> RoiSpec | None:
        """None, or the spec of a ``{dir, suffix, extension}`` mapping (ValueError naming unknown keys)."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ValueError(f"datamodule.roi must be null or {{dir, suffix, extension}}, got {value!r}")
        unknown = set(value) - {"dir", "suffix", "extension"}
        if unknown:
            raise ValueError(f"datamodule.roi has unknown keys {sorted(unknown)}; expected dir, suffix, "
                             "extension")
        return cls(**{k: v for k, v in value.items() if v is not None or k == "dir"})

    def beside_masks(self) -> tuple[str, ...]:
        """File name endings the pairing skips: the region masks when they lie beside the masks."""
        return (f"{self.suffix}{self.extension}",) if self.dir is None else ()

    def path(self, root: Path, split: str, name: str, mask: Path) -> Path:
        """The region mask of sample ``name`` (stem) of ``split`` whose mask file is ``mask``."""
        folder = mask.parent if self.dir is None else Path(root) / self.dir.format(split=split)
        return folder / f"{name}{self.suffix}{self.extension}"


def read_roi(path: Path) -> np.ndarray:
    """Bool (H, W): the nonzero pixels of the region mask at ``path`` (lossless formats only)."""
    return read_mask(path) > 0


def apply_roi(mask: np.ndarray, roi_path: Path, ignore_index: int, mask_path: Path | str) -> np.ndarray:
    """``mask`` (H, W) with the pixels outside the region of ``roi_path`` set to ``ignore_index``."""
    roi = read_roi(roi_path)
    if roi.shape != mask.shape:
        raise ValueError(
            f"size mismatch: region mask {roi_path} is {roi.shape[1]}x{roi.shape[0]} (WxH) but mask "
            f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}"
        )
    out = np.array(mask, copy=True)
    out[~roi] = ignore_index
    return out


def read_labels(pair: Any, labels: LabelSpec, **mask_kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """A pair's label mask as training reads it: read, mapped and validated (:meth:`LabelSpec.prepare`),
    then outside its region (``pair.roi``, if any) ``ignore_index``; returns ``(mask, hist)`` with ``hist[v]``
    the pixels of value ``v`` after the region was applied."""
    mask, hist = labels.prepare(read_mask(pair.mask, **mask_kwargs), str(pair.mask))
    roi = getattr(pair, "roi", None)
    if roi is None:
        return mask, hist
    if labels.ignore_index is None:
        raise ValueError(f"region mask {roi}: regions need datamodule.ignore_index (it is null)")
    mask = apply_roi(mask, roi, labels.ignore_index, pair.mask)
    return mask, np.bincount(mask.ravel(), minlength=hist.size)
