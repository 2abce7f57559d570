import math

import pytest
import torch
from rich.console import Console

from evaluation.confusion import (
    MultilabelSegmentationMetrics,
    SegmentationMetrics,
    metric_logs,
    scores_from_confusion,
    scores_from_multilabel_confusion,
)
from evaluation.tables import class_table, summarize

NAN = float("nan")

# 4 classes, class 3 absent from target and prediction; one pixel ignored (255).
TARGET = torch.tensor([[[0, 0, 1, 1], [2, 255, 0, 1]]])
PREDS = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 2]]])
# (target, pred) pairs of the 7 valid pixels: (0,0) (0,1) (1,1) (1,1) (2,2) (0,0) (1,2)
CONFMAT = torch.tensor([[2, 1, 0, 0], [0, 2, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
EXPECTED = {
    # TP = [2, 2, 1, 0], FP = [0, 1, 1, 0], FN = [1, 1, 0, 0]
    "iou": [2 / 3, 2 / 4, 1 / 2, NAN],
    "dice": [4 / 5, 4 / 6, 2 / 3, NAN],
    "precision": [2 / 2, 2 / 3, 1 / 2, NAN],
    "recall": [2 / 3, 2 / 3, 1 / 1, NAN],
    "pixel_share": [3 / 7, 3 / 7, 1 / 7, 0.0],
}
MEANS = {"mIoU": (2 / 3 + 1 / 2 + 1 / 2) / 3, "mDice": (4 / 5 + 4 / 6 + 2 / 3) / 3, "pixel_acc": 5 / 7}


def assert_close_nan(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), equal_nan=True)


def test_scores_from_hand_computed_confusion_matrix():
    scores = scores_from_confusion(CONFMAT)
    for key, expected in EXPECTED.items():
        assert_close_nan(scores[key], expected)
    for key, expected in MEANS.items():
        assert float(scores[key]) == pytest.approx(expected)


def test_confusion_from_pixels_honours_ignore_index_and_batches():
    metric = SegmentationMetrics(num_classes=4, ignore_index=255)
    # the same pixels split over two updates (as over two batches)
    metric.update(PREDS[:, :1], TARGET[:, :1])
    metric.update(PREDS[:, 1:], TARGET[:, 1:])
    assert torch.equal(metric.matrix.cpu(), CONFMAT)
    scores = metric.compute()
    assert_close_nan(scores["iou"], EXPECTED["iou"])
    assert float(scores["mIoU"]) == pytest.approx(MEANS["mIoU"])
    metric.reset()
    assert int(metric.matrix.sum()) == 0


def test_absent_class_is_nan_and_left_out_of_means_but_false_positive_class_counts_as_zero():
    # class 2 never in target or prediction -> NaN; class 3 only predicted -> IoU 0, in the mean
    target = torch.tensor([[0, 0, 1, 1]])
    preds = torch.tensor([[0, 3, 1, 1]])
    metric = SegmentationMetrics(num_classes=4)
    metric.update(preds, target)
    scores = metric.compute()
    assert math.isnan(scores["iou"][2]) and math.isnan(scores["dice"][2])
    assert float(scores["iou"][3]) == 0.0
    assert math.isnan(scores["recall"][3])  # no target pixels of class 3
    # means over classes 0, 1, 3: IoU (1/2 + 1 + 0) / 3
    assert float(scores["mIoU"]) == pytest.approx(0.5)
    assert float(scores["mDice"]) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert float(scores["pixel_acc"]) == pytest.approx(3 / 4)


def test_update_rejects_out_of_range_ids_naming_them():
    metric = SegmentationMetrics(num_classes=3, ignore_index=255)
    with pytest.raises(ValueError, match=r"outside \[0, 3\) or ignore_index=255: \[7\]"):
        metric.update(torch.tensor([[0, 1]]), torch.tensor([[7, 255]]))
    with pytest.raises(ValueError, match="one shape"):
        metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1, 2]]))


def test_metric_log_keys_use_class_names():
    names = ["background", "Car", "Pedestrian", "Sign"]
    logs = metric_logs("val", scores_from_confusion(CONFMAT), names)
    expected = {f"val/{m}/{n}" for m in ("iou", "dice", "precision", "recall") for n in names}
    expected |= {"val/mIoU", "val/mDice", "val/pixel_acc"}
    assert set(logs) == expected
    assert logs["val/iou/Pedestrian"] == pytest.approx(0.5)
    assert math.isnan(logs["val/dice/Sign"])
    with pytest.raises(ValueError, match="4 classes scored but 2 class names"):
        metric_logs("val", scores_from_confusion(CONFMAT), ["a", "b"])


