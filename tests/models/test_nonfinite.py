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
