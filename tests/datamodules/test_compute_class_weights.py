import functools
import json

import pytest
import torch

from datamodules import SyntheticDataModule, compute_class_weights
from seglosses.class_weights import class_weights_from_counts


@pytest.fixture
def dm():
    return SyntheticDataModule(num_train=16, image_size=32, progress=False)


def test_weights_json_and_table(dm, tmp_path, capsys):
    fn = functools.partial(class_weights_from_counts, method="median_frequency")
    weights = compute_class_weights(dm, fn, tmp_path / "run", cache_dir=tmp_path / "cache")
    stats = dm.label_statistics(cache_dir=tmp_path / "cache")
    expected = class_weights_from_counts(
        stats.pixel_counts, "median_frequency", image_pixel_counts=stats.image_pixel_counts
    )
    assert torch.allclose(weights, expected)
    record = json.loads((tmp_path / "run/class_weights.json").read_text())
    assert record["method"] == "median_frequency"
    assert list(record["classes"]) == dm.class_names
    bar = record["classes"]["bar"]
    assert bar["pixel_count"] == int(stats.pixel_counts[3])
    assert bar["image_pixel_count"] == int(stats.image_pixel_counts[3])
    assert bar["weight"] == pytest.approx(float(expected[3]))
    out = capsys.readouterr().out
    assert "background" in out and "cross" in out and "median_frequency" in out


def test_hydra_partial_from_config(dm, tmp_path):
    from hydra.utils import instantiate

    from tests.datamodules.helpers import compose_config

    cfg = compose_config(["+class_weights=inverse"])
    weights = compute_class_weights(dm, instantiate(cfg.class_weights), None, cache_dir=tmp_path, show=False)
    stats = dm.label_statistics(cache_dir=tmp_path)
    n = stats.pixel_counts.double()
    assert torch.allclose(weights.double(), (n.sum() / (5 * n)) / (n.sum() / (5 * n)).mean(), rtol=1e-6)


def test_none_gives_no_weights_but_records_the_label_statistics(dm, tmp_path):
    assert compute_class_weights(dm, None, tmp_path, cache_dir=tmp_path, show=False) is None
    record = json.loads((tmp_path / "class_weights.json").read_text())
    stats = dm.label_statistics(cache_dir=tmp_path)
    assert record["method"] is None
    counts = [c["pixel_count"] for c in record["classes"].values()]
    assert counts == stats.pixel_counts.tolist()
    assert all(c["weight"] is None for c in record["classes"].values())
