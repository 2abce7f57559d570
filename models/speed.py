"""How fast a network trains and predicts: the precision choice (``precision: auto``), channels_last and
``torch.compile``; one home for each rule, used by training (``runs.build``), the test split and
``predict.py``.

``auto`` precision: bf16 autocast (``bf16-mixed``) where the hardware computes bf16 natively (a CPU with
AVX512-BF16 or AMX, a GPU with bf16 support; float16 autocast on older GPUs), float32 (``32-true``)
elsewhere: a CPU without native bf16 emulates it and trains slower than in float32. Weights, optimizer
state and checkpoints stay float32 under autocast; the losses and metrics cast to float32 themselves.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "AUTO",
    "INFERENCE_PRECISIONS",
    "autocast_dtype",
    "is_channels_last",
    "native_bf16",
    "resolve_precision",
    "to_channels_last",
]

AUTO = "auto"
#: /proc/cpuinfo flags of a CPU that computes bf16 natively (x86: AVX512-BF16, AMX; Arm: FEAT_BF16).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
#: ``precision`` values of ``predict.py`` (Lightning's names): ``auto`` resolves as in training.
INFERENCE_PRECISIONS = (AUTO, "32-true", "bf16-mixed", "16-mixed")
#: Lightning precision values of autocast and the dtype they compute in.
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = path.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 | Arm
            return set(value.split())
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether this CPU computes bf16 natively (``flags``: the CPU's feature flags; default: torch's own
    check on x86, else the flags of ``/proc/cpuinfo``)."""
    if flags is None:
        check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # torch >= 2.1, x86 builds
        if check is not None and platform.machine().lower() in ("x86_64", "amd64") and check():
            return True
        flags = _cpuinfo_flags()
    return bool(BF16_CPU_FLAGS & set(flags))


def _uses_cuda(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == AUTO and torch.cuda.is_available()


def resolve_precision(precision: str | int, accelerator: str = "cpu") -> tuple[str | int, str | None]:
    """``(precision, note)``: ``precision`` unchanged unless it is ``"auto"``, which becomes
    ``"bf16-mixed"`` (native bf16), ``"16-mixed"`` (a GPU without bf16) or ``"32-true"`` for the
    ``accelerator`` (``cpu``, ``gpu``/``cuda``, or ``auto``: CUDA when available). ``note`` says why an
    ``auto`` became float32 (to be logged once), else ``None``."""
    if precision != AUTO:
        return precision, None
    if _uses_cuda(accelerator):
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ("bf16-mixed" if bf16 else "16-mixed"), None
    if native_bf16():
        return "bf16-mixed", None
    return "32-true", (
        "precision auto: float32, this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag), where bf16 "
        "autocast would be emulated and slower"
    )


def autocast_dtype(precision: str | int) -> torch.dtype | None:
    """The autocast dtype of a resolved Lightning ``precision`` (``None``: no autocast)."""
    return AUTOCAST_DTYPES.get(str(precision))


def is_channels_last(network: nn.Module) -> bool:
    """Whether the network's 4-D weights are stored channels_last (NHWC): the first one whose layout tells
    (a 1x1 kernel with one input channel is both)."""
    for parameter in network.parameters():
        if parameter.dim() == 4:
            nhwc = parameter.is_contiguous(memory_format=torch.channels_last)
            if nhwc != parameter.is_contiguous():
                return nhwc
    return False


def to_channels_last(network: nn.Module) -> nn.Module:
    """The network with its 4-D weights in channels_last (in place); inputs are converted where they enter
    (``SegmentationModule.forward``, ``inference.forward_tiles``)."""
    return network.to(memory_format=torch.channels_last)
