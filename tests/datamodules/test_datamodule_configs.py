import pytest
from hydra.utils import instantiate

from datamodules import FolderDataModule, SyntheticDataModule
from tests.datamodules.helpers import CAMVID, compose_config

METHODS = ["inverse", "inverse_sqrt", "median_frequency", "enet", "effective_number"]


def test_synthetic_config_instantiates_with_contract_keys():
    cfg = compose_config(["+datamodule=synthetic"])
    for key in (
        "num_classes",
        "class_names",
        "ignore_index",
        "mode",
        "in_channels",
        "batch_size",
        "num_workers",
        "pin_memory",
        "persistent_workers",
        "seed",
    ):
        assert key in cfg.datamodule
    dm = instantiate(cfg.datamodule)
    assert isinstance(dm, SyntheticDataModule)
    assert (dm.num_classes, dm.ignore_index, dm.mode, dm.in_channels) == (5, 255, "multiclass", 3)


def test_pad_fill_follows_ignore_index():
    cfg = compose_config(["+datamodule=synthetic", "datamodule.ignore_index=7"])
    pad = cfg.datamodule.eval_transform.transforms[-1]
    assert pad.fill_mask == 7


def test_folder_root_is_required():
    from omegaconf.errors import MissingMandatoryValue

    cfg = compose_config(["+datamodule=folder", "datamodule.num_classes=2"])
    with pytest.raises(MissingMandatoryValue, match="root"):
        instantiate(cfg.datamodule)


def test_camvid_preset(tmp_path):
    cfg = compose_config(["+datamodule=camvid", f"datamodule.root={tmp_path}"])
    assert cfg.datamodule.num_classes == 11 and cfg.datamodule.ignore_index == 11
    assert cfg.datamodule.class_names[3] == "Road"
    assert cfg.datamodule._target_ == "datamodules.FolderDataModule"
    assert cfg.datamodule.splits.train.masks == "trainannot"
    if not CAMVID.is_dir():
        dm = instantiate(cfg.datamodule)  # root exists (tmp), splits are only read on setup
        assert isinstance(dm, FolderDataModule)


def test_camvid_missing_root_says_which_override(tmp_path):
    cfg = compose_config(["+datamodule=camvid", f"datamodule.root={tmp_path / 'nope'}"])
    with pytest.raises(Exception, match=r"datamodule\.root=PATH"):
        instantiate(cfg.datamodule)


@pytest.mark.parametrize("method", METHODS)
def test_class_weight_options(method):
    cfg = compose_config([f"+class_weights={method}"])
    fn = instantiate(cfg.class_weights)
    w = fn([100, 10, 1], image_pixel_counts=[111, 111, 111])
    assert w.shape == (3,) and float(w[2]) > float(w[0])


def test_class_weights_none_is_null():
    cfg = compose_config(["+class_weights=none"])
    assert cfg.class_weights is None and instantiate(cfg.class_weights) is None
