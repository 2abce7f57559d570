"""Segmentation networks from config (:func:`build_network`), the LightningModule
(:class:`SegmentationModule`) and the training callback of its loss (:class:`GammaScheduleCallback`)."""

from models.gamma_schedule import GammaScheduleCallback
from models.module import SegmentationModule
from models.networks import build_network, init_head_prior, output_channels, prior_bias, size_multiple

__all__ = [
    "GammaScheduleCallback",
    "SegmentationModule",
    "build_network",
    "init_head_prior",
    "output_channels",
    "prior_bias",
    "size_multiple",
]
