from pathlib import Path

import numpy as np
import pytest

from datamodules.pairing import find_pairs, pairs_from_folders
from tests.datamodules.helpers import write_pair


def _mask():
    return np.zeros((4, 5), dtype=np.uint8)


def test_pairs_matched_by_stem_with_mixed_image_extensions(tmp_path: Path):
    write_pair(tmp_path, "train", "b", _mask(), image_ext=".jpg")
    write_pair(tmp_path, "train", "a", _mask())
    pairs = find_pairs(tmp_path, "train", {"images": "train/images", "masks": "train/masks"})
    assert [p.name for p in pairs] == ["a", "b"]
    assert pairs[1].image.name == "b.jpg" and pairs[1].mask.name == "b.png"


def test_mask_suffix_in_the_same_folder(tmp_path: Path):
    d = tmp_path / "all"
    d.mkdir()
    from PIL import Image

    for stem in ("x", "y"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / f"{stem}.png")
        Image.fromarray(_mask()).save(d / f"{stem}_mask.png")
    pairs = pairs_from_folders(d, d, split="train", mask_suffix="_mask")
    assert [(p.name, p.mask.name) for p in pairs] == [("x", "x_mask.png"), ("y", "y_mask.png")]
    with pytest.raises(ValueError, match="mask_suffix"):
        pairs_from_folders(d, d, split="train")


def test_missing_and_orphan_masks_are_listed(tmp_path: Path):
    write_pair(tmp_path, "train", "ok", _mask())
    write_pair(tmp_path, "train", "no_mask", _mask())
    write_pair(tmp_path, "train", "no_image", _mask())
    (tmp_path / "train/masks/no_mask.png").unlink()
    (tmp_path / "train/images/no_image.png").unlink()
    with pytest.raises(ValueError) as e:
        find_pairs(tmp_path, "train", {"images": "train/images", "masks": "train/masks"})
    msg = str(e.value)
    assert "1 image(s) without a mask" in msg and "no_mask.png" in msg
    assert "1 mask(s) without an image" in msg and "no_image.png" in msg


def test_empty_split_and_missing_folder(tmp_path: Path):
    (tmp_path / "val/images").mkdir(parents=True)
    (tmp_path / "val/masks").mkdir(parents=True)
    with pytest.raises(ValueError, match="split 'val' has no samples"):
        find_pairs(tmp_path, "val", {"images": "val/images", "masks": "val/masks"})
    with pytest.raises(FileNotFoundError, match=r"datamodule\.splits\.test\.images"):
        find_pairs(tmp_path, "test", {"images": "test/images", "masks": "test/masks"})


def test_list_file_two_columns_and_ids(tmp_path: Path):
    for stem in ("a", "b", "c"):
        write_pair(tmp_path, "pool", stem, _mask())
    (tmp_path / "train.txt").write_text(
        "# train split\npool/images/c.png pool/masks/c.png\n\nb\na.png  # by file\n"
    )
    pairs = find_pairs(
        tmp_path, "train", {"list": "train.txt", "images": "pool/images", "masks": "pool/masks"}
    )
    assert [p.name for p in pairs] == ["c", "b", "a"]
    assert all(p.image.is_file() and p.mask.is_file() for p in pairs)


def test_list_file_errors(tmp_path: Path):
    write_pair(tmp_path, "pool", "a", _mask())
    (tmp_path / "l1.txt").write_text("pool/images/a.png pool/masks/zzz.png\n")
    with pytest.raises(ValueError, match=r"zzz\.png \(line 1\)"):
        find_pairs(tmp_path, "train", {"list": "l1.txt"})
    (tmp_path / "l2.txt").write_text("a\n")
    with pytest.raises(ValueError, match="needs the folders"):
        find_pairs(tmp_path, "train", {"list": "l2.txt"})
    (tmp_path / "l3.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists none"):
        find_pairs(tmp_path, "train", {"list": "l3.txt"})
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        find_pairs(tmp_path, "train", {"list": "nope.txt"})
    with pytest.raises(ValueError, match="unknown keys"):
        find_pairs(tmp_path, "train", {"imgs": "pool/images"})
