"""The label check before training: absent classes, dominating ignored pixels, 0/255 binary masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from datamodules import FolderDataModule, LabelSpec, LabelStatistics
from datamodules.statistics import check_label_statistics, format_statistics
from tests.datamodules.helpers import CAMVID, compose_config, write_pair


def _write(root: Path, masks: list[np.ndarray]) -> Path:
    for i, m in enumerate(masks):
        write_pair(root, "train", f"s{i}", m)
    return root


def _binary_0_255(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(n):
        m = np.zeros((16, 20), np.uint8)
        m[rng.random(m.shape) < 0.3] = 255
        masks.append(m)
    return _write(root, masks)


def _dm(root: Path, **kw) -> FolderDataModule:
    kw.setdefault("num_classes", 3)
    return FolderDataModule(root, splits={"train": {"images": "train/images", "masks": "train/masks"}},
                            progress=False, stats_cache_dir=str(root / "cache"), **kw)  # fmt: skip


def _check(dm: FolderDataModule) -> None:
    dm.check_label_statistics(dm.label_statistics())


# -- 0/255 binary masks ---------------------------------------------------------------------------------
def test_binary_0_255_masks_get_the_direct_message(tmp_path):
    dm = _dm(_binary_0_255(tmp_path), num_classes=1, mode="binary")
    with pytest.raises(ValueError, match=r"looks like 0/255 masks: set datamodule.value_map=\{255:1\}") as e:
        _check(dm)
    msg = str(e.value)
    assert "ignored (255)" in msg and "0 class_0" in msg and "% of all" in msg  # the statistics table


def test_binary_0_255_masks_with_value_map_pass(tmp_path):
    dm = _dm(_binary_0_255(tmp_path), num_classes=1, mode="binary", value_map={255: 1})
    stats = dm.label_statistics()
    assert stats.ignored_pixels == 0 and int(stats.pixel_counts[0]) > 0
    dm.check_label_statistics(stats)


def test_two_class_multiclass_0_255_masks_get_the_direct_message(tmp_path):
    dm = _dm(_binary_0_255(tmp_path), num_classes=2)
    with pytest.raises(ValueError, match=r"0/255 masks: set datamodule.value_map=\{255:1\}"):
        _check(dm)


def test_binary_0_255_masks_pass_when_declared_intended(tmp_path):
    dm = _dm(_binary_0_255(tmp_path), num_classes=1, mode="binary", allow_absent_classes=True)
    _check(dm)  # ~30 % ignored: under the default limit of 50 %


# -- absent classes -------------------------------------------------------------------------------------
def test_class_absent_from_training_raises_with_the_statistics(tmp_path):
    rng = np.random.default_rng(1)
    root = _write(tmp_path, [rng.integers(0, 2, (16, 20)).astype(np.uint8) for _ in range(3)])
    dm = _dm(root, num_classes=3, class_names=["bg", "road", "car"])
    stats = dm.label_statistics()
    with pytest.raises(ValueError, match="absent from all 3 training masks: 2 'car'") as e:
        dm.check_label_statistics(stats)
    msg = str(e.value)
    for line in format_statistics(stats, 255).splitlines():
        assert line in msg
    assert f"{int(stats.pixel_counts[1]):,}" in msg
    assert "datamodule.allow_absent_classes=true" in msg and "num_classes" in msg


def test_absent_class_passes_with_the_option(tmp_path):
    rng = np.random.default_rng(1)
    root = _write(tmp_path, [rng.integers(0, 2, (16, 20)).astype(np.uint8) for _ in range(3)])
    _check(_dm(root, num_classes=3, allow_absent_classes=True))


# -- dominating ignored pixels --------------------------------------------------------------------------
def _mostly_ignored(root: Path) -> Path:
    masks = []
    for _ in range(3):
        m = np.full((16, 20), 255, np.uint8)
        m[:6] = np.arange(20) % 3  # every class present, 62.5 % ignored
        masks.append(m)
    return _write(root, masks)


def test_ignored_share_over_the_limit_raises(tmp_path):
    dm = _dm(_mostly_ignored(tmp_path))
    with pytest.raises(ValueError, match=r"62.5 % of the training pixels equal ignore_index 255") as e:
        _check(dm)
    msg = str(e.value)
    assert "datamodule.max_ignored_share=0.5" in msg and "datamodule.max_ignored_share=1.0" in msg
    assert "datamodule.value_map={255:1}" in msg and "datamodule.ignore_index" in msg
    assert "absent" not in msg


def test_ignored_share_passes_with_a_higher_limit(tmp_path):
    _check(_dm(_mostly_ignored(tmp_path), max_ignored_share=0.7))
    _check(_dm(_mostly_ignored(tmp_path), max_ignored_share=1.0))


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"max_ignored_share": 1.5}, "datamodule.max_ignored_share"),
        ({"max_ignored_share": -0.1}, "datamodule.max_ignored_share"),
        ({"max_ignored_share": "half"}, "datamodule.max_ignored_share"),
        ({"allow_absent_classes": "yes"}, "datamodule.allow_absent_classes"),
    ],
)
def test_bad_option_values_name_the_key(tmp_path, kw, key):
    with pytest.raises(ValueError, match=key):
        _dm(_mostly_ignored(tmp_path), **kw)


def test_check_on_plain_statistics():
    stats = LabelStatistics(("a", "b"), torch.tensor([10, 5]), torch.tensor([15, 15]), 1, 15, 0)
    check_label_statistics(stats, LabelSpec("multiclass", 2, 255))
    empty = LabelStatistics(("a", "b"), torch.tensor([10, 0]), torch.tensor([10, 0]), 1, 10, 0)
    with pytest.raises(ValueError, match="1 'b'") as e:
        check_label_statistics(empty, LabelSpec("multiclass", 2, 255))
    assert "0/255" not in str(e.value)  # nothing ignored: not the 0/255 diagnosis
    check_label_statistics(empty, LabelSpec("multiclass", 2, 255), allow_absent_classes=True)


# -- the shipped data sets pass -------------------------------------------------------------------------
@pytest.mark.slow
def test_synthetic_default_passes(tmp_path):
    cfg = compose_config(["+datamodule=synthetic", "datamodule.progress=false"])
    dm = instantiate(cfg.datamodule)
    assert (dm.allow_absent_classes, dm.max_ignored_share) == (False, 0.5)
    dm.check_label_statistics(dm.label_statistics(cache_dir=tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID}")
def test_camvid_passes(tmp_path):
    cfg = compose_config(
        ["+datamodule=camvid", f"datamodule.root={CAMVID}", "datamodule.num_workers=0",
         "datamodule.progress=false"]
    )  # fmt: skip
    dm = instantiate(cfg.datamodule)
    stats = dm.label_statistics(cache_dir=tmp_path)
    assert stats.ignored_pixels > 0  # void (11) is ignored, but far below the limit
    dm.check_label_statistics(stats)
