r"""Probabilities for images of any size: whole-image or sliding-window inference, flip TTA (torch only).

:func:`predict_probabilities` takes a normalised (N, C_in, H, W) float tensor of any H, W and returns
(N, K, H, W) probabilities; :func:`labels_from_probabilities` turns them into labels. How is set by an
:class:`InferenceConfig` (built from the ``inference`` config group by ``hydra.utils.instantiate``):

- ``whole``: pad bottom/right to the network's ``multiple``, one forward pass, crop back.
- ``slide``: tiles of ``tile`` pixels on a grid of stride ``int(tile * (1 - overlap))`` (at least 1) per
  axis, the last tile shifted back to end at the border (as MONAI's ``dense_patch_slices``). An image
  smaller than the tile along an axis is padded bottom/right to the tile there, and the output cropped
  back. Tiles go through the network ``batch_size`` at a time; their probabilities are blended with an
  importance map and divided by the summed map.
- ``auto``: ``slide`` when the image exceeds the tile in either dimension, else ``whole``.

Blending: the importance map of a tile is the outer product of one vector per axis (``constant``: ones;
``gaussian``: ``exp(-d^2 / (2 sigma^2))`` with ``sigma = tile / 8`` along that axis, ``d`` the distance to
the tile centre ``(tile - 1) / 2``, as nnU-Net and MONAI, scaled to max 1, values that underflow to 0
clamped to the smallest non-zero value). On the product grid of tile starts the summed map is then
separable too, ``S(y, x) = S_h(y) * S_w(x)`` with ``S_h(y) = sum_i g_h(y - a_i)`` over the row starts
``a_i``, so each tile's weight is divided by ``S_h`` and ``S_w`` before it is added and no H x W weight
or count buffer is ever allocated: the accumulator is the output. MONAI's ``sliding_window_inference``
gives the same result to float rounding with constant blending, and with Gaussian blending when it is
given our map (``roi_weight_map``); its default Gaussian floors the 2-D map at 1e-3, which weighs the
overlapping tiles equally along the image borders (where the map falls below 1e-3), ours keeps the
Gaussian's ratios there, as nnU-Net's does.

The pieces, as nnU-Net's ``predict_from_raw_data`` splits them: the tile grid and the boxes of each batch of
tiles (:mod:`inference.tiles`), one forward pass of a batch of tiles with its flips
(:func:`forward_tiles`), adding weighted tiles into the accumulator (:func:`accumulate`), and the driver
(:func:`predict_probabilities`).

Test-time augmentation (``tta``): every combination of the chosen flips is one pass, and the passes are
averaged with equal weights: ``("hflip",)`` averages identity and h; ``("hflip", "vflip")`` averages
identity, h, v and hv (4 passes; the combination hv is a 180-degree rotation, included as nnU-Net's
mirroring does). Each pass is exactly "run the chosen inference on the flipped image (padded at its own
bottom/right, tiled on its own grid), then flip the probabilities back"; it is computed tile by tile from
the un-flipped image (a tile of the flipped image is a flipped tile of the image at the mirrored
position), so no flipped copy of the image and no second accumulator are made.

Exactness (pinned by ``tests/inference/test_predict.py``): ``slide`` with a tile that covers the padded
image equals ``whole``; ``whole`` equals "pad to the multiple, forward, activation, crop"; any blend of a
pointwise network equals ``whole`` to float rounding. A network with a receptive field of radius r > 0
is exact only at pixels farther than r from every interior tile edge: a tile's output within r of its own
edge sees the convolutions' padding instead of the neighbouring pixels, and both blends (ours and
MONAI's) still give that output a non-zero weight (the Gaussian a small one); and, when H or W is not a
multiple, within r of the bottom/right border, where ``whole`` pads the image and a border tile does not.
"""


from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from evaluation.calibration import apply_temperature
from evaluation.thresholds import apply_threshold
from inference.config import ACTIVATIONS, InferenceConfig, activation_for_mode
from inference.memory import AccumulationPlan, plan_accumulation
from inference.tiles import (
    TileBox,
    TileGrid,
    axis_weights,
    pad_bottom_right,
    tile_boxes,
    tile_grid,
    tile_weights,
)
from models.speed import is_channels_last
from seglosses.checks import check_choice, check_number
from seglosses.modes import BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE, check_mode

