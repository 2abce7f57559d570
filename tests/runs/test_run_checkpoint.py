"""RunCheckpoint (runs.callbacks): last.ckpt at every checkpointing point, or at most every
``last_every_seconds`` plus the run's final point, and a hard link to a best checkpoint saved at the same
step."""

import os

import pytest
import pytorch_lightning as pl
import torch

from runs.callbacks import RunCheckpoint


class ConstantScore(pl.LightningModule):
    """One linear layer trained on noise; validation logs the same ``score`` every epoch."""

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def __init__(self, scores=None):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.scores = scores  # per epoch; None: 0.5 every epoch

    def validation_step(self, batch, batch_idx):
        self.log("score", 0.5 if self.scores is None else self.scores[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("on_train_epoch_end", [False, True])
def test_last_checkpoint_is_written_every_epoch_without_improvement(trainer, tmp_path, on_train_epoch_end):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    checkpoint = RunCheckpoint(dirpath=tmp_path, filename="best-{epoch}", monitor="score", mode="max",
                               save_top_k=1, save_last=True, save_on_train_epoch_end=on_train_epoch_end)
    t = trainer(max_epochs=3, enable_checkpointing=True, callbacks=[checkpoint])
    t.fit(ConstantScore(), train_dataloaders=data, val_dataloaders=data)
    assert checkpoint.best_model_path.endswith("best-epoch=0.ckpt")  # the score never improved after epoch 0
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-epoch=0.ckpt", "last.ckpt"]


class LastCheckpointLog(pl.Callback):
    """After every epoch's checkpointing (at the next epoch's start, and at the end of training): the epoch
    stored in last.ckpt (None: no file yet) and whether last.ckpt and the best checkpoint are one file."""

    def __init__(self, checkpoint: RunCheckpoint):
        self.checkpoint, self.epochs, self.linked = checkpoint, [], []

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self._record()

    def on_train_end(self, trainer, pl_module):
        self._record()

    def _record(self):
        path = self.checkpoint.last_path()
        self.epochs.append(torch.load(path, weights_only=False)["epoch"] if path.is_file() else None)
        best = self.checkpoint.best_model_path
        self.linked.append(path.is_file() and os.path.samefile(path, best))


def _fit_with_log(trainer, tmp_path, scores, **kwargs):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    checkpoint = RunCheckpoint(dirpath=tmp_path, filename="best-{epoch}", monitor="score", mode="max",
                               save_top_k=1, save_last=True, **kwargs)
    log = LastCheckpointLog(checkpoint)
    t = trainer(max_epochs=len(scores), enable_checkpointing=True, callbacks=[checkpoint, log])
    t.fit(ConstantScore(scores), train_dataloaders=data, val_dataloaders=data)
    return checkpoint, log


def test_last_checkpoint_cadence_skips_middle_epochs_but_never_the_final_one(trainer, tmp_path):
    # improves at epochs 0 and 2 only; one write at most every hour
    checkpoint, log = _fit_with_log(trainer, tmp_path, [0.1, 0.0, 0.3, 0.2, 0.2], last_every_seconds=3600)
    assert log.epochs == [0, 0, 2, 2, 4]  # linked to the new bests (0, 2), the final epoch written (4)
    assert log.linked == [True, True, True, True, False]
    assert checkpoint.best_model_path.endswith("best-epoch=2.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-epoch=2.ckpt", "last.ckpt"]


def test_last_checkpoint_is_a_link_to_a_best_saved_at_the_same_step(trainer, tmp_path, monkeypatch):
    saves = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (saves.append(1), real_save(obj, f, *a, **k)))
    _, log = _fit_with_log(trainer, tmp_path, [0.1, 0.2, 0.3], last_every_seconds=0)
    assert log.epochs == [0, 1, 2] and log.linked == [True, True, True]
    assert len(saves) == 3  # one write per epoch: the best; last.ckpt links to it
    # the best checkpoint of epoch 1 was replaced: last.ckpt's link kept its bytes until relinked
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 6


def test_last_every_seconds_is_checked(tmp_path):
    with pytest.raises(ValueError, match="last_every_seconds must be"):
        RunCheckpoint(dirpath=tmp_path, save_last=True, last_every_seconds=-1)
