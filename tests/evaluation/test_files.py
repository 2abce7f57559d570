"""Evaluation files of a run (evaluation.files): test_per_image.csv, confusion_<split>.csv/.png, the images
sent to TensorBoard (runs.tracking.log_figure); end to end with train.py, single process and DDP."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from evaluation.boundaries import boundary_scores
from evaluation.confusion import MultilabelSegmentationMetrics, SegmentationMetrics
from evaluation.families import FamilyEvaluation, FamilyResults
from evaluation.files import (
    normalize_rows,
    per_image_columns,
    plot_confusion,
    write_confusion_csv,
    write_evaluation_outputs,
    write_per_image_csv,
)
from evaluation.objects import object_counts
from evaluation.options import EvaluationOptions, TopologyOptions
from evaluation.per_image import PerImageCounts, per_image_counts
from runs.tracking import log_figure, log_files
from tests.overrides import QUIET, SMALL_UNET, SYNTHETIC_ODD

ROOT = Path(__file__).resolve().parents[2]
IGNORE = 255
NAMES = ["background", "car", "person"]


def _random_batch(seed: int, shape=(3, 8, 8), classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    preds = torch.randint(0, classes, shape, generator=g)
    target = torch.randint(0, classes, shape, generator=g)
    target[:, 0, :5] = IGNORE
    return preds, target


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ---- confusion matrices ------------------------------------------------------------------------------------


def test_confusion_csv_round_trip_counts_every_non_ignored_pixel(tmp_path):
    preds, target = _random_batch(0)
    metric = SegmentationMetrics(3, IGNORE)
    metric.update(preds, target)
    matrix = metric.compute_matrix()
    write_confusion_csv(tmp_path / "c.csv", matrix, NAMES)
    rows = _read_csv(tmp_path / "c.csv")
    assert rows[0] == ["true\\predicted", *NAMES]
    assert [r[0] for r in rows[1:]] == NAMES
    read = torch.tensor([[int(v) for v in r[1:]] for r in rows[1:]])
    torch.testing.assert_close(read, matrix)
    assert int(read.sum()) == int((target != IGNORE).sum())
    with pytest.raises(ValueError, match="names"):
        write_confusion_csv(tmp_path / "c.csv", matrix, NAMES[:2])


def test_multilabel_confusion_csv_has_one_row_per_label(tmp_path):
    g = torch.Generator().manual_seed(1)
    preds = torch.randint(0, 2, (2, 3, 4, 4), generator=g)
    target = torch.randint(0, 2, (2, 3, 4, 4), generator=g)
    target[:, :, 0] = IGNORE
    metric = MultilabelSegmentationMetrics(3, IGNORE)
    metric.update(preds, target)
    matrix = metric.compute_matrix()
    write_confusion_csv(tmp_path / "c.csv", matrix, NAMES)
    rows = _read_csv(tmp_path / "c.csv")
    assert rows[0] == ["label", "TN", "FP", "FN", "TP"]
    for c, row in enumerate(rows[1:]):
        t, p = target[:, c][target[:, c] != IGNORE], preds[:, c][target[:, c] != IGNORE]
        expected = [int(((t == a) & (p == b)).sum()) for a, b in ((0, 0), (0, 1), (1, 0), (1, 1))]
        assert row == [NAMES[c], *map(str, expected)]


def test_normalized_rows_sum_to_one_and_empty_rows_are_nan():
    matrix = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    norm = normalize_rows(matrix)
    np.testing.assert_allclose(norm[[0, 2]].sum(axis=1), [1.0, 1.0])
    np.testing.assert_allclose(norm[0], [0.75, 0.25, 0.0])
    assert np.isnan(norm[1]).all()
    stack = normalize_rows(torch.tensor([[[5, 5], [0, 0]], [[1, 3], [2, 2]]]))  # multilabel: per label row
    np.testing.assert_allclose(stack[1], [[0.25, 0.75], [0.5, 0.5]])
    assert np.isnan(stack[0, 1]).all() and stack[0, 0].tolist() == [0.5, 0.5]


@pytest.mark.slow
@pytest.mark.parametrize("matrix", [
    torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 4]]),  # a class without pixels
    torch.tensor([[[5, 5], [0, 0]], [[1, 3], [2, 2]], [[0, 1], [1, 0]]]),  # multilabel
])
def test_heatmap_is_a_png(tmp_path, matrix):
    plot_confusion(tmp_path / "c.png", matrix, NAMES, "test confusion matrix, epoch 3")
    with Image.open(tmp_path / "c.png") as image:
        assert image.format == "PNG" and min(image.size) > 100


# ---- per-image rows ----------------------------------------------------------------------------------------


def test_per_image_csv_columns_counts_and_nan(tmp_path):
    preds, target = _random_batch(2)
    preds[1][preds[1] == 2] = 0
    target[1][target[1] == 2] = 1  # class 2 absent from mask and prediction of image 1: NaN
    per_image = PerImageCounts.merge([(["b", "c", "a"], per_image_counts(preds, target, 3, IGNORE))], 3)
    write_per_image_csv(tmp_path / "p.csv", per_image, NAMES)
    with open(tmp_path / "p.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == per_image_columns(NAMES) == [
        "name", "mIoU", "mDice", *(f"{k}/{n}" for k in ("iou", "dice", "target_pixels", "pred_pixels")
                                   for n in NAMES)]
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    order = [2, 0, 1]  # rows a, b, c = images 2, 0, 1 of the batch
    for row, b in zip(rows, order, strict=True):
        valid = target[b] != IGNORE
        for c, name in enumerate(NAMES):
            t, p = (target[b] == c) & valid, (preds[b] == c) & valid
            assert int(row[f"target_pixels/{name}"]) == int(t.sum())
            assert int(row[f"pred_pixels/{name}"]) == int(p.sum())
            union = int((t | p).sum())
            iou = float(row[f"iou/{name}"])
            if union == 0:
                assert row[f"iou/{name}"] == row[f"dice/{name}"] == "nan"
            else:
                assert iou == pytest.approx(int((t & p).sum()) / union)
    assert rows[2]["iou/person"] == "nan"  # image 1 is row "c"
    ious = [float(rows[2][f"iou/{n}"]) for n in NAMES[:2]]
    assert float(rows[2]["mIoU"]) == pytest.approx(sum(ious) / 2)


def _families(names: list[str], preds: torch.Tensor, target: torch.Tensor,
              options: EvaluationOptions) -> FamilyResults:
    logits = torch.nn.functional.one_hot(preds, 3).permute(0, 3, 1, 2).float() * 2
    evaluation = FamilyEvaluation(options, "multiclass", 3, NAMES, IGNORE)
    evaluation.update(names, logits, preds, target)
    return evaluation.finish()


def test_per_image_csv_ends_with_the_family_columns_of_the_same_images(tmp_path):
    preds, target = _random_batch(4, shape=(3, 12, 12))
    names = ["b", "c", "a"]
    per_image = PerImageCounts.merge([(names, per_image_counts(preds, target, 3, IGNORE))], 3)
    families = _families(names, preds, target, EvaluationOptions(topology=TopologyOptions(classes=("car",))))
    write_per_image_csv(tmp_path / "p.csv", per_image, NAMES, families)
    with open(tmp_path / "p.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == per_image_columns(NAMES, families) == [*per_image_columns(NAMES), *(
        f"{k}/{n}" for k in ("objects_gt", "objects_found", "objects_pred", "objects_matched", "biou", "hd95",
                             "assd", "nsd") for n in NAMES), "cldice/car"]
    row, b = rows[0], 2  # row "a" is image 2 of the batch
    valid = (target[b] != IGNORE).numpy()
    for c, name in enumerate(NAMES):
        p, t = (preds[b] == c).numpy(), (target[b] == c).numpy()
        counts = object_counts(p, t, valid)
        assert [row[f"objects_{k}/{name}"] for k in ("gt", "found", "pred", "matched")] == [
            str(counts.gt), str(counts.gt_detected), str(counts.pred), str(counts.pred_matched)]
        np.testing.assert_equal(float(row[f"hd95/{name}"]), boundary_scores(p, t, valid).hd95)  # nan too
    others = _families(["x", "y", "z"], preds, target, EvaluationOptions())
    with pytest.raises(ValueError, match="not of the images of the pixel counts"):
        write_per_image_csv(tmp_path / "q.csv", per_image, NAMES, others)


def test_a_reliability_diagram_is_written_for_each_split_with_calibration(tmp_path):
    preds, target = _random_batch(5)
    per_image = PerImageCounts.merge([(["x", "y", "z"], per_image_counts(preds, target, 3, IGNORE))], 3)
    matrix = per_image.counts.new_zeros(3, 3)
    test = _families(["x", "y", "z"], preds, target, EvaluationOptions(objects=None, boundary=None))
    val = _families(["x", "y", "z"], preds, target, EvaluationOptions(calibration=None))
    written = write_evaluation_outputs(tmp_path, NAMES, {"test": matrix, "val": matrix}, per_image,
                                       {"test": None, "val": 2}, {"test": test, "val": val})
    assert "reliability_test_png" in written and "reliability_val_png" not in written
    with Image.open(written["reliability_test_png"]) as image:
        assert image.format == "PNG" and written["reliability_test_png"].name == "reliability_test.png"
    assert not (tmp_path / "reliability_val.png").exists()


@pytest.mark.slow
def test_evaluation_outputs_are_written_only_for_the_given_splits(tmp_path):
    preds, target = _random_batch(3)
    per_image = PerImageCounts.merge([(["x", "y", "z"], per_image_counts(preds, target, 3, IGNORE))], 3)
    matrix = per_image.counts.new_zeros(3, 3)
    written = write_evaluation_outputs(tmp_path, NAMES, {"test": matrix}, per_image, {"test": None})
    assert {k: p.name for k, p in written.items()} == {
        "test_per_image": "test_per_image.csv", "confusion_test": "confusion_test.csv",
        "confusion_test_png": "confusion_test.png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written.values())


# ---- loggers -----------------------------------------------------------------------------------------------


def _images_in_events(log_dir: Path) -> dict[str, list]:
    images: dict[str, list] = {}
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            images.setdefault(tag, []).extend(acc.Images(tag))
    return images


@pytest.mark.slow
def test_log_figure_sends_the_png_to_tensorboard_even_after_the_logger_finished(tmp_path):
    plot_confusion(tmp_path / "c.png", torch.tensor([[3, 1], [0, 5]]), NAMES[:2], "val")
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")  # as after trainer.test: the writer is closed
    csv_logger = CSVLogger(tmp_path, name="csv")
    log_figure([csv_logger, logger], "confusion/val", tmp_path / "c.png", step=3)
    log_files([csv_logger, logger], [tmp_path / "c.png"])  # neither keeps files: nothing happens
    images = _images_in_events(Path(logger.log_dir))
    assert list(images) == ["confusion/val"] and images["confusion/val"][0].step == 3
    with Image.open(tmp_path / "c.png") as png:
        assert (images["confusion/val"][0].width, images["confusion/val"][0].height) == png.size


# ---- train.py end to end -----------------------------------------------------------------------------------

TINY = [
    *SMALL_UNET,
    *QUIET,
    *SYNTHETIC_ODD,
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
]
CLASSES = ["background", "disc", "square", "bar", "cross"]


def _train_py(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One single-process training of train.py (TensorBoard logger) and its output."""
    tmp = tmp_path_factory.mktemp("single")
    proc = _train_py(tmp, *TINY, f"hydra.run.dir={tmp / 'run'}", "logger=tensorboard", "trainer=cpu",
                     f"datamodule.stats_cache_dir={tmp / 'cache'}")
    return tmp / "run", proc


