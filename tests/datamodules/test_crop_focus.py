"""Class-aware crops (datamodule.crop_focus): the crop distribution against its formula, centring and
clipping, the random-crop fallback, the pipeline substitution, seeds and workers, bad values."""

from __future__ import annotations

import math

import albumentations as A
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from datamodules import FolderDataModule, SyntheticDataModule
from datamodules.crops import (
    ClassFocusedCrop,
    check_crop_focus,
    install_focused_crop,
    inverse_frequency_probs,
)
from datamodules.labels import LabelSpec
from tests.datamodules.helpers import compose_config, write_pair

SIGMAS = 4.5  # tolerance of the empirical frequencies, in binomial standard deviations


def _pipeline(crop: A.BasicTransform, seed: int = 0) -> A.Compose:
    return A.Compose([crop], seed=seed)


def _focused(h, w, p, q, num_classes=4, **kw) -> ClassFocusedCrop:
    return ClassFocusedCrop(h, w, focus_p=p, labels=LabelSpec("multiclass", num_classes, 255), class_probs=q,
                            **kw)


def _test_mask() -> np.ndarray:
    """30x36: class 1 a 3x3 block in the top-left corner (its windows are clipped), class 2 one interior
    pixel, class 0 the rest, class 3 absent."""
    mask = np.zeros((30, 36), np.uint8)
    mask[0:3, 1:4] = 1
    mask[20, 18] = 2
    return mask


def _window(y: int, x: int, shape, crop) -> tuple[int, int]:
    """Top-left corner of the crop centred on (y, x), clipped to the image (the documented rule)."""
    (hh, ww), (h, w) = shape, crop
    return min(max(y - h // 2, 0), hh - h), min(max(x - w // 2, 0), ww - w)


def _expected_contains(mask, crop, p, q) -> np.ndarray:
    """P(the crop holds class k), k = 0..C-1, from the definition: with probability p a class c ~ q and a
    uniform pixel of c, the window centred there and clipped; a class absent from the mask and probability
    1 - p give a uniform random window (one of the (H - h + 1)(W - w + 1) positions)."""
    (hh, ww), (h, w) = mask.shape, crop
    c_total = len(q)

    def holds(y0, x0):
        return np.isin(np.arange(c_total), mask[y0 : y0 + h, x0 : x0 + w])

    random = np.mean([holds(y0, x0) for y0 in range(hh - h + 1) for x0 in range(ww - w + 1)], axis=0)
    focused = np.zeros(c_total)
    for c in range(c_total):
        pixels = np.argwhere(mask == c)
        if len(pixels) == 0:
            focused += q[c] * random
        else:
            focused += q[c] * np.mean([holds(*_window(y, x, mask.shape, crop)) for y, x in pixels], axis=0)
    return (1 - p) * random + p * focused


@pytest.mark.slow
def test_crop_class_frequencies_match_the_formula():
    mask = _test_mask()
    image = np.zeros((*mask.shape, 3), np.uint8)
    crop, p, q = (8, 10), 0.4, [0.1, 0.2, 0.3, 0.4]  # class 3 is absent: its share falls back
    expected = _expected_contains(mask, crop, p, q)
    pipeline = _pipeline(_focused(*crop, p, q), seed=7)
    n = 3000
    counts = np.zeros(4)
    for _ in range(n):
        out = pipeline(image=image, mask=mask)["mask"]
        assert out.shape == crop
        counts += np.isin(np.arange(4), out)
    empirical = counts / n
    assert expected[3] == empirical[3] == 0
    for k in (1, 2):  # the informative classes (class 0 is in almost every crop)
        sd = math.sqrt(expected[k] * (1 - expected[k]) / n)
        assert abs(empirical[k] - expected[k]) <= SIGMAS * sd, (k, empirical[k], expected[k])
    # and the focus matters: a random crop holds class 2 far less often
    assert expected[2] > 1.5 * _expected_contains(mask, crop, 0.0, q)[2]


def test_focused_crop_is_centred_on_the_pixel_and_clipped_at_borders():
    mask = _test_mask()
    image = np.arange(mask.size * 3, dtype=np.uint8).reshape(*mask.shape, 3)
    centred = _pipeline(_focused(8, 10, 1.0, [0, 0, 1, 0]), seed=1)
    for _ in range(20):
        out = centred(image=image, mask=mask)
        assert out["mask"][4, 5] == 2  # the one class-2 pixel, (20, 18), at (h // 2, w // 2)
        np.testing.assert_array_equal(out["image"], image[16:24, 13:23])
    corner = _pipeline(_focused(8, 10, 1.0, [0, 1, 0, 0]), seed=1)
    for _ in range(20):
        out = corner(image=image, mask=mask)["mask"]
        np.testing.assert_array_equal(out, mask[0:8, 0:10])  # clipped to the top-left corner


def test_smaller_image_is_padded_as_random_crop_does():
    mask = np.zeros((5, 6), np.uint8)
    mask[4, 0] = 2
    image = np.full((5, 6, 3), 9, np.uint8)
    crop = _focused(8, 10, 1.0, [0, 0, 1], num_classes=3, pad_if_needed=True, fill_mask=255)
    out = _pipeline(crop)(image=image, mask=mask)
    assert out["mask"].shape == (8, 10) and (out["mask"] == 2).sum() == 1
    assert (out["mask"] == 255).sum() == 80 - 30  # the padding, filled with ignore_index


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_absent_class_and_p_zero_give_exactly_the_random_crop(p):
    mask = _test_mask()
    image = np.random.default_rng(0).integers(0, 255, (*mask.shape, 3), dtype=np.uint8)
    focused = _pipeline(_focused(8, 10, p, [0, 0, 0, 1]), seed=5)  # class 3 is not in the mask
    plain = _pipeline(A.RandomCrop(8, 10), seed=5)
    for _ in range(30):
        a, b = focused(image=image, mask=mask), plain(image=image, mask=mask)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])


