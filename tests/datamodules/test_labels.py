import numpy as np
import pytest
import torch

from datamodules.labels import LabelSpec


def test_multiclass_counts_match_loop():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4, size=(7, 9)).astype(np.uint8)
    raw[0, :3] = 255
    spec = LabelSpec("multiclass", 4, 255)
    mask, hist = spec.prepare(raw, "m.png")
    counts, ignored = spec.class_counts(hist)
    assert mask.dtype == np.uint8
    assert ignored == 3
    assert counts.tolist() == [int((raw == c).sum()) for c in range(4)]


def test_value_map_binary_0_255():
    raw = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    spec = LabelSpec("binary", 1, 2, value_map={255: 1})
    mask, hist = spec.prepare(raw, "m.png")
    assert mask.tolist() == [[0, 1], [1, 0]]
    counts, ignored = spec.class_counts(hist)
    assert counts.tolist() == [2] and ignored == 0


def test_value_map_to_ignore_and_unmapped_values_kept():
    raw = np.array([[0, 1, 7]], dtype=np.uint8)
    spec = LabelSpec("multiclass", 2, 255, value_map={7: 255})
    mask, _ = spec.prepare(raw, "m.png")
    assert mask.tolist() == [[0, 1, 255]]


def test_bad_values_name_file_and_values():
    raw = np.array([[0, 1, 5, 9, 9]], dtype=np.uint8)
    spec = LabelSpec("multiclass", 3, 255)
    with pytest.raises(ValueError, match=r"bad_mask\.png.*5 \(1 px\).*9 \(2 px\)"):
        spec.prepare(raw, "bad_mask.png")


def test_binary_rejects_255_without_value_map():
    with pytest.raises(ValueError, match=r"m\.png.*255"):
        LabelSpec("binary", 1, None).prepare(np.array([[0, 255]], dtype=np.uint8), "m.png")


def test_multilabel_bits_unpack_and_counts():
    # value 5 = classes 0 and 2; 2 = class 1; 255 ignored
    raw = np.array([[5, 2], [0, 255]], dtype=np.uint8)
    spec = LabelSpec("multilabel", 3, 255)
    mask, hist = spec.prepare(raw, "m.png")
    target = spec.to_target(mask)
    assert target.dtype == torch.int64 and target.shape == (3, 2, 2)
    assert target[:, 0, 0].tolist() == [1, 0, 1]
    assert target[:, 0, 1].tolist() == [0, 1, 0]
    assert target[:, 1, 1].tolist() == [255, 255, 255]
    counts, ignored = spec.class_counts(hist)
    assert counts.tolist() == [1, 1, 1] and ignored == 1


def test_sixteen_bit_storage_for_large_ignore():
    spec = LabelSpec("multiclass", 3, 1000)
    mask, _ = spec.prepare(np.array([[0, 1000]], dtype=np.uint16), "m.png")
    assert mask.dtype == np.uint16
    assert spec.to_target(mask).tolist() == [[0, 1000]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "softmax", "num_classes": 3}, "mode"),
        ({"mode": "binary", "num_classes": 2}, "num_classes must be 1"),
        ({"mode": "multiclass", "num_classes": 11, "ignore_index": 3}, "ignore_index=3"),
        ({"mode": "multiclass", "num_classes": 3, "ignore_index": -100}, "ignore_index"),
        ({"mode": "multilabel", "num_classes": 17}, "<= 16"),
    ],
)
def test_invalid_specs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LabelSpec(**kwargs)


@pytest.mark.parametrize(("mode", "num_classes"), [("binary", 2), ("multiclass", 1), ("multilabel", 0)])
def test_num_classes_rules_are_those_of_seglosses_modes(mode, num_classes):
    from seglosses.modes import check_num_classes

    with pytest.raises(ValueError) as shared:
        check_num_classes(mode, num_classes, "datamodule.num_classes")
    with pytest.raises(ValueError) as here:
        LabelSpec(mode, num_classes)
    assert str(here.value) == str(shared.value)


def test_numpy_ints_are_stored_as_ints():
    spec = LabelSpec("multiclass", np.int64(3), np.int64(255), {np.int64(7): np.int64(1)})
    assert (type(spec.num_classes), type(spec.ignore_index)) == (int, int)
    assert spec == LabelSpec("multiclass", 3, 255, {7: 1})


@pytest.mark.parametrize(
    ("value_map", "match"),
    [({70000: 1}, r"value_map key must be an int in \[0, 65535\]"), ({7: True}, r"value_map\[7\]")],
)
def test_invalid_value_map(value_map, match):
    with pytest.raises(ValueError, match=match):
        LabelSpec("multiclass", 3, 255, value_map)
