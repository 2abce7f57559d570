"""Segmentation networks from config: any segmentation-models-pytorch architecture, plus prior init.

Hydra looks the architecture class up (``arch: {_target_: segmentation_models_pytorch.Unet,
_partial_: true, ...}``); :func:`build_network` only adds what every architecture shares: the number of
output channels for the loss mode, the input channels, the encoder, a clear error when pretrained
weights cannot be downloaded, and the optional prior initialisation of the segmentation head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from models.speed import to_channels_last
from seglosses.checks import check_int
from seglosses.modes import BINARY_MODE, MULTICLASS_MODE, check_num_classes, output_channels

__all__ = [
    "MIN_FREQUENCY",
    "build_network",
    "find_head_conv",
    "init_head_prior",
    "output_channels",
    "prior_bias",
    "size_multiple",
]

# Frequencies are clamped to [MIN_FREQUENCY, 1 - MIN_FREQUENCY] before the log: a class never seen in
# the training labels gets a finite bias (log 1e-6 = -13.8) instead of -inf.
MIN_FREQUENCY = 1e-6
# RetinaNet (Lin et al. 2017) draws the final conv weights from N(0, 0.01^2) when the bias carries the prior.
HEAD_WEIGHT_STD = 0.01


def prior_bias(mode: str, num_classes: int, frequencies: float | Sequence[float] | Tensor) -> Tensor:
    r"""Bias of the output layer for which the untrained network predicts ``frequencies``.

    - ``multiclass`` (softmax): ``b_c = log f_c`` with ``f`` normalised to sum 1, so
      ``softmax(b) = f``.
    - ``binary`` / ``multilabel`` (sigmoid): ``b_c = -log((1 - \pi_c) / \pi_c)`` (RetinaNet), so
      ``sigmoid(b_c) = \pi_c``.

    Args:
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        num_classes: classes the network predicts, its output channels (binary: 1).
        frequencies: ``multiclass``: one pixel frequency per class (any positive scale; normalised).
            ``binary``: the foreground prior ``\pi`` as a number (e.g. 0.01), a 1-sequence ``[pi]``,
            or ``[f_background, f_foreground]`` (``\pi = f_fg / (f_bg + f_fg)``).
            ``multilabel``: one ``\pi_c`` per class, each in [0, 1] (the share of pixels where ``c`` is on).
            Values are clamped to ``[1e-6, 1 - 1e-6]`` so that the bias is finite.

    Returns:
        (num_classes,) float32 tensor.
    """
    check_num_classes(mode, num_classes)
    if not isinstance(frequencies, (Tensor, int, float)):  # lists, tuples, OmegaConf ListConfig
        frequencies = [float(v) for v in frequencies]
    f = torch.as_tensor(frequencies, dtype=torch.float64).flatten()
    if f.numel() == 0 or not torch.isfinite(f).all() or (f < 0).any():
        raise ValueError(f"prior frequencies must be finite and >= 0, got {f.tolist()}")
    if mode == MULTICLASS_MODE:
        if f.numel() != num_classes:
            raise ValueError(
                f"multiclass prior needs one frequency per class ({num_classes}), "
                f"got {f.numel()}: {f.tolist()}"
            )
        if float(f.sum()) <= 0:
            raise ValueError(f"multiclass prior frequencies must not all be 0, got {f.tolist()}")
        f = (f / f.sum()).clamp_min(MIN_FREQUENCY)
        return torch.log(f / f.sum()).float()
    if mode == BINARY_MODE:
        if f.numel() == 2:
            if float(f.sum()) <= 0:
                raise ValueError(f"binary prior frequencies must not both be 0, got {f.tolist()}")
            f = f[1:] / f.sum()
        elif f.numel() != 1:
            raise ValueError(
                "binary prior is the foreground frequency pi (a number or [pi]) or [f_background, "
                f"f_foreground], got {f.tolist()}"
            )
    elif f.numel() != num_classes:
        raise ValueError(
            f"multilabel prior needs one frequency per class ({num_classes}), got {f.numel()}: {f.tolist()}"
        )
    if (f > 1).any():
        raise ValueError(f"sigmoid priors are probabilities in [0, 1], got {f.tolist()}")
    pi = f.clamp(MIN_FREQUENCY, 1 - MIN_FREQUENCY)
    return (-torch.log((1 - pi) / pi)).float()


def size_multiple(network: nn.Module, default: int = 32) -> int:
    """The multiple an input's H and W must be for ``network``: the encoder's output stride for smp
    networks (``2 ** encoder_depth`` for U-Nets, 16 for dilated DeepLab encoders), else ``default``."""
    stride = getattr(getattr(network, "encoder", None), "output_stride", None)
    return int(stride) if isinstance(stride, int) and stride > 0 else default


def find_head_conv(network: nn.Module, out_channels: int) -> nn.Conv2d:
    """The conv layer that produces the logits: the last ``Conv2d`` with ``out_channels`` outputs inside
    ``network.segmentation_head`` (smp), else in the whole network."""
    scope = getattr(network, "segmentation_head", network)
    convs = [m for m in scope.modules() if isinstance(m, nn.Conv2d) and m.out_channels == out_channels]
    if not convs:
        raise ValueError(
            f"found no Conv2d with {out_channels} output channels in {type(network).__name__}'s "
            "segmentation head; prior_init needs a conv output layer"
        )
    return convs[-1]


@torch.no_grad()
def init_head_prior(
    network: nn.Module, mode: str, num_classes: int, frequencies: float | Sequence[float] | Tensor
) -> None:
    """Set the output bias to :func:`prior_bias` and redraw the output weights from N(0, 0.01^2)."""
    bias = prior_bias(mode, num_classes, frequencies)
    conv = find_head_conv(network, bias.numel())
    if conv.bias is None:
        raise ValueError(f"the output conv of {type(network).__name__} has no bias; prior_init needs one")
    nn.init.normal_(conv.weight, std=HEAD_WEIGHT_STD)
    conv.bias.copy_(bias.to(conv.bias))


def build_network(
    arch: Callable[..., nn.Module],
    num_classes: int,
    in_channels: int = 3,
    mode: str = "multiclass",
    encoder_name: str = "resnet18",
    encoder_depth: int = 5,
    encoder_weights: str | None = None,
    prior_init: bool = False,
    prior: float | Sequence[float] | None = None,
    class_frequencies: Sequence[float] | Tensor | None = None,
    channels_last: bool = False,
    compile: bool = False,
) -> nn.Module:
    r"""Build ``arch(encoder_name, encoder_depth, encoder_weights, in_channels, classes)`` for ``mode``.

    Args:
        arch: a callable returning the network, typically a Hydra partial of an smp class
            (``segmentation_models_pytorch.Unet`` with its decoder options bound).
        num_classes: classes the network predicts (``${datamodule.num_classes}``; see
            :mod:`seglosses.modes`): binary 1 (the foreground), multiclass >= 2, multilabel the labels.
        in_channels: channels of the input images.
        mode: loss mode; the network has ``num_classes`` outputs (binary: 1, one sigmoid logit).
        encoder_name, encoder_depth: smp encoder options.
        encoder_weights: ``None`` (random init, offline) or a pretrained tag such as ``"imagenet"``,
            downloaded from the Hugging Face Hub on first use.
        prior_init: initialise the output bias so that the untrained network predicts the class
            frequencies (:func:`init_head_prior`).
        prior: frequencies for ``prior_init`` given in the config (e.g. ``0.01`` for binary);
            takes precedence over ``class_frequencies``.
        class_frequencies: per-class pixel frequencies measured on the training labels (passed by the
            training script); used by ``prior_init`` when ``prior`` is ``None``.
        channels_last: store the weights channels_last (NHWC; faster convolutions on CPUs and tensor-core
            GPUs for most architectures: ``benchmarks/bench_formats.py``); the inputs are converted where
            they enter. The state dict and the exported models do not change.
        compile: compile the forward pass with ``torch.compile`` (``nn.Module.compile``: the state dict
            keeps its keys). The first steps then take a while.

    Shape:
        input (N, in_channels, H, W) -> output (N, num_classes, H, W).

    Raises:
        ValueError: bad mode/num_classes, unknown encoder or weights name, prior_init without frequencies.
        RuntimeError: pretrained weights requested but not downloadable (offline).
    """
    classes = output_channels(mode, num_classes)
    check_int(in_channels, "in_channels", minimum=1)
    kwargs = {
        "encoder_name": encoder_name,
        "encoder_depth": encoder_depth,
        "encoder_weights": encoder_weights,
        "in_channels": in_channels,
        "classes": classes,
    }
    try:
        network = arch(**kwargs)
    except KeyError as e:  # smp: unknown encoder name or weights tag, with the valid options
        raise ValueError(
            f"model.encoder_name={encoder_name!r}, model.encoder_weights={encoder_weights!r}: "
            f"{e.args[0] if e.args else e}"
        ) from e
    except OSError as e:  # huggingface_hub / urllib / requests errors are all OSErrors
        if encoder_weights is None:
            raise
        raise RuntimeError(
            f"could not download the pretrained weights model.encoder_weights={encoder_weights!r} for "
            f"encoder {encoder_name!r} ({type(e).__name__}: {e}). They are fetched from the Hugging Face "
            "Hub on first use and cached (~/.cache/huggingface). Connect to the internet once or copy the "
            "cache to this machine, or train from scratch with model.encoder_weights=null."
        ) from e
    if prior_init:
        frequencies = prior if prior is not None else class_frequencies
        if frequencies is None:
            raise ValueError(
                "model.prior_init=true needs frequencies: set model.prior (e.g. 0.01 for binary) or let "
                "the training script pass class_frequencies from the label statistics"
            )
        init_head_prior(network, mode, num_classes, frequencies)
    if channels_last:
        to_channels_last(network)
    if compile:
        network.compile()
    return network
