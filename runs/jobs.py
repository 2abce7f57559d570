"""One Hydra job: wall time, ``job_status.json`` and, in a sweep, a failure recorded instead of raised.

Hydra's basic launcher stops a sweep at the first exception. :func:`run_job` catches the exception of a
multirun job, records it in the job directory and returns None to the sweeper, so the other jobs still run and
the sweep summary (:mod:`runs.summary`) shows the failed job as a row with its error; after summarising, the
summary callback (:class:`runs.summary.SweepSummary`) ends the sweep with exit status 1 when a job failed.
A single run (no ``-m``) re-raises the exception after recording it: its clear message and a non-zero exit
status stay.

Launchers: with the basic launcher and Optuna every job runs in the sweep process. With the submitit
launchers (``hydra/launcher=local_parallel|slurm``) each job is a separate process (a SLURM array task) that
returns normally after a failure, so SLURM accounts the task as COMPLETED; the failure is in the job's
``job_status.json`` and the summary, and the process that submitted the sweep (which waits for all tasks)
exits 1. A task killed by SLURM (time limit, out of memory) makes submitit raise in the submitting process:
Hydra stops there with exit status 1 and no summary (``python -m runs.summary SWEEP_DIR`` writes it).

``job_status.json`` (written by global rank 0 only)::

    {"status": "running" | "ok" | "failed", "error": "ValueError: ...", "traceback": "...last lines...",
     "return_value": 0.81, "wall_time_s": 12.3, "started": "2024-...", "finished": "2024-..."}

A job that was killed (out of memory, time limit) stays at ``"running"``.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from runs.ranks import is_global_zero

log = logging.getLogger(__name__)

STATUS_FILE = "job_status.json"
TRACEBACK_LINES = 30


def is_multirun() -> bool:
    """True inside a job of a ``-m`` sweep (any sweeper/launcher), False in a single run or outside Hydra."""
    if not HydraConfig.initialized():
        return False
    return HydraConfig.get().mode == RunMode.MULTIRUN


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def write_status(output_dir: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as ``output_dir/job_status.json`` (global rank 0 only; NaN/inf written as null)."""
    if not is_global_zero():
        return
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / STATUS_FILE).write_text(json.dumps(clean, indent=2, allow_nan=False))


def _output_dir(cfg: DictConfig) -> Path:
    """``paths.output_dir``; Hydra's output directory when that does not resolve (a broken config must
    still be recorded as a failed job, not stop the sweep)."""
    value = OmegaConf.select(cfg, "paths.output_dir", default=None, throw_on_resolution_failure=False)
    if value is None and HydraConfig.initialized():
        value = HydraConfig.get().runtime.output_dir
    return Path(value if value is not None else ".")


def run_job(task: Callable[[DictConfig], float | None], cfg: DictConfig) -> float | None:
    """``task(cfg)`` timed, its outcome recorded in ``cfg.paths.output_dir/job_status.json``.

    Returns what ``task`` returns. When ``task`` raises: in a multirun job the error is logged and recorded
    and None is returned (the sweep goes on; the Optuna sweeper counts the trial as failed: it needs a value
    that is not a number, NaN would end the whole search); in a single run the exception propagates.
    """
    output_dir = _output_dir(cfg)
    started, start = _now(), time.perf_counter()
    record: dict[str, Any] = {"status": "running", "started": started}
    write_status(output_dir, record)
    try:
        value = task(cfg)
    except Exception as e:
        record.update(
            status="failed",
            error=f"{type(e).__name__}: {e}",
            traceback="".join(traceback.format_exc().splitlines(keepends=True)[-TRACEBACK_LINES:]),
            return_value=None,
            wall_time_s=time.perf_counter() - start,
            finished=_now(),
        )
        write_status(output_dir, record)
        if not is_multirun():
            raise
        log.error("job failed, the sweep goes on (%s in %s):\n%s", record["error"], output_dir,
                  record["traceback"])
        return None
    record.update(
        status="ok",
        return_value=None if value is None else float(value),
        wall_time_s=time.perf_counter() - start,
        finished=_now(),
    )
    write_status(output_dir, record)
    return value
