import pytest
import torch

from datamodules import SyntheticDataModule


def _dm(**kw):
    kw.setdefault("num_train", 8)
    kw.setdefault("num_val", 4)
    kw.setdefault("num_test", 4)
    kw.setdefault("batch_size", 4)
    kw.setdefault("progress", False)
    return SyntheticDataModule(**kw)


def test_deterministic_per_seed():
    a, b, c = _dm(seed=1), _dm(seed=1), _dm(seed=2)
    for split in ("train", "val"):
        sa, sb, sc = a.dataset(split)[3], b.dataset(split)[3], c.dataset(split)[3]
        assert torch.equal(sa["image"], sb["image"]) and torch.equal(sa["mask"], sb["mask"])
        assert not torch.equal(sa["image"], sc["image"])
    # the train and val splits are different samples
    assert not torch.equal(a.dataset("train")[0]["image"], a.dataset("val")[0]["image"])


def test_training_batches_are_reproducible_with_augmentation():
    from hydra.utils import instantiate

    from tests.datamodules.helpers import compose_config

    cfg = compose_config(["+datamodule=synthetic", "datamodule.num_train=8", "datamodule.batch_size=4"])

    def first_batch():
        dm = instantiate(cfg.datamodule, progress=False)
        return next(iter(dm.train_dataloader()))

    x, y = first_batch(), first_batch()
    assert (
        x["name"] == y["name"] and torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
    )


def test_batch_contract():
    dm = _dm(image_size=[64, 96])
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 96) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 64, 96) and batch["mask"].dtype == torch.int64
    assert batch["name"] == ["val_00000", "val_00001", "val_00002", "val_00003"]
    assert int(batch["mask"].max()) < dm.num_classes
    assert dm.class_names == ["background", "disc", "square", "bar", "cross"]


@pytest.mark.slow
def test_imbalanced_with_rare_small_classes(tmp_path):
    stats = _dm(num_train=128).label_statistics(cache_dir=tmp_path)
    share = stats.frequencies
    assert (stats.pixel_counts > 0).all()
    assert share[0] > 0.7  # background dominates
    assert share[4] < 0.01 and share[3] < 0.03  # cross (rare, small) and bar (thin) are the minorities
    assert share[1] > 3 * share[3]


def test_more_classes_and_grayscale():
    dm = _dm(num_classes=7, in_channels=1)
    s = dm.dataset("train")[0]
    assert s["image"].shape == (1, 64, 64)
    assert dm.class_names[-2:] == ["ring", "triangle"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"num_classes": 9}, "num_classes"),
        ({"mode": "binary"}, "multiclass"),
        ({"num_train": 0}, "num_train"),
        ({"image_size": 8}, "image_size"),
        ({"image_size": [64, 64.5]}, "image_size"),
        ({"batch_size": True}, r"datamodule\.batch_size must be an int >= 1, got True"),
        ({"eval_batch_size": 0}, r"datamodule\.eval_batch_size must be an int >= 1"),
        ({"num_workers": -1}, r"datamodule\.num_workers must be an int >= 0"),
    ],
)
def test_invalid_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        _dm(**kw)


def test_distributed_world_is_the_shared_one():
    from datamodules import samplers
    from seglosses import distributed

    assert samplers.distributed_world is distributed.distributed_world
    assert samplers.distributed_world() is None  # no process group in tests