__all__ = [
    "InferencePredictor",
    "accumulate",
    "forward_tiles",
    "labels_from_probabilities",
    "logits_from_probabilities",
    "predict_probabilities",
    "predictor_for",
]


def _network_placement(network: nn.Module, image: Tensor) -> tuple[torch.device, torch.dtype]:
    for tensor in itertools.chain(network.parameters(), network.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return image.device, image.dtype


def _check_inputs(config: InferenceConfig, image: Tensor, activation: str) -> None:
    if not isinstance(config, InferenceConfig):
        raise ValueError(f"config must be an InferenceConfig, got {type(config).__name__}")
    check_choice(activation, "activation", ACTIVATIONS)
    if not isinstance(image, Tensor) or image.ndim != 4 or not image.is_floating_point():
        got = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a normalised (N, C_in, H, W) float tensor, got {got}")
    if min(image.shape) < 1:
        raise ValueError(f"image must not be empty, got shape {tuple(image.shape)}")


def forward_tiles(network: nn.Module, image: Tensor, boxes: list[TileBox], grid: TileGrid,
                  flip_dims: tuple[int, ...], activation: str, pad_mode: str, multiple: int,
                  temperature: Tensor | float | None = None) -> Tensor:
    """One pass of one batch of tiles (nnU-Net's ``_internal_maybe_mirror_and_predict``): the tiles of
    ``image`` at ``boxes`` (their valid part), moved to the network's device, parameter dtype and memory
    format (channels_last when the weights are), flipped
    along ``flip_dims``, padded bottom/right to the tile (``pad_mode``), through the network, the
    ``activation`` in float32 (of the logits divided by ``temperature`` when given: a scalar or one per
    channel, :func:`evaluation.calibration.apply_temperature`), cropped back to the valid part. Returns
    (k, K, valid_h, valid_w) probabilities in the flipped frame (flip them back to add them)."""
    device, dtype = _network_placement(network, image)
    valid_h, valid_w = grid.valid
    pad_h, pad_w = grid.pad
    x = torch.stack([image[box.image, :, box.top : box.top + valid_h, box.left : box.left + valid_w]
                     for box in boxes])
    x = x.to(device=device, dtype=dtype)
    if is_channels_last(network):
        x = x.contiguous(memory_format=torch.channels_last)
    if flip_dims:
        x = x.flip(flip_dims)
    if pad_h or pad_w:
        x = pad_bottom_right(x, pad_h, pad_w, pad_mode)
    logits, in_shape = network(x), tuple(x.shape)
    del x
    if not isinstance(logits, Tensor) or logits.ndim != 4 or logits.shape[2:] != in_shape[2:]:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"the network's output {got} does not have its input's size {in_shape}: inference needs dense "
            f"(B, K, h, w) logits (is inference.multiple={multiple} the network's size multiple?)"
        )
    logits = logits.float()
    if temperature is not None:
        logits = apply_temperature(logits, temperature)
    probs = logits.softmax(1) if activation == "softmax" else logits.sigmoid()
    del logits
    return probs[:, :, :valid_h, :valid_w]


def accumulate(acc: Tensor, probs: Tensor, boxes: list[TileBox], grid: TileGrid) -> None:
    """Add the (k, K, valid_h, valid_w) weighted probabilities of the boxes' tiles (in the image's frame)
    into the (N, K, H, W) accumulator ``acc``, on its device and in its dtype."""
    valid_h, valid_w = grid.valid
    probs = probs.to(device=acc.device, dtype=acc.dtype)
    for k, box in enumerate(boxes):
        acc[box.image, :, box.top : box.top + valid_h, box.left : box.left + valid_w] += probs[k]


