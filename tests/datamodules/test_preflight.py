"""Pre-flight check (datamodules/preflight.py): every split, every problem, one error, cached."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

import datamodules.preflight as preflight
from datamodules import FolderDataModule, PreflightError, SyntheticDataModule
from datamodules.labels import LabelSpec
from datamodules.pairing import find_pairs
from datamodules.preflight import PairChecker, SplitPlan, run_preflight
from tests.datamodules.helpers import CAMVID, compose_config, write_pair


def make_dm(root: Path, cache: Path, **kw) -> FolderDataModule:
    args = dict(num_classes=3, ignore_index=255, progress=False, stats_cache_dir=str(cache))
    return FolderDataModule(root, **{**args, **kw})


@pytest.fixture
def data(make_folder_dataset: Callable[..., Path]) -> Path:
    return make_folder_dataset({"train": 4, "val": 3, "test": 3})


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def error_of(dm: FolderDataModule) -> PreflightError:
    with pytest.raises(ValueError) as info:
        dm.preflight()
    assert isinstance(info.value, PreflightError)
    return info.value


# -- clean data, cache -----------------------------------------------------------------------------------
def test_clean_data_passes_then_is_served_from_cache(data, cache, monkeypatch):
    report = make_dm(data, cache).preflight()
    assert [(s.split, s.samples, s.cached) for s in report.splits] == [
        ("train", 4, False),
        ("val", 3, False),
        ("test", 3, False),
    ]
    assert not report.cached and report.samples == 10 and report.seconds > 0
    assert "train 4" in report.summary()

    def fail(*a, **k):
        raise AssertionError("reader called on a cached split")

    monkeypatch.setattr(preflight, "read_image", fail)
    monkeypatch.setattr(preflight, "read_mask", fail)
    again = make_dm(data, cache).preflight()  # a fresh datamodule, as in the next run
    assert again.cached and [s.samples for s in again.splits] == [4, 3, 3]


def test_touching_a_file_invalidates_only_its_split(data, cache):
    make_dm(data, cache).preflight()
    mask = data / "val" / "masks" / "val001.png"
    st = mask.stat()
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    report = make_dm(data, cache).preflight()
    assert {s.split: s.cached for s in report.splits} == {"train": True, "val": False, "test": True}
    assert make_dm(data, cache).preflight().cached


def test_label_encoding_is_part_of_the_cache_key(data, cache):
    make_dm(data, cache).preflight()
    report = make_dm(data, cache, value_map={2: 1}).preflight()
    assert not any(s.cached for s in report.splits)


def test_use_cache_false_rechecks_and_stores_nothing(data, cache):
    assert not make_dm(data, cache).preflight(use_cache=False).cached
    assert not cache.exists()


def test_parallel_backends_agree(data, cache, monkeypatch):
    monkeypatch.setattr(preflight, "MIN_PARALLEL_SAMPLES", 0)  # 10 samples: parallel all the same
    dm = make_dm(data, cache)
    mask = data / "test" / "masks" / "test002.png"
    Image.fromarray(np.full((20, 24), 9, np.uint8)).save(mask)
    messages = []
    for workers, backend in ((0, "thread"), (2, "thread"), (2, "process")):
        with pytest.raises(PreflightError) as info:
            run_preflight(
                dm.preflight_plans(), source="x", num_workers=workers, progress=False, backend=backend
            )
        messages.append(str(info.value))
        assert [p.path for p in info.value.problems] == [str(mask)]
    assert messages[0] == messages[1] == messages[2]


# -- one broken thing at a time ------------------------------------------------------------------------------
def test_bad_mask_value_in_val(data, cache):
    mask = np.zeros((20, 24), np.uint8)
    mask[3, 4] = 7
    write_pair(data, "val", "val001", mask)
    err = error_of(make_dm(data, cache))
    msg = str(err)
    assert [(p.kind, p.split) for p in err.problems] == [("invalid mask values", "val")]
    assert "val/masks/val001.png" in msg and "7 (1 px)" in msg
    assert "invalid mask values: 1 (val: 1)" in msg and "datamodule.num_classes" in msg


def test_value_map_is_applied(tmp_path, cache):
    root = tmp_path / "binary"
    for split in ("train", "val", "test"):
        write_pair(root, split, f"{split}0", np.array([[0, 255], [255, 0]] * 8, np.uint8))
    kw = dict(num_classes=1, mode="binary", ignore_index=None)
    assert make_dm(root, cache, value_map={255: 1}, **kw).preflight()
    err = error_of(make_dm(root, cache, **kw))
    assert {p.split for p in err.problems} == {"train", "val", "test"} and "255 (16 px)" in str(err)


def test_size_mismatch_in_test(data, cache):
    write_pair(data, "test", "test000", np.zeros((20, 24), np.uint8), np.zeros((21, 24, 3), np.uint8))
    err = error_of(make_dm(data, cache))
    assert [(p.kind, p.split) for p in err.problems] == [("size mismatch", "test")]
    assert "test/images/test000.png is 24x21 (WxH) but mask" in str(err) and "24x20" in str(err)
    assert "datamodule.splits.test" in str(err)


def test_truncated_training_image(data, cache):
    image = data / "train" / "images" / "train002.png"
    truncate(image)
    err = error_of(make_dm(data, cache))
    assert [(p.kind, p.split, p.path) for p in err.problems] == [("unreadable file", "train", str(image))]
    assert f"cannot read image file {image}: image file is truncated" in str(err)


@pytest.mark.parametrize(
    ("pixels", "mode"),
    [(np.full((20, 24), 40000, np.uint16), "I;16"), (np.full((20, 24), 0.5, np.float32), "F")],
)
def test_unsupported_image_mode(data, cache, pixels, mode):
    (data / "train" / "images" / "train001.png").unlink()
    write_pair(data, "train", "train001", np.zeros((20, 24), np.uint8), pixels, image_ext=".tif")
    err = error_of(make_dm(data, cache))
    assert [(p.kind, p.split) for p in err.problems] == [("unsupported image mode", "train")]
    assert f"train001.tif has PIL mode '{mode}'" in str(err) and "convert the images to 8-bit" in str(err)


def test_empty_val_split(data, cache):
    for d in ("images", "masks"):
        for f in (data / "val" / d).iterdir():
            f.unlink()
    err = error_of(make_dm(data, cache))
    assert [(p.kind, p.split) for p in err.problems] == [("split", "val")]
    assert "split 'val' has no samples" in str(err) and "datamodule.splits.val" in str(err)


def test_unconfigured_split(data, cache):
    dm = make_dm(data, cache, splits={"train": {"images": "train/images", "masks": "train/masks"}})
    err = error_of(dm)
    assert [p.split for p in err.problems] == ["val", "test"]
    assert "datamodule.splits.val" in str(err) and "datamodule.splits.test" in str(err)


# -- everything at once ------------------------------------------------------------------------------------
def test_every_problem_is_reported_in_one_error(data, cache):
    bad = np.zeros((20, 24), np.uint8)
    bad[0, :5] = 5
    write_pair(data, "val", "val000", bad)
    write_pair(data, "val", "val002", bad + 1)
    write_pair(data, "test", "test001", np.zeros((20, 24), np.uint8), np.zeros((20, 30, 3), np.uint8))
    truncate(data / "train" / "images" / "train000.png")
    truncate(data / "train" / "masks" / "train003.png", 0.3)
    err = error_of(make_dm(data, cache))
    msg = str(err)
    assert len(err.problems) == 5
    assert "found 5 problem(s) in 5 file(s), split(s) train, val, test" in msg
    assert "unreadable file: 2 (train: 2)" in msg
    assert "invalid mask values: 2 (val: 2)" in msg
    assert "size mismatch: 1 (test: 1)" in msg
    for name in ("train000.png", "train003.png", "val000.png", "val002.png", "test001.png"):
        assert name in msg
    assert "(samples checked: train 4, val 3, test 3" in msg


def test_examples_are_capped_with_counts(data, cache):
    for i in range(4):
        write_pair(data, "train", f"train{i:03d}", np.full((20, 24), 9, np.uint8))
    msg = str(error_of(make_dm(data, cache)))
    assert "invalid mask values: 4 (train: 4)" in msg and "... and 1 more" in msg
    assert msg.count("[train]") == preflight.EXAMPLES_PER_KIND


def test_failing_split_is_not_cached_and_rechecked_after_the_fix(data, cache):
    image = data / "val" / "images" / "val000.png"
    good = image.read_bytes()
    truncate(image)
    error_of(make_dm(data, cache))
    error_of(make_dm(data, cache))  # still failing: not served from the cache
    image.write_bytes(good)
    report = make_dm(data, cache).preflight()
    assert {s.split: s.cached for s in report.splits} == {"train": True, "val": False, "test": True}


# -- pieces ------------------------------------------------------------------------------------------------
def test_pair_checker_reports_image_and_mask_separately(data):
    pair = find_pairs(data, "train", {"images": "train/images", "masks": "train/masks"})[0]
    truncate(pair.image)
    Image.fromarray(np.full((20, 24), 8, np.uint8)).save(pair.mask)
    found = PairChecker(LabelSpec("multiclass", 3, 255), 3)(pair)
    assert [p.kind for p in found] == ["unreadable file", "invalid mask values"]


def test_plan_without_key_is_never_cached(tmp_path):
    plan = SplitPlan("train", [1, 2], lambda item: [])
    for _ in range(2):
        report = run_preflight([plan], source="x", cache_dir=tmp_path, progress=False)
        assert report["train"].samples == 2 and not report.cached
    with pytest.raises(KeyError, match="no split 'val'"):
        report["val"]


def test_synthetic_preflight_is_quick_and_clean():
    report = SyntheticDataModule(progress=False, num_train=4, num_val=2, num_test=2).preflight()
    assert [(s.split, s.samples) for s in report.splits] == [("train", 1), ("val", 1), ("test", 1)]
    assert report.seconds < 5


@pytest.mark.slow
@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID} (../shared/data/README.md)")
def test_camvid_passes_and_is_cached(tmp_path):
    cfg = compose_config(["+datamodule=camvid", f"datamodule.root={CAMVID}", "datamodule.progress=false"])
    report = instantiate(cfg.datamodule).preflight(cache_dir=tmp_path)
    assert [s.samples for s in report.splits] == [367, 101, 233] and not report.cached
    assert instantiate(cfg.datamodule).preflight(cache_dir=tmp_path).cached
