"""Run orchestration around ``train.py``: per-job status and failure handling in sweeps (``runs.jobs``),
the sweep summary (``runs.summary``: a Hydra callback, ``collect``, ``write_summary``)."""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use, so that `python -m runs.summary` and DDP child processes load only what they need.
_EXPORTS = {
    "run_job": "runs.jobs",
    "SweepSummary": "runs.summary",
    "collect": "runs.summary",
    "write_summary": "runs.summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'runs' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