def test_table_and_summary():
    names = ["background", "Car", "Pedestrian", "Sign"]
    scores = scores_from_confusion(CONFMAT)
    console = Console(record=True, width=120)
    console.print(class_table(scores, names, title="val"))
    text = console.export_text()
    for name in [*names, "mean", "IoU", "Dice", "Precision", "Recall", "Pixel share"]:
        assert name in text
    assert "66.67" in text and "nan" in text  # background IoU 2/3 in %; Sign absent
    assert "55.56" in text  # mIoU 5/9 in the mean row
    summary = summarize(scores, names)
    assert summary["mIoU"] == pytest.approx(5 / 9)
    assert summary["per_class"]["Sign"]["iou"] is None  # NaN -> JSON null
    assert summary["per_class"]["Car"]["precision"] == pytest.approx(2 / 3)


# ---- multilabel -------------------------------------------------------------------------------------------

# 3 labels over 6 pixels (N=1, C=3, 6); pixel 5 ignored (255 in every channel). Label 2 is absent from target
# and prediction.
ML_TARGET = torch.tensor([[[1, 1, 0, 0, 1, 255], [0, 1, 1, 0, 0, 255], [0, 0, 0, 0, 0, 255]]])
ML_PREDS = torch.tensor([[[1, 0, 1, 0, 1, 1], [0, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1]]])
# Per label over the 5 valid pixels:
#   label 0: t = 1 1 0 0 1, p = 1 0 1 0 1 -> TP 2, FP 1, FN 1, TN 1
#   label 1: t = 0 1 1 0 0, p = 0 1 0 0 0 -> TP 1, FP 0, FN 1, TN 3
#   label 2: all 0                         -> TP 0, FP 0, FN 0, TN 5
ML_EXPECTED = {
    "iou": [2 / 4, 1 / 2, NAN],
    "dice": [4 / 6, 2 / 3, NAN],
    "precision": [2 / 3, 1 / 1, NAN],
    "recall": [2 / 3, 1 / 2, NAN],
    "pixel_share": [3 / 5, 2 / 5, 0.0],
}
# label 2 (NaN) is left out of mIoU/mDice; pixel accuracy (TP + TN) / 5 is 3/5, 4/5, 5/5
ML_MEANS = {"mIoU": 1 / 2, "mDice": 2 / 3, "pixel_acc": (3 / 5 + 4 / 5 + 5 / 5) / 3}


def test_multilabel_scores_hand_computed_with_ignored_pixels_and_absent_label():
    metric = MultilabelSegmentationMetrics(num_labels=3, ignore_index=255)
    metric.update(ML_PREDS[..., :3], ML_TARGET[..., :3])  # two updates, as over two batches
    metric.update(ML_PREDS[..., 3:], ML_TARGET[..., 3:])
    # [[TN, FP], [FN, TP]] per label
    assert metric.matrix.cpu().tolist() == [[[1, 1], [1, 2]], [[3, 0], [1, 1]], [[5, 0], [0, 0]]]
    scores = metric.compute()
    for key, expected in ML_EXPECTED.items():
        assert_close_nan(scores[key], expected)
    for key, expected in ML_MEANS.items():
        assert float(scores[key]) == pytest.approx(expected)
    logs = metric_logs("val", scores, ["road", "car", "sign"])
    assert logs["val/iou/road"] == pytest.approx(0.5) and math.isnan(logs["val/iou/sign"])
    metric.reset()
    assert int(metric.matrix.sum()) == 0


def test_multilabel_confusion_scores_match_an_independent_per_label_binary_reference():
    # Each label is the binary problem "label c or not": the (2, 2) multiclass confusion matrix of that
    # label gives the same IoU/Dice/precision/recall of its foreground row.
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, (2, 4, 5, 5), generator=g)
    preds = torch.randint(0, 2, (2, 4, 5, 5), generator=g)
    target[:, :, 0] = 255
    metric = MultilabelSegmentationMetrics(num_labels=4, ignore_index=255)
    metric.update(preds, target)
    scores = metric.compute()
    accuracies = []
    for c in range(4):
        valid = target[:, c] != 255
        t, p = target[:, c][valid], preds[:, c][valid]
        confmat = torch.zeros(2, 2, dtype=torch.long)
        for ti, pi in zip(t.tolist(), p.tolist(), strict=True):
            confmat[ti, pi] += 1
        reference = scores_from_confusion(confmat)
        for key in ("iou", "dice", "precision", "recall", "pixel_share"):
            assert float(scores[key][c]) == pytest.approx(float(reference[key][1]))
        accuracies.append(float((t == p).double().mean()))
    assert float(scores["pixel_acc"]) == pytest.approx(sum(accuracies) / 4)


def test_multilabel_update_rejects_bad_values_and_shapes():
    metric = MultilabelSegmentationMetrics(num_labels=2, ignore_index=255)
    with pytest.raises(ValueError, match=r"values other than 0, 1 or ignore_index=255: \[3\]"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 3], [1, 255]]]))
    with pytest.raises(ValueError, match="C = 2 labels"):
        metric.update(torch.zeros(1, 3, 2, dtype=torch.long), torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(C, 2, 2\)"):
        scores_from_multilabel_confusion(torch.zeros(3, 3))
