"""JSON that is always valid: NaN and infinities (a score of a split without pixels) become null."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from safeio.atomic import write_text

__all__ = ["json_ready", "write_json"]


def json_ready(value: Any) -> Any:
    """``value`` with every NaN/inf float (also inside dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def write_json(path: str | Path, record: Any, indent: int | None = 2) -> Path:
    """``record`` as valid JSON (NaN/inf as null, :func:`json_ready`), written atomically."""
    return write_text(path, json.dumps(json_ready(record), indent=indent, allow_nan=False) + "\n")
