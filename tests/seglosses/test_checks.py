"""Tests of seglosses.checks: every check names the key at fault and rejects bools as numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seglosses.checks import check_bool, check_choice, check_ignore_index, check_int, check_number


def test_check_int_accepts_ints_in_range():
    assert check_int(3, "k") == 3
    assert check_int(0, "k", minimum=0) == 0
    assert check_int(5, "k", minimum=1, maximum=5) == 5
    assert check_int(-7, "k", maximum=0) == -7
    value = check_int(np.int64(4), "k", minimum=1)
    assert value == 4 and type(value) is int


@pytest.mark.parametrize("bad", [True, False, 2.0, 2.5, "2", None, float("nan")])
def test_check_int_rejects_bools_floats_and_others(bad):
    with pytest.raises(ValueError, match=r"^datamodule\.batch_size must be an int >= 1, got "):
        check_int(bad, "datamodule.batch_size", minimum=1)


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (0, {"minimum": 1}, r"^trainer\.epochs must be an int >= 1, got 0$"),
        (11, {"maximum": 10}, r"^trainer\.epochs must be an int <= 10, got 11$"),
        (11, {"minimum": 0, "maximum": 10}, r"^trainer\.epochs must be an int in \[0, 10\], got 11$"),
        (-1, {"minimum": 0, "maximum": 10}, r"^trainer\.epochs must be an int in \[0, 10\], got -1$"),
        (1.0, {}, r"^trainer\.epochs must be an int, got 1\.0$"),
    ],
)
def test_check_int_out_of_range_names_key_and_bounds(value, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_int(value, "trainer.epochs", **kwargs)


def test_check_number_accepts_reals():
    assert check_number(0, "gamma", minimum=0) == 0
    assert check_number(2.5, "gamma", minimum=0) == 2.5
    assert check_number(-3.0, "offset") == -3.0
    assert check_number(np.float32(0.5), "gamma", minimum=0) == 0.5
    assert check_number(math.inf, "limit", finite=False) == math.inf


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), True, False, "1", None, [1.0]])
def test_check_number_rejects_nan_inf_bool_and_non_numbers(bad):
    with pytest.raises(ValueError, match=r"^loss\.gamma must be a finite number >= 0, got "):
        check_number(bad, "loss.gamma", minimum=0)


def test_check_number_below_minimum_and_non_finite_option():
    with pytest.raises(ValueError, match=r"^loss\.gamma must be >= 0, got -0\.5$"):
        check_number(-0.5, "loss.gamma", minimum=0)
    with pytest.raises(ValueError, match=r"^scale must be a number, got nan$"):
        check_number(float("nan"), "scale", finite=False)  # NaN is never a number here
    with pytest.raises(ValueError, match=r"^scale must be a finite number, got inf$"):
        check_number(float("inf"), "scale")


def test_check_ignore_index():
    assert check_ignore_index(None) is None
    assert check_ignore_index(255) == 255
    assert check_ignore_index(-100) == -100
    for bad in (1.5, 255.0, True, "255"):
        with pytest.raises(ValueError, match=r"^ignore_index must be an int or None, got "):
            check_ignore_index(bad)
    with pytest.raises(ValueError, match=r"^datamodule\.ignore_index must be an int or None, got True$"):
        check_ignore_index(True, "datamodule.ignore_index")


def test_check_bool():
    assert check_bool(True, "sync_ddp") is True
    assert check_bool(False, "sync_ddp") is False
    for bad in (0, 1, "true", None):
        with pytest.raises(ValueError, match=r"^loss\.sync_ddp must be true or false, got "):
            check_bool(bad, "loss.sync_ddp")


def test_check_choice():
    assert check_choice("mean", "reduction", ("mean", "sum")) == "mean"
    with pytest.raises(ValueError, match=r"^loss\.reduction must be one of \('mean', 'sum'\), got 'avg'$"):
        check_choice("avg", "loss.reduction", ["mean", "sum"])


def test_check_number_upper_and_strict_lower_bounds():
    assert check_number(1, "thresh", minimum=0, maximum=1) == 1
    assert check_number(0.5, "k", maximum=1, greater_than=0) == 0.5
    with pytest.raises(ValueError, match=r"^thresh must be in \[0, 1\], got 1\.5$"):
        check_number(1.5, "thresh", minimum=0, maximum=1)
    with pytest.raises(ValueError, match=r"^k must be in \(0, 1\], got 0$"):
        check_number(0, "k", maximum=1, greater_than=0)
    with pytest.raises(ValueError, match=r"^gamma must be > 0, got -1$"):
        check_number(-1, "gamma", greater_than=0)
    with pytest.raises(ValueError, match=r"^eps must be <= 1, got 2$"):
        check_number(2, "eps", maximum=1)
    with pytest.raises(ValueError, match=r"^k must be a finite number in \(0, 1\], got nan$"):
        check_number(float("nan"), "k", maximum=1, greater_than=0)
