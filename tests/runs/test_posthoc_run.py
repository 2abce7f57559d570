"""Post-hoc fits in checkpoints (runs.posthoc.store_in_checkpoint): predict.py applies the temperature and
the stored thresholds, export's model.json carries them; one train.py run that fits, stores and reports
them (evaluation.calibrate=true, inference.threshold=auto)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.posthoc import PosthocFit
from inference import InferenceConfig, load_for_inference, predict_probabilities, read_checkpoint
from runs.exporting import export_network
from runs.posthoc import store_in_checkpoint
from runs.predicting import normalise, predict
from runs.training import run
from tests.runs.inference_helpers import make_checkpoint, write_image
from tests.runs.test_failures import folder_overrides, make_cfg, write_folder_dataset
from tests.runs.test_predict import predict_cfg

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow


def _raw_probabilities(ckpt: Path, path: Path, activation: str, temperature: float | list[float]):
    """The network's logits of the image divided by ``temperature``, through the activation (whole image)."""
    network, info = load_for_inference(ckpt)
    x = normalise(np.asarray(Image.open(path)), info)
    config = InferenceConfig(multiple=info.size_multiple)
    raw = predict_probabilities(network, x, config, activation=activation)
    calibrated = predict_probabilities(network, x, config, activation=activation,
                                       temperature=torch.tensor(temperature))
    return raw[0], calibrated[0]


def test_binary_predict_uses_the_stored_temperature_and_thresholds_and_export_says_so(tmp_path):
    root = tmp_path / "data"
    write_folder_dataset(root, {"train": 4, "val": 2, "test": 2})
    ckpt, _ = make_checkpoint(tmp_path, *folder_overrides(root), "datamodule.num_classes=1",
                              "datamodule.mode=binary")
    path = write_image(tmp_path / "in" / "a.png", 40, 40)
    raw, calibrated = _raw_probabilities(ckpt, path, "sigmoid", 2.5)
    threshold = float(calibrated.median())  # about half of the pixels on, whatever the untrained network says
    store_in_checkpoint(ckpt, PosthocFit(torch.tensor(2.5, dtype=torch.float64), torch.tensor([threshold])))
    entry = read_checkpoint(ckpt)["inference"]
    assert entry["version"] == 2 and entry["temperature"] == 2.5 and entry["thresholds"] == [threshold]

    z = torch.logit(raw.double().clamp(1e-12, 1 - 1e-12))
    torch.testing.assert_close(calibrated.double(), (z / 2.5).sigmoid(), atol=1e-5, rtol=1e-4)
    out = tmp_path / "out"
    predict(predict_cfg(ckpt, path, out, "save.probabilities=float16", "inference.mode=whole"))
    probs = np.load(out / "probabilities" / "a.npy").astype(np.float32)
    np.testing.assert_allclose(probs, calibrated.numpy(), atol=1e-3)  # float16 file: sigmoid(z / T)
    mask = np.asarray(Image.open(out / "masks" / "a.png"))
    expected = (calibrated[0] >= threshold).numpy().astype(np.uint8)  # the stored threshold, p >= t
    np.testing.assert_array_equal(mask, expected)
    assert 0 < expected.mean() < 1
    out = tmp_path / "fixed"  # an explicit number overrides the stored thresholds
    predict(predict_cfg(ckpt, path, out, "inference.threshold=0.5", "inference.mode=whole"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "masks" / "a.png")),
                                  (calibrated[0] > 0.5).numpy().astype(np.uint8))

    network, info = load_for_inference(ckpt)
    export_network(network, info, "torchscript", tmp_path / "export")
    record = json.loads((tmp_path / "export" / "model.json").read_text())
    assert record["temperature"] == 2.5 and record["thresholds"] == [threshold]
    assert "uncalibrated logits" in record["output"]["postprocessing"]
    assert "divide the logits by temperature" in record["output"]["postprocessing"]


def test_multiclass_probabilities_are_softmax_of_z_over_t_and_the_argmax_does_not_change(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path)
    path = write_image(tmp_path / "in" / "a.png", 32, 32)
    raw, _ = _raw_probabilities(ckpt, path, "softmax", 1.0)
    temperatures = [0.5, 2.0, 3.0, 1.0, 0.25][: raw.shape[0]]
    store_in_checkpoint(ckpt, PosthocFit(torch.tensor(temperatures, dtype=torch.float64)))
    out = tmp_path / "out"
    predict(predict_cfg(ckpt, path, out, "save.probabilities=float16", "inference.mode=whole"))
    network, info = load_for_inference(ckpt)
    with torch.inference_mode():  # 32x32: a multiple of the network's, no padding
        z = network(normalise(np.asarray(Image.open(path)), info))[0].double()
    expected = (z / torch.tensor(temperatures, dtype=torch.float64).view(-1, 1, 1)).softmax(0)
    np.testing.assert_allclose(np.load(out / "probabilities" / "a.npy").astype(np.float64), expected.numpy(),
                               atol=2e-3)
    mask = np.asarray(Image.open(out / "masks" / "a.png"))
    np.testing.assert_array_equal(mask, expected.argmax(0).numpy())  # per-class T: the calibrated argmax


def test_a_run_fits_stores_and_reports_the_temperature_and_thresholds(tmp_path):
    root = tmp_path / "data"
    write_folder_dataset(root, {"train": 4, "val": 2, "test": 2})
    cfg = make_cfg(tmp_path, *folder_overrides(root), "datamodule.num_classes=1", "datamodule.mode=binary",
                   "evaluation.calibrate=true", "inference.threshold=auto")
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    calibration, threshold = metrics["calibration"], metrics["threshold"]
    assert calibration["source"] == "fitted on val" and calibration["temperature"] > 0
    for split in ("val", "test"):
        assert set(calibration[split]) == {"ece_before", "ece_after"}
    assert set(threshold["value"]) == {"class_0"} and 0 <= threshold["value"]["class_0"] <= 1
    assert set(threshold["val"]) == {"dice_at_0.5", "dice"} and "class_0" in threshold["test"]["dice"]
    assert threshold["val"]["dice"]["class_0"] >= threshold["val"]["dice_at_0.5"]["class_0"]
    entry = read_checkpoint(metrics["checkpoint"])["inference"]
    assert entry["temperature"] == pytest.approx(calibration["temperature"])
    assert entry["thresholds"] == [pytest.approx(threshold["value"]["class_0"])]


def test_threshold_auto_for_a_multiclass_run_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"inference\.threshold=auto"):
        run(make_cfg(tmp_path, "inference.threshold=auto"))
    assert not (tmp_path / "run" / "metrics.json").exists()
