"""``logger=mlflow`` (conf/logger/mlflow.yaml) and runs.tracking: the run's config as params, every logged
metric (per class too), figures and files as artifacts, read back with MLflow's own client; a missing
install names the extra; class names MLflow would refuse fail before training; figures in TensorBoard."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from runs.build import build_loggers
from runs.tracking import check_mlflow_class_names, log_figure, log_files
from runs.training import run
from tests.overrides import SMALL_UNET
from tests.test_train import make_cfg, read_metrics

# Spaces and parentheses: Lightning's MLFlowLogger drops the parentheses from the metric keys.
CLASSES = ["background", "big disc (round)", "square", "bar", "cross"]
CLASS_OVERRIDE = "datamodule.class_names=[background,'big disc (round)',square,bar,cross]"


def _png(path: Path, size: tuple[int, int] = (6, 4)) -> tuple[Path, np.ndarray]:
    """A small RGB PNG of distinct pixels, and its (H, W, 3) uint8 array."""
    w, h = size
    pixels = (np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3) * 7) % 251
    Image.fromarray(pixels).save(path)
    return path, pixels


# ---- without a run ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_logger_options_compose(tmp_path):
    assert list(make_cfg(tmp_path, "logger=mlflow").logger) == ["mlflow"]
    cfg = make_cfg(tmp_path, "logger=[default,mlflow]")
    assert list(cfg.logger) == ["tensorboard", "csv", "mlflow"]
    node = cfg.logger.mlflow
    assert node.tracking_uri == f"sqlite:///{cfg.paths.output_dir}/mlflow.db"  # offline, in the run directory
    assert node.artifact_location.startswith(str(cfg.paths.output_dir))
    server = make_cfg(tmp_path, "logger=mlflow", "logger.mlflow.tracking_uri=http://mlflow.example:5000",
                      "logger.mlflow.artifact_location=null")
    assert server.logger.mlflow.tracking_uri == "http://mlflow.example:5000"


@pytest.mark.slow
def test_missing_mlflow_names_the_extra(tmp_path, monkeypatch):
    """Lightning's own error only says `pip install -U 'mlflow>=1.0.0'`: the project's extra is named."""
    from lightning_utilities.core.imports import RequirementCache
    from pytorch_lightning.loggers import mlflow as lightning_mlflow

    monkeypatch.setattr(lightning_mlflow, "_MLFLOW_AVAILABLE", RequirementCache("mlflow>=999"))
    cfg = make_cfg(tmp_path, "logger=mlflow")
    with pytest.raises(ModuleNotFoundError, match=r'logger\.mlflow: .*pip install -e "\.\[mlflow\]"'):
        build_loggers(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("[background,disc,square,bar,'ü']", "MLflow refuses"),  # nothing left of the name
        ("[background,disc,square,'a (b)','a b']", "both give the MLflow metric key 'val/iou/a b'"),
        ("[background,disc,square,bar,'..']", "MLflow refuses"),  # not a plain path
    ],
)
def test_class_names_mlflow_would_refuse_fail_before_training(tmp_path, names, message):
    cfg = make_cfg(tmp_path, "logger=mlflow", f"datamodule.class_names={names}")
    with pytest.raises(ValueError, match=r"datamodule\.class_names: .*") as err:
        build_loggers(cfg)
    assert message in str(err.value)


@pytest.mark.slow
def test_class_names_with_spaces_and_parentheses_pass(tmp_path):
    check_mlflow_class_names(make_cfg(tmp_path, "logger=mlflow", CLASS_OVERRIDE))
    check_mlflow_class_names(make_cfg(tmp_path, "logger=mlflow"))  # the synthetic defaults


def test_log_figure_writes_a_tensorboard_image(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    png, pixels = _png(tmp_path / "figure.png")
    tensorboard = TensorBoardLogger(tmp_path / "logs", name="tb", version="")
    csv_logger = CSVLogger(tmp_path / "logs", name="csv", version="")
    log_figure([csv_logger, tensorboard], "confusion/test", png, step=3)
    log_files([csv_logger, tensorboard], [png])  # no logger keeps files: nothing happens

    events = EventAccumulator(tensorboard.log_dir, size_guidance={IMAGES: 0})
    events.Reload()
    assert events.Tags()[IMAGES] == ["confusion/test"]
    (image,) = events.Images("confusion/test")
    assert image.step == 3 and (image.width, image.height) == (6, 4)
    decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(decoded, pixels)
    assert not list((tmp_path / "logs" / "csv").glob("*.png"))


# ---- a training run ---------------------------------------------------------------------------------------


def _csv_column(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


@pytest.mark.slow
def test_mlflow_run_has_params_metrics_and_artifacts(tmp_path):
    """A 2-epoch run with `logger=[csv,mlflow]`: MLflow has the config as params, every value the CSV
    logger got (per class, the parentheses of a class name dropped), and the artifacts of runs.tracking."""
    mlflow = pytest.importorskip("mlflow")
    from pytorch_lightning.loggers import MLFlowLogger

    cfg = make_cfg(tmp_path, "debug=limit", *SMALL_UNET, "logger=[csv,mlflow]", CLASS_OVERRIDE,
                   "callbacks.prediction_grid=null", "optimizer.lr=0.002")
    run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    uri = cfg.logger.mlflow.tracking_uri
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.logger.mlflow.experiment_name)
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.tags["output_dir"] == str(run_dir)

    params = found.data.params
    assert params["optimizer/lr"] == "0.002"
    assert params["datamodule/_target_"] == "datamodules.SyntheticDataModule"
    assert params["trainer/max_epochs"] == "2" and params["optimized_metric"] == "val/mIoU"
    assert params["datamodule/class_names"] == str(CLASSES)

    epochs = cfg.trainer.max_epochs
    for key in ("val/mIoU", "val/iou/background", "val/iou/big disc round", "val/dice/cross", "train/loss"):
        history = [m.value for m in client.get_metric_history(found.info.run_id, key)]
        expected = _csv_column(run_dir, key.replace("big disc round", "big disc (round)"))
        assert history == pytest.approx(expected, nan_ok=True), key
    # one value per trained epoch and one of the validation of the best checkpoint after fitting
    assert len(client.get_metric_history(found.info.run_id, "val/iou/big disc round")) == epochs + 1
    assert "test/iou/big disc round" in found.data.metrics
    # the run's own files (runs.training: metrics.json, the evaluation CSVs and the heatmaps)
    listed = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"metrics.json", "test_per_image.csv", "confusion_val.csv", "confusion_test.csv",
            "confusion_val.png", "confusion_test.png"} <= listed

    # runs.tracking, on the finished run (as at the end of a run: after the loggers were finalised)
    logger = MLFlowLogger(tracking_uri=uri, run_id=found.info.run_id)
    png, _ = _png(tmp_path / "figure.png")
    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "notes.txt").write_text("notes")
    log_files([logger], [run_dir / "metrics.json", tmp_path / "missing.json", folder])
    log_figure([logger], "figure", png, step=1)
    listed = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"metrics.json", "figure.png", "extra"} <= listed
    assert [a.path for a in client.list_artifacts(found.info.run_id, "extra")] == ["extra/notes.txt"]
    local = Path(mlflow.artifacts.download_artifacts(run_id=found.info.run_id, artifact_path="metrics.json",
                                                     tracking_uri=uri))
    assert local.read_text() == (run_dir / "metrics.json").read_text()
    assert read_metrics(cfg)["val"]["per_class"].keys() == set(CLASSES)
