"""Reading image and mask files with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

_MASK_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I", "1")
_IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def _open(path: Path, what: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read {what} file {path}: {e}") from e
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read image file {path}: {e}") from e


def read_image(path: str | Path, in_channels: int) -> np.ndarray:
    """Read an image as uint8 (H, W, in_channels): RGB for 3 channels, luminance for 1."""
    path = Path(path)
    img = _open(path, "image")
    if img.mode not in _IMAGE_MODES:
        raise ValueError(
            f"image file {path} has PIL mode {img.mode!r}; supported: 8-bit modes {_IMAGE_MODES}"
        )
    if in_channels == 3:
        arr = np.asarray(img.convert("RGB"))
    elif in_channels == 1:
        arr = np.asarray(img.convert("L"))[..., None]
    else:
        raise ValueError(f"datamodule.in_channels must be 1 or 3, got {in_channels!r}")
    return arr


def read_mask(path: str | Path) -> np.ndarray:
    """Read a single-channel index mask as a (H, W) integer array (palette images give their indices)."""
    path = Path(path)
    img = _open(path, "mask")
    if img.mode not in _MASK_MODES:
        raise ValueError(
            f"mask file {path} has PIL mode {img.mode!r}; masks must be single-channel index images "
            f"(modes {_MASK_MODES}), one class value per pixel, not colour-coded"
        )
    arr = np.asarray(img)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr
