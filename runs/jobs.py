"""One Hydra job: wall time, ``job_status.json`` and, in a sweep, a failure recorded instead of raised.

Hydra's basic launcher stops a sweep at the first exception. :func:`run_job` catches the exception of a
multirun job, records it in the job directory and returns None to the sweeper, so the other jobs still run and
the sweep summary (:mod:`evaluation.sweeps`) shows the failed job as a row with its error; after summarising,
the summary callback (:class:`runs.summary.SweepSummary`) ends the sweep with exit status 1 when a job failed.
A single run (no ``-m``) re-raises the exception after recording it: its clear message and a non-zero exit
status stay.

Launchers: with the basic launcher and Optuna every job runs in the sweep process. With the submitit
launchers (``hydra/launcher=local_parallel|slurm``) each job is a separate process (a SLURM array task) that
returns normally after a failure, so SLURM accounts the task as COMPLETED; the failure is in the job's
``job_status.json`` and the summary, and the process that submitted the sweep (which waits for all tasks)
exits 1. A task killed by SLURM (time limit, out of memory) makes submitit raise in the submitting process:
Hydra stops there with exit status 1 and no summary (``python -m runs.summary SWEEP_DIR`` writes it).

Ctrl+C and SIGTERM (:mod:`runs.stop_signals`): the job is recorded as ``"interrupted"`` with the signal,
the epochs done, the checkpoint written at the stop and the command that resumes it, which is also printed.
A single run then exits with 130 (SIGINT) or 143 (SIGTERM). In a sweep the remaining jobs are recorded as
``"skipped"`` without running, and the sweep summary exits with the same status.

``job_status.json`` (written by global rank 0 only, atomically)::

    {"status": "running" | "ok" | "failed" | "interrupted" | "skipped", "error": "ValueError: ...",
     "traceback": "...last lines...", "return_value": 0.81, "wall_time_s": 12.3,
     "started": "2024-...", "finished": "2024-...",
     "signal": "SIGTERM", "epochs_done": 3, "last_checkpoint": ".../last.ckpt", "resume": "python ..."}

A job that was killed (SIGKILL, out of memory) stays at ``"running"``.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from evaluation.sweeps.jobs import STATUS_FILE
from runs.ranks import is_global_zero
from runs.stop_signals import RunInterrupted, exit_status, handle_stop_signals, signal_name
from safeio import write_json

log = logging.getLogger(__name__)

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
    if is_global_zero():
        write_json(output_dir / STATUS_FILE, record)


#: The signal that interrupted a job of this process's sweep: the jobs after it are skipped.
_sweep_interrupted: dict[str, int] = {}


def resume_command(output_dir: Path, checkpoint: str) -> str:
    """The command line that resumes the running Hydra job from ``checkpoint`` in ``output_dir``: the
    job's own overrides (in a sweep: this job's values), with ``ckpt_path`` and ``hydra.run.dir`` set."""
    overrides: list[str] = []
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task
                     if o.lstrip("+~").split("=", 1)[0] not in ("ckpt_path", "hydra.run.dir")]
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith(".py") else "train.py"
    words = ["python", script, *overrides, f"ckpt_path={checkpoint}", f"hydra.run.dir={output_dir}"]
    return " ".join(shlex.quote(w) for w in words)


def _interrupted(output_dir: Path, record: dict[str, Any], stop: RunInterrupted) -> None:
    """Record the interrupted job and say how to resume it (stderr)."""
    record.update(status="interrupted", signal=signal_name(stop.signum), aborted=stop.aborted,
                  epochs_done=stop.epochs_done, last_checkpoint=stop.last_checkpoint)
    if stop.last_checkpoint is None and (output_dir / "checkpoints" / "last.ckpt").is_file():
        record["last_checkpoint"] = str(output_dir / "checkpoints" / "last.ckpt")
    if record["last_checkpoint"] is not None:
        record["resume"] = resume_command(output_dir, record["last_checkpoint"])
    write_status(output_dir, record)
    if not is_global_zero():
        return
    done = "" if stop.epochs_done is None else f" after {stop.epochs_done} complete epoch(s)"
    lines = [f"run interrupted by {record['signal']}{done}; recorded in {output_dir / STATUS_FILE}"]
    if record.get("resume"):
        lines += ["resume with:", record["resume"]]
    else:
        lines.append("no checkpoint was written: start the run again")
    sys.stdout.flush()
    print("\n".join(lines), file=sys.stderr, flush=True)


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
    When the job is interrupted (:class:`runs.stop_signals.RunInterrupted`) it is recorded with its resume
    command and ``SystemExit(130 | 143)`` is raised in a single run; in a sweep None is returned and the
    later jobs of the sweep are skipped.
    """
    output_dir = _output_dir(cfg)
    started, start = _now(), time.perf_counter()
    record: dict[str, Any] = {"status": "running", "started": started}
    if _sweep_interrupted:
        name = signal_name(_sweep_interrupted["signum"])
        record.update(status="skipped", error=f"the sweep was interrupted by {name}", finished=_now())
        write_status(output_dir, record)
        return None
    write_status(output_dir, record)
    try:
        with handle_stop_signals():
            value = task(cfg)
    except RunInterrupted as stop:
        record.update(wall_time_s=time.perf_counter() - start, finished=_now(), return_value=None)
        _interrupted(output_dir, record, stop)
        if not is_multirun():
            raise SystemExit(exit_status(stop.signum)) from None
        _sweep_interrupted["signum"] = stop.signum
        return None
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


def sweep_interrupt_status() -> int | None:
    """The exit status of this process's sweep when one of its jobs was interrupted (130/143), else None."""
    signum = _sweep_interrupted.get("signum")
    return None if signum is None else exit_status(signum)
