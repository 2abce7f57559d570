"""Pictures of masks: the class colours (:func:`color_palette`, :func:`default_class_colors`,
:func:`flag_palette`), multilabel masks as bit flags (:func:`label_flags`) and the image | ground truth |
prediction grid (:func:`render_grid`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from seglosses.modes import BINARY_MODE, MULTILABEL_MODE

__all__ = [
    "GAP",
    "HEADER",
    "IGNORE_COLOR",
    "color_palette",
    "default_class_colors",
    "flag_palette",
    "label_flags",
    "render_grid",
]


def color_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: the PASCAL VOC palette (bits of the class id spread over R, G, B;
    class 0 black)."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for c in range(num_classes):
        value, r, g, b = c, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[c] = (r, g, b)
    return palette


def flag_palette(num_labels: int) -> np.ndarray:
    """The colours of multilabel bit-flag values ``sum_c 2**c`` (masks and grids): :func:`color_palette`
    over every flag value (at most 256 entries: 8 labels fit an 8-bit palette PNG)."""
    return color_palette(min(2**num_labels, 256))


def default_class_colors(mode: str, num_classes: int) -> list[list[int]]:
    """One colour per name of the scored classes, the colours the prediction grids draw them in: multiclass
    the palette of the class ids; binary ``[background, foreground]`` black and the palette's colour 1
    (red); multilabel label c the colour of its flag ``2**c`` (no label is black: every one shows)."""
    if mode == BINARY_MODE:
        return color_palette(2).tolist()
    if mode == MULTILABEL_MODE:
        palette = color_palette(2 ** (num_classes - 1) + 1)
        return [palette[2**c].tolist() for c in range(num_classes)]
    return color_palette(num_classes).tolist()


IGNORE_COLOR = (255, 255, 255)
GAP = 2
HEADER = 14


def _to_rgb(image: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """(C, H, W) normalised float image -> (H, W, 3) uint8 for display."""
    x = image.detach().float().cpu()
    if mean is not None and std is not None and len(mean) == len(std) == x.shape[0]:
        x = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
        if x.max() > 1.5:  # mean/std given in 0..255 units
            x = x / 255.0
    else:  # unknown normalisation: stretch each image to [0, 1]
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    x = x.clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return (x[:3].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _colorize(mask: Tensor, palette: np.ndarray) -> np.ndarray:
    m = mask.detach().cpu().long().numpy()
    out = np.empty((*m.shape, 3), dtype=np.uint8)
    valid = (m >= 0) & (m < len(palette))
    out[valid] = palette[m[valid]]
    out[~valid] = IGNORE_COLOR  # ignore_index (and anything else outside the classes)
    return out


def label_flags(masks: Tensor) -> Tensor:
    """(N, C, H, W) multilabel {0, 1} masks -> (N, H, W) int64 bit flags ``sum_c mask_c * 2**c`` (the
    encoding of multilabel mask files), so that every combination of labels gets its own colour. A pixel
    with any channel outside {0, 1} (``ignore_index``) becomes -1, drawn as ignored."""
    m = masks.detach().long()
    shifts = torch.arange(m.shape[1], device=m.device).view(1, -1, 1, 1)
    flags = (m.clamp(0, 1) << shifts).sum(dim=1)
    return flags.masked_fill(((m != 0) & (m != 1)).any(dim=1), -1)


def render_grid(
    images: Tensor | Sequence[Tensor],
    masks: Tensor | Sequence[Tensor],
    preds: Tensor | Sequence[Tensor],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    min_tile: int = 128,
) -> Image.Image:
    """One row per sample: image | ground truth | prediction, masks coloured by :func:`color_palette`
    (ignored pixels white). ``images`` (N, C, H, W) float, ``masks``/``preds`` (N, H, W) int, or sequences
    of one (C, H, W) image and (H, W) masks per sample, whose sizes may differ (data sets of mixed image
    sizes evaluated with ``eval_batch_size=1``): each row is drawn at its own size.
    Tiles are enlarged by one integer factor to at least ``min_tile`` pixels for the largest sample
    (nearest neighbour), so that relative sizes are kept."""
    n = len(images)
    sizes = [tuple(img.shape[-2:]) for img in images]
    largest = max((max(h, w) for h, w in sizes), default=1)
    scale = max(1, -(-min_tile // max(1, largest)))
    col_w = max((w for _, w in sizes), default=1) * scale
    row_h = [h * scale for h, _ in sizes]
    palette = color_palette(max(num_classes, 2))
    grid = Image.new("RGB", (3 * col_w + 4 * GAP, HEADER + sum(row_h) + n * GAP + GAP), (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate(("image", "ground truth", "prediction")):
        draw.text((GAP + j * (col_w + GAP) + 2, 1), title, fill=(255, 255, 255))
    top = HEADER + GAP
    for i in range(n):
        w, th = sizes[i][1], row_h[i]
        tiles = (_to_rgb(images[i], mean, std), _colorize(masks[i], palette), _colorize(preds[i], palette))
        for j, tile in enumerate(tiles):
            img = Image.fromarray(tile).resize((w * scale, th), Image.Resampling.NEAREST)
            grid.paste(img, (GAP + j * (col_w + GAP), top))
        top += th + GAP
    return grid
