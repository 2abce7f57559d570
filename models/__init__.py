"""Segmentation networks from config, the LightningModule, per-class metrics, training callbacks, and
inference: self-contained checkpoints (:func:`load_for_inference`), whole-image and sliding-window
prediction with flip TTA (:func:`predict_probabilities`)."""

from models.callbacks import GammaScheduleCallback, PredictionGridCallback, label_flags
from models.checkpoint import (
    CheckpointMismatchError,
    check_checkpoint,
    load_checkpoint_weights,
    read_checkpoint,
)
from models.inference import (
    InferenceConfig,
    activation_for_mode,
    labels_from_probabilities,
    predict_probabilities,
)
from models.inference_checkpoint import InferenceInfo, load_for_inference, read_inference_checkpoint
from models.metrics import (
    MultilabelSegmentationMetrics,
    PerImageCounts,
    SegmentationMetrics,
    metric_logs,
    per_image_counts,
    scores_from_confusion,
    scores_from_counts,
    scores_from_multilabel_confusion,
)
from models.module import SegmentationModule
from models.networks import build_network, init_head_prior, output_channels, prior_bias, size_multiple
from models.report import class_table, print_class_table, summarize, worst_images_table

__all__ = [
    "CheckpointMismatchError",
    "GammaScheduleCallback",
    "InferenceConfig",
    "InferenceInfo",
    "MultilabelSegmentationMetrics",
    "PerImageCounts",
    "PredictionGridCallback",
    "SegmentationMetrics",
    "SegmentationModule",
    "activation_for_mode",
    "build_network",
    "check_checkpoint",
    "class_table",
    "init_head_prior",
    "label_flags",
    "labels_from_probabilities",
    "load_checkpoint_weights",
    "load_for_inference",
    "metric_logs",
    "output_channels",
    "per_image_counts",
    "predict_probabilities",
    "print_class_table",
    "prior_bias",
    "read_checkpoint",
    "read_inference_checkpoint",
    "scores_from_confusion",
    "scores_from_counts",
    "scores_from_multilabel_confusion",
    "size_multiple",
    "summarize",
    "worst_images_table",
]
