"""One stage's metric families (evaluation.families, evaluation.family_tables): the values of metrics.json,
the logged keys, the per-image columns and the console tables, against the primitives summed image by
image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from rich.console import Console

from evaluation.boundaries import boundary_means, boundary_scores
from evaluation.calibration import CalibrationHistogram
from evaluation.families import FamilyEvaluation, class_mean
from evaluation.family_tables import family_tables
from evaluation.objects import ObjectCounts, object_counts, object_scores
from evaluation.options import CalibrationOptions, EvaluationOptions, TopologyOptions
from evaluation.topology import cldice_means, cldice_scores

IGNORE = 255
NAMES = ["background", "disc", "bar", "never"]  # "never" is in no mask and no prediction


def _batch(seed: int = 0, n: int = 3, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 3, (n, size // 4, size // 4), generator=g)
    target = target.repeat_interleave(4, 1).repeat_interleave(4, 2)
    logits = torch.randn(n, 4, size, size, generator=g)
    logits[:, 3] -= 10  # class 3 is never predicted
    logits.scatter_add_(1, target.unsqueeze(1), torch.full((n, 1, size, size), 1.5))  # mostly right
    target[:, 0, :6] = IGNORE
    return [f"img_{i}" for i in range(n)], logits, logits.argmax(1), target


def _finished(options: EvaluationOptions, mode: str = "multiclass", names=NAMES, batch=None):
    names_, logits, preds, target = batch or _batch()
    evaluation = FamilyEvaluation(options, mode, logits.shape[1], names, IGNORE)
    evaluation.update(names_[:2], logits[:2], preds[:2], target[:2])
    evaluation.update(names_[2:], logits[2:], preds[2:], target[2:])
    return evaluation.finish(), (logits, preds, target)


def test_values_are_those_of_the_summed_primitives():
    options = EvaluationOptions(topology=TopologyOptions())
    results, (logits, preds, target) = _finished(options)
    summary = results.summary()
    assert set(summary) == {"objects", "boundary", "topology", "calibration"}
    p, t = preds.numpy(), target.numpy()
    for c, name in enumerate(NAMES):
        masks = [(p[i] == c, t[i] == c, t[i] != IGNORE) for i in range(3)]
        counts = ObjectCounts.total(object_counts(*m) for m in masks)
        expected = object_scores(counts)
        row = summary["objects"]["per_class"][name]
        assert (row["gt"], row["found"], row["pred"], row["matched"]) == (
            counts.gt, counts.gt_detected, counts.pred, counts.pred_matched)
        for key in ("recall", "precision", "f1", "recall_small"):
            assert row[key] == (None if math.isnan(expected[key]) else pytest.approx(expected[key]))
        means = boundary_means(sum(boundary_scores(*m).sums() for m in masks))
        assert summary["boundary"]["per_class"][name]["missed"] == means["missed"]
        if means["scored"]:
            assert summary["boundary"]["per_class"][name]["hd95"] == pytest.approx(means["hd95"])
        if c > 0:  # clDice: every class but class 0
            cldice = cldice_means(sum(cldice_scores(*m).sums() for m in masks))
            assert summary["topology"]["per_class"][name]["scored"] == cldice["scored"]
    assert set(summary["topology"]["per_class"]) == set(NAMES[1:])
    never = summary["objects"]["per_class"]["never"]
    assert never["gt"] == never["pred"] == 0 and never["recall"] is None and never["f1"] is None
    assert summary["boundary"]["per_class"]["never"]["both_empty"] == 3
    recalls = [summary["objects"]["per_class"][n]["recall"] for n in NAMES[:3]]
    assert summary["objects"]["recall"] == pytest.approx(np.mean(recalls))  # the mean over the classes
    assert summary["objects"]["options"] == {"iou": 0.5, "connectivity": 8, "size_bins": [1024, 9216]}
    histogram = CalibrationHistogram(4, "multiclass", 15, IGNORE)
    histogram.update(logits, target)
    ece = histogram.ece()
    assert summary["calibration"]["ece_mean"] == pytest.approx(float(ece["mean_ece"]))
    assert summary["calibration"]["top_label_ece"] == pytest.approx(float(ece["top_label_ece"]))
    assert summary["calibration"]["per_class"]["disc"]["ece"] == pytest.approx(float(ece["ece"][1]))
    assert summary["calibration"]["per_class"]["never"]["pixels"] == 3 * (16 * 16 - 6)


def test_logged_keys_and_per_image_columns():
    options = EvaluationOptions(topology=TopologyOptions(classes=("bar",)))
    results, _ = _finished(options)
    logs = results.logs("test")
    per_class = ["", *(f"/{n}" for n in NAMES)]  # the mean, then each class
    expected = {f"test/objects/{k}{c}" for k in ("recall", "precision", "f1") for c in per_class}
    expected |= {f"test/boundary/{k}{c}" for k in ("biou", "hd95", "assd", "nsd") for c in per_class}
    expected |= {"test/cldice", "test/cldice/bar", "test/ece_mean", "test/ece_top_label"}
    expected |= {f"test/ece/{n}" for n in NAMES}
    assert set(logs) == expected
    summary = results.summary()
    disc = summary["objects"]["per_class"]["disc"]
    assert logs["test/objects/recall/disc"] == pytest.approx(disc["recall"])
    assert logs["test/cldice"] == logs["test/cldice/bar"]
    columns = results.csv_columns()
    assert columns[:4] == [f"objects_gt/{n}" for n in NAMES]
    assert columns[-1] == "cldice/bar" and len(columns) == 8 * 4 + 1
    values = results.csv_values()
    assert values.shape == (3, len(columns)) and results.csv_is_count() == [True] * 16 + [False] * 17
    gt = values[:, :4].sum(0)
    assert gt.tolist() == [summary["objects"]["per_class"][n]["gt"] for n in NAMES]
    hd95 = values[:, columns.index("hd95/never")]
    assert np.isnan(hd95).all()  # no image scores it


def test_binary_scores_the_foreground_and_families_that_are_off_leave_nothing():
    names, logits, _, target = _batch()
    binary_target = torch.where(target == IGNORE, IGNORE, (target == 1).long())
    binary_logits = logits[:, 1:2] - logits[:, :1]
    batch = (names, binary_logits, (binary_logits[:, 0] > 0).long(), binary_target)
    results, _ = _finished(EvaluationOptions(boundary=None), "binary", ["background", "disc"], batch)
    summary = results.summary()
    assert set(summary) == {"objects", "calibration"}
    assert set(summary["objects"]["per_class"]) == set(summary["calibration"]["per_class"]) == {"disc"}
    assert "top_label_ece" not in summary["calibration"] and "test/ece_top_label" not in results.logs("test")
    assert results.csv_columns() == ["objects_gt/disc", "objects_found/disc", "objects_pred/disc",
                                     "objects_matched/disc"]
    off, _ = _finished(EvaluationOptions(objects=None, boundary=None, calibration=CalibrationOptions(bins=5)))
    assert off.records is None and off.csv_columns() == [] and off.csv_values().shape == (0, 0)
    assert off.summary()["calibration"]["options"] == {"bins": 5}


def _text(items) -> str:
    console = Console(record=True, width=80)  # a log file's width: nothing is cut
    for item in items:
        console.print(item)
    return console.export_text()


def _row(table, name: str) -> dict[str, str]:
    """The cells of the row of ``name`` by column header."""
    row = [str(c) for c in table.columns[0]._cells].index(name)
    return {str(column.header): str(column._cells[row]) for column in table.columns}


def test_tables_show_the_summary_values():
    results, _ = _finished(EvaluationOptions(topology=TopologyOptions(classes=("disc",))))
    summary = results.summary()
    objects, boundary, line = family_tables(results, "test")
    assert (objects.title, boundary.title) == ("test: objects found", "test: boundaries and clDice")
    disc = summary["objects"]["per_class"]["disc"]
    assert _row(objects, "disc") == {
        "Class": "disc", "GT": str(disc["gt"]), "Found": str(disc["found"]),
        **{header: "nan" if disc[key] is None else f"{100 * disc[key]:.2f}" for header, key in (
            ("Recall", "recall"), ("Prec.", "precision"), ("F1", "f1"), ("Small", "recall_small"),
            ("Med.", "recall_medium"), ("Large", "recall_large"), ("Dice", "dice_found"))}}
    bar = _row(boundary, "bar")
    assert bar["HD95"] == f"{summary['boundary']['per_class']['bar']['hd95']:.2f}" and bar["clDice"] == ""
    assert _row(boundary, "never")["HD95"] == "nan" and _row(boundary, "disc")["clDice"] != ""
    assert _row(objects, "mean")["GT"] == str(sum(summary["objects"]["per_class"][n]["gt"] for n in NAMES))
    assert line.startswith(f"test calibration (15 bins): mean class-wise ECE "
                           f"{100 * summary['calibration']['ece_mean']:.2f} | top-label ECE ")
    text = _text([objects, boundary])
    assert "background" in text and "never" in text and "…" not in text  # fits 80 columns uncut
    only_topology, _ = _finished(EvaluationOptions(objects=None, boundary=None, calibration=None,
                                                   topology=TopologyOptions()))
    (table,) = family_tables(only_topology, "val")
    assert table.title == "val: clDice" and [str(c.header) for c in table.columns] == [
        "Class", "clDice", "Missed", "Spurious"]
    assert list(_row(table, "background").values()) == ["background", "", "", ""]  # not a clDice class
    assert "HD95" not in str(table.caption)
    assert math.isnan(class_mean([np.nan, np.nan]))  # NaN without a value
