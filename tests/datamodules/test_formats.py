"""File formats: lossy masks refused, EXIF orientation applied, hidden files skipped, upper-case
extensions accepted, a hint for grey RGB masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from datamodules import FolderDataModule
from datamodules.io import image_size, is_lossy_webp, read_image, read_mask
from datamodules.pairing import find_pairs
from tests.datamodules.helpers import write_pair

SPLITS = {"train": {"images": "train/images", "masks": "train/masks"}}


def _mask(shape=(12, 16)) -> np.ndarray:
    return (np.arange(shape[0] * shape[1]).reshape(shape) % 3).astype(np.uint8)


def _dm(root: Path, **kw) -> FolderDataModule:
    kw.setdefault("splits", SPLITS)
    return FolderDataModule(root, num_classes=3, progress=False, stats_cache_dir=str(root / "cache"), **kw)


def _jpeg_masks(root: Path, ext: str = ".jpg") -> Path:
    for name in ("a", "b"):
        write_pair(root, "train", name, _mask())
        m = root / "train" / "masks" / f"{name}.png"
        Image.open(m).save(m.with_suffix(ext), format="JPEG")
        m.unlink()
    return root


# -- lossy masks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".JPG", ".jfif"])
def test_lossy_mask_extension_is_refused_at_construction(tmp_path, ext):
    with pytest.raises(ValueError, match=rf"datamodule.mask_extension='\{ext}' is a lossy format") as e:
        _dm(_jpeg_masks(tmp_path, ext), mask_extension=ext)
    assert "compression changes label values at edges" in str(e.value)
    assert "datamodule.allow_lossy_masks=true" in str(e.value)


def test_lossy_masks_accepted_when_allowed(tmp_path):
    dm = _dm(_jpeg_masks(tmp_path), mask_extension=".jpg", allow_lossy_masks=True)
    assert [p.mask.name for p in dm.pairs("train")] == ["a.jpg", "b.jpg"]
    dm.dataset("train")[0]


def test_lossy_masks_in_a_list_file_name_the_file_and_key(tmp_path):
    root = _jpeg_masks(tmp_path)
    (root / "train.txt").write_text("train/images/a.png train/masks/a.jpg\n")
    dm = _dm(root, splits={"train": {"list": "train.txt"}})
    with pytest.raises(ValueError, match="lossy format") as e:
        dm.pairs("train")
    msg = str(e.value)
    assert str(root / "train" / "masks" / "a.jpg") in msg
    assert "datamodule.splits.train.list='train.txt'" in msg
    assert "compression changes label values at edges" in msg.lower()
    assert find_pairs(root, "train", {"list": "train.txt"}, allow_lossy_masks=True)[0].mask.name == "a.jpg"


def test_webp_masks_lossy_refused_lossless_accepted(tmp_path):
    m = Image.fromarray(_mask())
    m.save(tmp_path / "lossy.webp", lossless=False)
    m.save(tmp_path / "lossless.webp", lossless=True)
    rgba = m.convert("RGBA")
    rgba.putalpha(m)
    rgba.save(tmp_path / "lossy_alpha.webp", lossless=False)  # extended: VP8X, ALPH, then VP8 chunks
    assert (tmp_path / "lossy_alpha.webp").read_bytes()[12:16] == b"VP8X"
    assert is_lossy_webp(tmp_path / "lossy.webp") and is_lossy_webp(tmp_path / "lossy_alpha.webp")
    assert not is_lossy_webp(tmp_path / "lossless.webp")
    for name, lossy in (("lossy", True), ("lossless", False)):
        root = tmp_path / name
        write_pair(root, "train", "a", _mask())
        (root / "train" / "masks" / "a.png").unlink()
        (root / "train" / "masks" / "a.webp").write_bytes((tmp_path / f"{name}.webp").read_bytes())
        dm = _dm(root, mask_extension=".webp")
        if lossy:
            with pytest.raises(ValueError, match=r"a\.webp \(it is a lossy WebP file\)"):
                dm.pairs("train")
        else:
            assert dm.pairs("train")[0].mask.name == "a.webp"


def test_jpeg_data_behind_a_png_name_is_caught_by_the_statistics_pass(tmp_path):
    write_pair(tmp_path, "train", "a", _mask())
    m = tmp_path / "train" / "masks" / "a.png"
    Image.open(m).save(m, format="JPEG")
    dm = _dm(tmp_path)
    with pytest.raises(ValueError, match=rf"mask file {m} is JPEG-compressed \(lossy\)"):
        dm.label_statistics(use_cache=False)
    with pytest.raises(ValueError, match="JPEG"):
        read_mask(m, allow_lossy=False)


# -- EXIF orientation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_image_is_read_upright(tmp_path, orientation):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)  # stored as 14x10 (WxH)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    arr = read_image(path, 3)
    assert np.array_equal(arr, upright)
    assert image_size(path) == (arr.shape[1], arr.shape[0])
    assert arr.shape[:2] == ((14, 10) if orientation in (6, 8) else (10, 14))


def test_exif_rotated_image_pairs_with_its_upright_mask(tmp_path):
    mask = _mask((14, 10))  # drawn on the upright (displayed) 10x14 image
    write_pair(tmp_path, "train", "a", mask)
    img = tmp_path / "train" / "images" / "a.png"
    img.unlink()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: 14x10
    Image.fromarray(np.zeros((10, 14, 3), np.uint8)).save(img.with_suffix(".jpg"), exif=exif)
    dm = _dm(tmp_path)
    dm.label_statistics(use_cache=False)  # no size mismatch
    assert tuple(dm.dataset("train")[0]["image"].shape) == (3, 14, 10)


# -- hidden files, upper-case extensions ----------------------------------------------------------------
def test_hidden_and_appledouble_files_are_skipped(tmp_path):
    write_pair(tmp_path, "train", "a", _mask())
    for d in ("images", "masks"):
        (tmp_path / "train" / d / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        (tmp_path / "train" / d / ".hidden.png").write_bytes(b"junk")
        (tmp_path / "train" / d / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "train" / "images" / "._b.png").write_bytes(b"junk")  # would be an image without a mask
    pairs = find_pairs(tmp_path, "train", SPLITS["train"])
    assert [p.name for p in pairs] == ["a"]


def test_upper_case_extensions_are_accepted(tmp_path):
    write_pair(tmp_path, "train", "a", _mask(), image_ext=".PNG")
    write_pair(tmp_path, "train", "b", _mask(), image_ext=".JPG")
    (tmp_path / "train" / "masks" / "b.png").rename(tmp_path / "train" / "masks" / "b.PNG")
    pairs = find_pairs(tmp_path, "train", SPLITS["train"])
    assert [(p.image.name, p.mask.name) for p in pairs] == [("a.PNG", "a.png"), ("b.JPG", "b.PNG")]
    (tmp_path / "ids.txt").write_text("a\nb.JPG\n")
    listed = find_pairs(tmp_path, "train", {**SPLITS["train"], "list": "ids.txt"})
    assert [(p.image.name, p.mask.name) for p in listed] == [("a.PNG", "a.png"), ("b.JPG", "b.PNG")]


# -- RGB masks ------------------------------------------------------------------------------------------
def test_grey_rgb_mask_gets_a_conversion_hint(tmp_path):
    p = tmp_path / "m.png"
    Image.fromarray(np.repeat(_mask()[..., None], 3, axis=2)).save(p)
    with pytest.raises(ValueError, match="all three channels are equal") as e:
        read_mask(p)
    assert str(p) in str(e.value) and "Image.open(p).convert('L').save(p)" in str(e.value)


def test_colour_rgb_mask_keeps_the_plain_error(tmp_path):
    p = tmp_path / "m.png"
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 128
    Image.fromarray(rgb).save(p)
    with pytest.raises(ValueError, match="not colour-coded") as e:
        read_mask(p)
    assert "channels are equal" not in str(e.value)


def test_image_size_of_a_png_reads_only_the_header(tmp_path, monkeypatch):
    # PIL's getexif() decodes a whole PNG that has no EXIF in its header: the label-statistics and
    # pre-flight passes call image_size() on every image, so that would decode every image once more.
    from PIL import PngImagePlugin

    from datamodules.io import image_size

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((5, 7, 3), dtype=np.uint8)).save(path)

    def no_decode(self):
        raise AssertionError("image_size decoded the pixels")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decode)
    assert image_size(path) == (7, 5)
