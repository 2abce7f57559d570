"""Using a trained network: how images are predicted (:class:`InferenceConfig`), whole-image and
sliding-window prediction with flip TTA (:func:`predict_probabilities`, split into :mod:`inference.tiles`
and the pieces of :mod:`inference.predict`), the memory plan (:mod:`inference.memory`), and checkpoints:
the one reader (:func:`read_checkpoint`), loading weights into a model (:func:`load_checkpoint_weights`) and
the self-contained metadata (:class:`InferenceInfo`, :func:`load_for_inference`)."""

from inference.checkpoints import (
    CheckpointMismatchError,
    check_checkpoint,
    load_checkpoint_weights,
    read_checkpoint,
)
from inference.config import InferenceConfig, activation_for_mode
from inference.memory import AccumulationPlan, plan_accumulation
from inference.metadata import InferenceInfo, load_for_inference, read_inference_checkpoint
from inference.predict import (
    InferencePredictor,
    labels_from_probabilities,
    logits_from_probabilities,
    predict_probabilities,
    predictor_for,
)
from inference.tiles import importance_vector, tile_starts

__all__ = [
    "AccumulationPlan",
    "CheckpointMismatchError",
    "InferenceConfig",
    "InferenceInfo",
    "InferencePredictor",
    "activation_for_mode",
    "check_checkpoint",
    "importance_vector",
    "labels_from_probabilities",
    "load_checkpoint_weights",
    "load_for_inference",
    "logits_from_probabilities",
    "plan_accumulation",
    "predict_probabilities",
    "predictor_for",
    "read_checkpoint",
    "read_inference_checkpoint",
    "tile_starts",
]
