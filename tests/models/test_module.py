import functools
import math

import pytest
import torch
from torch import nn

from evaluation.confusion import MultilabelSegmentationMetrics
from models import SegmentationModule
from seglosses.combined import CombinedLoss
from seglosses.dice import DiceLoss
from seglosses.focal import CrossEntropyLoss, FocalLoss

NAMES = ["background", "Car", "Pedestrian"]
METRIC_KEYS = {f"val/{m}/{n}" for m in ("iou", "dice", "precision", "recall") for n in NAMES} | {
    "val/mIoU",
    "val/mDice",
    "val/pixel_acc",
}

LOSSES = {
    "focal": lambda: FocalLoss(mode="multiclass", gamma=2.0, ignore_index=255),
    "dice": lambda: DiceLoss(mode="multiclass", ignore_index=255),
    "ce": lambda: CrossEntropyLoss(mode="multiclass", ignore_index=255),
    "focal_dice": lambda: CombinedLoss(
        {
            "focal": FocalLoss(mode="multiclass", ignore_index=255),
            "dice": DiceLoss(mode="multiclass", ignore_index=255),
        },
        weights={"focal": 1.0, "dice": 0.5},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_fast_dev_run_logs_losses_and_per_class_metrics(name, make_module, trainer, loader):
    module = make_module(LOSSES[name]())
    t = trainer(fast_dev_run=True)
    t.fit(module, train_dataloaders=loader(), val_dataloaders=loader(seed=1))
    logged = set(t.callback_metrics)
    assert {"train/loss", "val/loss"} <= logged
    assert METRIC_KEYS <= logged
    if name == "focal_dice":
        assert {"train/loss/focal", "train/loss/dice", "val/loss/focal", "val/loss/dice"} <= logged
    else:
        assert not any(k.startswith("train/loss/") for k in logged)
    assert math.isfinite(float(t.callback_metrics["train/loss"]))
    assert 0.0 <= float(t.callback_metrics["val/mIoU"]) <= 1.0
    assert module.results["val"]["per_class"].keys() == set(NAMES)
    assert module.results["val"]["epoch"] == 0


def test_combined_loss_terms_are_logged_unweighted(make_module, trainer, loader):
    module = make_module(LOSSES["focal_dice"]())
    t = trainer(fast_dev_run=True)
    t.validate(module, dataloaders=loader())
    m = t.callback_metrics
    expected = float(m["val/loss/focal"]) + 0.5 * float(m["val/loss/dice"])
    assert float(m["val/loss"]) == pytest.approx(expected, rel=1e-5)


def test_binary_mode_adapts_the_mask_and_scores_background_and_foreground(make_module, trainer, loader):
    loss = FocalLoss(mode="binary", gamma=2.0, ignore_index=255)
    module = make_module(loss, num_classes=1, mode="binary", class_names=["vessel"])
    t = trainer(fast_dev_run=True)
    t.fit(module, train_dataloaders=loader(num_classes=2), val_dataloaders=loader(num_classes=2, seed=1))
    assert {"val/iou/background", "val/iou/vessel", "val/mIoU"} <= set(t.callback_metrics)
    target = module.loss_target(torch.tensor([[[0, 1], [255, 1]]]))
    assert target.dtype == torch.float32 and target.shape == (1, 1, 2, 2)
    assert target[0, 0, 1, 0] == 255  # ignored pixels stay ignored for the loss
    logits = torch.tensor([[[[-1.0, 2.0], [0.5, -3.0]]]])
    assert module.predict_classes(logits).tolist() == [[[0, 1], [1, 0]]]


@pytest.mark.slow
def test_test_stage_prints_table_and_keeps_results(make_module, trainer, loader, capsys):
    module = make_module(nn.CrossEntropyLoss(ignore_index=255), print_tables="best_and_test")
    t = trainer()
    t.test(module, dataloaders=loader())
    out = capsys.readouterr().out
    assert "test" in out
    for header in ("Class", "IoU", "Dice", "Precision", "Recall", "Pixel share", *NAMES):
        assert header in out
    assert "test: objects found" in out and "test: boundaries" in out and "test calibration" in out
    results = module.results["test"]
    assert set(results) == {"epoch", "mIoU", "mDice", "pixel_acc", "per_class", "objects", "boundary",
                            "calibration"}
    assert results["epoch"] is None  # a separate test run does not know the epoch of the weights
    assert results["mIoU"] == pytest.approx(float(t.callback_metrics["test/mIoU"]), abs=1e-6)


@pytest.mark.slow
def test_configure_optimizers_uses_partials(make_module):
    scheduler = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3)
    module = make_module(nn.CrossEntropyLoss(), scheduler=scheduler, scheduler_interval="step")
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.Adam)
    assert config["optimizer"].param_groups[0]["lr"] == 1e-2
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert config["lr_scheduler"]["interval"] == "step"
    assert isinstance(make_module(nn.CrossEntropyLoss()).configure_optimizers(), torch.optim.Adam)


