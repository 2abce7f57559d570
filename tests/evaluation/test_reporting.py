"""What the console shows of an evaluation (evaluation.reporting, evaluation.tables.epoch_line)."""

from __future__ import annotations

import math

import pytest
import torch
from rich.console import Console

import evaluation.reporting as reporting
from evaluation.confusion import scores_from_confusion
from evaluation.per_image import PerImageCounts
from evaluation.rare import rarest
from evaluation.reporting import EvaluationReport
from evaluation.tables import epoch_line

NAMES = ["background", "road", "sign", "pole", "light"]
# true class per row; pole and light are rare, light is never predicted right
CONFUSION = torch.tensor([
    [900, 10, 0, 0, 0],
    [5, 200, 0, 0, 0],
    [0, 0, 30, 10, 0],
    [0, 0, 5, 10, 0],
    [0, 0, 0, 0, 0],
])


@pytest.fixture
def console(monkeypatch):
    console = Console(record=True, width=120)
    monkeypatch.setattr(reporting.rich, "get_console", lambda: console)
    return console


def test_rarest_orders_by_pixels_then_position():
    assert rarest({"a": 5, "b": 1, "c": 1, "d": 9}) == ["b", "c", "a"]
    assert rarest({"a": 5, "b": 1}, k=1) == ["b"]


def test_epoch_line_names_the_rare_mean_the_weakest_class_and_the_best():
    scores = scores_from_confusion(CONFUSION)
    line = epoch_line(3, scores, NAMES, ["light", "pole", "sign"], best=(0.9, 2))
    iou = scores["iou"]
    rare = torch.nanmean(iou[[4, 3, 2]])
    assert line.startswith(f"val epoch 3: mIoU {100 * float(scores['mIoU']):.2f} | ")
    assert f"rare (light, pole, sign) {100 * float(rare):.2f}" in line
    assert f"weakest pole {100 * float(iou[3]):.2f}" in line  # light has no pixels: NaN, not the weakest
    assert line.endswith("best 90.00 (epoch 2)")
    # rare classes that are all the classes say nothing: left out
    assert "rare" not in epoch_line(0, scores, NAMES, NAMES, None)


def test_best_and_test_prints_one_line_per_fit_epoch_and_tables_otherwise(console):
    report = EvaluationReport(NAMES, rare_classes=["light", "pole", "sign"])
    good, worse = scores_from_confusion(CONFUSION), scores_from_confusion(CONFUSION.flip(1))
    assert float(worse["mIoU"]) < float(good["mIoU"])
    report.show("val", good, epoch=0)
    report.show("val", worse, epoch=1)
    lines = console.export_text().splitlines()
    assert len(lines) == 2 and "Pixel share" not in "".join(lines)  # no table during fit
    assert lines[1].startswith("val epoch 1: ")
    assert lines[1].endswith(f"best {100 * float(good['mIoU']):.2f} (epoch 0)")
    report.show("val", good, epoch=None, checkpoint_epoch=0)  # validate of the best checkpoint: the table
    report.show("test", good, epoch=None)
    text = console.export_text()
    assert text.count("Pixel share") == 2 and "val epoch" not in text
    assert "val (checkpoint of epoch 0)" in text


def test_every_epoch_prints_the_table_and_the_line(console):
    report = EvaluationReport(NAMES, print_tables="every_epoch")
    report.show("val", scores_from_confusion(CONFUSION), epoch=5)
    text = console.export_text()
    assert "val (epoch 5)" in text and "Pixel share" in text and "val epoch 5: mIoU" in text
    # without known rare classes: the smallest pixel shares of the split (light 0, pole, sign)
    assert "rare (light, pole, sign)" in text


def test_none_prints_nothing_but_keeps_the_best(console):
    report = EvaluationReport(NAMES, print_tables="none")
    scores = scores_from_confusion(CONFUSION)
    report.show("val", scores, epoch=0)
    assert console.export_text() == ""
    assert report.best == (pytest.approx(float(scores["mIoU"])), 0)
    assert not math.isnan(report.best[0])


def test_print_tables_is_checked():
    with pytest.raises(ValueError, match=r"module\.print_tables must be one of"):
        EvaluationReport(NAMES, print_tables="always")


def test_the_worst_images_title_stays_short_enough_not_to_wrap(console):
    counts = torch.zeros(2, 5, 4, dtype=torch.long)
    counts[:, :, 0], counts[1, :, 1] = 10, 5  # TP everywhere; the second image has false positives
    per_image = PerImageCounts(("a", "b"), counts)
    EvaluationReport(NAMES, worst_images=2).show("test", scores_from_confusion(CONFUSION), None, per_image,
                                                  checkpoint_epoch=11)
    text = console.export_text()
    assert "test (checkpoint of epoch 11)" in text and "test: 2 worst images by mIoU" in text
    assert text.index("│ 1 │ b") < text.index("│ 2 │ a")
