"""Tests of seglosses.modes: the one rule of what ``mode`` and ``num_classes`` mean."""

from __future__ import annotations

import pytest

from seglosses.modes import (
    BINARY_MODE,
    MODES,
    MULTICLASS_MODE,
    MULTILABEL_MODE,
    check_mode,
    check_num_classes,
    output_channels,
    scored_classes,
)


def test_the_three_modes():
    assert MODES == ("binary", "multiclass", "multilabel")
    assert (BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE) == MODES
    for mode in MODES:
        assert check_mode(mode) == mode


@pytest.mark.parametrize("mode", ["softmax", "Binary", "", None])
def test_unknown_mode_names_the_key(mode):
    listed = r"\('binary', 'multiclass', 'multilabel'\)"
    with pytest.raises(ValueError, match=rf"^loss\.mode must be one of {listed}, got {mode!r}$"):
        check_mode(mode, "loss.mode")
    with pytest.raises(ValueError, match=r"^mode must be one of"):
        check_mode(mode)


@pytest.mark.parametrize(
    ("mode", "num_classes"),
    [("binary", 1), ("multiclass", 2), ("multiclass", 21), ("multilabel", 1), ("multilabel", 5)],
)
def test_valid_num_classes(mode, num_classes):
    assert check_num_classes(mode, num_classes) == num_classes
    assert output_channels(mode, num_classes) == num_classes


def test_binary_has_exactly_one_class():
    """A deliberate rule: binary is one foreground class with one output channel, never 2."""
    for num_classes in (2, 3, 12):
        with pytest.raises(ValueError, match="binary mode has one foreground class") as info:
            check_num_classes("binary", num_classes, "datamodule.num_classes")
        assert "datamodule.num_classes" in str(info.value)
    with pytest.raises(ValueError, match=r"datamodule\.num_classes must be 1, got 2; use mode='multiclass'"):
        check_num_classes("binary", 2, "datamodule.num_classes")


def test_multiclass_needs_two_classes():
    message = r"multiclass mode needs model\.num_classes >= 2, got 1; use mode='binary'"
    with pytest.raises(ValueError, match=message):
        check_num_classes("multiclass", 1, "model.num_classes")


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "3", None])
def test_num_classes_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=r"^model\.num_classes must be an int >= 1"):
        check_num_classes("multilabel", bad, "model.num_classes")


def test_num_classes_check_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        check_num_classes("softmax", 3)


def test_scored_classes():
    assert scored_classes("binary", 1) == 2  # background and foreground
    assert scored_classes("multiclass", 4) == 4
    assert scored_classes("multilabel", 3) == 3
    with pytest.raises(ValueError, match="must be 1"):
        scored_classes("binary", 2)


def test_output_channels_validates():
    with pytest.raises(ValueError, match="multiclass mode needs num_classes >= 2"):
        output_channels("multiclass", 1)
