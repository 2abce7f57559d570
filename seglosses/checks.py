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


def check_number(value: Any, name: str, minimum: float | None = None, *, finite: bool = True) -> float:
    """Return ``value`` if it is a real number (not a bool), finite unless ``finite=False``, >= ``minimum``.

    NaN is always rejected.
    """
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not number or math.isnan(value) or (finite and not math.isfinite(value)):
        kind = "a finite number" if finite else "a number"
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be {kind}{bound}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
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
