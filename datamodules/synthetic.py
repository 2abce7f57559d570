"""A deterministic, generated, imbalanced segmentation data set: the project's default data.

Each image shows shapes (disc, rotated square, thin bar, small cross, ring, triangle; the first
``num_classes - 1`` of them are the classes, class 0 is background) on a textured, noisy grey background
with blurry colour blobs. Each class has a typical hue with strong jitter (learnt quickly), geometry
separates the rest. Bars (thin) and
crosses/rings (small, in one image out of four) are the minority classes: with the defaults (5 classes)
background is about 85 % of the pixels, disc and square about 6.6 % each, bar 1.5 %, cross 0.25 %.

Sample ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split_id, i])``: no files, no
download, and every worker and every DDP rank sees the same data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from seglosses.checks import check_int

from .base import SegDataModule
from .dataset import SegmentationDataset, Transform
from .labels import LabelSpec
from .preflight import Problem, SplitPlan
from .statistics import LabelStatistics, count_labels

GENERATOR_VERSION = 2
SHAPES = ("disc", "square", "bar", "cross", "ring", "triangle")
# presence probability, max instances, drawn on top of the others
_SHAPE_PRIOR = {
    "disc": (0.8, 2, False),
    "square": (0.8, 2, False),
    "bar": (0.6, 2, False),
    "cross": (0.25, 1, True),
    "ring": (0.25, 1, True),
    "triangle": (0.6, 1, False),
}
_PALETTE = {
    "disc": np.array([0.85, 0.2, 0.2]),
    "square": np.array([0.2, 0.75, 0.25]),
    "bar": np.array([0.2, 0.3, 0.9]),
    "cross": np.array([0.9, 0.8, 0.15]),
    "ring": np.array([0.85, 0.25, 0.85]),
    "triangle": np.array([0.15, 0.8, 0.85]),
}
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _shape_region(
    kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, s: float
) -> np.ndarray:
    """Bool (H, W) region of one randomly placed ``kind`` shape; ``s`` = image size / 64."""
    h, w = yy.shape
    margin = 4 * s
    cy, cx = rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)
    theta = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    if kind == "disc":
        r = rng.uniform(6, 12) * s
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        a = rng.uniform(5, 10) * s
        return (np.abs(u) <= a) & (np.abs(v) <= a)
    if kind == "bar":
        half_len, half_w = rng.uniform(10, 22) * s, rng.uniform(0.8, 1.4) * s
        return (np.abs(u) <= half_len) & (np.abs(v) <= half_w)
    if kind == "cross":
        a, t = rng.uniform(4, 6) * s, 1.1 * s
        return ((np.abs(u) <= a) & (np.abs(v) <= t)) | ((np.abs(v) <= a) & (np.abs(u) <= t))
    if kind == "ring":
        r_out = rng.uniform(5, 8) * s
        d2 = dx * dx + dy * dy
        return (d2 <= r_out * r_out) & (d2 >= (r_out - 2.2 * s) ** 2)
    if kind == "triangle":
        r = rng.uniform(7, 11) * s
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):  # three half-planes of an equilateral triangle with inradius r / 2
            phi = theta + 2 * np.pi * k / 3
            inside &= dx * np.cos(phi) + dy * np.sin(phi) <= r / 2
        return inside
    raise ValueError(f"unknown shape {kind!r}")


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int, channels: int) -> np.ndarray:
    """(H, W, channels) bilinear upsampling of a (cells x cells) Gaussian grid."""
    grid = rng.normal(size=(channels, cells, cells))
    ry = np.interp(np.linspace(0, cells - 1, h), np.arange(cells), np.arange(cells))
    rx = np.interp(np.linspace(0, cells - 1, w), np.arange(cells), np.arange(cells))
    wy = np.maximum(0, 1 - np.abs(ry[:, None] - np.arange(cells)[None, :]))  # (H, cells)
    wx = np.maximum(0, 1 - np.abs(rx[:, None] - np.arange(cells)[None, :]))  # (W, cells)
    return np.einsum("hi,cij,wj->hwc", wy, grid, wx)


def render_sample(
    rng: np.random.Generator, height: int, width: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic sample: uint8 image (H, W, 3) and uint8 mask (H, W) with values 0..num_classes - 1."""
    s = min(height, width) / 64.0
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    grey = rng.uniform(0.3, 0.7)
    image = grey + rng.uniform(-0.08, 0.08, size=3) + 0.1 * _smooth_field(rng, height, width, 5, 3)
    for _ in range(rng.integers(0, 4)):  # blurry distractor blobs (background)
        cy, cx, sig = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(3, 8) * s
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig * sig))
        image += blob[..., None] * rng.uniform(-0.25, 0.25, size=3)
    mask = np.zeros((height, width), dtype=np.uint8)

    kinds = SHAPES[: num_classes - 1]
    order = sorted(range(len(kinds)), key=lambda k: _SHAPE_PRIOR[kinds[k]][2])  # rare ones drawn last
    for k in order:
        p, max_count, _ = _SHAPE_PRIOR[kinds[k]]
        if rng.random() >= p:
            continue
        for _ in range(rng.integers(1, max_count + 1)):
            region = _shape_region(kinds[k], rng, yy, xx, s)
            # a class-typical hue with jitter: a cue that is learnt fast; geometry separates the rest
            colour = np.clip(_PALETTE[kinds[k]] + rng.uniform(-0.2, 0.2, size=3), 0, 1)
            shade = colour + 0.08 * _smooth_field(rng, height, width, 3, 1)
            image = np.where(region[..., None], shade, image)
            mask[region] = k + 1
    image += rng.normal(0, 0.06, size=image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), mask


