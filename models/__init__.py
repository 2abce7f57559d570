"""Segmentation networks from config, the LightningModule, per-class metrics and training callbacks."""

from models.callbacks import GammaScheduleCallback, PredictionGridCallback, label_flags
from models.checkpoint import (
    CheckpointMismatchError,
    check_checkpoint,
    load_checkpoint_weights,
    read_checkpoint,
)
from models.metrics import (
    MultilabelSegmentationMetrics,
    SegmentationMetrics,
    metric_logs,
    scores_from_confusion,
    scores_from_counts,
    scores_from_multilabel_confusion,
)
from models.module import SegmentationModule
from models.networks import build_network, init_head_prior, output_channels, prior_bias
from models.report import class_table, print_class_table, summarize

__all__ = [
    "CheckpointMismatchError",
    "GammaScheduleCallback",
    "MultilabelSegmentationMetrics",
    "PredictionGridCallback",
    "SegmentationMetrics",
    "SegmentationModule",
    "build_network",
    "check_checkpoint",
    "class_table",
    "init_head_prior",
    "label_flags",
    "load_checkpoint_weights",
    "metric_logs",
    "output_channels",
    "print_class_table",
    "prior_bias",
    "read_checkpoint",
    "scores_from_confusion",
    "scores_from_counts",
    "scores_from_multilabel_confusion",
    "summarize",
]
