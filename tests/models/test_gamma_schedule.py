"""The focal gamma schedule (models.gamma_schedule): every epoch's gamma, logged, resumed, stored in
checkpoints."""

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from models.gamma_schedule import GammaScheduleCallback, focal_terms
from seglosses.combined import CombinedLoss
from seglosses.focal import CrossEntropyLoss, FocalLoss
from seglosses.schedules import GammaSchedule

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow

SCHEDULE = GammaSchedule(kind="linear", gamma_start=0.0, gamma_end=3.0, epochs=4)  # 0, 1, 2, 3


class GammaProbe(pl.Callback):
    """Records the focal gamma used by the first training batch of each epoch and by validation."""

    def __init__(self):
        self.train, self.val = {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train.setdefault(trainer.current_epoch, pl_module.loss.losses["focal"].gamma)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val.setdefault(trainer.current_epoch, pl_module.loss.losses["focal"].gamma)


def focal_ce():
    return CombinedLoss(
        {"focal": FocalLoss(gamma=7.0, ignore_index=255), "ce": CrossEntropyLoss(ignore_index=255)}
    )


def fit(make_module, trainer, loader, tmp_path, max_epochs, ckpt_path=None):
    probe = GammaProbe()
    module = make_module(focal_ce())
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    t = trainer(
        max_epochs=max_epochs,
        limit_train_batches=1,
        limit_val_batches=1,
        enable_checkpointing=True,
        callbacks=[GammaScheduleCallback(SCHEDULE), probe, checkpoint],
    )
    t.fit(module, train_dataloaders=loader(), val_dataloaders=loader(), ckpt_path=ckpt_path)
    return t, module, probe


def test_focal_terms_skip_cross_entropy():
    loss = focal_ce()
    assert focal_terms(loss) == [loss.losses["focal"]]


def test_gamma_follows_schedule_every_epoch_and_is_logged(make_module, trainer, loader, tmp_path):
    t, module, probe = fit(make_module, trainer, loader, tmp_path, max_epochs=4)
    assert probe.train == {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0}
    assert probe.val == probe.train  # validation uses the gamma of its epoch
    assert float(t.callback_metrics["train/gamma"]) == 3.0
    assert module.loss.losses["ce"].gamma == 0.0


def test_resume_continues_the_schedule(make_module, trainer, loader, tmp_path):
    fit(make_module, trainer, loader, tmp_path, max_epochs=2)
    last = tmp_path / "last.ckpt"
    assert torch.load(last, weights_only=False)["loss_gammas"]["losses.focal"] == 1.0
    t, module, probe = fit(make_module, trainer, loader, tmp_path, max_epochs=4, ckpt_path=str(last))
    assert probe.train == {2: 2.0, 3: 3.0}  # epochs 0, 1 are not repeated
    assert t.current_epoch == 4 and t.global_step == 4  # 1 batch per epoch, counted across the resume
    assert module.loss.losses["focal"].gamma == 3.0


def test_schedule_without_focal_term_is_an_error(make_module, trainer, loader):
    module = make_module(CrossEntropyLoss(ignore_index=255))
    t = trainer(fast_dev_run=True, callbacks=[GammaScheduleCallback(SCHEDULE)])
    with pytest.raises(ValueError, match="no focal term"):
        t.fit(module, train_dataloaders=loader())
    # no schedule: the callback does nothing
    t = trainer(fast_dev_run=True, callbacks=[GammaScheduleCallback(None)])
    t.fit(module, train_dataloaders=loader())
    assert "train/gamma" not in t.callback_metrics
