"""Where and in which dtype :func:`inference.predict.predict_probabilities` accumulates: the memory rule
(:func:`plan_accumulation`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["CPU_MEMORY_FRACTION", "DEVICE_MEMORY_FRACTION", "AccumulationPlan", "plan_accumulation"]

#: The accumulator stays on a CUDA network's device while it needs at most this share of the memory
#: still available there (free + cached by PyTorch); the rest is left to the forward passes.
DEVICE_MEMORY_FRACTION = 0.5
#: ``accumulate_dtype="auto"``: float16 when the float32 accumulator exceeds this share of the CPU's
#: available memory (``MemAvailable``).
CPU_MEMORY_FRACTION = 0.5


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
