import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint

from models.callbacks import (
    GAP,
    HEADER,
    IGNORE_COLOR,
    GammaScheduleCallback,
    PredictionGridCallback,
    RunCheckpoint,
    color_palette,
    focal_terms,
    label_flags,
    render_grid,
)
from seglosses.combined import CombinedLoss
from seglosses.focal import CrossEntropyLoss, FocalLoss
from seglosses.schedules import GammaSchedule

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


def test_palette_is_voc():
    palette = color_palette(4)
    assert palette.tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert len({tuple(c) for c in color_palette(21)}) == 21


def test_render_grid_layout_and_colours():
    images = torch.zeros(2, 3, 8, 8)
    masks = torch.ones(2, 8, 8, dtype=torch.long)
    masks[:, 0, 0] = 255
    preds = torch.full((2, 8, 8), 2)
    grid = np.asarray(render_grid(images, masks, preds, num_classes=3, min_tile=16))  # tiles 16 x 16
    assert grid.shape == (HEADER + 2 * (16 + GAP) + GAP, 3 * 16 + 4 * GAP, 3)
    top = HEADER + GAP
    gt_x, pred_x = GAP + (16 + GAP), GAP + 2 * (16 + GAP)
    assert tuple(grid[top + 8, gt_x + 8]) == (128, 0, 0)  # class 1
    assert tuple(grid[top, gt_x]) == IGNORE_COLOR  # ignored pixel, scaled x2
    assert tuple(grid[top + 8, pred_x + 8]) == (0, 128, 0)  # class 2


def test_prediction_grid_is_saved_each_validation_epoch(make_module, trainer, loader, tmp_path):
    module = make_module(CrossEntropyLoss(ignore_index=255))
    callback = PredictionGridCallback(dirpath=str(tmp_path / "pred"), num_samples=3)
    t = trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=2, callbacks=[callback])
    t.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    files = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert files == ["val_epoch000.png", "val_epoch001.png"]
    with Image.open(tmp_path / "pred" / "val_epoch001.png") as img:
        # 32 px images enlarged x4 to 128 px tiles; 3 samples taken from the first (4-image) batch
        assert img.size == (3 * 128 + 4 * GAP, HEADER + 3 * (128 + GAP) + GAP)


def test_prediction_grid_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        PredictionGridCallback(num_samples=0)


def test_label_flags_encode_label_sets_and_mark_ignored_pixels():
    masks = torch.tensor([[[[0, 1, 1, 255]], [[0, 0, 1, 255]], [[0, 1, 1, 255]]]])  # (1, 3, 1, 4)
    assert label_flags(masks).tolist() == [[[0, 1 + 4, 1 + 2 + 4, -1]]]


def test_multilabel_prediction_grid_draws_label_sets(make_module, trainer, multilabel_loader, tmp_path):
    module = make_module(FocalLoss(mode="multilabel", ignore_index=255), mode="multilabel")
    callback = PredictionGridCallback(dirpath=str(tmp_path / "pred"), num_samples=2)
    t = trainer(fast_dev_run=True, callbacks=[callback])
    t.fit(module, train_dataloaders=multilabel_loader(), val_dataloaders=multilabel_loader())
    with Image.open(callback.last_path) as img:
        grid = np.asarray(img.convert("RGB"))
    assert grid.shape == (HEADER + 2 * (128 + GAP) + GAP, 3 * 128 + 4 * GAP, 3)
    # ground truth of sample 0, enlarged x4: pixel (0, 0) ignored (white), pixel (8, 8) its label set's colour
    mask = multilabel_loader().dataset[0]["mask"]
    gt_x, top = GAP + (128 + GAP), HEADER + GAP
    assert tuple(grid[top, gt_x]) == IGNORE_COLOR
    flag = int(label_flags(mask[None, :, 8:9, 8:9]))
    assert tuple(grid[top + 8 * 4, gt_x + 8 * 4]) == tuple(color_palette(8)[flag])


class ConstantScore(pl.LightningModule):
    """One linear layer trained on noise; validation logs the same ``score`` every epoch."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("score", 0.5)

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
