"""Reading image and mask files with errors that name the file.

Images are turned upright by their EXIF orientation tag (as photo viewers and annotation tools show
them), masks are read as stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from safeio import atomic_path

_MASK_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I", "1")
_IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
#: Mask file extensions of lossy formats (compared lower-case); WebP is lossy or lossless per file.
LOSSY_MASK_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif")
#: PIL formats that are always lossy.
_LOSSY_FORMATS = ("JPEG", "MPO")
_EXIF_ORIENTATION = 0x0112
LOSSY_REASON = "compression changes label values at edges"


def _open(path: Path, what: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read {what} file {path}: {e}") from e
    return img


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1: upright, 2..8: flipped/rotated), read from the header."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # PIL's getexif() would decode the whole PNG to look for an eXIf chunk after the pixels
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, TypeError, KeyError, SyntaxError):  # broken EXIF block: upright
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as :func:`read_image` returns it (EXIF orientation applied), from the header."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            return (h, w) if _orientation(img) in (5, 6, 7, 8) else (w, h)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read image file {path}: {e}") from e


def read_image(path: str | Path, in_channels: int) -> np.ndarray:
    """Read an image as uint8 (H, W, in_channels): RGB for 3 channels, luminance for 1.

    An EXIF orientation tag (phone and camera JPEGs) is applied, so the image is upright like its mask.
    """
    path = Path(path)
    img = _open(path, "image")
    if img.mode not in _IMAGE_MODES:
        raise ValueError(
            f"image file {path} has PIL mode {img.mode!r}; supported: 8-bit modes {_IMAGE_MODES}"
        )
    if _orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    if in_channels == 3:
        arr = np.asarray(img.convert("RGB"))
    elif in_channels == 1:
        arr = np.asarray(img.convert("L"))[..., None]
    else:
        raise ValueError(f"datamodule.in_channels must be 1 or 3, got {in_channels!r}")
    return arr


def is_lossy_webp(path: str | Path) -> bool:
    """Whether a WebP file holds lossy (VP8) image data, from its RIFF chunks; False if not WebP."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
                return False
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return False
                tag, size = chunk[:4], int.from_bytes(chunk[4:], "little")
                if tag == b"VP8 ":
                    return True
                if tag == b"VP8L":
                    return False
                f.seek(size + (size & 1), 1)  # VP8X, ICCP, ANIM, ALPH ...: skip (chunks are even-padded)
    except OSError:
        return False


def lossy_mask_reason(path: str | Path) -> str | None:
    """Why a mask file (by extension, or WebP by content) is lossy, or None if it is not."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in LOSSY_MASK_EXTENSIONS:
        return f"{ext} is a lossy format"
    if ext == ".webp" and is_lossy_webp(path):
        return "it is a lossy WebP file"
    return None


def _rgb_mask_hint(img: Image.Image) -> str:
    if img.mode not in ("RGB", "RGBA"):
        return ""
    rgb = np.asarray(img)[..., :3]
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return (
            "; all three channels are equal: save it as a single-channel (L) image, e.g. "
            "Image.open(p).convert('L').save(p)"
        )
    return ""


def read_mask(path: str | Path, *, allow_lossy: bool = True) -> np.ndarray:
    """Read a single-channel index mask as a (H, W) integer array (palette images give their indices).

    ``allow_lossy=False`` refuses a file whose content is JPEG (or lossy WebP) whatever its extension.
    """
    path = Path(path)
    img = _open(path, "mask")
    if not allow_lossy and (img.format in _LOSSY_FORMATS or (img.format == "WEBP" and is_lossy_webp(path))):
        raise ValueError(
            f"mask file {path} is {img.format}-compressed (lossy): {LOSSY_REASON}; store masks as PNG, "
            "or set datamodule.allow_lossy_masks=true"
        )
    if img.mode not in _MASK_MODES:
        raise ValueError(
            f"mask file {path} has PIL mode {img.mode!r}; masks must be single-channel index images "
            f"(modes {_MASK_MODES}), one class value per pixel, not colour-coded{_rgb_mask_hint(img)}"
        )
    arr = np.asarray(img)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


#: How :func:`read_image_converted` turns a PIL mode into the model's channels: (target mode, what is said).
_TO_RGB = {
    "1": "1-bit -> RGB (channel replicated)",
    "L": "grayscale -> RGB (channel replicated)",
    "LA": "grayscale + alpha -> RGB (alpha dropped, channel replicated)",
    "P": "palette -> RGB",
    "PA": "palette + alpha -> RGB (alpha dropped)",
    "RGBA": "RGBA -> RGB (alpha dropped)",
    "RGBX": "RGBX -> RGB (padding channel dropped)",
    "CMYK": "CMYK -> RGB",
    "YCbCr": "YCbCr -> RGB",
}


def read_image_converted(path: str | Path, in_channels: int) -> tuple[np.ndarray, str | None]:
    """Read an image for a model of ``in_channels`` channels: uint8 (H, W, in_channels) and a note that
    says how it was converted (None when it already had the model's channels).

    Conversions that lose nothing the model could use are made and named (grayscale or palette to RGB,
    alpha dropped, an RGB image whose three channels are equal to grayscale); a colour image for a
    1-channel model is refused (ValueError), as are 16-bit and float images.
    """
    path = Path(path)
    img = _open(path, "image")
    if img.mode not in _IMAGE_MODES:
        raise ValueError(
            f"image file {path} has PIL mode {img.mode!r} (16-bit or float); supported: 8-bit modes "
            f"{_IMAGE_MODES}; convert it to 8 bits per channel"
        )
    if _orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    if in_channels == 3:
        note = None if img.mode == "RGB" else _TO_RGB[img.mode]
        return np.asarray(img.convert("RGB")), note
    if in_channels != 1:
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels!r}")
    if img.mode == "L":
        return np.asarray(img)[..., None], None
    if img.mode in ("1", "LA"):
        return np.asarray(img.convert("L"))[..., None], f"{img.mode} -> grayscale"
    rgb = np.asarray(img.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., :1].copy(), f"{img.mode} with equal channels -> grayscale"
    raise ValueError(
        f"image file {path} is a colour ({img.mode}) image but the model takes 1 channel (grayscale); "
        "which channel or mix it was trained on is not known: convert the images to grayscale first"
    )


def write_index_mask(path: str | Path, mask: np.ndarray, palette: Sequence[Sequence[int]] | None) -> None:
    """Write a (H, W) index mask as PNG: 8-bit palette image with ``palette`` (one [R, G, B] per index) when
    the values fit in 8 bits (8-bit grayscale without a palette: PIL would remap the indices of a palette
    image without one), else 16-bit grayscale (no palette)."""
    if mask.max(initial=0) < 256:
        img = Image.fromarray(mask.astype(np.uint8), mode="P" if palette is not None else "L")
        if palette is not None:
            flat = [int(v) for color in palette for v in color][: 256 * 3]
            img.putpalette(flat + [0] * (256 * 3 - len(flat)))
    else:
        img = Image.fromarray(mask.astype(np.uint16))
    with atomic_path(path) as tmp:
        img.save(tmp)


def write_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 (H, W, 3) image (PNG or JPEG by the extension)."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp)
