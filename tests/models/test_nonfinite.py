"""Non-finite validation/test losses fail the run (SegmentationModule with
evaluation.nonfinite.NonFiniteGuard; the guard alone: tests/evaluation/test_nonfinite.py)."""

from __future__ import annotations

import pytest
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from seglosses.focal import CrossEntropyLoss


class NaNWhenEvaluating(nn.Module):
    """Cross-entropy while training; NaN from batch ``first_bad`` on in eval mode (validation/test)."""

    def __init__(self, first_bad: int = 0) -> None:
        super().__init__()
        self.ce = CrossEntropyLoss(mode="multiclass", ignore_index=255)
        self.first_bad = first_bad
        self.calls = 0

    def forward(self, logits, target):
        loss = self.ce(logits, target)
        if self.training:
            return loss
        self.calls += 1
        return loss * float("nan") if self.calls > self.first_bad else loss


def test_nan_validation_loss_fails_fit_and_saves_no_checkpoint(make_module, trainer, loader, tmp_path):
    module = make_module(NaNWhenEvaluating(first_bad=1))
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/mIoU", mode="max", save_last=True)
    t = trainer(max_epochs=1, limit_train_batches=1, enable_checkpointing=True, callbacks=[checkpoint])
    expected = r"validation loss is nan at epoch 0, batch 1 \(1 non-finite"
    with pytest.raises(FloatingPointError, match=expected):
        t.fit(module, train_dataloaders=loader(), val_dataloaders=loader(seed=1))
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())
    assert "val" not in module.results


def test_nan_test_loss_fails_test(make_module, trainer, loader):
    module = make_module(NaNWhenEvaluating())
    with pytest.raises(FloatingPointError, match=r"test loss is nan, batch 0 \(2 non-finite.*optimizer\.lr="):
        trainer().test(module, dataloaders=loader())


def test_nan_in_sanity_check_fails_too(make_module, trainer, loader):
    module = make_module(NaNWhenEvaluating())
    with pytest.raises(FloatingPointError, match=r"validation \(sanity check\) loss is nan at epoch 0"):
        trainer(max_epochs=1, num_sanity_val_steps=1).fit(module, loader(), loader(seed=1))


@pytest.mark.slow
def test_finite_evaluation_passes_and_resets_per_epoch(make_module, trainer, loader):
    module = make_module(CrossEntropyLoss(mode="multiclass", ignore_index=255))
    t = trainer(max_epochs=2, limit_train_batches=1)
    t.fit(module, train_dataloaders=loader(), val_dataloaders=loader(seed=1))
    t.test(module, dataloaders=loader())
    assert module.results["val"]["epoch"] == 1 and module.results["test"]["mIoU"] is not None
    assert module.nonfinite.tracking == []


class NaNFromTrainingStep(nn.Module):
    """Cross-entropy; NaN from training step ``first_bad`` on (counted over the run)."""

    def __init__(self, first_bad: int) -> None:
        super().__init__()
        self.ce = CrossEntropyLoss(mode="multiclass", ignore_index=255)
        self.first_bad, self.steps = first_bad, 0

    def forward(self, logits, target):
        loss = self.ce(logits, target)
        if not self.training:
            return loss
        self.steps += 1
        return loss * float("nan") if self.steps > self.first_bad else loss


@pytest.mark.parametrize(("every", "epochs"), [(1, 1), (50, 1), (2, 3)])
def test_nan_training_loss_stops_before_validation_and_checkpoint_naming_its_step(
    make_module, trainer, loader, tmp_path, every, epochs
):
    """Steps 0-2 of epoch 0 are finite (batch size 2, 4 batches per epoch), step 3 is NaN: whether read
    at the step (every 1), at the epoch end (every 50) or within 2 steps, the error names epoch 0 and batch
    3 and no checkpoint exists (validation and the checkpoint come after the check)."""
    module = make_module(NaNFromTrainingStep(first_bad=3), finite_check_every_n_steps=every)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/mIoU", mode="max", save_last=True)
    t = trainer(max_epochs=epochs, enable_checkpointing=True, callbacks=[checkpoint])
    data = loader()
    data = type(data)(data.dataset, batch_size=2)
    with pytest.raises(FloatingPointError, match=r"training loss is nan at epoch 0, batch 3 \(1 non-finite"):
        t.fit(module, train_dataloaders=data, val_dataloaders=loader(seed=1))
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())
    assert "val" not in module.results


def test_a_finite_run_checks_every_n_steps_and_saves(make_module, trainer, loader, tmp_path):
    module = make_module(CrossEntropyLoss(mode="multiclass", ignore_index=255), finite_check_every_n_steps=1)
    checks = []
    check = module.nonfinite.check
    module.nonfinite.check = lambda stage, t=None: (checks.append(stage), check(stage, t))[1]
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/mIoU", mode="max", save_last=True)
    trainer(max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        module, train_dataloaders=loader(), val_dataloaders=loader(seed=1)
    )
    assert checks.count("train") >= 2 + 1  # two steps, before validation (and the checkpoint's, if tracking)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
