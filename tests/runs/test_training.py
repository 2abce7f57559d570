"""runs.training end to end, in process, on tiny synthetic data: the metric families of ``evaluation.*`` reach
metrics.json, test_per_image.csv and reliability_test.png; a family switched off leaves none of its keys,
columns or files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from runs.build import build
from runs.config_checks import check_config
from runs.training import run
from tests.overrides import QUIET, SMALL_UNET, SYNTHETIC_TINY

CONF = Path(__file__).resolve().parents[2] / "conf"


def _cfg(tmp_path: Path, name: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[
            f"paths.output_dir={tmp_path / name}", f"datamodule.stats_cache_dir={tmp_path / 'cache'}",
            *SYNTHETIC_TINY, *SMALL_UNET, *QUIET, "debug=fdr", *overrides])


def _outputs(cfg: DictConfig) -> tuple[dict, list[str]]:
    out = Path(cfg.paths.output_dir)
    with open(out / "test_per_image.csv", newline="") as f:
        header = next(csv.reader(f))
    return json.loads((out / "metrics.json").read_text()), header


@pytest.mark.slow
def test_the_families_on_reach_the_run_files_and_those_off_leave_nothing(tmp_path):
    """One run with two families on and two off; the defaults (objects, boundaries, calibration and its
    reliability_test.png) are checked on the train.py run of tests/evaluation/test_files.py."""
    cfg = _cfg(tmp_path, "run", "evaluation.topology.enabled=true", "evaluation.topology.classes=[bar,cross]",
               "evaluation.objects.enabled=false", "evaluation.calibration.enabled=false")
    run(cfg)
    metrics, header = _outputs(cfg)
    test = metrics["test"]
    assert {"boundary", "topology"} <= set(test) and not {"objects", "calibration"} & set(test)
    assert set(test["boundary"]["per_class"]) == {"background", "disc", "square", "bar", "cross"}
    assert set(test["topology"]["per_class"]) == {"bar", "cross"}
    assert "objects" not in metrics["val"] and "boundary" not in metrics["val"]  # splits: [test]
    assert {"biou/bar", "hd95/square", "nsd/disc", "cldice/bar", "cldice/cross"} <= set(header)
    assert not any(c.startswith("objects_") for c in header) and "cldice/disc" not in header
    assert "reliability_test_png" not in metrics["outputs"]
    assert not (Path(cfg.paths.output_dir) / "reliability_test.png").exists()


@pytest.mark.parametrize(("override", "match"), [
    ("evaluation.boundary.tolerance=-1",
     r"^evaluation: boundary\.tolerance must be >= 0, got -1$"),
    ("+evaluation.objects.area=3", r"^evaluation: objects\.area is not a key of objects"),
    ("evaluation.calibration.bins=10", None),
])
def test_the_evaluation_group_is_built_with_errors_that_name_the_key(tmp_path, override, match):
    cfg = _cfg(tmp_path, "run", override)
    if match is None:
        assert build(cfg.evaluation, "evaluation").calibration.bins == 10
        return
    with pytest.raises(ValueError, match=match):
        build(cfg.evaluation, "evaluation")


def test_an_optimized_metric_of_a_family_needs_the_family_on_the_validation(tmp_path):
    metric = "optimized_metric=val/objects/f1"
    with pytest.raises(ValueError, match=r"objects/f1 is computed only .* evaluation\.splits=\[val,test\]"):
        check_config(_cfg(tmp_path, "a", metric))
    with pytest.raises(ValueError, match=r"optimized_metric=val/ece_mean needs evaluation\.calibration\.en"):
        check_config(_cfg(tmp_path, "b", "optimized_metric=val/ece_mean", "evaluation.splits=[val,test]",
                          "evaluation.calibration.enabled=false"))
    check_config(_cfg(tmp_path, "c", metric, "evaluation.splits=[val,test]"))
    check_config(_cfg(tmp_path, "d"))  # val/mIoU
