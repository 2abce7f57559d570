"""What ``python export.py`` does: write a checkpoint's network as ONNX or TorchScript, with a JSON sidecar,
and check that the exported model computes what the PyTorch network computes.

- ONNX: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter; needs ``onnx`` and
  ``onnxscript``) with dynamic batch, height and width; checked with onnxruntime on the CPU.
- The exported graph is the network alone: it outputs the uncalibrated logits. ``model.json`` carries the
  checkpoint's ``temperature`` and ``thresholds`` (post-hoc fits, ``null`` when not fitted) and says in
  ``output.postprocessing`` how to apply them.
- TorchScript: ``torch.jit.trace`` (scripting does not cover smp's networks; TorchScript itself is in
  maintenance in recent PyTorch in favour of ``torch.export``); checked after ``torch.jit.load``.

The check runs the exported model on a random input of a batch and size other than the one exported with
(so dynamic shapes are exercised) and fails the command (:class:`ExportCheckError`, exit status 1) when
``|exported - pytorch| > atol + rtol * |pytorch|`` anywhere.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from inference import InferenceInfo, activation_for_mode, load_for_inference
from safeio import atomic_path, write_json
from seglosses.checks import check_choice, check_int, check_number

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "ExportCheckError", "ExportResult", "export", "export_network"]

FORMATS = ("onnx", "torchscript")
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.pt"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"


class ExportCheckError(RuntimeError):
    """The exported model's outputs differ from the PyTorch network's beyond the tolerance."""


@dataclass(frozen=True)
class ExportResult:
    model: Path
    sidecar: Path
    max_abs_diff: float
    check_shape: tuple[int, ...]
    seconds: float


def _sizes(info: InferenceInfo, size: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """(export size, check size): the training crop (or 4 multiples) and a different size of multiples."""
    m = info.size_multiple
    if size is None:
        size = info.crop_size or [4 * m, 4 * m]
    h, w = (
        check_int(v, "check.size", minimum=m)
        for v in (list(size) if not isinstance(size, int) else [size, size])
    )
    if h % m or w % m:
        raise ValueError(f"check.size={[h, w]} must be a multiple of the network's size multiple {m}")
    return (h, w), (h + m, w + 2 * m)


def _export_onnx(network: nn.Module, example: Tensor, path: Path, opset: int | None) -> None:
    kwargs: dict[str, Any] = {} if opset is None else {"opset_version": int(opset)}
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one INFO line per deduplicated initializer
    with atomic_path(path) as tmp:
        torch.onnx.export(
            network,
            (example,),
            str(tmp),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: "batch", 2: "height", 3: "width"},),
            external_data=False,  # one file (smp networks are far below ONNX's 2 GB protobuf limit)
            verbose=False,
            **kwargs,
        )


def _run_onnx(path: Path, x: Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _export_torchscript(network: nn.Module, example: Tensor, path: Path) -> None:
    traced = torch.jit.trace(network, example, check_trace=False)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))


def _run_torchscript(path: Path, x: Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.jit.load(str(path), map_location="cpu")(x).numpy()


def _postprocessing(info: InferenceInfo) -> str:
    """How to turn the exported (uncalibrated) logits into what ``predict.py`` writes."""
    steps = []
    if info.temperature is not None:
        steps.append("divide the logits by temperature (per channel when a list) before the activation")
    if info.thresholds is not None:
        steps.append("a label is on where its probability >= thresholds[label]")
    elif info.mode != "multiclass":
        steps.append("a label is on where its probability > 0.5")
    else:
        steps.append("the class is the argmax (the temperature does not change it)")
    return "the model outputs uncalibrated logits; " + "; ".join(steps)


def _sidecar_record(info: InferenceInfo, path: Path, fmt: str, source: str | None, shape: tuple[int, ...],
                    max_abs: float, atol: float, rtol: float, passed: bool) -> dict[str, Any]:
    """What ``model.json`` says about the exported ``path``: the checkpoint's metadata, the exporter, the
    input and output, and the check on an input of ``shape``."""
    return {
        **{k: v for k, v in info.to_dict().items() if k != "network"},
        "network": info.network,
        "file": path.name,
        "export_format": fmt,
        "exporter": "torch.onnx.export(dynamo=True)" if fmt == "onnx" else "torch.jit.trace",
        "torch_version": torch.__version__,
        "source_checkpoint": source,
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": info.in_channels,
            "normalisation": "(x / 255 - mean) / std" if info.mean is not None else "x / 255",
            "height_width": f"any multiples of {info.size_multiple} (dynamic), batch dynamic",
        },
        "output": {"name": OUTPUT_NAME, "activation": activation_for_mode(info.mode), "layout": "NCHW",
                   "postprocessing": _postprocessing(info)},
        "check": {
            "input_shape": list(shape),
            "max_abs_diff": max_abs,
            "atol": atol,
            "rtol": rtol,
            "passed": passed,
        },
    }


def export_network(
    network: nn.Module,
    info: InferenceInfo,
    fmt: str,
    output: Path,
    *,
    size: Any = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    opset: int | None = None,
    source: str | None = None,
) -> ExportResult:
    """Export ``network`` (on the CPU, eval mode) to ``output/model.onnx`` or ``output/model.pt`` plus
    ``output/model.json`` and check it (see the module docstring). Raises :class:`ExportCheckError`."""
    check_choice(fmt, "format", FORMATS)
    check_number(atol, "check.atol", minimum=0)
    check_number(rtol, "check.rtol", minimum=0)
    export_size, check_size = _sizes(info, size)
    network = network.cpu().eval()
    output.mkdir(parents=True, exist_ok=True)
    path = output / FILE_NAMES[fmt]
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(1, info.in_channels, *export_size, generator=generator)
    start = time.perf_counter()
    with torch.no_grad():
        if fmt == "onnx":
            _export_onnx(network, example, path, opset)
        else:
            _export_torchscript(network, example, path)
    seconds = time.perf_counter() - start

    x = torch.randn(2, info.in_channels, *check_size, generator=generator)
    with torch.inference_mode():
        expected = network(x).numpy()
    got = _run_onnx(path, x) if fmt == "onnx" else _run_torchscript(path, x)
    if got.shape != expected.shape:
        raise ExportCheckError(
            f"{path}: output shape {got.shape} for input {tuple(x.shape)}, PyTorch gives {expected.shape}"
        )
    diff = np.abs(got - expected)
    max_abs = float(diff.max())
    worst = float((diff - rtol * np.abs(expected)).max())
    sidecar = output / "model.json"
    record = _sidecar_record(info, path, fmt, source, tuple(x.shape), max_abs, atol, rtol, worst <= atol)
    write_json(sidecar, record)
    if worst > atol:
        raise ExportCheckError(
            f"{path}: the exported model differs from the PyTorch network by up to {max_abs:.3g} on a "
            f"random input {tuple(x.shape)} (tolerance atol={atol} + rtol={rtol} * |output|); the export is "
            "not faithful: try the other format, or another opset (opset=)"
        )
    log.info(
        "exported %s in %.1f s; check on %s: max |diff| %.3g (atol %g, rtol %g)",
        path,
        seconds,
        tuple(x.shape),
        max_abs,
        atol,
        rtol,
    )
    return ExportResult(path, sidecar, max_abs, tuple(x.shape), seconds)


def export(cfg: DictConfig) -> ExportResult:
    """``python export.py``: :func:`inference.load_for_inference` of ``cfg.ckpt_path``, then
    :func:`export_network` into ``cfg.output``."""
    check_choice(cfg.format, "format", FORMATS)
    network, info = load_for_inference(cfg.ckpt_path)
    network = network.to(memory_format=torch.contiguous_format)  # exported as trained, whatever the format
    return export_network(
        network,
        info,
        cfg.format,
        Path(cfg.output),
        size=cfg.check.size,
        atol=float(cfg.check.atol),
        rtol=float(cfg.check.rtol),
        opset=cfg.opset,
        source=str(cfg.ckpt_path),
    )