def test_class_mask_per_mode():
    values = np.array([[0, 1, 2, 3, 255]], np.uint8)
    assert LabelSpec("multilabel", 2, 255).class_mask(values, 1).tolist() == [[0, 0, 1, 1, 0]]
    assert LabelSpec("binary", 1, 255).class_mask(values, 0).tolist() == [[0, 1, 0, 0, 0]]
    assert LabelSpec("multiclass", 4, 255).class_mask(values, 3).tolist() == [[0, 0, 0, 1, 0]]


def test_multilabel_focus_finds_the_bit():
    mask = np.zeros((20, 20), np.uint8)
    mask[15, 3] = 0b10  # label 1 only there
    crop = ClassFocusedCrop(6, 6, focus_p=1.0, labels=LabelSpec("multilabel", 2, 255), class_probs=[0, 1])
    out = _pipeline(crop)(image=np.zeros((20, 20, 3), np.uint8), mask=mask)["mask"]
    assert (out == 0b10).sum() == 1


def test_install_replaces_only_the_random_crop_step():
    pipeline = A.Compose([A.PadIfNeeded(8, 8, fill_mask=255), A.RandomCrop(8, 8), A.HorizontalFlip(p=0.5)])
    before = [type(t) for t in pipeline.transforms]
    focused = install_focused_crop(pipeline, 0.3, LabelSpec("multiclass", 3, 255))
    assert pipeline.transforms[1] is focused
    assert (focused.height, focused.width, focused.focus_p) == (8, 8, 0.3)
    assert [type(t) for t in pipeline.transforms] == [before[0], ClassFocusedCrop, before[2]]
    nested = A.Compose([A.Sequential([A.RandomCrop(4, 4, pad_if_needed=True, fill_mask=7)])])
    inner = install_focused_crop(nested, 1.0, LabelSpec("multiclass", 3, 255))
    assert nested.transforms[0].transforms[0] is inner and inner.pad_if_needed and inner.fill_mask == 7
    with pytest.raises(ValueError, match=r"datamodule\.crop_focus\.p=0\.5 .* no RandomCrop step"):
        install_focused_crop(A.Compose([A.HorizontalFlip()]), 0.5, LabelSpec("multiclass", 3, 255))
    with pytest.raises(ValueError, match="2 RandomCrop steps"):
        install_focused_crop(A.Compose([A.RandomCrop(4, 4), A.RandomCrop(2, 2)]), 0.5,
                             LabelSpec("multiclass", 3, 255))


# -- through the data module ---------------------------------------------------------------------------------