@pytest.mark.slow
def test_train_py_writes_per_image_rows_confusion_matrices_and_worst_images(single_run):
    run, proc = single_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["outputs"] == {
        "test_per_image": "test_per_image.csv",
        "confusion_val": "confusion_val.csv", "confusion_val_png": "confusion_val.png",
        "confusion_test": "confusion_test.csv", "confusion_test_png": "confusion_test.png",
        "reliability_test_png": "reliability_test.png",  # calibration: on for the test split by default
    }
    with open(run / "test_per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [f"test_{i:05d}" for i in range(5)]
    # the default families of the test (conf/evaluation/default.yaml), not of the validation
    assert {"objects", "boundary", "calibration"} <= set(metrics["test"]) and "objects" not in metrics["val"]
    assert {f"objects_gt/{c}" for c in CLASSES} | {f"hd95/{c}" for c in CLASSES} <= set(rows[0])
    disc = metrics["test"]["objects"]["per_class"]["disc"]
    assert sum(int(r["objects_gt/disc"]) for r in rows) == disc["gt"]
    assert "test: objects found" in proc.stdout and "test: boundaries" in proc.stdout
    assert "test calibration (15 bins)" in proc.stdout
    for split in ("val", "test"):
        table = _read_csv(run / f"confusion_{split}.csv")
        assert table[0] == ["true\\predicted", *CLASSES] and [r[0] for r in table[1:]] == CLASSES
        counts = np.array([[int(v) for v in r[1:]] for r in table[1:]])
        assert counts.sum() == 5 * 32 * 32  # synthetic data: no ignored pixels
        with Image.open(run / f"confusion_{split}.png") as image:
            assert image.format == "PNG"
    # the per-image counts add up to the test matrix
    test = np.array([[int(v) for v in r[1:]] for r in _read_csv(run / "confusion_test.csv")[1:]])
    assert [sum(int(r[f"target_pixels/{c}"]) for r in rows) for c in CLASSES] == test.sum(axis=1).tolist()
    assert [sum(int(r[f"pred_pixels/{c}"]) for r in rows) for c in CLASSES] == test.sum(axis=0).tolist()
    # the test's mIoU is the confusion matrix's, not the mean of the images'
    tp = np.diag(test)
    with np.errstate(invalid="ignore"):
        iou = tp / (test.sum(0) + test.sum(1) - tp)
    assert metrics["test"]["mIoU"] == pytest.approx(float(np.nanmean(iou)))
    assert "5 worst images by mIoU" in proc.stdout
    assert proc.stdout.index("5 worst images by mIoU") < proc.stdout.index("final results")
    worst = min(rows, key=lambda r: (float(r["mIoU"]), r["name"]))
    assert worst["name"] in proc.stdout
    images = _images_in_events(run / "tensorboard")
    assert set(images) == {"confusion/val", "confusion/test", "reliability/test"}
    assert images["confusion/val"][0].step == metrics["val"]["epoch"]


@pytest.mark.slow
def test_ddp_evaluation_writes_the_rows_and_matrix_of_one_process(single_run, tmp_path):
    run, _ = single_run
    metrics = json.loads((run / "metrics.json").read_text())
    proc = _train_py(tmp_path, *TINY, f"hydra.run.dir={tmp_path / 'ddp'}", "train=false",
                     f"ckpt_path={metrics['checkpoint']}", "trainer=ddp_cpu", "~logger",
                     f"datamodule.stats_cache_dir={tmp_path / 'cache'}")
    ddp = tmp_path / "ddp"
    assert proc.stdout.count("worst images by mIoU") == 1  # rank 0 alone prints
    with open(ddp / "test_per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [f"test_{i:05d}" for i in range(5)]  # each image once
    # bit for bit the file of the single-process test of the same checkpoint
    assert (ddp / "test_per_image.csv").read_text() == (run / "test_per_image.csv").read_text()
    assert (ddp / "confusion_test.csv").read_text() == (run / "confusion_test.csv").read_text()
    assert "objects_matched/cross" in rows[0] and "nsd/cross" in rows[0]  # the families' columns: equal too
    ddp_metrics = json.loads((ddp / "metrics.json").read_text())
    for family in ("objects", "boundary"):  # from the records of every image, summed in name order
        assert ddp_metrics["test"][family] == metrics["test"][family]
    ece = ddp_metrics["test"]["calibration"]  # histogram sums of two processes: up to rounding
    assert ece["ece_mean"] == pytest.approx(metrics["test"]["calibration"]["ece_mean"], rel=1e-9)
    assert (ddp / "reliability_test.png").is_file()
    assert (ddp / "confusion_test.png").is_file()
    assert not (ddp / "confusion_val.csv").exists()  # train=false: the test only
    assert all(math.isfinite(float(r["mIoU"])) for r in rows)
