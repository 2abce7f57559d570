"""Argument checks shared by every layer, each written once.

Every check raises a ValueError whose message starts with ``name``, the argument or config key at fault
(``"datamodule.batch_size"``), so that errors of configs built by Hydra say what to override.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any

__all__ = ["check_bool", "check_choice", "check_ignore_index", "check_int", "check_number"]


def check_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) in ``[minimum, maximum]`` (either bound optional)."""
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not integral or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            want = f"an int in [{minimum}, {maximum}]"
        elif minimum is not None:
            want = f"an int >= {minimum}"
        elif maximum is not None:
            want = f"an int <= {maximum}"
        else:
            want = "an int"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return int(value)


def _bounds(minimum: float | None, maximum: float | None, greater_than: float | None) -> str:
    """`` >= 0``, `` > 0``, `` <= 1``, `` in [0, 1]``, `` in (0, 1]`` or ``""``: the range in a message."""
    low, bracket, op = (greater_than, "(", ">") if greater_than is not None else (minimum, "[", ">=")
    if low is not None and maximum is not None:
        return f" in {bracket}{low}, {maximum}]"
    if low is not None:
        return f" {op} {low}"
    return "" if maximum is None else f" <= {maximum}"


def check_number(
    value: Any,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    finite: bool = True,
    greater_than: float | None = None,
) -> float:
    """Return ``value`` if it is a real number (not a bool), finite unless ``finite=False``, in
    ``[minimum, maximum]`` (either bound optional) and ``> greater_than`` (a strict lower bound, instead of
    ``minimum``).

    NaN is always rejected.
    """
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    bounds = _bounds(minimum, maximum, greater_than)
    if not number or math.isnan(value) or (finite and not math.isfinite(value)):
        kind = "a finite number" if finite else "a number"
        raise ValueError(f"{name} must be {kind}{bounds}, got {value!r}")
    below = (minimum is not None and value < minimum) or (greater_than is not None and value <= greater_than)
    if below or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be{bounds}, got {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is True or False (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_choice(value: Any, name: str, choices: Collection[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_ignore_index(value: Any, name: str = "ignore_index") -> int | None:
    """Return ``value`` if it is None or an int (not a bool): the label value left out of loss and metrics."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise ValueError(f"{name} must be an int or None, got {value!r}")
    return value
