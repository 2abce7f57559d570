"""List files selected by one plain command-line override: ``datamodule.splits.<split>.list=FILE``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.datamodules.helpers import CONF_DIR, write_pair

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow


def _pool(root: Path) -> Path:
    """Samples under pool/ only: the default train/images, train/masks folders do not exist."""
    for name in ("a", "b", "c"):
        write_pair(root, "pool", name, (np.arange(12 * 16).reshape(12, 16) % 3).astype(np.uint8))
    return root


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize("option", ["folder", "camvid"])
def test_every_split_has_an_explicit_null_list_key(option):
    cfg = _compose([f"datamodule={option}", "datamodule.root=R", "datamodule.num_classes=3"])
    for split in ("train", "val", "test"):
        assert "list" in cfg.datamodule.splits[split] and cfg.datamodule.splits[split].list is None


def test_two_column_list_by_a_plain_override(tmp_path):
    root = _pool(tmp_path)
    (root / "train.txt").write_text(
        "pool/images/b.png pool/masks/b.png\npool/images/c.png pool/masks/c.png\n"
    )
    cfg = _compose(
        ["datamodule=folder", f"datamodule.root={root}", "datamodule.num_classes=3",
         "datamodule.splits.train.list=train.txt", "datamodule.progress=false"]
    )  # fmt: skip
    assert OmegaConf.select(cfg, "datamodule.splits.train.images") == "train/images"  # still set ...
    dm = instantiate(cfg.datamodule)
    assert [p.name for p in dm.pairs("train")] == ["b", "c"]  # ... but the list wins; no such folder needed
    assert dm.label_statistics(cache_dir=tmp_path / "cache").num_images == 2
    assert len(dm.dataset("train")) == 2
    with pytest.raises(FileNotFoundError, match="val/images"):
        dm.pairs("val")  # other splits keep their folders


def test_one_column_list_looks_ids_up_in_the_split_folders(tmp_path):
    root = _pool(tmp_path)
    (root / "ids.txt").write_text("# ids\na\nc.png\n")
    cfg = _compose(
        ["datamodule=folder", f"datamodule.root={root}", "datamodule.num_classes=3",
         "datamodule.splits.train.list=ids.txt", "datamodule.splits.train.images=pool/images",
         "datamodule.splits.train.masks=pool/masks"]
    )  # fmt: skip
    dm = instantiate(cfg.datamodule)
    pairs = dm.pairs("train")
    assert [(p.image.name, p.mask.name) for p in pairs] == [("a.png", "a.png"), ("c.png", "c.png")]


def test_one_column_list_with_missing_folder_names_the_key(tmp_path):
    root = _pool(tmp_path)
    (root / "ids.txt").write_text("a\n")
    cfg = _compose(
        ["datamodule=folder", f"datamodule.root={root}", "datamodule.num_classes=3",
         "datamodule.splits.train.list=ids.txt"]
    )  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"datamodule.splits.train.images='train/images'"):
        instantiate(cfg.datamodule).pairs("train")


def test_camvid_list_override(tmp_path):
    write_pair(tmp_path, "train", "x", np.zeros((12, 16), np.uint8))  # not CamVid's train/, trainannot/
    (tmp_path / "sub.txt").write_text("train/images/x.png train/masks/x.png\n")
    cfg = _compose(
        ["datamodule=camvid", f"datamodule.root={tmp_path}", "datamodule.splits.train.list=sub.txt"]
    )
    assert [p.name for p in instantiate(cfg.datamodule).pairs("train")] == ["x"]
