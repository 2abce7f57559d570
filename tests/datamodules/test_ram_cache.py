"""datamodule.cache (datamodules.ram_cache): decoded, pre-resized samples in shared memory give the same
batches as reading from disk, the bound is enforced with a clear message, and the options are checked."""

from __future__ import annotations

import logging

import albumentations as A
import numpy as np
import pytest
import torch

from datamodules import FolderDataModule, SyntheticDataModule
from datamodules.ram_cache import CacheOptions, DecodedSamples, split_fixed_resize


def _resize_first(size: tuple[int, int] = (12, 16)) -> A.Compose:
    """As conf/datamodule/transforms/train/resize_scale_crop_flip_jitter.yaml, at a tiny size."""
    return A.Compose([
        A.Resize(*size, interpolation=1, mask_interpolation=0),
        A.RandomScale(scale_limit=(-0.25, 0.5), p=1.0),
        A.PadIfNeeded(*size, border_mode=0, fill=0, fill_mask=255),
        A.RandomCrop(*size),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(0.25, 0.25, 0.25, 0.03, p=0.8),
        A.Normalize(),
    ])


def _folder(root, cache: str, num_workers: int = 0, **kw) -> FolderDataModule:
    return FolderDataModule(root, num_classes=3, batch_size=2, progress=False, cache=cache,
                            num_workers=num_workers, train_transform=_resize_first(), seed=3, **kw)


def _batches(dm, epochs: int = 2) -> list[dict]:
    dm.setup("fit")
    return [b for _ in range(epochs) for b in dm.train_dataloader()]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_cached_batches_equal_batches_read_from_disk(make_folder_dataset, num_workers):
    root = make_folder_dataset({"train": 5, "val": 2, "test": 2})
    disk = _batches(_folder(root, "none", num_workers))
    ram_dm = _folder(root, "ram", num_workers)
    ram = _batches(ram_dm)
    assert ram_dm.dataset("train").decoded is not None
    assert len(disk) == len(ram) == 6
    for a, b in zip(disk, ram, strict=True):
        assert a["name"] == b["name"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_fixed_resize_runs_once_and_the_rest_stays():
    pipeline = _resize_first((8, 10))
    resize, rest = split_fixed_resize(pipeline)
    assert [type(t) for t in resize] == [A.Resize]
    assert [type(t) for t in rest.transforms] == [type(t) for t in pipeline.transforms[1:]]
    assert all(a is b for a, b in zip(rest.transforms, pipeline.transforms[1:], strict=True))
    for other in (None, A.Compose([A.HorizontalFlip(p=1.0)]), A.Compose([A.Resize(4, 4, p=0.5)])):
        assert split_fixed_resize(other) == ([], other)


def test_cache_holds_the_resized_arrays_in_shared_memory(make_folder_dataset):
    root = make_folder_dataset({"train": 3, "val": 1, "test": 1}, shape=(20, 24))
    dataset = _folder(root, "ram").dataset("train")
    cache = dataset.decoded
    assert isinstance(cache, DecodedSamples) and cache.buffer.is_shared()
    image, mask, name = cache.get(1)
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8 and mask.shape == (12, 16)
    assert cache.nbytes == 3 * 12 * 16 * (3 + mask.dtype.itemsize)
    image[:] = 0  # a copy: the cache is unchanged
    assert cache.get(1)[0].any() and name == dataset.pairs[1].name


def test_ram_refuses_a_split_over_the_bound_naming_sizes_and_keys(make_folder_dataset):
    root = make_folder_dataset({"train": 3, "val": 1, "test": 1})
    with pytest.raises(MemoryError, match=r"3 decoded train samples need .*cache_max_gb=1e-09.*cache=none"):
        _folder(root, "ram", cache_max_gb=1e-9).dataset("train")


def test_auto_reads_from_disk_when_over_the_bound_and_says_so(make_folder_dataset, caplog):
    root = make_folder_dataset({"train": 3, "val": 1, "test": 1})
    with caplog.at_level(logging.INFO, logger="datamodules.ram_cache"):
        dataset = _folder(root, "auto", cache_max_gb=1e-9).dataset("train")
    assert dataset.decoded is None
    assert "reading the train split from disk every epoch" in caplog.text
    assert dataset[0]["image"].shape == (3, 12, 16)


def test_synthetic_cache_equals_generation():
    kw = dict(num_train=4, num_val=2, num_test=2, image_size=32, progress=False, batch_size=2)
    cached = SyntheticDataModule(**kw).dataset("val")
    generated = SyntheticDataModule(cache="none", **kw).dataset("val")
    assert cached.decoded is not None and generated.decoded is None
    for i in range(2):
        a, b = cached[i], generated[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


@pytest.mark.parametrize(("mode", "max_gb", "match"), [("disk", 1.0, "datamodule.cache must be one of"),
                                                       ("ram", 0, "datamodule.cache_max_gb")])
def test_options_are_checked(mode, max_gb, match):
    with pytest.raises(ValueError, match=match):
        CacheOptions(mode, max_gb)
