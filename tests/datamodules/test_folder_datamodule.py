from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import FolderDataModule
from tests.datamodules.helpers import write_pair


def _dm(root, **kw):
    kw.setdefault("num_classes", 3)
    kw.setdefault("batch_size", 2)
    kw.setdefault("progress", False)
    return FolderDataModule(root, **kw)


def test_batches_dtype_shape_and_ignore_kept(make_folder_dataset):
    root = make_folder_dataset()
    dm = _dm(root)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (2, 3, 20, 24)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (2, 20, 24)
    assert batch["name"] == ["val000", "val001"]
    stored = np.asarray(Image.open(root / "val/masks/val000.png"))
    assert torch.equal(batch["mask"][0], torch.from_numpy(stored.astype(np.int64)))
    assert (batch["mask"] == 255).any()
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0  # no pipeline: [0, 1]


def test_attributes_for_interpolation(make_folder_dataset):
    dm = _dm(make_folder_dataset(), class_names=["a", "b", "c"], ignore_index=255)
    assert (dm.num_classes, dm.class_names, dm.ignore_index, dm.mode, dm.in_channels) == (
        3,
        ["a", "b", "c"],
        255,
        "multiclass",
        3,
    )


def test_binary_value_map_and_grayscale(tmp_path: Path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 3:6] = 255
    write_pair(tmp_path, "train", "s", mask, image=np.full((8, 8), 7, np.uint8))
    dm = _dm(
        tmp_path,
        num_classes=1,
        mode="binary",
        in_channels=1,
        value_map={255: 1},
        ignore_index=None,
        splits={"train": {"images": "train/images", "masks": "train/masks"}},
    )
    sample = dm.dataset("train")[0]
    assert sample["image"].shape == (1, 8, 8)
    assert sample["mask"].dtype == torch.int64
    assert torch.equal(sample["mask"], torch.from_numpy((mask == 255).astype(np.int64)))


def test_rgb_image_as_grayscale_and_gray_as_rgb(tmp_path: Path):
    write_pair(tmp_path, "train", "s", np.zeros((4, 4), np.uint8), image=np.full((4, 4), 51, np.uint8))
    splits = {"train": {"images": "train/images", "masks": "train/masks"}}
    img = _dm(tmp_path, splits=splits, in_channels=3).dataset("train")[0]["image"]
    assert img.shape == (3, 4, 4) and torch.allclose(img, torch.full_like(img, 0.2))


def test_root_missing_names_override(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"datamodule\.root=PATH"):
        _dm(tmp_path / "nowhere")


def test_unconfigured_split(make_folder_dataset):
    dm = _dm(
        make_folder_dataset({"train": 2}),
        splits={"train": {"images": "train/images", "masks": "train/masks"}},
    )
    with pytest.raises(ValueError, match=r"datamodule\.splits\.test"):
        dm.setup("test")


def test_bad_mask_value_names_file_and_values(make_folder_dataset):
    root = make_folder_dataset()
    bad = np.zeros((20, 24), np.uint8)
    bad[0, 0] = 7
    Image.fromarray(bad).save(root / "train/masks/train001.png")
    with pytest.raises(ValueError, match=r"train001\.png.*7 \(1 px\)"):
        _dm(root).dataset("train")  # cached in memory (the default): read when the data set is built
    dm = _dm(root, cache="none")
    ds = dm.dataset("train")
    with pytest.raises(ValueError, match=r"train001\.png.*7 \(1 px\)"):
        ds[1]
    with pytest.raises(ValueError, match=r"train001\.png.*7 \(1 px\)"):
        dm.label_statistics(use_cache=False)


def test_size_mismatch(make_folder_dataset):
    root = make_folder_dataset()
    Image.fromarray(np.zeros((10, 24), np.uint8)).save(root / "train/masks/train002.png")
    dm = _dm(root, cache="none")
    with pytest.raises(ValueError, match=r"size mismatch.*train002\.png is 24x20.*train002\.png is 24x10"):
        dm.dataset("train")[2]
    with pytest.raises(ValueError, match="size mismatch"):
        dm.label_statistics(use_cache=False)


def test_unreadable_and_colour_masks(make_folder_dataset):
    root = make_folder_dataset()
    (root / "train/images/train000.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "train/masks/train001.png")
    ds = _dm(root, cache="none").dataset("train")
    with pytest.raises(ValueError, match=r"cannot read image file .*train000\.png"):
        ds[0]
    with pytest.raises(ValueError, match=r"train001\.png has PIL mode 'RGB'"):
        ds[1]


def test_eval_batches_of_mixed_sizes_explain_fix(tmp_path: Path):
    write_pair(tmp_path, "val", "a", np.zeros((4, 4), np.uint8))
    write_pair(tmp_path, "val", "b", np.zeros((6, 4), np.uint8))
    dm = _dm(tmp_path, splits={"val": {"images": "val/images", "masks": "val/masks"}})
    with pytest.raises(ValueError, match="eval_batch_size=1"):
        next(iter(dm.val_dataloader()))


def test_invalid_settings(make_folder_dataset):
    root = make_folder_dataset()
    with pytest.raises(ValueError, match="class_names has 2 names"):
        _dm(root, class_names=["a", "b"])
    with pytest.raises(ValueError, match="in_channels"):
        _dm(root, in_channels=4)
    with pytest.raises(ValueError, match="batch_size"):
        _dm(root, batch_size=0)


def test_multilabel_batches_are_channel_first_bits(tmp_path: Path):
    mask = np.array([[0, 1, 2, 3], [255, 3, 0, 1]], np.uint8)  # bit c = class c
    write_pair(tmp_path, "train", "s", mask)
    dm = _dm(
        tmp_path,
        num_classes=2,
        mode="multilabel",
        splits={"train": {"images": "train/images", "masks": "train/masks"}},
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].shape == (1, 2, 2, 4) and batch["mask"].dtype == torch.int64
    assert batch["mask"][0, 0].tolist() == [[0, 1, 0, 1], [255, 1, 0, 1]]
    assert batch["mask"][0, 1].tolist() == [[0, 0, 1, 1], [255, 1, 0, 0]]
    stats = dm.label_statistics(use_cache=False)
    assert stats.pixel_counts.tolist() == [4, 3] and stats.ignored_pixels == 1
