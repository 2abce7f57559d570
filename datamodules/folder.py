"""A data set stored as image and mask files (CamVid is a preset of it: conf/datamodule/camvid.yaml)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from seglosses.checks import check_bool

from .base import SegDataModule
from .dataset import FolderDataset
from .io import LOSSY_MASK_EXTENSIONS, LOSSY_REASON, image_size
from .labels import LabelSpec
from .pairing import DEFAULT_IMAGE_EXTENSIONS, SamplePair, find_pairs
from .preflight import PREFLIGHT_VERSION, PairChecker, Problem, SplitPlan, file_identity
from .roi import RoiSpec, read_labels
from .statistics import LabelStatistics, count_labels

DEFAULT_SPLITS = {
    "train": {"images": "train/images", "masks": "train/masks"},
    "val": {"images": "val/images", "masks": "val/masks"},
    "test": {"images": "test/images", "masks": "test/masks"},
}


class MaskCounter:
    """Picklable per-mask counter of the statistics pass: reads, maps, validates and counts one mask."""

    def __init__(self, labels: LabelSpec, allow_lossy: bool = True) -> None:
        self.labels = labels
        self.allow_lossy = allow_lossy

    def __call__(self, pair: SamplePair) -> tuple[np.ndarray, int, int]:
        # read_mask also catches JPEG data named .png; outside a region (datamodule.roi): ignore_index
        mask, hist = read_labels(pair, self.labels, allow_lossy=self.allow_lossy)
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
            relative to ``root`` (see :func:`datamodules.pairing.find_pairs`); null values count as
            absent. A list file holds one sample per line: ``<image> <mask>`` paths, or a sample id looked
            up in ``images``/``masks``. A set ``list`` takes precedence: the folders then only serve
            one-column lines.
        value_map: stored mask value -> label value (e.g. ``{255: 1}`` for 0/255 binary masks).
        image_extensions: image file extensions considered when pairing.
        mask_suffix: mask file name = ``<image stem><mask_suffix><mask_extension>``.
        mask_extension: see ``mask_suffix``.
        crop_size: (H, W) training crop used by the train pipeline (stored for reference).
        allow_lossy_masks: accept masks in lossy formats (JPEG, lossy WebP); default False refuses them
            when the pairs are built, since compression changes label values at edges.
        roi: region-of-interest masks ``{dir, suffix, extension}`` (:mod:`datamodules.roi`): pixels outside
            a sample's region are ``ignore_index`` for loss, metrics and statistics; None: none.
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
        allow_lossy_masks: bool = False,
        roi: Mapping[str, Any] | None = None,
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
        self.splits = {k: dict(v or {}) for k, v in (splits or DEFAULT_SPLITS).items()}
        self.value_map = None if value_map is None else {int(k): int(v) for k, v in dict(value_map).items()}
        self.labels = LabelSpec(self.mode, self.num_classes, self.ignore_index, self.value_map)
        self.image_extensions = [str(e) if str(e).startswith(".") else f".{e}" for e in image_extensions]
        self.mask_suffix = mask_suffix
        self.mask_extension = mask_extension if mask_extension.startswith(".") else f".{mask_extension}"
        self.crop_size = None if crop_size is None else [int(s) for s in crop_size]
        self.allow_lossy_masks = check_bool(allow_lossy_masks, "datamodule.allow_lossy_masks")
        if not self.allow_lossy_masks and self.mask_extension.lower() in LOSSY_MASK_EXTENSIONS:
            raise ValueError(
                f"datamodule.mask_extension={mask_extension!r} is a lossy format: {LOSSY_REASON}, so "
                "artefacts become labels; store masks as PNG (lossless), or set "
                "datamodule.allow_lossy_masks=true if you accept that"
            )
        self.roi = RoiSpec.from_config(roi)
        if self.roi is not None and self.ignore_index is None:
            raise ValueError("datamodule.roi marks the pixels outside a region as ignore_index, which is "
                             "null: set datamodule.ignore_index (e.g. 255)")
        self._pairs: dict[str, list[SamplePair]] = {}

    @property
    def training_size(self) -> list[int] | None:
        return self.crop_size

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
                allow_lossy_masks=self.allow_lossy_masks,
                skip_tails=self.roi.beside_masks() if self.roi is not None else (),
            )
            if self.roi is not None:
                self._pairs[split] = self._with_regions(split, self._pairs[split])
        return self._pairs[split]

    def _with_regions(self, split: str, pairs: list[SamplePair]) -> list[SamplePair]:
        """``pairs`` with their region masks; ValueError naming the missing ones and the key."""
        out = [replace(p, roi=self.roi.path(self.root, split, p.name, p.mask)) for p in pairs]
        missing = [str(p.roi) for p in out if not p.roi.is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
            raise ValueError(f"split '{split}': {len(missing)} of {len(out)} samples have no region mask "
                             f"(datamodule.roi: dir {self.roi.dir!r}, suffix {self.roi.suffix!r}, extension "
                             f"{self.roi.extension!r}): {shown}")
        return out

    def make_dataset(self, split: str) -> FolderDataset:
        transform = self.train_transform if split == "train" else self.eval_transform
        return FolderDataset(self.pairs(split), self.labels, self.in_channels, transform)

    def statistics_key(self) -> dict[str, Any]:
        files = []
        for p in self.pairs("train"):
            for f in (p.mask, p.roi) if p.roi is not None else (p.mask,):
                st = f.stat()
                files.append([str(f.resolve()), st.st_mtime_ns, st.st_size])
        return {
            "kind": "folder",
            **self.label_spec_key(),
            "value_map": sorted((self.value_map or {}).items()),
            "masks": files,
        }

    def preflight_source(self) -> str:
        return f"data set {self.root}"

    def preflight_plans(self) -> list[SplitPlan]:
        """Every pair of train, val and test, checked by :class:`~datamodules.preflight.PairChecker`;
        listing errors (no samples, unpaired files, split not configured) become problems."""
        lossy = getattr(self, "allow_lossy_masks", None)  # read masks as the data set does
        mask_kwargs = None if lossy is None else {"allow_lossy": lossy}
        checker = PairChecker(self.labels, self.in_channels, mask_kwargs)
        plans = []
        for split in ("train", "val", "test"):
            try:
                pairs = self.pairs(split)
            except (ValueError, OSError) as e:
                plans.append(SplitPlan(split, [], None, problems=[Problem("split", split, "", str(e))]))
                continue
            files = file_identity(f for p in pairs for f in (p.image, p.mask, p.roi) if f is not None)
            key = None
            if files is not None:
                key = {
                    "kind": "folder-preflight",
                    "version": PREFLIGHT_VERSION,
                    "split": split,
                    **self.label_spec_key(),
                    "value_map": sorted((self.value_map or {}).items()),
                    "in_channels": self.in_channels,
                    "mask_kwargs": checker.mask_kwargs,
                    "files": files,
                }
            plans.append(SplitPlan(split, pairs, checker, key))
        return plans

    def compute_label_statistics(self) -> LabelStatistics:
        return count_labels(
            self.pairs("train"),
            MaskCounter(self.labels, allow_lossy=self.allow_lossy_masks),
            self.class_names,
            num_workers=self.num_workers,
            progress=self.progress,
            description=f"label statistics ({self.root.name}/train)",
        )