def _accumulator(shape: tuple[int, ...], network_device: torch.device,
                 accumulate_device: torch.device | str | None,
                 accumulate_dtype: torch.dtype | str | None) -> tuple[Tensor, AccumulationPlan]:
    plan = plan_accumulation(shape, network_device, accumulate_device, accumulate_dtype)
    with torch.inference_mode(False):  # a normal tensor: callers may modify it
        return torch.zeros(shape, device=plan.device, dtype=plan.dtype), plan


def predict_probabilities(
    network: nn.Module,
    image: Tensor,
    config: InferenceConfig,
    *,
    activation: str,
    accumulate_device: torch.device | str | None = None,
    accumulate_dtype: torch.dtype | str | None = None,
    return_plan: bool = False,
    temperature: Tensor | float | None = None,
) -> Tensor | tuple[Tensor, AccumulationPlan]:
    r"""(N, K, H, W) probabilities of ``network`` on a normalised (N, C_in, H, W) image of any H, W.

    Args:
        network: maps (B, C_in, h, w) to (B, K, h, w) logits for h, w multiples of ``config.multiple``.
            Run in eval mode (its training flag is restored afterwards) under ``torch.inference_mode``;
            tiles are moved to its device and parameter dtype, one batch at a time, so ``image`` may stay
            on the CPU while the network is on a GPU.
        image: normalised float images, already on any device.
        config: :class:`InferenceConfig` (mode, tile, overlap, blend, batch_size, tta, pad_mode, multiple).
        activation: ``"softmax"`` (multiclass) or ``"sigmoid"`` (binary, multilabel); see
            :func:`activation_for_mode`. Computed in float32.
        accumulate_device, accumulate_dtype: override the memory rule below (see
            :func:`plan_accumulation`; ``accumulate_dtype="auto"`` allows float16 on the CPU).
        return_plan: also return the :class:`AccumulationPlan` that was chosen.
        temperature: calibration (``evaluation.calibrate``): every pass's logits are divided by it before
            the activation (a scalar or one per channel); ``None``: none.

    Returns:
        The probabilities, on the accumulation device in its dtype (float32 unless asked otherwise), an
        ordinary tensor (not an inference tensor); with ``return_plan``, ``(probabilities, plan)``.

    Memory rule: probabilities are accumulated in one (N, K, H, W) tensor, which is also the result;
    blending weights are divided by the separable summed map per tile, so there is no count or weight
    map of the image. It lives on the network's device when it is the CPU, or (CUDA) when its float32
    size ``4·N·K·H·W`` is at most :data:`DEVICE_MEMORY_FRACTION` of the device memory available;
    otherwise on the CPU, each tile's weighted probabilities being copied there. It is float32 (exact)
    unless ``accumulate_dtype`` says otherwise. Peak memory above the input, B = ``batch_size``,
    (T_h, T_w) the tile (``whole``: B = N and T = H, W padded to the multiple), A(B, T) the network's own
    peak for one forward of B tiles, b the accumulator's bytes per value (4 or 2):

        accumulator + transients ≤ b·N·K·H·W + 4·B·(C_in + 3·K)·T_h·T_w + A(B, T)

    (the transients are the stacked input tiles, the logits, the probabilities and their weighted copy;
    vectors of length H and W aside). With the accumulator on the CPU, the device holds only the
    transients, independent of the image size, and the CPU the accumulator plus one batch of weighted
    probabilities.

    Raises:
        ValueError: a bad ``image``, ``activation`` or config (naming the ``inference.*`` key), a network
            output whose size differs from its input's.
    """
    _check_inputs(config, image, activation)
    n, _, height, width = image.shape
    grid = tile_grid(config, n, height, width)
    net_device, _ = _network_placement(network, image)
    passes = config.flip_passes
    weights_h, ones_h = axis_weights(height, grid.tile[0], grid.starts_h, grid.blend, 1.0 / len(passes),
                                     net_device)
    weights_w, ones_w = axis_weights(width, grid.tile[1], grid.starts_w, grid.blend, 1.0, net_device)
    acc: Tensor | None = None
    plan: AccumulationPlan | None = None
    was_training = network.training
    network.eval()
    try:
        with torch.inference_mode():
            for dims in passes:
                for boxes in tile_boxes(grid, n, dims):
                    probs = forward_tiles(network, image, boxes, grid, dims, activation, config.pad_mode,
                                          config.multiple, temperature)
                    if not (ones_h and ones_w):
                        probs.mul_(tile_weights(weights_h, weights_w, boxes))
                    if dims:
                        probs = probs.flip(dims)
                    if acc is None:
                        shape = (n, probs.shape[1], height, width)
                        acc, plan = _accumulator(shape, net_device, accumulate_device, accumulate_dtype)
                    accumulate(acc, probs, boxes, grid)
                    del probs
    finally:
        network.train(was_training)
    assert acc is not None and plan is not None
    return (acc, plan) if return_plan else acc