class SyntheticDataset(SegmentationDataset):
    """``length`` generated samples of one split; sample ``i`` from ``default_rng([seed, split, i])``."""

    def __init__(
        self,
        split: str,
        length: int,
        labels: LabelSpec,
        image_size: tuple[int, int],
        seed: int,
        in_channels: int = 3,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(labels, in_channels, transform)
        self.split = split
        self.length = length
        self.image_size = image_size
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def stored_size(self, index: int) -> tuple[int, int]:
        return self.image_size

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        return render_sample(rng, *self.image_size, self.labels.num_classes)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image, mask = self.generate(index)
        if self.in_channels == 1:
            image = (image.astype(np.float32).mean(axis=2, keepdims=True) + 0.5).astype(np.uint8)
        return image, mask, f"{self.split}_{index:05d}"


class _SyntheticCounter:
    def __init__(self, dataset: SyntheticDataset) -> None:
        self.dataset = dataset

    def __call__(self, index: int) -> tuple[np.ndarray, int, int]:
        _, mask = self.dataset.generate(index)
        counts, ignored = self.dataset.labels.class_counts(np.bincount(mask.ravel()))
        return counts, ignored, mask.size


class _SyntheticCheck:
    """Pre-flight check of one generated sample: image shape and mask values (:meth:`LabelSpec.prepare`)."""

    def __init__(self, dataset: SyntheticDataset) -> None:
        self.dataset = dataset

    def __call__(self, index: int) -> list[Problem]:
        image, mask, name = self.dataset.load(index)
        want = (*self.dataset.image_size, self.dataset.in_channels)
        problems = []
        if image.shape != want:
            problems.append(
                Problem("size mismatch", "", name, f"sample {name}: image {image.shape}, expected {want}")
            )
        try:
            self.dataset.labels.prepare(mask, name)
        except ValueError as e:
            problems.append(Problem("invalid mask values", "", name, str(e)))
        return problems


class SyntheticDataModule(SegDataModule):
    """The default data: generated shapes on textured backgrounds, deliberately imbalanced.

    Args:
        num_classes: 2 .. 7 (background + the first ``num_classes - 1`` of :data:`SHAPES`).
        image_size: (H, W) or one int; a multiple of 32 keeps the eval pipeline from padding.
        num_train, num_val, num_test: samples per split.
        seed: selects the data set (and seeds loaders/augmentation).
        class_names: default ``["background", *SHAPES[:num_classes - 1]]``.
        **kwargs: :class:`~datamodules.base.SegDataModule` arguments.
    """

    def __init__(
        self,
        *,
        num_classes: int = 5,
        image_size: int | Sequence[int] = 64,
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
        mode: str = "multiclass",
        **kwargs: Any,
    ) -> None:
        if mode != "multiclass":
            raise ValueError(
                f"the synthetic data set is multiclass; datamodule.mode must be 'multiclass', got {mode!r}"
            )
        num_classes = check_int(num_classes, "datamodule.num_classes", 2, len(SHAPES) + 1)
        if class_names is None:
            class_names = ["background", *SHAPES[: num_classes - 1]]
        super().__init__(num_classes=num_classes, class_names=class_names, mode=mode, seed=seed, **kwargs)
        size = list(image_size) if isinstance(image_size, Sequence) else [image_size, image_size]
        if len(size) != 2:
            raise ValueError(
                f"datamodule.image_size must be an int or (H, W), each >= 16, got {image_size!r}"
            )
        self.image_size = [check_int(x, "datamodule.image_size (H, W each)", minimum=16) for x in size]
        self.split_sizes = {
            split: check_int(n, f"datamodule.num_{split}", minimum=1)
            for split, n in (("train", num_train), ("val", num_val), ("test", num_test))
        }
        self.num_train, self.num_val, self.num_test = self.split_sizes.values()

    @property
    def training_size(self) -> list[int]:
        return list(self.image_size)

    def make_dataset(self, split: str) -> SyntheticDataset:
        transform = self.train_transform if split == "train" else self.eval_transform
        return SyntheticDataset(
            split,
            self.split_sizes[split],
            self.labels,
            tuple(self.image_size),
            self.seed,
            self.in_channels,
            transform,
        )

    def statistics_key(self) -> dict[str, Any]:
        return {
            "kind": "synthetic",
            "generator_version": GENERATOR_VERSION,
            **self.label_spec_key(),
            "image_size": self.image_size,
            "num_train": self.num_train,
            "seed": self.seed,
        }

    def preflight_source(self) -> str:
        return "the synthetic data set"

    def preflight_plans(self) -> list[SplitPlan]:
        """Generated data has no files to break: the split sizes are checked (>= 1) in ``__init__`` and
        the first sample of each split is rendered and validated (milliseconds; never cached)."""
        return [SplitPlan(s, [0], _SyntheticCheck(self.make_dataset(s))) for s in ("train", "val", "test")]

    def compute_label_statistics(self) -> LabelStatistics:
        dataset = self.make_dataset("train")
        return count_labels(
            range(len(dataset)),
            _SyntheticCounter(dataset),
            self.class_names,
            num_workers=self.num_workers,
            progress=self.progress,
            description="label statistics (synthetic/train)",
        )
