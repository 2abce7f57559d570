"""The metadata a run's checkpoints carry for inference (:func:`inference_info`): what
``inference.load_for_inference`` needs to use the network without the run directory."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from datamodules import SegDataModule
from evaluation.grids import default_class_colors
from inference import InferenceInfo
from models import size_multiple

__all__ = ["inference_info"]


def inference_info(cfg: DictConfig, datamodule: SegDataModule, network: torch.nn.Module,
                   class_names: Sequence[str]) -> InferenceInfo:
    """What the checkpoints of this run carry for :func:`inference.load_for_inference`: the network config
    (weights from the checkpoint: no download, no prior init, no compiling), labels, colours,
    normalisation, crop."""
    network_config = OmegaConf.to_container(cfg.model, resolve=True)
    network_config.update(encoder_weights=None, prior_init=False, prior=None, compile=False)
    colors = default_class_colors(datamodule.mode, datamodule.num_classes)
    if datamodule.class_colors is not None:  # binary: the foreground's, on the default background
        colors = colors[: len(class_names) - len(datamodule.class_colors)] + datamodule.class_colors
    return InferenceInfo(
        network=network_config,
        mode=datamodule.mode,
        num_classes=datamodule.num_classes,
        class_names=list(class_names),
        class_colors=[[int(v) for v in c] for c in colors],
        in_channels=datamodule.in_channels,
        mean=datamodule.mean,
        std=datamodule.std,
        ignore_index=datamodule.ignore_index,
        crop_size=datamodule.training_size,
        size_multiple=size_multiple(network),
    )
