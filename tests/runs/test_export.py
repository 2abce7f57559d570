"""export.py (runs.exporting): ONNX and TorchScript with dynamic batch/H/W, the JSON sidecar, and the
self-check that fails the export when the exported model computes something else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import runs.exporting as exporting
from inference import load_for_inference
from runs.exporting import ExportCheckError, export_network
from tests.runs.inference_helpers import make_checkpoint

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path, _ = make_checkpoint(tmp_path_factory.mktemp("ckpt"))
    return load_for_inference(path)


def _check_sidecar(out: Path, info, fmt: str) -> dict:
    record = json.loads((out / "model.json").read_text())
    assert record["export_format"] == fmt
    assert record["class_names"] == info.class_names and record["class_colors"] == info.class_colors
    assert record["mean"] == info.mean and record["std"] == info.std
    assert record["mode"] == "multiclass" and record["in_channels"] == 3
    assert record["output"]["activation"] == "softmax"
    assert record["check"]["passed"] is True
    return record


def test_torchscript_round_trip_with_other_batch_and_size(trained, tmp_path):
    network, info = trained
    result = export_network(network, info, "torchscript", tmp_path)
    assert result.model == tmp_path / "model.pt" and result.check_shape == (2, 3, 40, 48)
    _check_sidecar(tmp_path, info, "torchscript")
    loaded = torch.jit.load(str(result.model))
    x = torch.randn(3, 3, 24, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network(x), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_onnx_round_trip_through_onnxruntime(trained, tmp_path):
    import onnxruntime as ort

    network, info = trained
    result = export_network(network, info, "onnx", tmp_path)
    record = _check_sidecar(tmp_path, info, "onnx")
    assert record["check"]["max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(result.model), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    x = torch.randn(1, 3, 56, 16)  # batch, height and width other than exported and checked
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, network(x).numpy(), atol=1e-4, rtol=1e-3)


def test_export_fails_when_the_exported_model_differs(trained, tmp_path, monkeypatch):
    network, info = trained
    real = exporting._run_torchscript
    monkeypatch.setattr(exporting, "_run_torchscript", lambda path, x: real(path, x) + 1e-2)
    with pytest.raises(ExportCheckError, match=r"differs from the PyTorch network"):
        export_network(network, info, "torchscript", tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["check"]["passed"] is False


def test_bad_export_options(trained, tmp_path):
    network, info = trained
    with pytest.raises(ValueError, match=r"format"):
        export_network(network, info, "tflite", tmp_path)
    with pytest.raises(ValueError, match=r"check.size"):
        export_network(network, info, "torchscript", tmp_path, size=[30, 30])