def test_bad_batches_are_clear_errors(make_module):
    module = make_module(nn.CrossEntropyLoss())
    image, mask = torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.long)
    with pytest.raises(ValueError, match="dict with 'image' and 'mask'"):
        module.training_step((image, mask), 0)
    with pytest.raises(ValueError, match=r"batch\['mask'\] must be integer class ids"):
        module.training_step({"image": image, "mask": mask.float()}, 0)
    with pytest.raises(ValueError, match="does not match"):
        module.training_step({"image": image, "mask": mask[:, :16]}, 0)
    module.network = nn.Conv2d(3, 3, 1, stride=2)
    with pytest.raises(ValueError, match=r"output has shape \(2, 3, 16, 16\), expected \(2, 3, 32, 32\)"):
        module.training_step({"image": image, "mask": mask}, 0)


def test_non_finite_training_loss_is_tracked_on_the_device_and_read_by_the_check(make_module):
    module = make_module(lambda logits, target: logits.sum() * float("nan"))
    module.log = lambda *args, **kwargs: None  # not attached to a trainer
    batch = {"image": torch.randn(1, 3, 32, 32), "mask": torch.zeros(1, 32, 32, dtype=torch.long)}
    module.training_step(batch, 3)  # no host sync in the step
    with pytest.raises(FloatingPointError, match=r"training loss is nan, batch 3 \(1 non-finite batches"):
        module.nonfinite.check("train")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "softmax"}, "mode must be one of"),
        ({"class_names": ["a", "b"]}, "class_names has 2 names"),
        ({"class_names": ["a", "a", "b"]}, "must be unique"),
        ({"ignore_index": 2.5}, "ignore_index must be an int"),
        ({"scheduler_interval": "batch"}, "scheduler_interval must be one of"),
    ],
)
def test_bad_arguments(kwargs, match, make_module):
    with pytest.raises(ValueError, match=match):
        make_module(nn.CrossEntropyLoss(), **kwargs)


@pytest.mark.parametrize(
    ("mode", "num_classes", "match"),
    [
        ("binary", 2, "binary mode has one foreground class.*num_classes must be 1, got 2"),
        ("multiclass", 1, "multiclass mode needs num_classes >= 2"),
        ("multilabel", 0, "num_classes must be an int >= 1, got 0"),
        ("multiclass", 3.0, "num_classes must be an int >= 1, got 3.0"),
    ],
)
def test_num_classes_must_fit_the_mode(mode, num_classes, match):
    # The network is never called: the module checks num_classes before it builds anything.
    with pytest.raises(ValueError, match=match):
        SegmentationModule(nn.Identity(), nn.Identity(), torch.optim.Adam, num_classes=num_classes, mode=mode)


@pytest.mark.parametrize("names", [["vessel"], ["background", "vessel"]])
def test_binary_class_names_are_the_foreground_or_both(names):
    module = SegmentationModule(
        nn.Identity(), nn.Identity(), torch.optim.Adam, num_classes=1, mode="binary", class_names=names
    )
    assert module.metric_classes == 2 and module.class_names == ["background", "vessel"]


