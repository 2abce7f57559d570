"""How images are predicted: :class:`InferenceConfig` (the ``inference.*`` keys, each checked once) and the
activation of each label mode (:func:`activation_for_mode`)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from seglosses.checks import check_choice, check_int, check_number
from seglosses.modes import MULTICLASS_MODE, check_mode

__all__ = [
    "ACTIVATIONS",
    "AUTO_THRESHOLD",
    "BLENDS",
    "FLIPS",
    "INFERENCE_MODES",
    "PAD_MODES",
    "InferenceConfig",
    "activation_for_mode",
    "check_threshold",
]

INFERENCE_MODES = ("whole", "slide", "auto")
BLENDS = ("gaussian", "constant")
#: ``hflip`` mirrors the width (dim -1), ``vflip`` the height (dim -2).
FLIPS = ("hflip", "vflip")
FLIP_DIMS = {"hflip": 3, "vflip": 2}
PAD_MODES = ("constant", "reflect")
ACTIVATIONS = ("softmax", "sigmoid")
#: ``inference.threshold=auto``: the thresholds fitted on validation (docs/evaluation.md).
AUTO_THRESHOLD = "auto"


@dataclass(frozen=True)
class InferenceConfig:
    """How :func:`predict_probabilities` runs the network (the ``inference.*`` keys; every one checked).

    Args:
        mode: ``"whole"`` (pad to ``multiple``, one pass), ``"slide"`` (tiles) or ``"auto"`` (slide only
            when the image exceeds the tile in either dimension).
        tile: tile size, an int or (h, w), each a multiple of ``multiple``; stored as (h, w). ``None``:
            the caller supplies one (the training crop) with :meth:`with_default_tile`; ``slide`` and
            ``auto`` need one.
        overlap: share of a tile that neighbouring tiles overlap, in [0, 1); stride
            ``int(tile * (1 - overlap))`` (at least 1) per axis.
        blend: ``"gaussian"`` (sigma = tile / 8 per axis) or ``"constant"`` weights for the tiles'
            probabilities.
        batch_size: tiles per forward pass (``slide``); ``whole`` forwards the caller's N images at once.
        tta: flips to average over, any subset of ``("hflip", "vflip")`` (a list, a tuple, one name or
            None); every combination of them is one pass: ``("hflip", "vflip")`` averages identity, h,
            v and hv.
        pad_mode: ``"constant"`` (0: images are normalised, as the eval pipeline pads them) or
            ``"reflect"`` (repeated for pads longer than the image; a 1-pixel side is replicated).
        multiple: the network's size multiple (``2 ** encoder_depth`` for smp encoders, e.g. 32).
        threshold: binary/multilabel decision: a probability in [0, 1] (a label is on where ``p >
            threshold``) or ``"auto"``: the per-label thresholds fitted on validation (``train.py``: fit
            them after training, ``p >= t``; ``predict.py``: the checkpoint's, else 0.5). Multiclass takes
            the argmax (see ``docs/evaluation.md``).
    """

    mode: str = "whole"
    tile: int | tuple[int, int] | None = None
    overlap: float = 0.25
    blend: str = "gaussian"
    batch_size: int = 4
    tta: tuple[str, ...] = ()
    pad_mode: str = "constant"
    multiple: int = 32
    threshold: float | str = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold))
        check_choice(self.mode, "inference.mode", INFERENCE_MODES)
        multiple = check_int(self.multiple, "inference.multiple", minimum=1)
        overlap = float(check_number(self.overlap, "inference.overlap", minimum=0))
        if overlap >= 1:
            raise ValueError(
                f"inference.overlap must be in [0, 1) (the share of a tile its neighbours overlap), "
                f"got {self.overlap!r}"
            )
        check_choice(self.blend, "inference.blend", BLENDS)
        batch_size = check_int(self.batch_size, "inference.batch_size", minimum=1)
        check_choice(self.pad_mode, "inference.pad_mode", PAD_MODES)
        object.__setattr__(self, "multiple", multiple)
        object.__setattr__(self, "overlap", overlap)
        object.__setattr__(self, "batch_size", batch_size)
        object.__setattr__(self, "tile", _parse_tile(self.tile, multiple))
        object.__setattr__(self, "tta", _parse_tta(self.tta))

    def with_default_tile(self, tile: int | Sequence[int] | None) -> InferenceConfig:
        """This config with ``tile`` filled in when it is ``None`` (e.g. from the training crop)."""
        return self if self.tile is not None or tile is None else replace(self, tile=tile)

    def mode_for(self, height: int, width: int) -> str:
        """``"whole"`` or ``"slide"``: what :func:`predict_probabilities` runs on an image of this size."""
        if self.mode == "whole":
            return "whole"
        if self.tile is None:
            raise ValueError(
                f"inference.mode={self.mode!r} needs a tile: set inference.tile (a multiple of "
                f"inference.multiple={self.multiple}) or let the caller pass the training crop"
            )
        if self.mode == "slide":
            return "slide"
        th, tw = self.tile
        return "slide" if height > th or width > tw else "whole"

    @property
    def flip_passes(self) -> list[tuple[int, ...]]:
        """The flipped dims of every TTA pass: ``[()]`` without TTA; all combinations of the flips."""
        dims = [FLIP_DIMS[f] for f in self.tta]
        return [tuple(sorted(c)) for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]


def _parse_tile(tile: Any, multiple: int) -> tuple[int, int] | None:
    if tile is None:
        return None
    if isinstance(tile, Sequence) and not isinstance(tile, str):  # list, tuple, OmegaConf ListConfig
        values = list(tile)
        if len(values) != 2:
            raise ValueError(f"inference.tile must be an int, [h, w] or null, got {values!r}")
    else:
        values = [tile, tile]
    h, w = (check_int(v, "inference.tile", minimum=1) for v in values)
    if h % multiple or w % multiple:
        nearest = [max(multiple, round(v / multiple) * multiple) for v in (h, w)]
        raise ValueError(
            f"inference.tile={[h, w]} must be a multiple of inference.multiple={multiple} (the network's "
            f"size multiple) in both dimensions, e.g. {nearest}"
        )
    return h, w


def _parse_tta(tta: Any) -> tuple[str, ...]:
    if tta is None:
        return ()
    if isinstance(tta, str):
        tta = [tta]
    if not isinstance(tta, Sequence):  # list, tuple, OmegaConf ListConfig
        raise ValueError(f"inference.tta must be a list of flips from {FLIPS}, got {tta!r}")
    flips = tuple(tta)
    for i, flip in enumerate(flips):
        check_choice(flip, f"inference.tta[{i}]", FLIPS)
    if len(set(flips)) != len(flips):
        raise ValueError(f"inference.tta lists a flip twice: {list(flips)}")
    return flips


def check_threshold(value: Any) -> float | str:
    """``inference.threshold``: ``"auto"`` or a probability in [0, 1] (as a float)."""
    if value == AUTO_THRESHOLD:
        return AUTO_THRESHOLD
    if isinstance(value, str):
        raise ValueError(f"inference.threshold must be auto or a probability in [0, 1], got {value!r}")
    threshold = float(check_number(value, "inference.threshold", minimum=0))
    if threshold > 1:
        raise ValueError(f"inference.threshold must be in [0, 1] (a probability) or auto, got {value!r}")
    return threshold


def activation_for_mode(mode: str) -> str:
    """``"softmax"`` for multiclass, ``"sigmoid"`` for binary and multilabel (:mod:`seglosses.modes`)."""
    return "softmax" if check_mode(mode) == MULTICLASS_MODE else "sigmoid"
