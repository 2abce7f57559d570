"""Segmentation networks from config (:func:`build_network`), the LightningModule
(:class:`SegmentationModule`) and the training callback of its loss (:class:`GammaScheduleCallback`)."""

from models.checkpoint import (
    CheckpointMismatchError,
    check_checkpoint,
    load_checkpoint_weights,
    read_checkpoint,
)
from models.gamma_schedule import GammaScheduleCallback
from models.inference import (
    InferenceConfig,
    activation_for_mode,
    labels_from_probabilities,
    predict_probabilities,
)
from models.inference_checkpoint import InferenceInfo, load_for_inference, read_inference_checkpoint
from models.module import SegmentationModule
from models.networks import build_network, init_head_prior, output_channels, prior_bias, size_multiple

__all__ = [
    "CheckpointMismatchError",
    "GammaScheduleCallback",
    "InferenceConfig",
    "InferenceInfo",
    "SegmentationModule",
    "activation_for_mode",
    "build_network",
    "check_checkpoint",
    "init_head_prior",
    "labels_from_probabilities",
    "load_checkpoint_weights",
    "load_for_inference",
    "output_channels",
    "predict_probabilities",
    "prior_bias",
    "read_checkpoint",
    "read_inference_checkpoint",
    "size_multiple",
]
