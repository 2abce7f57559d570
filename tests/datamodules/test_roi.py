"""datamodule.roi (datamodules.roi): pixels outside a sample's region mask are ignore_index in the training
masks, the label statistics and the pre-flight check; region files are found by dir or suffix, and the
settings are checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules import FolderDataModule
from datamodules.roi import RoiSpec

IGNORE = 255


def _regions(root: Path, folder: str, shape=(20, 24), suffix: str = "") -> dict[str, np.ndarray]:
    """A region per mask of every split: a random rectangle; written as 0/255 PNGs."""
    rng = np.random.default_rng(1)
    out = {}
    for mask in sorted(root.glob("*/masks/*.png")):
        split = mask.parent.parent.name
        roi = np.zeros(shape, bool)
        y, x = rng.integers(0, 8, size=2)
        roi[y : y + 10, x : x + 12] = True
        target = (root / folder.format(split=split)) if folder else mask.parent
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(roi.astype(np.uint8) * 255).save(target / f"{mask.stem}{suffix}.png")
        out[mask.stem] = roi
    return out


def _dm(root, roi, **kw) -> FolderDataModule:
    return FolderDataModule(root, num_classes=3, batch_size=2, progress=False, roi=roi, **kw)


@pytest.mark.parametrize("cache", ["ram", "none"])
def test_pixels_outside_the_region_are_ignored_in_samples_and_statistics(make_folder_dataset, cache):
    root = make_folder_dataset()
    regions = _regions(root, "{split}/fov")
    dm = _dm(root, {"dir": "{split}/fov"}, cache=cache)
    dataset = dm.dataset("train")
    expected = np.zeros(3, np.int64)
    for i, pair in enumerate(dataset.pairs):
        stored = np.array(Image.open(pair.mask))
        inside = regions[pair.name]
        mask = dataset[i]["mask"].numpy()
        assert (mask[~inside] == IGNORE).all()
        assert np.array_equal(mask[inside], stored[inside])
        expected += np.bincount(stored[inside & (stored != IGNORE)], minlength=3)
    stats = dm.label_statistics(use_cache=False)
    assert stats.pixel_counts.tolist() == expected.tolist()


def test_regions_beside_the_masks_by_suffix(make_folder_dataset):
    root = make_folder_dataset()
    regions = _regions(root, "", suffix="_roi")
    dm = _dm(root, {"suffix": "_roi"}, cache="none")
    pair = dm.pairs("val")[0]
    assert pair.roi == pair.mask.parent / f"{pair.name}_roi.png"
    assert (dm.dataset("val")[0]["mask"].numpy()[~regions[pair.name]] == IGNORE).all()


def test_missing_and_mismatched_regions_are_named(make_folder_dataset):
    root = make_folder_dataset()
    _regions(root, "{split}/fov")
    (root / "train/fov/train001.png").unlink()
    with pytest.raises(ValueError, match=r"'train': 1 of 4 samples have no region mask .*train001\.png"):
        _dm(root, {"dir": "{split}/fov"}).pairs("train")
    Image.fromarray(np.full((5, 5), 255, np.uint8)).save(root / "train/fov/train001.png")
    with pytest.raises(ValueError, match=r"region mask .*train001\.png is 5x5 .* but mask .* is 24x20"):
        _dm(root, {"dir": "{split}/fov"}).preflight(use_cache=False)


@pytest.mark.parametrize(("roi", "kw", "match"), [
    ({}, {}, "needs a dir"),
    ({"folder": "x"}, {}, "unknown keys"),
    ({"dir": "fov"}, {"ignore_index": None}, "datamodule.ignore_index"),
])
def test_settings_are_checked(make_folder_dataset, roi, kw, match):
    root = make_folder_dataset()
    with pytest.raises(ValueError, match=match):
        _dm(root, roi, **kw)


def test_spec_paths():
    spec = RoiSpec(dir="{split}/fov", extension="gif")
    assert spec.path(Path("/d"), "val", "a", Path("/d/val/masks/a.png")) == Path("/d/val/fov/a.gif")
    assert RoiSpec.from_config(None) is None