def _folder_data(root, n=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for i in range(n):
            mask = np.zeros((24, 28), np.uint8)
            mask[:6] = 1
            mask[rng.integers(8, 24), rng.integers(0, 28)] = 2
            write_pair(root, split, f"{split}{i}", mask)
    return root


def _crop_pipeline():
    return A.Compose([A.PadIfNeeded(8, 8, fill_mask=255), A.RandomCrop(8, 8), A.HorizontalFlip(p=0.5)])


def _dm(root, tmp_path, **kw) -> FolderDataModule:
    kw.setdefault("train_transform", _crop_pipeline())
    return FolderDataModule(root, num_classes=3, ignore_index=255, progress=False,
                            stats_cache_dir=str(tmp_path / "cache"), batch_size=4, **kw)


def test_default_class_probs_are_the_inverse_training_frequency(tmp_path):
    root = _folder_data(tmp_path / "data")
    dm = _dm(root, tmp_path, crop_focus={"p": 0.5, "class_probs": None})
    assert dm.focused_crop.class_probs is None  # set when the training set is built
    dm.setup("fit")
    f = dm.label_statistics().frequencies.numpy()
    np.testing.assert_allclose(dm.focused_crop.class_probs, (1 / f) / (1 / f).sum())
    given = _dm(root, tmp_path, crop_focus={"p": 0.5, "class_probs": [0, 1, 3]})
    np.testing.assert_allclose(given.focused_crop.class_probs, [0, 0.25, 0.75])
    assert inverse_frequency_probs([0.5, 0.0, 0.25, 0.25]).tolist() == [0.2, 0.0, 0.4, 0.4]


def _batches(dm, epochs=2):
    out = []
    for _ in range(epochs):
        out.extend(b["mask"].clone() for b in dm.train_dataloader())
    return out


@pytest.mark.slow
def test_crops_are_deterministic_per_seed_and_worker(tmp_path):
    root = _folder_data(tmp_path / "data", n=8)
    focus = {"p": 0.5, "class_probs": [0, 1, 1]}
    runs = [_batches(_dm(root, tmp_path, crop_focus=focus, seed=3, num_workers=2)) for _ in range(2)]
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    other = _batches(_dm(root, tmp_path, crop_focus=focus, seed=4, num_workers=2))
    assert any(not torch.equal(a, b) for a, b in zip(runs[0], other, strict=True))
    # the two workers crop differently (seeded per worker): same images, other crops
    one = _batches(_dm(root, tmp_path, crop_focus=focus, seed=3, num_workers=1))
    assert any(not torch.equal(a, b) for a, b in zip(runs[0], one, strict=True))


@pytest.mark.slow
def test_config_key_turns_it_on_in_the_folder_pipeline(tmp_path):
    root = _folder_data(tmp_path / "data")
    cfg = compose_config(["+datamodule=folder", f"datamodule.root={root}", "datamodule.num_classes=3",
                          "datamodule.crop_size=[8,8]", "datamodule.num_workers=0", "datamodule.batch_size=2",
                          "datamodule.progress=false",
                          f"datamodule.stats_cache_dir={tmp_path / 'cache'}", "datamodule.crop_focus.p=0.33"])
    assert cfg.datamodule.crop_focus == {"p": 0.33, "class_probs": None}
    dm = instantiate(cfg.datamodule)
    steps = [type(t).__name__ for t in dm.train_transform.transforms]
    assert steps == ["RandomScale", "PadIfNeeded", "ClassFocusedCrop", "HorizontalFlip", "ColorJitter",
                     "Normalize"]
    crop = dm.focused_crop
    assert (crop.height, crop.width, crop.pad_if_needed, crop.focus_p) == (8, 8, False, 0.33)  # as RandomCrop
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].shape[1:] == (8, 8)
    off = compose_config(["+datamodule=folder", f"datamodule.root={root}", "datamodule.num_classes=3"])
    off = instantiate(off.datamodule)
    assert off.focused_crop is None
    assert "RandomCrop" in [type(t).__name__ for t in off.train_transform.transforms]


@pytest.mark.slow
def test_bad_values_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"datamodule\.crop_focus\.p must be in \[0\.0, 1\.0\]"):
        check_crop_focus({"p": 1.5}, 3)
    with pytest.raises(ValueError, match=r"datamodule\.crop_focus\.p must be a finite number"):
        check_crop_focus({"p": "often"}, 3)
    with pytest.raises(ValueError, match=r"datamodule\.crop_focus\.class_probs must be null .* \(3 values\)"):
        check_crop_focus({"p": 0.5, "class_probs": [1, 2]}, 3)
    with pytest.raises(ValueError, match=r"datamodule\.crop_focus\.class_probs\[1\] must be >= 0"):
        check_crop_focus({"p": 0.5, "class_probs": [1, -2, 1]}, 3)
    with pytest.raises(ValueError, match=r"datamodule\.crop_focus\.class_probs must have a positive sum"):
        check_crop_focus({"p": 0.5, "class_probs": [0, 0, 0]}, 3)
    with pytest.raises(ValueError, match=r"datamodule\.crop_focus has unknown keys \['prob'\]"):
        check_crop_focus({"prob": 0.5}, 3)
    with pytest.raises(ValueError, match=r"datamodule\.crop_focus must be a mapping"):
        check_crop_focus(0.5, 3)
    with pytest.raises(ValueError, match=r"datamodule\.crop_focus\.p=0\.3 .* no RandomCrop step"):
        SyntheticDataModule(num_train=2, num_val=1, num_test=1, progress=False,
                            train_transform=A.Compose([A.HorizontalFlip()]), crop_focus={"p": 0.3})
    with pytest.raises(ValueError, match=r"datamodule\.crop_focus\.p=0\.3 .*train_transform is null"):
        SyntheticDataModule(num_train=2, num_val=1, num_test=1, progress=False, crop_focus={"p": 0.3})
    cfg = compose_config(["+datamodule=synthetic", "datamodule.crop_focus.p=0.3"])  # flip_rotate: no crop
    with pytest.raises(Exception, match=r"datamodule\.crop_focus\.p=0\.3"):
        instantiate(cfg.datamodule)
