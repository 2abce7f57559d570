"""Checkpoints for the prediction and export tests, made in about a second: the LightningModule of a tiny
config (tests.test_train.make_cfg + a 3-stage U-Net), saved with its own ``on_save_checkpoint``, so the
checkpoint carries exactly the inference metadata a training run writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from runs.build import build, build_lightning_module
from tests.overrides import SMALL_UNET
from tests.test_train import make_cfg


def make_checkpoint(tmp_path: Path, *overrides: str, name: str = "model.ckpt", inference: bool = True):
    """(path, module) of an untrained tiny model's checkpoint; ``inference=False`` drops the metadata (a
    checkpoint of the project before it existed)."""
    cfg = make_cfg(tmp_path, *SMALL_UNET, *overrides)
    datamodule = build(cfg.datamodule, "datamodule")
    module = build_lightning_module(cfg, datamodule)
    checkpoint = {
        "epoch": 0,
        "global_step": 0,
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
    }
    module.on_save_checkpoint(checkpoint)
    if not inference:
        checkpoint.pop("inference")
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path, module


def write_image(path: Path, height: int, width: int, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if channels == 1 else array).save(path)
    return path