def labels_from_probabilities(probs: Tensor, mode: str, threshold: float = 0.5,
                              thresholds: Tensor | None = None) -> Tensor:
    """Labels from (N, K, H, W) probabilities: multiclass argmax -> (N, H, W) class ids; binary
    ``p > threshold`` -> (N, H, W) {0, 1} (K must be 1); multilabel ``p > threshold`` -> (N, K, H, W)
    {0, 1}. int64, on the device of ``probs``. ``thresholds`` (K,), fitted per label on validation, replace
    ``threshold`` and are applied by the rule they were searched with, ``p >= t``
    (:func:`evaluation.thresholds.apply_threshold`)."""
    check_mode(mode)
    if thresholds is not None and mode != MULTICLASS_MODE:
        if not isinstance(probs, Tensor) or probs.ndim != 4:
            raise ValueError("probabilities must be (N, K, H, W)")
        on = apply_threshold(probs, thresholds.to(probs.device))
        return on[:, 0] if mode == BINARY_MODE else on
    check_number(threshold, "threshold", minimum=0)
    if threshold > 1:
        raise ValueError(f"threshold must be in [0, 1] (a probability), got {threshold!r}")
    if not isinstance(probs, Tensor) or probs.ndim != 4:
        got = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise ValueError(f"probabilities must be (N, K, H, W), got {got}")
    if mode == MULTICLASS_MODE:
        return probs.argmax(1)
    if mode == BINARY_MODE:
        if probs.shape[1] != 1:
            raise ValueError(f"binary probabilities have one channel (the foreground), got {probs.shape[1]}")
        return (probs[:, 0] > threshold).long()
    assert mode == MULTILABEL_MODE
    return (probs > threshold).long()


def logits_from_probabilities(probs: Tensor, mode: str, eps: float = 1e-7) -> Tensor:
    """Logits whose activation gives ``probs`` back (softmax: ``log p``; sigmoid: ``log(p / (1 - p))``),
    clamped to ``[eps, 1 - eps]`` so that they stay finite."""
    p = probs.float().clamp(eps, 1 - eps)
    if activation_for_mode(mode) == "softmax":
        return p.log()
    return p.log() - torch.log1p(-p)


@dataclass(frozen=True)
class InferencePredictor:
    """``predictor(network, images) -> logits``: :func:`predict_probabilities` with ``config`` (the same
    inferer as ``predict.py``), turned back into logits (:func:`logits_from_probabilities`) on the images'
    device, so that a loss can be computed on them. What ``runs.build`` gives the LightningModule as its
    ``test_predictor``."""

    config: InferenceConfig
    mode: str
    temperature: Tensor | None = None  # divides every pass's logits before the activation (calibration)

    def __call__(self, network: nn.Module, images: Tensor) -> Tensor:
        probs = predict_probabilities(network, images, self.config, activation=activation_for_mode(self.mode),
                                      temperature=self.temperature)
        return logits_from_probabilities(probs.to(images.device), self.mode)


def predictor_for(config: InferenceConfig | None, mode: str) -> InferencePredictor | None:
    """The test split's predictor for ``config``; ``None`` (one forward pass of the padded batch) when
    ``config`` is None or plain whole-image inference without TTA, which is the same."""
    if config is not None and not isinstance(config, InferenceConfig):
        raise ValueError(f"inference must be an InferenceConfig or None, got {type(config).__name__}")
    if config is None or (config.mode == "whole" and not config.tta):
        return None
    return InferencePredictor(config, check_mode(mode))
