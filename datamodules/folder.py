"""A data set stored as image and mask files (CamVid is a preset of it: conf/datamodule/camvid.yaml)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import SegDataModule
from .dataset import FolderDataset
from .io import image_size, read_mask
from .labels import LabelSpec
from .pairing import DEFAULT_IMAGE_EXTENSIONS, SamplePair, find_pairs
from .statistics import LabelStatistics, count_labels

DEFAULT_SPLITS = {
    "train": {"images": "train/images", "masks": "train/masks"},
    "val": {"images": "val/images", "masks": "val/masks"},
    "test": {"images": "test/images", "masks": "test/masks"},
}


class MaskCounter:
    """Picklable per-mask counter of the statistics pass: reads, maps, validates and counts one mask."""

    def __init__(self, labels: LabelSpec) -> None:
        self.labels = labels

    def __call__(self, pair: SamplePair) -> tuple[np.ndarray, int, int]:
        mask, hist = self.labels.prepare(read_mask(pair.mask), str(pair.mask))
        w, h = image_size(pair.image)
        if (h, w) != mask.shape:
            raise ValueError(
                f"size mismatch: image {pair.image} is {w}x{h} (WxH) but mask {pair.mask} is "
                f"{mask.shape[1]}x{mask.shape[0]}"
            )
        counts, ignored = self.labels.class_counts(hist)
        return counts, ignored, mask.size


class FolderDataModule(SegDataModule):
    """Image/mask files under ``root``, paired by file stem per split.

    Args:
        root: data set folder (``datamodule.root=PATH``).
        splits: per split ("train", "val", "test") ``{images: DIR, masks: DIR}`` and/or ``{list: FILE}``,
            relative to ``root`` (see :func:`datamodules.pairing.find_pairs`). A list file holds one sample
            per line: ``<image> <mask>`` paths, or a sample id looked up in ``images``/``masks``.
        value_map: stored mask value -> label value (e.g. ``{255: 1}`` for 0/255 binary masks).
        image_extensions: image file extensions considered when pairing.
        mask_suffix: mask file name = ``<image stem><mask_suffix><mask_extension>``.
        mask_extension: see ``mask_suffix``.
        crop_size: (H, W) training crop used by the train pipeline (stored for reference).
        **kwargs: :class:`~datamodules.base.SegDataModule` arguments (``num_classes``, ``class_names``,
            ``ignore_index``, ``mode``, ``in_channels``, loader settings, transforms, ``seed`` ...).

    Masks are single-channel index images (see :mod:`datamodules.labels` for binary/multilabel); their
    values are checked on every read and in the statistics pass, and errors name the file and values.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        splits: Mapping[str, Mapping[str, str | None]] | None = None,
        value_map: Mapping[int, int] | None = None,
        image_extensions: Sequence[str] = DEFAULT_IMAGE_EXTENSIONS,
        mask_suffix: str = "",
        mask_extension: str = ".png",
        crop_size: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if root is None or str(root) in ("", "???"):
            raise ValueError("datamodule.root is not set: pass the data set folder with datamodule.root=PATH")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"data set root {str(root)!r} does not exist or is not a folder (resolved: "
                f"{self.root.resolve()}); set it with the override datamodule.root=PATH"
            )
        self.splits = {k: dict(v) for k, v in (splits or DEFAULT_SPLITS).items()}
        self.value_map = None if value_map is None else {int(k): int(v) for k, v in dict(value_map).items()}
        self.labels = LabelSpec(self.mode, self.num_classes, self.ignore_index, self.value_map)
        self.image_extensions = [str(e) if str(e).startswith(".") else f".{e}" for e in image_extensions]
        self.mask_suffix = mask_suffix
        self.mask_extension = mask_extension if mask_extension.startswith(".") else f".{mask_extension}"
        self.crop_size = None if crop_size is None else [int(s) for s in crop_size]
        self._pairs: dict[str, list[SamplePair]] = {}

    def pairs(self, split: str) -> list[SamplePair]:
        """The (image, mask) pairs of ``split``, sorted by name."""
        if split not in self._pairs:
            if split not in self.splits or not self.splits[split]:
                raise ValueError(
                    f"split '{split}' is not configured: set datamodule.splits.{split} "
                    f"(configured: {sorted(self.splits)})"
                )
            self._pairs[split] = find_pairs(
                self.root,
                split,
                self.splits[split],
                image_extensions=self.image_extensions,
                mask_suffix=self.mask_suffix,
                mask_extension=self.mask_extension,
            )
        return self._pairs[split]

    def make_dataset(self, split: str) -> FolderDataset:
        transform = self.train_transform if split == "train" else self.eval_transform
        return FolderDataset(self.pairs(split), self.labels, self.in_channels, transform)

    def statistics_key(self) -> dict[str, Any]:
        files = []
        for p in self.pairs("train"):
            st = p.mask.stat()
            files.append([str(p.mask.resolve()), st.st_mtime_ns, st.st_size])
        return {
            "kind": "folder",
            **self.label_spec_key(),
            "value_map": sorted((self.value_map or {}).items()),
            "masks": files,
        }

    def compute_label_statistics(self) -> LabelStatistics:
        return count_labels(
            self.pairs("train"),
            MaskCounter(self.labels),
            self.class_names,
            num_workers=self.num_workers,
            progress=self.progress,
            description=f"label statistics ({self.root.name}/train)",
        )
