"""CamVid (SegNet version) at <repo>/../shared/data/camvid; skipped when it is not there."""

import pytest
import torch
from hydra.utils import instantiate

from tests.datamodules.helpers import CAMVID, compose_config

pytestmark = pytest.mark.skipif(
    not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID} (see /work/shared/data/README.md)"
)


@pytest.fixture(scope="module")
def camvid():
    cfg = compose_config(
        [
            "+datamodule=camvid",
            f"datamodule.root={CAMVID}",
            "datamodule.num_workers=0",
            "datamodule.progress=false",
        ]
    )
    return instantiate(cfg.datamodule)


@pytest.mark.slow
def test_split_sizes(camvid):
    assert [len(camvid.pairs(s)) for s in ("train", "val", "test")] == [367, 101, 233]


@pytest.mark.slow
def test_training_pixel_counts(camvid, tmp_path):
    stats = camvid.label_statistics(cache_dir=tmp_path)
    assert stats.num_images == 367
    assert stats.total_pixels == 63_417_600
    assert int(stats.pixel_counts[camvid.class_names.index("Road")]) == 20_076_880
    assert stats.class_names[-1] == "Bicyclist" and stats.pixel_counts.shape == (11,)


def test_eval_batch_is_padded_to_multiple_of_32(camvid):
    ds = camvid.dataset("val")
    s = ds[0]
    assert s["image"].shape == (3, 384, 480) and s["mask"].dtype == torch.int64
    assert (s["mask"][360:] == 11).all()
    assert int(s["mask"][:360].max()) <= 11
