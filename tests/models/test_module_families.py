"""The metric families in SegmentationModule's evaluations (evaluation.families fed by the steps): every test
image recorded, the stages of ``evaluation.splits`` only, never the training steps, the results and logged
keys; families switched off leave the pixel results as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from evaluation.families import FamilyEvaluation
from evaluation.options import EvaluationOptions, TopologyOptions
from evaluation.spatial import image_records

IGNORE = 255
NAMES = ["background", "Car", "Pedestrian"]
PIXEL_RESULTS = {"epoch", "mIoU", "mDice", "pixel_acc", "per_class"}


def _loss() -> nn.Module:
    return nn.CrossEntropyLoss(ignore_index=IGNORE)


def test_the_test_stage_records_every_image_and_keeps_the_families(make_module, trainer, loader):
    module = make_module(_loss())
    t = trainer()
    data = loader()
    t.test(module, dataloaders=data, verbose=False)
    families = module.families["test"]
    assert families.records.names == module.per_image["test"].names == tuple(f"sample_{i}" for i in range(8))
    # row 0 is the records of sample_0's prediction
    sample = data.dataset[0]
    module.eval()  # Lightning leaves it in training mode (batch norm)
    with torch.no_grad():
        preds = module.predict_classes(module(sample["image"][None]))[0]
    expected = image_records(preds.numpy(), sample["mask"].numpy(), families.classes, module.evaluation,
                             "multiclass", IGNORE)
    np.testing.assert_array_equal(families.records.objects[0], expected["objects"])
    np.testing.assert_array_equal(families.records.boundary[0], expected["boundary"])
    results = module.results["test"]
    assert set(results) == PIXEL_RESULTS | {"objects", "boundary", "calibration"}
    assert set(results["objects"]["per_class"]) == set(results["calibration"]["per_class"]) == set(NAMES)
    assert results["calibration"]["per_class"]["Car"]["pixels"] == 8 * (32 * 32 - 4)  # ignored: left out
    logged = set(t.callback_metrics)
    assert {"test/objects/f1", "test/objects/recall/Car", "test/boundary/hd95/Pedestrian", "test/ece_mean",
            "test/ece_top_label", "test/ece/background"} <= logged
    assert float(t.callback_metrics["test/objects/recall/Car"]) == pytest.approx(
        results["objects"]["per_class"]["Car"]["recall"])


def test_validation_records_only_with_val_in_splits_and_training_never(make_module, trainer, loader,
                                                                       monkeypatch):
    fed = []
    update = FamilyEvaluation.update

    def spy(self, names, *args):
        fed.append(list(names))
        update(self, names, *args)

    monkeypatch.setattr(FamilyEvaluation, "update", spy)
    options = EvaluationOptions(splits=("val", "test"), topology=TopologyOptions(classes=("Car",)))
    module = make_module(_loss(), evaluation=options)
    t = trainer(fast_dev_run=True)  # one training batch, one validation batch
    t.fit(module, train_dataloaders=loader(), val_dataloaders=loader(seed=1))
    assert fed == [[f"sample_{i}" for i in range(4)]]  # the validation batch, no training batch
    assert set(module.families) == {"val"} and "topology" in module.results["val"]
    assert {"val/objects/f1", "val/cldice", "val/cldice/Car", "val/ece_mean"} <= set(t.callback_metrics)

    default = make_module(_loss())  # splits: [test]
    t = trainer()
    t.validate(default, dataloaders=loader(), verbose=False)
    assert default.families == {} and set(default.results["val"]) == PIXEL_RESULTS
    assert not any("objects" in key or "ece" in key for key in t.callback_metrics)


def test_families_switched_off_leave_the_pixel_results_alone(make_module, trainer, loader):
    module = make_module(_loss(), evaluation=EvaluationOptions.off())
    t = trainer()
    t.test(module, dataloaders=loader(n=4), verbose=False)
    assert module.families == {} and set(module.results["test"]) == PIXEL_RESULTS
    assert len(module.per_image["test"]) == 4
    families = ("test/objects", "test/boundary", "test/ece")
    assert not any(key.startswith(families) for key in t.callback_metrics)


def test_the_options_are_checked_against_the_classes(make_module):
    with pytest.raises(ValueError, match=r"topology\.classes names \['road'\], not a scored class"):
        make_module(_loss(), evaluation=EvaluationOptions(topology=TopologyOptions(classes=("road",))))
    module = make_module(_loss())
    with pytest.raises(ValueError, match="evaluation must be an EvaluationOptions, got dict"):
        module.evaluation = {"objects": None}
    module.evaluation = EvaluationOptions(topology=TopologyOptions(classes=("Pedestrian",)))
    assert module.evaluation.enabled == ("objects", "boundary", "topology", "calibration")
