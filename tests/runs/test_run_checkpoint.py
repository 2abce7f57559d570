"""RunCheckpoint (runs.callbacks): last.ckpt at every checkpointing point."""

import pytest
import pytorch_lightning as pl
import torch

from runs.callbacks import RunCheckpoint


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
