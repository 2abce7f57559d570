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

Test-time augmentation (``tta``): every combination of the chosen flips is one pass, and the passes are
averaged with equal weights: ``("hflip",)`` averages identity and h; ``("hflip", "vflip")`` averages
identity, h, v and hv (4 passes; the combination hv is a 180-degree rotation, included as nnU-Net's
mirroring does). Each pass is exactly "run the chosen inference on the flipped image (padded at its own
bottom/right, tiled on its own grid), then flip the probabilities back"; it is computed tile by tile from
the un-flipped image (a tile of the flipped image is a flipped tile of the image at the mirrored
position), so no flipped copy of the image and no second accumulator are made.

Exactness (pinned by ``tests/models/test_inference.py``): ``slide`` with a tile that covers the padded
image equals ``whole``; ``whole`` equals "pad to the multiple, forward, activation, crop"; any blend of a
pointwise network equals ``whole`` to float rounding. A network with a receptive field of radius r > 0
is exact only at pixels farther than r from every interior tile edge: a tile's output within r of its own
edge sees the convolutions' padding instead of the neighbouring pixels, and both blends (ours and
MONAI's) still give that output a non-zero weight (the Gaussian a small one); and, when H or W is not a
multiple, within r of the bottom/right border, where ``whole`` pads the image and a border tile does not.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglosses.checks import check_choice, check_int, check_number
from seglosses.modes import BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE, check_mode

__all__ = [
    "ACTIVATIONS",
    "BLENDS",
    "CPU_MEMORY_FRACTION",
    "DEVICE_MEMORY_FRACTION",
    "FLIPS",
    "INFERENCE_MODES",
    "PAD_MODES",
    "AccumulationPlan",
    "InferenceConfig",
    "InferencePredictor",
    "activation_for_mode",
    "importance_vector",
    "labels_from_probabilities",
    "logits_from_probabilities",
    "plan_accumulation",
    "predict_probabilities",
    "predictor_for",
    "tile_starts",
]

