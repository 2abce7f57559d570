"""Post-hoc fits (runs.posthoc, evaluation.posthoc): evaluation.calibrate and inference.threshold=auto fitted
on validation, applied by the test split; the options checked. The checkpoint/predict.py/export side and one
end-to-end run: tests/runs/test_posthoc_run.py."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from evaluation.calibration import CalibrationHistogram, apply_temperature
from evaluation.options import EvaluationOptions
from evaluation.posthoc import check_calibrate
from evaluation.thresholds import ThresholdHistogram
from inference import InferenceConfig
from models import SegmentationModule
from runs.posthoc import check_posthoc_config, fit_posthoc, posthoc_record
from tests.tiny import trainer as tiny_trainer

SCALE = 4.0  # the toy network's logits are SCALE times the calibrated ones: T should come out near it


class Bernoulli(Dataset):
    """Images x ~ N(0, 1.5^2), binary masks y ~ Bernoulli(sigmoid(x)): sigmoid(x) is calibrated."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 1, 32, 32, generator=g) * 1.5
        self.masks = (torch.rand(n, 32, 32, generator=g) < self.images[:, 0].sigmoid()).long()

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "name": f"s{i}"}


class Data(pl.LightningDataModule):
    def val_dataloader(self) -> DataLoader:
        return DataLoader(Bernoulli(8, 0), batch_size=4)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(Bernoulli(8, 1), batch_size=4)


def overconfident_module(calibrate: str | None) -> SegmentationModule:
    network = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        network.weight.fill_(SCALE)
        network.bias.zero_()
    options = EvaluationOptions(objects=None, boundary=None, calibrate=calibrate)
    return SegmentationModule(network, nn.BCEWithLogitsLoss(), torch.optim.SGD, num_classes=1, mode="binary",
                              class_names=["background", "fg"], ignore_index=None, print_tables="none",
                              evaluation=options)


def cfg_for(threshold: object = "auto"):
    return OmegaConf.create({"inference": {"threshold": threshold}, "seed": 0,
                             "datamodule": {"mode": "binary"}})


def test_temperature_and_thresholds_are_fitted_on_validation_and_applied_by_the_test():
    module = overconfident_module("scalar")
    trainer = tiny_trainer()
    fit = fit_posthoc(cfg_for("auto"), trainer, module, Data(), None)
    assert abs(float(fit.temperature) - SCALE) < 0.5  # near the true scale
    assert fit.val["ece_after"]["ece_mean"] < fit.val["ece_before"]["ece_mean"]
    # the thresholds are those of the calibrated validation probabilities, exactly
    histogram = ThresholdHistogram(1, "binary")
    for batch in Data().val_dataloader():
        logits = apply_temperature(SCALE * batch["image"], fit.temperature.float())
        histogram.update(logits, batch["mask"])
    torch.testing.assert_close(fit.thresholds, histogram.best()["threshold"].float())
    assert module.test_threshold is fit.thresholds or torch.equal(module.test_threshold, fit.thresholds)
    trainer.test(module, datamodule=Data(), verbose=False)
    test = module.posthoc_test
    assert test["ece_after"]["ece_mean"] < test["ece_before"]["ece_mean"]
    # the test's ECE before is that of the raw logits, after that of z / T
    before = CalibrationHistogram(1, "binary")
    for batch in Data().test_dataloader():
        before.update(SCALE * batch["image"], batch["mask"])
    assert test["ece_before"]["ece_mean"] == pytest.approx(float(before.ece()["mean_ece"]))
    # the test's masks use the stored threshold (p >= t on sigmoid(z / T)): its Dice is that of the rule
    tp = fp = pos = 0
    for batch in Data().test_dataloader():
        on = (apply_temperature(SCALE * batch["image"][:, 0], fit.temperature.float()).sigmoid()
              >= fit.thresholds[0])
        y = batch["mask"] == 1
        tp, fp, pos = tp + int((on & y).sum()), fp + int((on & ~y).sum()), pos + int(y.sum())
    record = posthoc_record(module, fit, module.results["test"], "fitted on val")
    assert record["threshold"]["test"]["dice"]["fg"] == pytest.approx(2 * tp / (tp + fp + pos), rel=1e-5)
    assert set(record["threshold"]["val"]) == {"dice_at_0.5", "dice"}
    assert record["calibration"]["temperature"] == pytest.approx(float(fit.temperature))


def test_per_class_calibration_gives_one_temperature_per_channel_and_nothing_asked_fits_nothing():
    module = overconfident_module("per_class")
    fit = fit_posthoc(cfg_for(0.5), tiny_trainer(), module, Data(), None)
    assert fit.temperature.shape == (1,) and fit.thresholds is None and module.test_threshold is None
    assert fit_posthoc(cfg_for(0.3), tiny_trainer(), overconfident_module(None), Data(), None) is None


def test_a_fixed_threshold_is_what_the_test_applies():
    module = overconfident_module(None)
    fit_posthoc(cfg_for(0.3), tiny_trainer(), module, Data(), None)
    assert module.test_threshold == 0.3 and module.test_temperature is None


def test_threshold_auto_is_refused_for_multiclass_naming_the_key():
    cfg = OmegaConf.create({"inference": {"threshold": "auto"}, "datamodule": {"mode": "multiclass"}})
    with pytest.raises(ValueError, match=r"inference\.threshold=auto is for binary and multilabel"):
        check_posthoc_config(cfg)
    for threshold, mode in ((0.5, "multiclass"), ("auto", "binary")):  # accepted
        node = {"inference": {"threshold": threshold}, "datamodule": {"mode": mode}}
        check_posthoc_config(OmegaConf.create(node))


@pytest.mark.parametrize("value", ["best", 1.5, -0.1])
def test_bad_threshold_is_named(value):
    with pytest.raises(ValueError, match=r"inference\.threshold"):
        InferenceConfig(threshold=value)


def test_calibrate_option_is_checked():
    values = [check_calibrate(v) for v in (False, None, True, "per_class")]
    assert values == [None, None, "scalar", "per_class"]
    families = {"enabled": False}
    options = EvaluationOptions.from_config(["test"], families, families, families, families, calibrate=True)
    assert options.calibrate == "scalar"
    with pytest.raises(ValueError, match=r"calibrate must be false, true .* or per_class"):
        EvaluationOptions.from_config(["test"], families, families, families, families, calibrate="vector")
