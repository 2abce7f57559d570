"""Self-contained checkpoints: what a trained network needs to be used without its run directory.

Every checkpoint written by :class:`models.SegmentationModule` (best and last) carries an ``"inference"``
entry, a plain dict (:class:`InferenceInfo`): the network's config, the label metadata (mode, class names,
ignore_index, a colour per class), the input (channels, normalisation mean/std) and the training crop.
:func:`load_for_inference` rebuilds the network from it::

    network, info = load_for_inference("RUN/checkpoints/best-epoch007.ckpt")
    probs = predict_probabilities(network, image, InferenceConfig(mode="slide", tile=info.crop_size, ...),
                                  activation=activation_for_mode(info.mode))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inference.checkpoints import read_checkpoint
from models.module import INFERENCE_KEY
from seglosses.modes import check_mode

__all__ = [
    "INFERENCE_FORMAT",
    "INFERENCE_KEY",
    "INFERENCE_VERSION",
    "InferenceInfo",
    "load_for_inference",
    "network_state_dict",
    "read_inference_checkpoint",
]

INFERENCE_FORMAT = "imbalanced-seg/inference"
#: Version 2: the optional ``temperature`` and ``thresholds`` (post-hoc fits, docs/evaluation.md). Metadata
#: without them is still written as version 1 (readable by older versions of the project); a reader older
#: than version 2 would ignore them, so it is refused instead.
INFERENCE_VERSION = 2
#: Prefix of the network's weights in the LightningModule's state dict.
NETWORK_PREFIX = "network."
#: ``_target_`` values a checkpoint may name: building a network must not run arbitrary code.
NETWORK_TARGET = "models.build_network"
ARCH_PACKAGE = "segmentation_models_pytorch."
#: Fields that metadata of version 1 lacks.
OPTIONAL_FIELDS = ("temperature", "thresholds")


@dataclass(frozen=True)
class InferenceInfo:
    """What a checkpoint says about using its network (all plain values; JSON- and ``weights_only``-safe).

    Attributes:
        network: config of :func:`models.build_network` (``_target_``, ``arch``, ``encoder_*``, ...), with
            ``encoder_weights: null`` and ``prior_init: false`` (the weights come from the checkpoint).
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        num_classes: output channels of the network (binary: 1).
        class_names: one name per scored class (binary: background, foreground).
        class_colors: one [R, G, B] (0..255) per entry of ``class_names``.
        in_channels: image channels the network takes (1 or 3).
        mean, std: per-channel normalisation of images scaled to [0, 1] (``(x / 255 - mean) / std``), or
            None when the images were not normalised.
        ignore_index: the label value left out in training (None: none).
        crop_size: (H, W) of the training samples (the default inference tile), or None.
        size_multiple: H and W of the network's input must be multiples of it.
        temperature: the logits are divided by it before the activation (``evaluation.calibrate``): a
            float, a list of one per output channel, or None (not calibrated).
        thresholds: binary/multilabel, one decision threshold per output channel fitted on validation
            (``inference.threshold=auto``; a label is on where ``p >= t``), or None.
    """

    network: dict[str, Any]
    mode: str
    num_classes: int
    class_names: list[str]
    class_colors: list[list[int]]
    in_channels: int
    mean: list[float] | None
    std: list[float] | None
    ignore_index: int | None
    crop_size: list[int] | None
    size_multiple: int
    temperature: float | list[float] | None = None
    thresholds: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        fitted = self.temperature is not None or self.thresholds is not None
        return {"format": INFERENCE_FORMAT, "version": INFERENCE_VERSION if fitted else 1, **asdict(self)}

    @classmethod
    def from_dict(cls, entry: Any, path: str | Path = "<checkpoint>") -> InferenceInfo:
        """Check and read a checkpoint's ``"inference"`` entry; ValueError naming what is wrong."""
        if not isinstance(entry, dict) or entry.get("format") != INFERENCE_FORMAT:
            raise ValueError(f"{path}: the '{INFERENCE_KEY}' entry is not {INFERENCE_FORMAT} metadata")
        version = entry.get("version")
        if not isinstance(version, int) or version > INFERENCE_VERSION:
            raise ValueError(
                f"{path}: inference metadata version {version!r} is newer than this version of the "
                f"project reads ({INFERENCE_VERSION}); update the project"
            )
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in entry and n not in OPTIONAL_FIELDS]
        if missing:
            raise ValueError(f"{path}: inference metadata lacks {missing}")
        info = cls(**{n: entry[n] for n in names if n in entry})
        check_mode(info.mode)
        if len(info.class_colors) != len(info.class_names):
            raise ValueError(
                f"{path}: {len(info.class_colors)} class colours for {len(info.class_names)} classes"
            )
        _check_fitted(info, path)
        return info


