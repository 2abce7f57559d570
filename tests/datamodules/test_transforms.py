from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from datamodules import FolderDataModule
from tests.datamodules.helpers import compose_config, write_pair


def _pattern(h: int, w: int) -> np.ndarray:
    """Asymmetric class pattern: no flip or rotation maps it onto itself."""
    y, x = np.mgrid[0:h, 0:w]
    return ((x // 3 + 2 * (y // 5) + (x * y) // 37) % 4).astype(np.uint8)


def _coord_image(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x + 1, y + 1, np.full_like(x, 9)], axis=-1).astype(np.uint8)  # 0 is left for pads


def _folder_dm(root: Path, **kw) -> FolderDataModule:
    return FolderDataModule(
        root,
        num_classes=4,
        ignore_index=255,
        progress=False,
        batch_size=1,
        splits={"train": {"images": "train/images", "masks": "train/masks"}},
        **kw,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flips_rotations_crops_keep_image_and_mask_aligned(tmp_path: Path, seed: int):
    h, w = 30, 40
    write_pair(tmp_path, "train", "s", _pattern(h, w), image=_coord_image(h, w))
    pipeline = A.Compose(
        [
            A.HorizontalFlip(p=1.0),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.RandomCrop(20, 20),
            A.PadIfNeeded(min_height=32, min_width=32, fill=0, fill_mask=255),
        ]
    )
    dm = _folder_dm(tmp_path, train_transform=pipeline, seed=seed)
    sample = dm.dataset("train")[0]
    img = (sample["image"] * 255).round().long()
    mask = sample["mask"]
    assert mask.dtype == torch.int64 and mask.shape == (32, 32)
    pad = mask == 255
    assert pad.any() and (img[:, pad] == 0).all()
    x, y = img[0][~pad] - 1, img[1][~pad] - 1
    expected = torch.from_numpy(_pattern(h, w).astype(np.int64))[y, x]
    assert torch.equal(mask[~pad], expected)
    # the horizontal flip really happened: x decreases along a row unless a rotation moved it to columns
    assert not torch.equal(img[0], img[0].sort(dim=1).values) or not torch.equal(
        img[1], img[1].sort(dim=0).values
    )


def _blocky(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    mask = np.kron(_pattern(h // 8 + 1, w // 8 + 1), np.ones((8, 8), np.uint8))[:h, :w]
    grey = (30 + 50 * mask).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2), mask


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_yaml_train_pipeline_keeps_alignment_and_integer_masks(tmp_path: Path, seed: int):
    image, mask = _blocky(48, 64)
    write_pair(tmp_path, "train", "s", mask, image=image)
    cfg = compose_config(
        [
            "+datamodule=folder",
            f"datamodule.root={tmp_path}",
            "datamodule.num_classes=4",
            "datamodule.crop_size=[32,48]",
        ]
    )
    dm = _folder_dm(tmp_path, train_transform=instantiate(cfg.datamodule.train_transform), seed=seed)
    for _ in range(4):
        s = dm.dataset("train")[0]
        m, img = s["mask"], s["image"]
        assert m.dtype == torch.int64 and m.shape == (32, 48) and img.shape == (3, 32, 48)
        assert set(m.unique().tolist()) <= {0, 1, 2, 3, 255}
        grey = img[0] * 0.229 + 0.485  # undo Normalize (channel 0)
        # interior pixels (3x3 neighbourhood of one class): brightness orders the classes as in the input
        mp = torch.nn.functional.pad(m[None, None].float(), (1, 1, 1, 1), mode="replicate")
        win = mp.unfold(2, 3, 1).unfold(3, 3, 1).reshape(32, 48, 9)
        interior = (win == win[..., :1]).all(-1) & (m != 255)
        means = [float(grey[interior & (m == k)].mean()) for k in range(4) if (interior & (m == k)).any()]
        assert means == sorted(means) and len(means) >= 2
        for k in range(4):
            sel = interior & (m == k)
            if sel.sum() > 1:
                assert float(grey[sel].std()) < 0.02


@pytest.mark.slow
def test_eval_pad32_pads_with_ignore_index_and_normalises(tmp_path: Path):
    mask = _pattern(20, 24)
    write_pair(tmp_path, "train", "s", mask, image=_coord_image(20, 24))
    cfg = compose_config(["+datamodule=folder", f"datamodule.root={tmp_path}", "datamodule.num_classes=4"])
    dm = _folder_dm(tmp_path, train_transform=instantiate(cfg.datamodule.eval_transform))
    s = dm.dataset("train")[0]
    assert s["image"].shape == (3, 32, 32) and s["mask"].shape == (32, 32)
    assert torch.equal(s["mask"][:20, :24], torch.from_numpy(mask.astype(np.int64)))
    assert (s["mask"][20:] == 255).all() and (s["mask"][:, 24:] == 255).all()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    restored = (s["image"][:, :20, :24] * std[:, None, None] + mean[:, None, None]) * 255
    assert torch.allclose(
        restored, torch.from_numpy(_coord_image(20, 24)).permute(2, 0, 1).float(), atol=0.01
    )


def test_interpolating_masks_is_an_error(tmp_path: Path):
    mask = np.zeros((16, 16), np.uint8)
    mask[:, 8:] = 255
    write_pair(tmp_path, "train", "s", mask)
    bad = A.Compose([A.Resize(37, 37, mask_interpolation=1)])  # linear: invents values between 0 and 255
    dm = _folder_dm(tmp_path, train_transform=bad)
    with pytest.raises(ValueError, match="nearest interpolation"):
        dm.dataset("train")[0]
