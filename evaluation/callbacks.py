"""Lightning callbacks of the evaluation: :class:`PredictionGridCallback`, a PNG grid of validation
predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from evaluation.grids import label_flags, render_grid
from safeio import atomic_path
from seglosses.checks import check_int

__all__ = ["PredictionGridCallback"]


class PredictionGridCallback(pl.Callback):
    """Saves ``<dirpath>/val_epoch<NNN>.png``: the first ``num_samples`` validation images with their
    ground truth and predictions, every ``every_n_epochs`` epochs (rank 0; not during the sanity check).

    Args:
        dirpath: output folder (default ``<trainer.default_root_dir>/predictions``).
        num_samples: images in the grid.
        every_n_epochs: save every n-th validation epoch (the last epoch is always saved).

    Predictions come from the ``"preds"`` entry of ``validation_step``'s output
    (:class:`~models.SegmentationModule`) or, failing that, from the module's ``predict_classes`` (or the
    argmax) of its output. Images are de-normalised with the datamodule's ``mean``/``std`` when it has them.
    Samples may differ in size (mixed image sizes with ``datamodule.eval_batch_size=1``): each row of the
    grid is drawn at its sample's size (:func:`render_grid`).

    Multilabel masks and predictions (N, C, H, W) are drawn as their bit flags (:func:`label_flags`): each
    pixel is coloured by its set of labels, with the palette entry of the value a mask file stores for it
    (label ``c`` alone: ``2**c``; none: black; overlaps: their own colour; ignored: white).
    """

    def __init__(self, dirpath: str | None = None, num_samples: int = 4, every_n_epochs: int = 1) -> None:
        super().__init__()
        self.dirpath = dirpath
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=1)
        self._samples: list[tuple[Tensor, Tensor, Tensor]] = []
        self._multilabel = False
        self.last_path: Path | None = None

    def _active(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs - 1
        return (epoch + 1) % self.every_n_epochs == 0 or last

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._samples = []
        self._multilabel = False

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        taken = sum(s[0].shape[0] for s in self._samples)
        if dataloader_idx != 0 or taken >= self.num_samples or not self._active(trainer):
            return
        k = self.num_samples - taken
        images, masks = batch["image"][:k], batch["mask"][:k]
        if isinstance(outputs, dict) and "preds" in outputs:
            preds = outputs["preds"][:k]
        else:
            with torch.no_grad():
                logits = pl_module(images)
            predict = getattr(pl_module, "predict_classes", None)
            preds = predict(logits) if callable(predict) else logits.argmax(dim=1)
        if masks.ndim == 4:  # multilabel (N, C, H, W)
            masks, preds = label_flags(masks), label_flags(preds)
            self._multilabel = True
        self._samples.append((images.detach().cpu(), masks.detach().cpu(), preds.detach().cpu()))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._samples or not self._active(trainer) or not trainer.is_global_zero:
            self._samples = []
            return
        # One entry per sample: batches of different image sizes (eval_batch_size=1) are not stacked.
        samples = zip(*self._samples, strict=True)
        images, masks, preds = ([x for part in parts for x in part] for parts in samples)
        self._samples = []
        dm = trainer.datamodule
        top = max(int(p.max()) for p in preds)
        if self._multilabel:  # palette up to the largest flag value shown (at most 2**C)
            num_classes = max(max(int(m.max()) for m in masks), top) + 1
        else:
            num_classes = getattr(pl_module, "metric_classes", None) or top + 1
        grid = render_grid(
            images, masks, preds, num_classes, getattr(dm, "mean", None), getattr(dm, "std", None)
        )
        folder = Path(self.dirpath or Path(trainer.default_root_dir) / "predictions")
        self.last_path = folder / f"val_epoch{trainer.current_epoch:03d}.png"
        with atomic_path(self.last_path) as tmp:
            grid.save(tmp)
