"""The per-image records of the spatial families (evaluation.spatial): each class's row is what the primitives
(evaluation.objects, .boundaries, .topology) give its masks, in every mode; ignored pixels are no object;
the records of a split do not depend on batching, order or DDP sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation import spatial
from evaluation.boundaries import BoundaryOptions, boundary_scores
from evaluation.objects import ObjectOptions, object_counts
from evaluation.options import EvaluationOptions, TopologyOptions
from evaluation.spatial import SpatialRecorder, SpatialRecords, image_records, spatial_classes
from evaluation.topology import cldice_scores

IGNORE = 255
ALL = EvaluationOptions(objects=ObjectOptions(iou=0.3), boundary=BoundaryOptions(tolerance=1.0),
                        topology=TopologyOptions())


def _multiclass_pair() -> tuple[np.ndarray, np.ndarray]:
    """(pred, target) 16x16 class ids of 4 classes: class 1 a square found shifted, class 2 a bar that is
    missed plus a spurious blob, class 3 in neither; a band of ignored pixels where the prediction has an
    extra class-1 object."""
    target = np.zeros((16, 16), np.int64)
    target[2:7, 2:7] = 1
    target[10:12, 1:15] = 2
    target[:, 14:] = IGNORE
    pred = np.zeros((16, 16), np.int64)
    pred[3:8, 3:8] = 1
    pred[0:4, 14:16] = 1  # only on ignored pixels: no object
    pred[13:15, 2:4] = 2
    return pred, target


def _expected(p: np.ndarray, t: np.ndarray, valid, options: EvaluationOptions) -> tuple[np.ndarray, ...]:
    return (object_counts(p, t, valid, options.objects).to_array(),
            boundary_scores(p, t, valid, options.boundary).sums(), cldice_scores(p, t, valid).sums())


def test_multiclass_rows_are_the_primitives_of_each_class_mask():
    pred, target = _multiclass_pair()
    names = ["background", "square", "bar", "absent"]
    classes = spatial_classes("multiclass", names, ALL.topology)
    assert classes.names == tuple(names) and classes.topology == (1, 2, 3)  # clDice: not class 0
    records = image_records(pred, target, classes, ALL, "multiclass", IGNORE)
    assert {k: v.shape for k, v in records.items()} == {"objects": (4, 11), "boundary": (4, 10),
                                                        "topology": (3, 9)}
    valid = target != IGNORE
    for c in range(4):
        objects, boundary, topology = _expected(pred == c, target == c, valid, ALL)
        np.testing.assert_array_equal(records["objects"][c], objects)
        np.testing.assert_array_equal(records["boundary"][c], boundary)
        if c > 0:
            np.testing.assert_array_equal(records["topology"][c - 1], topology)
    # known answers: the prediction's class-1 object on ignored pixels is no object; the bar is missed
    assert records["objects"][1][:4].tolist() == [1, 1, 1, 1]  # gt, detected, pred, matched
    assert records["objects"][2][:4].tolist() == [1, 0, 1, 0]
    assert records["boundary"][3][:4].tolist() == [0, 1, 0, 0]  # absent: both empty, not scored


def test_binary_scores_the_foreground_alone_and_multilabel_each_label():
    pred, target = _multiclass_pair()
    pred, target = (pred == 1).astype(np.int64), np.where(target == IGNORE, IGNORE, target == 1)
    classes = spatial_classes("binary", ["background", "vessel"], TopologyOptions())
    assert classes.names == ("vessel",) and classes.ids == (1,) and classes.topology == (0,)
    records = image_records(pred, target, classes, ALL, "binary", IGNORE)
    expected = _expected(pred == 1, target == 1, target != IGNORE, ALL)
    for name, row in zip(("objects", "boundary", "topology"), expected, strict=True):
        np.testing.assert_array_equal(records[name], row[None])

    pred, target = _multiclass_pair()
    labels = np.stack([target == 1, target == 2, np.zeros_like(target, bool)]).astype(np.int64)
    labels[0, :, 14:] = IGNORE  # label 0 ignored there, labels 1 and 2 not
    guesses = np.stack([pred == 1, pred[::-1] == 2, pred.T > 0]).astype(np.int64)
    classes = spatial_classes("multilabel", ["a", "b", "c"], TopologyOptions(classes=("c", "a")))
    assert classes.topology == (0, 2)  # in class order
    records = image_records(guesses, labels, classes, ALL, "multilabel", IGNORE)
    for c in range(3):
        objects, boundary, _ = _expected(guesses[c] == 1, labels[c] == 1, labels[c] != IGNORE, ALL)
        np.testing.assert_array_equal(records["objects"][c], objects)
        np.testing.assert_array_equal(records["boundary"][c], boundary)
    np.testing.assert_array_equal(records["topology"][1], _expected(guesses[2] == 1, labels[2] == 1,
                                                                     labels[2] != IGNORE, ALL)[2])


def test_families_that_are_off_have_no_records_and_unknown_clDice_classes_are_refused():
    pred, target = _multiclass_pair()
    options = EvaluationOptions(boundary=None, calibration=None)
    classes = spatial_classes("multiclass", ["a", "b", "c", "d"], None)
    assert classes.topology == ()
    assert set(image_records(pred, target, classes, options, "multiclass", None)) == {"objects"}
    with pytest.raises(ValueError, match=r"topology\.classes names \['x'\], not a scored class"):
        spatial_classes("multiclass", ["a", "b"], TopologyOptions(classes=("a", "x")))
    with pytest.raises(ValueError, match=r"not a scored class; the classes: \['fg'\] \(binary: the fore"):
        spatial_classes("binary", ["background", "fg"], TopologyOptions(classes=("background",)))


def _batches(seed: int, n: int = 6, size: int = 12) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 3, (n, size // 3, size // 3), generator=g)
    target = target.repeat_interleave(3, 1).repeat_interleave(3, 2)  # blocks: objects of several pixels
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.85, target, torch.randint(0, 3, target.shape,
                                                                                            generator=g))
    target[:, 0, :5] = IGNORE
    return [f"img_{i}" for i in range(n)][::-1], pred, target  # names not in row order


def _records(recorder: SpatialRecorder, parts) -> SpatialRecords:
    for names, pred, target in parts:
        recorder.add(names, pred, target)
    return recorder.gather()


def _assert_same(a: SpatialRecords, b: SpatialRecords) -> None:
    assert a.names == b.names
    for family in ("objects", "boundary", "topology"):
        np.testing.assert_array_equal(getattr(a, family), getattr(b, family))  # bit for bit


def test_records_do_not_depend_on_batches_order_or_processes(monkeypatch):
    names, pred, target = _batches(0)
    recorder = SpatialRecorder(ALL, "multiclass", ["a", "b", "c"], IGNORE)
    whole = _records(recorder, [(names, pred, target)])
    assert whole.names == tuple(sorted(names)) and len(whole) == 6
    # row i is the image named img_i: the records of that image alone
    alone = image_records(pred[5].numpy(), target[5].numpy(), recorder.classes, ALL, "multiclass", IGNORE)
    np.testing.assert_array_equal(whole.objects[0], alone["objects"])
    singles = [([names[i]], pred[i:i + 1], target[i:i + 1]) for i in (3, 0, 5, 1, 4, 2)]
    _assert_same(_records(recorder, singles), whole)
    # two DDP ranks holding 4 and 2 images: all_gather_object of each rank's parts
    rank0 = [(names[:2], pred[:2], target[:2]), (names[4:], pred[4:], target[4:])]
    rank1 = [(names[2:4], pred[2:4], target[2:4])]
    other = SpatialRecorder(ALL, "multiclass", ["a", "b", "c"], IGNORE)
    for batch in rank1:
        other.add(*batch)
    other_parts = other._parts

    def all_gather_object(out, mine):
        out[:] = [mine, other_parts]

    monkeypatch.setattr(spatial, "distributed_world", lambda: (0, 2))
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    _assert_same(_records(recorder, rank0), whole)
    assert recorder._parts == []  # emptied by gather


def test_totals_fields_and_values_of_the_records():
    names, pred, target = _batches(1, n=3)
    recorder = SpatialRecorder(ALL, "multiclass", ["a", "b", "c", "never"], IGNORE)
    records = _records(recorder, [(names, pred, target)])
    np.testing.assert_array_equal(records.totals("objects"), records.objects.sum(0))
    assert records.field("objects", "gt").shape == (3, 4)
    scored = records.field("boundary", "scored") > 0
    hd95 = records.value("boundary", "hd95")
    assert scored.any() and (~scored).any() and np.isnan(hd95[~scored]).all()
    np.testing.assert_array_equal(hd95[scored], records.field("boundary", "hd95")[scored])
    empty = SpatialRecorder(EvaluationOptions(boundary=None), "multiclass", ["a", "b"]).gather()
    assert empty.objects.shape == (0, 2, 11) and empty.boundary is None
    with pytest.raises(ValueError, match="boundary was not recorded"):
        empty.totals("boundary")
    with pytest.raises(ValueError, match=r"objects records must be \(1, 2, 11\)"):
        SpatialRecords(("x",), empty.classes, objects=np.zeros((1, 3, 11)))
    with pytest.raises(ValueError, match="must describe the same images"):
        recorder.add(["one"], pred[:2], target[:2])
