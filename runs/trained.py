"""A trained model for a config: the LightningModule that ``cfg`` builds, with the weights of a checkpoint.

The one way ``train=false`` evaluation (:func:`runs.training.evaluate`) and any other consumer of a trained
checkpoint (prediction, export) get their model, so that the model, its label metadata and the loss are
built exactly as in training, and a checkpoint of another model is refused with its cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from datamodules import SegDataModule
from inference import load_checkpoint_weights
from runs.build import build, build_lightning_module

__all__ = ["TrainedModule", "load_trained_module"]


@dataclass(frozen=True)
class TrainedModule:
    module: pl.LightningModule  # with the checkpoint's weights (and its on_load_checkpoint state)
    datamodule: SegDataModule  # the config's data (not set up)
    checkpoint: Path
    epoch: int | None  # the checkpoint's epoch (None when it records none)


def load_trained_module(cfg: DictConfig, ckpt_path: str | Path,
                        datamodule: SegDataModule | None = None) -> TrainedModule:
    """The LightningModule of ``cfg`` (:func:`runs.build.build_lightning_module`: class weights, loss, seed,
    network) for ``datamodule`` (default: ``cfg.datamodule``), loaded strictly with the weights of
    ``ckpt_path``.

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        ValueError: the file is not a Lightning checkpoint.
        inference.CheckpointMismatchError: the checkpoint is of another model (architecture, classes, mode).
    """
    if datamodule is None:
        datamodule = build(cfg.datamodule, "datamodule")
    module = build_lightning_module(cfg, datamodule)
    checkpoint = load_checkpoint_weights(module, ckpt_path)
    return TrainedModule(module, datamodule, Path(ckpt_path), checkpoint.get("epoch"))
