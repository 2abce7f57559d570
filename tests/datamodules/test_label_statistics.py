import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import FolderDataModule, SyntheticDataModule
from datamodules.statistics import cache_path
from tests.datamodules.helpers import brute_force_counts


def _dm(root, **kw):
    return FolderDataModule(root, num_classes=3, ignore_index=255, progress=False, **kw)


def _train_masks(root: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted((root / "train/masks").iterdir())]


def test_folder_statistics_equal_brute_force(make_folder_dataset):
    root = make_folder_dataset({"train": 5}, shape=(9, 11))
    stats = _dm(root).label_statistics(use_cache=False)
    ref = brute_force_counts(_train_masks(root), 3, 255)
    assert stats.pixel_counts.tolist() == ref["pixel"]
    assert stats.image_pixel_counts.tolist() == ref["image_pixel"]
    assert (stats.total_pixels, stats.ignored_pixels, stats.num_images) == (ref["total"], ref["ignored"], 5)
    assert stats.class_names == ("class_0", "class_1", "class_2")
    assert torch.allclose(stats.frequencies.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_absent_class_has_zero_image_pixels(tmp_path: Path):
    from tests.datamodules.helpers import write_pair

    write_pair(tmp_path, "train", "a", np.array([[0, 0], [1, 255]], np.uint8))
    write_pair(tmp_path, "train", "b", np.array([[0, 0, 0]], np.uint8))
    stats = _dm(tmp_path).label_statistics(use_cache=False)
    assert stats.pixel_counts.tolist() == [5, 1, 0]
    assert stats.image_pixel_counts.tolist() == [3 + 3, 3, 0]


def test_parallel_workers_give_the_same_counts(make_folder_dataset):
    root = make_folder_dataset({"train": 6}, shape=(9, 11))
    a = _dm(root, num_workers=0).label_statistics(use_cache=False)
    b = _dm(root, num_workers=2).label_statistics(use_cache=False)
    assert a == b


def test_cache_is_reused_and_invalidated_when_a_mask_changes(make_folder_dataset, tmp_path, monkeypatch):
    root = make_folder_dataset({"train": 3}, shape=(6, 7))
    cache = tmp_path / "cache"
    dm = _dm(root)
    first = dm.label_statistics(cache_dir=cache)
    files = list(cache.iterdir())
    assert [f.name for f in files] == [cache_path(cache, dm.statistics_key()).name]

    calls = []
    original = FolderDataModule.compute_label_statistics
    monkeypatch.setattr(
        FolderDataModule, "compute_label_statistics", lambda self: calls.append(1) or original(self)
    )
    again = _dm(root).label_statistics(cache_dir=cache)
    assert calls == [] and again.to_dict() == first.to_dict()

    mask_file = root / "train/masks/train000.png"
    Image.fromarray(np.zeros((6, 7), np.uint8)).save(mask_file)
    st = mask_file.stat()
    os.utime(mask_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime even on coarse clocks
    changed = _dm(root).label_statistics(cache_dir=cache)
    assert calls == [1]
    ref = brute_force_counts(_train_masks(root), 3, 255)
    assert changed.pixel_counts.tolist() == ref["pixel"]
    assert len(list(cache.iterdir())) == 2 and not list(cache.glob("*.tmp"))


def test_corrupt_cache_is_recomputed(make_folder_dataset, tmp_path):
    root = make_folder_dataset({"train": 2}, shape=(5, 5))
    dm = _dm(root)
    path = cache_path(tmp_path, dm.statistics_key())
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="ignoring unreadable cache file"):
        stats = dm.label_statistics(cache_dir=tmp_path)
    assert stats.pixel_counts.sum() + stats.ignored_pixels == 50
    assert '"digest"' in path.read_text()


def test_synthetic_statistics_equal_brute_force(tmp_path):
    dm = SyntheticDataModule(num_train=6, image_size=32, progress=False, seed=3)
    stats = dm.label_statistics(cache_dir=tmp_path)
    ds = dm.make_dataset("train")
    masks = [ds.generate(i)[1] for i in range(6)]
    ref = brute_force_counts(masks, 5, 255)
    assert stats.pixel_counts.tolist() == ref["pixel"]
    assert stats.image_pixel_counts.tolist() == ref["image_pixel"]
    assert stats.total_pixels == 6 * 32 * 32 and stats.ignored_pixels == 0
