import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules import FolderDataModule, SyntheticDataModule
from tests.datamodules.helpers import CAMVID, CONF_DIR, compose_config

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


@pytest.mark.slow
def test_folder_root_is_required():
    from omegaconf.errors import MissingMandatoryValue

    cfg = compose_config(["+datamodule=folder", "datamodule.num_classes=2"])
    with pytest.raises(MissingMandatoryValue, match="root"):
        instantiate(cfg.datamodule)


@pytest.mark.slow
def test_camvid_preset(tmp_path):
    cfg = compose_config(["+datamodule=camvid", f"datamodule.root={tmp_path}"])
    assert cfg.datamodule.num_classes == 11 and cfg.datamodule.ignore_index == 11
    assert cfg.datamodule.class_names[3] == "Road"
    assert cfg.datamodule._target_ == "datamodules.FolderDataModule"
    assert cfg.datamodule.splits.train.masks == "trainannot"
    if not CAMVID.is_dir():
        dm = instantiate(cfg.datamodule)  # root exists (tmp), splits are only read on setup
        assert isinstance(dm, FolderDataModule)


@pytest.mark.slow
def test_camvid_missing_root_says_which_override(tmp_path):
    cfg = compose_config(["+datamodule=camvid", f"datamodule.root={tmp_path / 'nope'}"])
    with pytest.raises(Exception, match=r"datamodule\.root=PATH"):
        instantiate(cfg.datamodule)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_class_weight_options(method):
    cfg = compose_config([f"+class_weights={method}"])
    fn = instantiate(cfg.class_weights)
    w = fn([100, 10, 1], image_pixel_counts=[111, 111, 111])
    assert w.shape == (3,) and float(w[2]) > float(w[0])


def test_class_weights_none_is_null():
    cfg = compose_config(["+class_weights=none"])
    assert cfg.class_weights is None and instantiate(cfg.class_weights) is None


# -- the keys every option shares live in conf/datamodule/common/loader.yaml -----------------------------
COMMON = CONF_DIR / "datamodule" / "common" / "loader.yaml"
LOADER_KEYS = {
    "class_colors",
    "ignore_index",
    "mode",
    "in_channels",
    "seed",
    "batch_size",
    "eval_batch_size",
    "num_workers",
    "cache",
    "cache_max_gb",
    "pin_memory",
    "persistent_workers",
    "drop_last",
    "stats_cache_dir",
    "progress",
    "allow_absent_classes",
    "max_ignored_share",
}
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# The composed loader settings of each option, as they were when every option spelled them out.
OPTIONS = {
    "synthetic": (
        [],
        SyntheticDataModule,
        {
            "ignore_index": 255, "mode": "multiclass", "in_channels": 3, "seed": 0, "batch_size": 16,
            "eval_batch_size": None, "num_workers": 0, "pin_memory": False, "persistent_workers": None,
            "drop_last": False, "stats_cache_dir": None, "progress": True, "num_classes": 5,
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        },
    ),
    "folder": (
        ["datamodule.num_classes=3"],
        FolderDataModule,
        {
            "ignore_index": 255, "mode": "multiclass", "in_channels": 3, "seed": 0, "batch_size": 8,
            "eval_batch_size": None, "num_workers": 2, "pin_memory": False, "persistent_workers": None,
            "drop_last": True, "stats_cache_dir": None, "progress": True, "num_classes": 3,
            "mean": IMAGENET[0], "std": IMAGENET[1], "crop_size": [256, 256],
        },
    ),
    "camvid": (
        [],
        FolderDataModule,
        {
            "ignore_index": 11, "mode": "multiclass", "in_channels": 3, "seed": 0, "batch_size": 8,
            "eval_batch_size": None, "num_workers": 2, "pin_memory": False, "persistent_workers": None,
            "drop_last": True, "stats_cache_dir": None, "progress": True, "num_classes": 11,
            "mean": IMAGENET[0], "std": IMAGENET[1], "crop_size": [352, 480],
        },
    ),
}  # fmt: skip


def test_common_loader_file_holds_the_shared_keys():
    assert set(OmegaConf.load(COMMON)) == LOADER_KEYS


@pytest.mark.parametrize("option", ["folder", "synthetic"])
def test_options_merge_the_common_file_and_only_override_it(option):
    raw = OmegaConf.load(CONF_DIR / "datamodule" / f"{option}.yaml")
    assert "common/loader@_here_" in raw.defaults
    assert raw.defaults.index("common/loader@_here_") < raw.defaults.index("_self_")  # options override it
    common = OmegaConf.load(COMMON)
    copied = [k for k in LOADER_KEYS if k in raw and raw[k] == common[k]]
    assert not copied, f"{option}.yaml repeats common/loader.yaml values {copied}: drop them"


@pytest.mark.slow
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_option_composes_and_instantiates_as_before(option, tmp_path):
    overrides, cls, expected = OPTIONS[option]
    root = [] if option == "synthetic" else [f"datamodule.root={tmp_path}"]
    cfg = compose_config([f"+datamodule={option}", *root, *overrides])
    node = OmegaConf.to_container(cfg.datamodule, resolve=True)
    assert {k: node[k] for k in expected} == expected
    assert LOADER_KEYS <= set(node)
    dm = instantiate(cfg.datamodule)
    assert type(dm) is cls
    for key, value in expected.items():
        if key == "eval_batch_size":
            value = expected["batch_size"]  # null: batch_size
        if key == "persistent_workers":
            value = expected["num_workers"] > 0  # null: whenever there are workers
        assert getattr(dm, key) == value, key
    # the pipelines normalise with the option's mean/std and pad masks with its ignore_index
    normalize, pad = cfg.datamodule.eval_transform.transforms
    assert (list(normalize.mean), list(normalize.std)) == (expected["mean"], expected["std"])
    assert pad.fill_mask == expected["ignore_index"]