def test_multilabel_fast_dev_run_scores_each_label(make_module, trainer, multilabel_loader):
    loss = CombinedLoss(
        {
            "focal": FocalLoss(mode="multilabel", gamma=2.0, ignore_index=255),
            "dice": DiceLoss(mode="multilabel", ignore_index=255),
        }
    )
    module = make_module(loss, mode="multilabel", class_names=["road", "car", "sign"])
    t = trainer(fast_dev_run=True)
    t.fit(module, train_dataloaders=multilabel_loader(), val_dataloaders=multilabel_loader(seed=1))
    logged = set(t.callback_metrics)
    names = ["road", "car", "sign"]
    assert {f"val/{m}/{n}" for m in ("iou", "dice", "precision", "recall") for n in names} <= logged
    assert {"train/loss", "train/loss/focal", "val/loss/dice", "val/mIoU", "val/pixel_acc"} <= logged
    assert math.isfinite(float(t.callback_metrics["train/loss"]))
    assert 0.0 <= float(t.callback_metrics["val/mIoU"]) <= 1.0
    assert module.results["val"]["per_class"].keys() == set(names)
    assert isinstance(module.metrics["val"], MultilabelSegmentationMetrics)
    assert module.hparams["mode"] == "multilabel"


def test_multilabel_targets_predictions_and_metrics_of_one_batch(make_module):
    module = make_module(lambda logits, target: logits.mean(), num_classes=2, mode="multilabel")
    mask = torch.tensor([[[[0, 1], [255, 1]], [[1, 1], [255, 0]]]])  # (1, 2, 2, 2), one pixel ignored
    target = module.loss_target(mask)
    assert target.dtype == torch.float32 and target.shape == (1, 2, 2, 2)
    assert target[0, :, 1, 0].tolist() == [255.0, 255.0]  # kept for the loss's ignore_index
    # seglosses compares target elements with ignore_index: the ignored pixel adds no loss
    focal = FocalLoss(mode="multilabel", gamma=0.0, ignore_index=255)
    logits = torch.tensor([[[[-1.0, 2.0], [0.5, -3.0]], [[1.0, 0.2], [-9.0, 0.0]]]])
    valid = mask != 255
    expected = nn.functional.binary_cross_entropy_with_logits(logits[valid], mask[valid].float())
    torch.testing.assert_close(focal(logits, target), expected)
    preds = module.predict_classes(logits)
    assert preds.tolist() == [[[[0, 1], [1, 0]], [[1, 1], [0, 0]]]]  # logit > 0; 0.0 is negative
    module.metrics["val"].update(preds, mask)
    scores = module.metrics["val"].compute()
    # label 0: t 0 1 . 1, p 0 1 . 0 -> TP 1, FN 1; label 1: t 1 1 . 0, p 1 1 . 0 -> TP 2
    assert scores["iou"].tolist() == [0.5, 1.0]


def test_multilabel_batches_are_checked(make_module):
    module = make_module(lambda logits, target: logits.mean(), num_classes=3, mode="multilabel")
    image = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"multilabel \{0, 1\} flags \(B, 3, H, W\)"):
        module.training_step({"image": image, "mask": torch.zeros(2, 32, 32, dtype=torch.long)}, 0)
    with pytest.raises(ValueError, match="2 label channels"):
        module.training_step({"image": image, "mask": torch.zeros(2, 2, 32, 32, dtype=torch.long)}, 0)
    module.log = lambda *args, **kwargs: None  # not attached to a trainer
    bad = torch.zeros(2, 3, 32, 32, dtype=torch.long)
    bad[0, 1, 0, 0] = 4
    with pytest.raises(ValueError, match=r"values other than 0, 1 or ignore_index=255: \[4\]"):
        module.validation_step({"image": image, "mask": bad}, 0)