INFERENCE_MODES = ("whole", "slide", "auto")
BLENDS = ("gaussian", "constant")
#: ``hflip`` mirrors the width (dim -1), ``vflip`` the height (dim -2).
FLIPS = ("hflip", "vflip")
FLIP_DIMS = {"hflip": 3, "vflip": 2}
PAD_MODES = ("constant", "reflect")
ACTIVATIONS = ("softmax", "sigmoid")
#: Gaussian blending: sigma = tile * GAUSSIAN_SIGMA_SCALE per axis (nnU-Net, MONAI's default 0.125).
GAUSSIAN_SIGMA_SCALE = 1 / 8
#: The accumulator stays on a CUDA network's device while it needs at most this share of the memory
#: still available there (free + cached by PyTorch); the rest is left to the forward passes.
DEVICE_MEMORY_FRACTION = 0.5
#: ``accumulate_dtype="auto"``: float16 when the float32 accumulator exceeds this share of the CPU's
#: available memory (``MemAvailable``).
CPU_MEMORY_FRACTION = 0.5


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
    """

    mode: str = "whole"
    tile: int | tuple[int, int] | None = None
    overlap: float = 0.25
    blend: str = "gaussian"
    batch_size: int = 4
    tta: tuple[str, ...] = ()
    pad_mode: str = "constant"
    multiple: int = 32

    def __post_init__(self) -> None:
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


def activation_for_mode(mode: str) -> str:
    """``"softmax"`` for multiclass, ``"sigmoid"`` for binary and multilabel (:mod:`seglosses.modes`)."""
    return "softmax" if check_mode(mode) == MULTICLASS_MODE else "sigmoid"


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one axis of ``size`` pixels (padded to ``tile`` when smaller).

    Stride ``max(1, int(tile * (1 - overlap)))``; the last tile is shifted back to end at the border, as
    MONAI's ``dense_patch_slices``.
    """
    length = max(size, tile)
    stride = max(1, int(tile * (1 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def importance_vector(length: int, blend: str, device: torch.device | str | None = None) -> Tensor:
    """One axis of the tile importance map, float64: ones, or a Gaussian (sigma = length / 8) centred at
    ``(length - 1) / 2``, scaled to max 1, zeros clamped to the smallest non-zero value."""
    check_choice(blend, "inference.blend", BLENDS)
    if blend == "constant":
        return torch.ones(length, dtype=torch.float64, device=device)
    sigma = length * GAUSSIAN_SIGMA_SCALE
    d = torch.arange(length, dtype=torch.float64, device=device) - (length - 1) / 2
    g = torch.exp(-(d**2) / (2 * sigma**2))
    g = g / g.max()
    positive = g[g > 0]
    return g.clamp_min(float(positive.min())) if positive.numel() < g.numel() else g


def _axis_weights(
    size: int, tile: int, starts: list[int], blend: str, scale: float, device: torch.device
) -> tuple[Tensor, bool]:
    """(len(starts), min(size, tile)) float32 weights per tile along one axis, the importance vector
    divided by its sum over the tiles covering each pixel (times ``scale``), and whether all are 1."""
    valid = min(size, tile)
    g = importance_vector(tile, blend)[:valid]
    summed = torch.zeros(max(size, tile), dtype=torch.float64)
    for s in starts:
        summed[s : s + valid] += g
    weights = torch.stack([g / summed[s : s + valid] for s in starts]) * scale
    return weights.to(device=device, dtype=torch.float32), bool((weights == 1).all())


@dataclass(frozen=True)
class AccumulationPlan:
    """Where and in which dtype :func:`predict_probabilities` accumulates (and returns) probabilities.

    ``bytes``: size of the accumulator; ``budget_bytes``: the budget it was compared with (None: none
    applied); ``reason``: the rule that decided, in words.
    """

    device: torch.device
    dtype: torch.dtype
    bytes: int
    budget_bytes: int | None
    reason: str


def _cuda_available_bytes(device: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def _cpu_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def plan_accumulation(
    shape: Sequence[int],
    network_device: torch.device | str,
    accumulate_device: torch.device | str | None = None,
    accumulate_dtype: torch.dtype | str | None = None,
) -> AccumulationPlan:
    r"""Choose the device and dtype of the (N, K, H, W) probability accumulator (the rule of
    :func:`predict_probabilities`).

    - Device: ``accumulate_device`` when given; else the network's device when it is the CPU; else (CUDA)
      the network's device when the float32 accumulator needs at most :data:`DEVICE_MEMORY_FRACTION` of
      the memory available there (free + cached by PyTorch), otherwise the CPU. Other accelerators: their
      device (no budget).
    - Dtype: ``accumulate_dtype`` when it is a dtype (float32, float16, bfloat16); ``None`` (default):
      float32, exact; ``"auto"``: float32 unless the float32 accumulator needs more than
      :data:`CPU_MEMORY_FRACTION` of the CPU's available memory and it would live on the CPU, then
      float16 (absolute error below ~1e-3 on probabilities).
    """
    n, k, h, w = (int(v) for v in shape)
    numel = n * k * h * w
    network_device = torch.device(network_device)
    if accumulate_dtype is None or accumulate_dtype == "float32":
        dtype, auto_dtype = torch.float32, False
    elif accumulate_dtype == "auto":
        dtype, auto_dtype = torch.float32, True
    elif accumulate_dtype in (torch.float32, torch.float16, torch.bfloat16):
        dtype, auto_dtype = accumulate_dtype, False
    else:
        raise ValueError(
            f"accumulate_dtype must be None, 'auto', torch.float32, torch.float16 or torch.bfloat16, "
            f"got {accumulate_dtype!r}"
        )
    need = numel * torch.finfo(dtype).bits // 8
    budget: int | None = None
    if accumulate_device is not None:
        device, reason = torch.device(accumulate_device), "accumulate_device given"
    elif network_device.type == "cpu":
        device, reason = network_device, "network on the CPU"
    elif network_device.type == "cuda":
        budget = int(DEVICE_MEMORY_FRACTION * _cuda_available_bytes(network_device))
        if need <= budget:
            device, reason = network_device, f"fits {DEVICE_MEMORY_FRACTION:g} of the available device memory"
        else:
            device = torch.device("cpu")
            reason = f"exceeds {DEVICE_MEMORY_FRACTION:g} of the available device memory: on the CPU"
    else:
        device, reason = network_device, f"network on {network_device.type} (no memory budget)"
    if auto_dtype and device.type == "cpu":
        available = _cpu_available_bytes()
        if available is not None:
            budget = int(CPU_MEMORY_FRACTION * available)
            if need > budget:
                dtype, need = torch.float16, numel * 2
                reason += f"; float32 exceeds {CPU_MEMORY_FRACTION:g} of the available CPU memory: float16"
    return AccumulationPlan(device, dtype, need, budget, reason)


def _pad_bottom_right(x: Tensor, pad_h: int, pad_w: int, pad_mode: str) -> Tensor:
    if pad_mode == "constant":
        return F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
    for dim, amount in ((2, pad_h), (3, pad_w)):
        while amount > 0:
            step = min(amount, x.shape[dim] - 1)
            pad = [0, 0, 0, 0]
            pad[1 if dim == 3 else 3] = step if step > 0 else amount
            x = F.pad(x, tuple(pad), mode="reflect" if step > 0 else "replicate")
            amount -= step if step > 0 else amount
    return x


def _network_placement(network: nn.Module, image: Tensor) -> tuple[torch.device, torch.dtype]:
    for tensor in itertools.chain(network.parameters(), network.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return image.device, image.dtype


def predict_probabilities(
    network: nn.Module,
    image: Tensor,
    config: InferenceConfig,
    *,
    activation: str,
    accumulate_device: torch.device | str | None = None,
    accumulate_dtype: torch.dtype | str | None = None,
    return_plan: bool = False,
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
    if not isinstance(config, InferenceConfig):
        raise ValueError(f"config must be an InferenceConfig, got {type(config).__name__}")
    check_choice(activation, "activation", ACTIVATIONS)
    if not isinstance(image, Tensor) or image.ndim != 4 or not image.is_floating_point():
        got = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a normalised (N, C_in, H, W) float tensor, got {got}")
    n, _, height, width = image.shape
    if min(image.shape) < 1:
        raise ValueError(f"image must not be empty, got shape {tuple(image.shape)}")
    mode = config.mode_for(height, width)
    m = config.multiple
    if mode == "whole":
        tile = (math.ceil(height / m) * m, math.ceil(width / m) * m)
        starts_h, starts_w, blend, batch = [0], [0], "constant", n
    else:
        assert config.tile is not None  # mode_for checked it
        tile = config.tile
        starts_h = tile_starts(height, tile[0], config.overlap)
        starts_w = tile_starts(width, tile[1], config.overlap)
        blend, batch = config.blend, config.batch_size
    net_device, net_dtype = _network_placement(network, image)
    passes = config.flip_passes
    scale = 1.0 / len(passes)
    weights_h, ones_h = _axis_weights(height, tile[0], starts_h, blend, scale, net_device)
    weights_w, ones_w = _axis_weights(width, tile[1], starts_w, blend, 1.0, net_device)
    uniform = ones_h and ones_w
    valid_h, valid_w = min(height, tile[0]), min(width, tile[1])
    pad_h, pad_w = tile[0] - valid_h, tile[1] - valid_w
    tasks = [(b, i, j) for b in range(n) for i in range(len(starts_h)) for j in range(len(starts_w))]

    acc: Tensor | None = None
    plan: AccumulationPlan | None = None
    was_training = network.training
    network.eval()
    try:
        with torch.inference_mode():
            for dims in passes:
                flip_h, flip_w = 2 in dims, 3 in dims
                for first in range(0, len(tasks), batch):
                    chunk = tasks[first : first + batch]
                    # Tile origins in the image: a tile of the flipped image is the flipped tile at the
                    # mirrored position (start s of the flipped frame -> size - s - valid).
                    boxes = [
                        (
                            b,
                            height - starts_h[i] - valid_h if flip_h else starts_h[i],
                            width - starts_w[j] - valid_w if flip_w else starts_w[j],
                        )
                        for b, i, j in chunk
                    ]
                    x = torch.stack([image[b, :, r : r + valid_h, c : c + valid_w] for b, r, c in boxes])
                    x = x.to(device=net_device, dtype=net_dtype)
                    if dims:
                        x = x.flip(dims)
                    if pad_h or pad_w:
                        x = _pad_bottom_right(x, pad_h, pad_w, config.pad_mode)
                    logits, in_shape = network(x), tuple(x.shape)
                    del x
                    if not isinstance(logits, Tensor) or logits.ndim != 4 or logits.shape[2:] != in_shape[2:]:
                        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                        raise ValueError(
                            f"the network's output {got} does not have its input's size {in_shape}: "
                            "inference needs dense (B, K, h, w) logits (is inference.multiple="
                            f"{m} the network's size multiple?)"
                        )
                    logits = logits.float()
                    probs = logits.softmax(1) if activation == "softmax" else logits.sigmoid()
                    del logits
                    probs = probs[:, :, :valid_h, :valid_w]
                    if not uniform:
                        rows = weights_h[[i for _, i, _ in chunk]]
                        cols = weights_w[[j for _, _, j in chunk]]
                        probs.mul_(rows[:, None, :, None] * cols[:, None, None, :])
                    if dims:
                        probs = probs.flip(dims)
                    if acc is None:
                        shape = (n, probs.shape[1], height, width)
                        plan = plan_accumulation(shape, net_device, accumulate_device, accumulate_dtype)
                        with torch.inference_mode(False):  # a normal tensor: callers may modify it
                            acc = torch.zeros(shape, device=plan.device, dtype=plan.dtype)
                    probs = probs.to(device=acc.device, dtype=acc.dtype)
                    for k, (b, r, c) in enumerate(boxes):
                        acc[b, :, r : r + valid_h, c : c + valid_w] += probs[k]
                    del probs
    finally:
        network.train(was_training)
    assert acc is not None and plan is not None
    return (acc, plan) if return_plan else acc


def labels_from_probabilities(probs: Tensor, mode: str, threshold: float = 0.5) -> Tensor:
    """Labels from (N, K, H, W) probabilities: multiclass argmax -> (N, H, W) class ids; binary
    ``p > threshold`` -> (N, H, W) {0, 1} (K must be 1); multilabel ``p > threshold`` -> (N, K, H, W)
    {0, 1}. int64, on the device of ``probs``."""
    check_mode(mode)
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

    def __call__(self, network: nn.Module, images: Tensor) -> Tensor:
        probs = predict_probabilities(network, images, self.config, activation=activation_for_mode(self.mode))
        return logits_from_probabilities(probs.to(images.device), self.mode)


def predictor_for(config: InferenceConfig | None, mode: str) -> InferencePredictor | None:
    """The test split's predictor for ``config``; ``None`` (one forward pass of the padded batch) when
    ``config`` is None or plain whole-image inference without TTA, which is the same."""
    if config is not None and not isinstance(config, InferenceConfig):
        raise ValueError(f"inference must be an InferenceConfig or None, got {type(config).__name__}")
    if config is None or (config.mode == "whole" and not config.tta):
        return None
    return InferencePredictor(config, check_mode(mode))

