"""Where the tiles of an image go and how much each counts: tile starts along an axis (:func:`tile_starts`),
the tile grid of an image (:class:`TileGrid`, :func:`tile_grid`), the boxes of each batch of tiles
(:func:`tile_boxes`), the importance map per axis (:func:`importance_vector`) and the tiles' blending
weights (:func:`axis_weights`, :func:`tile_weights`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from inference.config import BLENDS, InferenceConfig
from seglosses.checks import check_choice

__all__ = [
    "GAUSSIAN_SIGMA_SCALE",
    "TileBox",
    "TileGrid",
    "axis_weights",
    "importance_vector",
    "pad_bottom_right",
    "tile_boxes",
    "tile_grid",
    "tile_starts",
    "tile_weights",
]

#: Gaussian blending: sigma = tile * GAUSSIAN_SIGMA_SCALE per axis (nnU-Net, MONAI's default 0.125).
GAUSSIAN_SIGMA_SCALE = 1 / 8


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one axis of ``size`` pixels (padded to ``tile`` when smaller).

    Stride ``max(1, int(tile * (1 - overlap)))``; the last tile is shifted back to end at the border, as
    MONAI's ``dense_patch_slices``.
    """
    length = max(size, tile)
    stride = max(1, int(tile * (1 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def importance_vector(length: int, blend: str, device: torch.device | str | None = None) -> Tensor:
    """One axis of the tile importance map, float64: ones, or a Gaussian (sigma = length / 8) centred at
    ``(length - 1) / 2``, scaled to max 1, zeros clamped to the smallest non-zero value."""
    check_choice(blend, "inference.blend", BLENDS)
    if blend == "constant":
        return torch.ones(length, dtype=torch.float64, device=device)
    sigma = length * GAUSSIAN_SIGMA_SCALE
    d = torch.arange(length, dtype=torch.float64, device=device) - (length - 1) / 2
    g = torch.exp(-(d**2) / (2 * sigma**2))
    g = g / g.max()
    positive = g[g > 0]
    return g.clamp_min(float(positive.min())) if positive.numel() < g.numel() else g


def axis_weights(
    size: int, tile: int, starts: list[int], blend: str, scale: float, device: torch.device
) -> tuple[Tensor, bool]:
    """(len(starts), min(size, tile)) float32 weights per tile along one axis, the importance vector
    divided by its sum over the tiles covering each pixel (times ``scale``), and whether all are 1."""
    valid = min(size, tile)
    g = importance_vector(tile, blend)[:valid]
    summed = torch.zeros(max(size, tile), dtype=torch.float64)
    for s in starts:
        summed[s : s + valid] += g
    weights = torch.stack([g / summed[s : s + valid] for s in starts]) * scale
    return weights.to(device=device, dtype=torch.float32), bool((weights == 1).all())


def pad_bottom_right(x: Tensor, pad_h: int, pad_w: int, pad_mode: str) -> Tensor:
    if pad_mode == "constant":
        return F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
    for dim, amount in ((2, pad_h), (3, pad_w)):
        while amount > 0:
            step = min(amount, x.shape[dim] - 1)
            pad = [0, 0, 0, 0]
            pad[1 if dim == 3 else 3] = step if step > 0 else amount
            x = F.pad(x, tuple(pad), mode="reflect" if step > 0 else "replicate")
            amount -= step if step > 0 else amount
    return x


@dataclass(frozen=True)
class TileGrid:
    """The tiles of an (H, W) image: the tile (h, w), its starts along each axis (:func:`tile_starts`), the
    blend of their probabilities and the tiles per forward pass. ``whole`` is one tile, the image padded to
    the network's multiple."""

    height: int
    width: int
    tile: tuple[int, int]
    starts_h: list[int]
    starts_w: list[int]
    blend: str
    batch_size: int

    @property
    def valid(self) -> tuple[int, int]:
        """(h, w) of a tile's part inside the image (the image where it is smaller than the tile)."""
        return min(self.height, self.tile[0]), min(self.width, self.tile[1])

    @property
    def pad(self) -> tuple[int, int]:
        """Padding (bottom, right) from the valid part to the tile."""
        valid_h, valid_w = self.valid
        return self.tile[0] - valid_h, self.tile[1] - valid_w


def tile_grid(config: InferenceConfig, images: int, height: int, width: int) -> TileGrid:
    """The :class:`TileGrid` of ``config`` for ``images`` images of (height, width): ``whole`` one tile of
    the image padded to ``config.multiple`` (all images in one pass), ``slide`` the tiles of
    ``config.tile`` with ``config.overlap``, ``config.blend`` and ``config.batch_size``."""
    if config.mode_for(height, width) == "whole":
        m = config.multiple
        tile = (math.ceil(height / m) * m, math.ceil(width / m) * m)
        return TileGrid(height, width, tile, [0], [0], "constant", images)
    assert config.tile is not None  # mode_for checked it
    starts_h = tile_starts(height, config.tile[0], config.overlap)
    starts_w = tile_starts(width, config.tile[1], config.overlap)
    return TileGrid(height, width, config.tile, starts_h, starts_w, config.blend, config.batch_size)


@dataclass(frozen=True)
class TileBox:
    """One tile of one pass: its image, its row/column in the grid (``starts_h[row]``, ``starts_w[col]``)
    and the top-left corner of its valid part in the image."""

    image: int
    row: int
    col: int
    top: int
    left: int


def tile_boxes(grid: TileGrid, images: int, flip_dims: tuple[int, ...] = ()) -> Iterator[list[TileBox]]:
    """The tiles of every image in batches of ``grid.batch_size`` (image by image, row by row). With
    ``flip_dims`` (2: vertical, 3: horizontal) the grid is that of the flipped image: a tile of the flipped
    image is the flipped tile of the image at the mirrored position (start s -> size - s - valid), so the
    boxes are where to cut the un-flipped image."""
    valid_h, valid_w = grid.valid
    rows, cols = range(len(grid.starts_h)), range(len(grid.starts_w))
    tasks = [(b, i, j) for b in range(images) for i in rows for j in cols]
    for first in range(0, len(tasks), grid.batch_size):
        yield [
            TileBox(
                b, i, j,
                grid.height - grid.starts_h[i] - valid_h if 2 in flip_dims else grid.starts_h[i],
                grid.width - grid.starts_w[j] - valid_w if 3 in flip_dims else grid.starts_w[j],
            )
            for b, i, j in tasks[first : first + grid.batch_size]
        ]  # fmt: skip


def tile_weights(weights_h: Tensor, weights_w: Tensor, boxes: list[TileBox]) -> Tensor:
    """(k, 1, valid_h, valid_w) blending weights of the boxes' tiles: the outer product of their row's and
    column's :func:`axis_weights`."""
    rows = weights_h[[box.row for box in boxes]]
    cols = weights_w[[box.col for box in boxes]]
    return rows[:, None, :, None] * cols[:, None, None, :]
