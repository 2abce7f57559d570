"""The options of the metric families (evaluation.options): defaults, the config group conf/evaluation built
by Hydra's instantiate, and the refusals, each naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from evaluation.boundaries import BoundaryOptions
from evaluation.objects import ObjectOptions
from evaluation.options import CalibrationOptions, EvaluationOptions, TopologyOptions

CONF = Path(__file__).resolve().parents[2] / "conf" / "evaluation" / "default.yaml"


def _config(**changes) -> dict:
    """The default group's arguments as a plain dict (no ``_target_``), with ``changes`` merged into it
    (``objects={"iou": 0.3}``)."""
    config = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(CONF), changes))
    config.pop("_target_")
    return config


def test_the_config_group_builds_the_default_options():
    options = instantiate(OmegaConf.load(CONF))
    assert options == EvaluationOptions()
    assert options.splits == ("test",) and options.enabled == ("objects", "boundary", "calibration")
    assert options.objects == ObjectOptions() and options.boundary == BoundaryOptions()
    assert options.topology is None and options.calibration == CalibrationOptions(bins=15)
    assert options.runs_on("test") and not options.runs_on("val") and options.spatial


def test_config_values_reach_the_options():
    node = OmegaConf.merge(OmegaConf.load(CONF), {
        "splits": ["test", "val"], "objects": {"iou": 0, "connectivity": 4, "size_bins": [4, 16]},
        "boundary": {"dilation_ratio": 0.05, "tolerance": 1},
        "topology": {"enabled": True, "classes": ["bar"]}, "calibration": {"bins": 10}})
    options = instantiate(node)  # lists arrive as ListConfig, mappings as DictConfig
    assert options.splits == ("val", "test")  # stored in SPLITS order
    assert options.objects == ObjectOptions(iou=0.0, connectivity=4, size_bins=(4, 16))
    assert options.boundary == BoundaryOptions(dilation_ratio=0.05, tolerance=1.0)
    assert options.topology == TopologyOptions(classes=("bar",))
    assert options.calibration.bins == 10 and options.runs_on("val")


def test_families_switched_off_are_none():
    options = EvaluationOptions.from_config(**_config(
        objects={"enabled": False}, boundary={"enabled": False}, calibration={"enabled": False}))
    assert options == EvaluationOptions.off() and options.enabled == () and not options.runs_on("test")
    assert not options.spatial


@pytest.mark.parametrize(("changes", "match"), [
    ({"objects": {"iou": 2}}, r"^objects\.iou must be in \[0, 1\], got 2$"),
    ({"objects": {"size_bins": [9, 3]}}, r"^objects\.size_bins must increase"),
    ({"boundary": {"tolerance": -1}}, r"^boundary\.tolerance must be >= 0, got -1$"),
    ({"boundary": {"dilation_ratio": 0}}, r"^boundary\.dilation_ratio must be"),
    ({"calibration": {"bins": 0}}, r"^calibration\.bins must be an int >= 1, got 0"),
    ({"topology": {"enabled": True, "classes": []}}, r"^topology\.classes must be null"),
    ({"topology": {"enabled": True, "classes": ["a", "a"]}}, r"^topology\.classes must not repeat"),
    ({"objects": {"enabled": "yes"}}, r"^objects\.enabled must be true or false"),
    ({"objects": {"ioux": 0.3}}, r"^objects\.ioux is not a key of objects \(its keys: enabled, iou, "),
    ({"splits": ["train"]}, r"^splits must be a non-empty list of distinct splits of \['val', 'test'\]"),
    ({"splits": []}, r"^splits must be a non-empty list"),
    # a switched-off family's option would do nothing
    ({"boundary": {"enabled": False, "tolerance": 3.0}},
     r"^boundary\.tolerance=3\.0 does nothing with boundary\.enabled=false: enable boundary, or leave "
     r"tolerance at its default \(2\.0\)"),
    ({"topology": {"classes": ["bar"]}},
     r"^topology\.classes=\['bar'\] does nothing with topology\.enabled=false: .* its default \(None\)"),
])
def test_bad_values_are_refused_naming_the_key(changes, match):
    with pytest.raises(ValueError, match=match):
        EvaluationOptions.from_config(**_config(**changes))


def test_a_family_without_its_switch_or_mapping_is_refused():
    config = _config()
    del config["objects"]["enabled"]
    with pytest.raises(ValueError, match=r"^objects\.enabled must be set"):
        EvaluationOptions.from_config(**config)
    with pytest.raises(ValueError, match=r"^boundary must be a mapping of enabled and dilation_ratio, tol"):
        EvaluationOptions.from_config(**{**_config(), "boundary": None})


def test_validation_splits_with_every_family_off_do_nothing_and_are_refused():
    with pytest.raises(ValueError, match=r"splits=\['val', 'test'\] does nothing: every family is off"):
        EvaluationOptions(splits=("val", "test"), objects=None, boundary=None, calibration=None)
    with pytest.raises(ValueError, match=r"objects must be ObjectOptions or None \(off\), got dict"):
        EvaluationOptions(objects={"iou": 0.5})
