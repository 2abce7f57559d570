import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from inference.checkpoints import CheckpointMismatchError, load_checkpoint_weights, read_checkpoint
from models.gamma_schedule import GammaScheduleCallback
from seglosses.focal import FocalLoss

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow


@pytest.fixture
def trained(make_module, trainer, loader, tmp_path):
    """A module fitted for one epoch, its test results, and its checkpoint."""
    module = make_module(FocalLoss(mode="multiclass", gamma=2.0, ignore_index=255))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="best")
    callbacks = [checkpoint, GammaScheduleCallback(None)]  # it stores the loss's gammas in checkpoints
    t = trainer(max_epochs=1, limit_train_batches=2, enable_checkpointing=True, callbacks=callbacks)
    t.fit(module, train_dataloaders=loader(), val_dataloaders=loader(seed=1))
    module.loss.gamma = 0.5  # as a gamma schedule would have left it
    t.save_checkpoint(tmp_path / "best.ckpt")
    t.test(module, dataloaders=loader(seed=2))
    return module, dict(t.callback_metrics), tmp_path / "best.ckpt"


def test_evaluating_a_checkpoint_gives_the_end_of_training_metrics(trained, make_module, trainer, loader):
    module, metrics, path = trained
    fresh = make_module(FocalLoss(mode="multiclass", gamma=2.0, ignore_index=255))
    load_checkpoint_weights(fresh, path)
    assert fresh.loss.gamma == 0.5  # restored with the weights
    t = trainer()
    t.test(fresh, dataloaders=loader(seed=2))
    assert fresh.results["test"] == module.results["test"]
    for key in ("test/mIoU", "test/iou/Car", "test/loss"):
        assert float(t.callback_metrics[key]) == pytest.approx(float(metrics[key]), rel=1e-6)


def test_mismatched_num_classes_names_the_cause(trained, make_module):
    _, _, path = trained
    other = make_module(FocalLoss(mode="multiclass"), num_classes=2)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint_weights(other, path)
    message = str(info.value)
    assert "does not match the model" in message
    assert "num_classes: checkpoint 3, model 2" in message
    assert "differ in shape" in message and "segmentation_head" in message


def test_other_architecture_is_a_clear_error(trained, make_module):
    _, _, path = trained
    other = make_module(FocalLoss(mode="multiclass"))
    other.network.extra = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointMismatchError, match=r"weights of the model are missing.*network\.extra"):
        load_checkpoint_weights(other, path)


def test_missing_or_unreadable_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt_path="):
        read_checkpoint(tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    for weights_only in (True, False):
        with pytest.raises(ValueError, match=r"cannot read checkpoint .* truncated or not a PyTorch"):
            read_checkpoint(bad, weights_only=weights_only)
    torch.save({"weights": 1}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a PyTorch Lightning checkpoint"):
        read_checkpoint(tmp_path / "plain.pt")