def _check_fitted(info: InferenceInfo, path: str | Path) -> None:
    """Temperatures positive, one or one per channel; thresholds in [0, 1], one per channel."""
    t = info.temperature
    if t is not None:
        values = t if isinstance(t, list) else [t]
        if not values or any(not isinstance(v, (int, float)) or not v > 0 for v in values) \
                or (isinstance(t, list) and len(t) != info.num_classes):
            raise ValueError(f"{path}: temperature {t!r} is not a positive number or one per channel "
                             f"({info.num_classes})")
    if info.thresholds is not None:
        th = info.thresholds
        if info.mode == "multiclass" or not isinstance(th, list) or len(th) != info.num_classes \
                or any(not isinstance(v, (int, float)) or not 0 <= v <= 1 for v in th):
            raise ValueError(f"{path}: thresholds {th!r} are not one probability per channel of a binary or "
                             "multilabel model")


def read_inference_checkpoint(path: str | Path) -> tuple[dict[str, Any], InferenceInfo]:
    """The checkpoint at ``path`` (loaded ``weights_only``) and its :class:`InferenceInfo`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a readable checkpoint (truncated, another kind of file, Python objects inside), or
            one without inference metadata (written before it existed: evaluate such a checkpoint with
            ``python train.py train=false ckpt_path=...`` and the run's overrides).
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)  # weights_only: loading runs no code from the file
    if INFERENCE_KEY not in checkpoint:
        raise ValueError(
            f"{path} has no inference metadata ('{INFERENCE_KEY}' entry): it was written by an older "
            "version of this project or by another program. Such a checkpoint still evaluates with "
            "`python train.py train=false ckpt_path=PATH` and the overrides of its run "
            "(<run dir>/.hydra/overrides.yaml); retrain, or resume it for one epoch, to get a "
            "self-contained checkpoint"
        )
    return checkpoint, InferenceInfo.from_dict(checkpoint[INFERENCE_KEY], path)


def network_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights of a :class:`models.SegmentationModule` checkpoint (prefix removed)."""
    state = checkpoint["state_dict"]
    return {k[len(NETWORK_PREFIX) :]: v for k, v in state.items() if k.startswith(NETWORK_PREFIX)}


def _check_targets(config: dict[str, Any], path: Path) -> None:
    target = config.get("_target_")
    arch = (config.get("arch") or {}).get("_target_") if isinstance(config.get("arch"), dict) else None
    if target != NETWORK_TARGET or not isinstance(arch, str) or not arch.startswith(ARCH_PACKAGE):
        raise ValueError(
            f"{path}: the network config names _target_={target!r}, arch._target_={arch!r}; only "
            f"{NETWORK_TARGET} with a {ARCH_PACKAGE}* architecture is built from a checkpoint"
        )


def load_for_inference(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, InferenceInfo]:
    """The trained network of a checkpoint, in eval mode on ``map_location``, and its :class:`InferenceInfo`.

    The network is rebuilt from the checkpoint's own config (no run directory, no overrides, no download)
    and loaded strictly. The file is read with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_inference_checkpoint`; also when the network config
            or weights in the file do not fit together (the message names the first mismatches).

    Example::

        network, info = load_for_inference("outputs/2026-12-01/10-00-00/checkpoints/last.ckpt")
        info.class_names, info.mean, info.crop_size
    """
    from hydra.utils import instantiate  # the network config is a Hydra node, built as in training

    path = Path(path)
    checkpoint, info = read_inference_checkpoint(path)
    _check_targets(info.network, path)
    network = instantiate(info.network)
    state = network_state_dict(checkpoint)
    result = network.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: the weights do not fit the network its config builds: missing "
            f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    return network.to(map_location).eval(), info
