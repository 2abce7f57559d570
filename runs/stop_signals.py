"""Ctrl+C (SIGINT) and SIGTERM during a job: a clean stop instead of a lost or silently "finished" run.

SIGTERM is what SLURM, Kubernetes and most schedulers send before they stop or preempt a job; Ctrl+C is
SIGINT. While a job runs (:func:`handle_stop_signals`, entered by :func:`runs.jobs.run_job`):

- during training the first signal only *requests* a stop: :class:`runs.graceful_stop.GracefulStop`
  ends training after the current step, writes ``last.ckpt`` and raises :class:`RunInterrupted`;
- outside training (data checks, the final validation and test) there is nothing to save, and the first
  signal raises :class:`RunInterrupted` at once;
- a second Ctrl+C raises :class:`RunInterrupted` at once (``aborted``), without a checkpoint.

:func:`runs.jobs.run_job` records the job as ``"interrupted"``, prints the resume command and exits with
``128 + signal`` (130 for SIGINT, 143 for SIGTERM), as a shell reports a process ended by that signal.

This module does not import torch (``runs.jobs`` and ``runs.summary`` stay light).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

__all__ = [
    "STOP_SIGNALS",
    "RunInterrupted",
    "StopRequest",
    "exit_status",
    "handle_stop_signals",
    "signal_name",
    "stop_request",
]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    """The exit status of a process stopped by ``signum``: 128 + its number (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class RunInterrupted(BaseException):
    """The job was stopped by a signal. A ``BaseException``, like ``KeyboardInterrupt``, so that handlers
    of ordinary errors (``except Exception``) let it through.

    Attributes:
        signum: the signal (``signal.SIGINT`` or ``signal.SIGTERM``).
        aborted: True when it stopped at once (second Ctrl+C, or outside training), without a checkpoint.
        epochs_done: training epochs completed before the stop (None when training had not started).
        last_checkpoint: the checkpoint written at the stop, from which the run resumes (None: none).
    """

    def __init__(self, signum: int, aborted: bool = False, epochs_done: int | None = None,
                 last_checkpoint: str | Path | None = None) -> None:
        self.signum = int(signum)
        self.aborted = aborted
        self.epochs_done = epochs_done
        self.last_checkpoint = None if last_checkpoint is None else str(last_checkpoint)
        how = "aborted" if aborted else "stopped"
        super().__init__(f"{how} by {signal_name(self.signum)}")


@dataclass
class StopRequest:
    """The stop requested in this process: the first signal received, and whether a training loop that
    can stop cleanly (:class:`runs.graceful_stop.GracefulStop`) is running."""

    signum: int | None = None
    training: bool = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The handler of SIGINT and SIGTERM (runs in the main thread, between two bytecodes)."""
        if self.signum is None:
            self.signum = int(signum)
            if not self.training:
                raise RunInterrupted(signum, aborted=True)
            print(f"\n{signal_name(signum)} received: stopping after this training step and saving "
                  "last.ckpt (Ctrl+C again aborts at once)", file=sys.stderr, flush=True)
        elif signum == signal.SIGINT:
            raise RunInterrupted(signum, aborted=True)

    def reset(self) -> None:
        self.signum, self.training = None, False


#: The stop request of this process (one job runs at a time in a process).
stop_request = StopRequest()


def install_handlers() -> None:
    """Route SIGINT and SIGTERM to :data:`stop_request` (only the main thread may set handlers)."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, stop_request.handle)


@contextmanager
def handle_stop_signals() -> Iterator[StopRequest]:
    """Within the block SIGINT and SIGTERM request a clean stop (:data:`stop_request`); the previous
    handlers are restored afterwards."""
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS} if main else {}
    stop_request.reset()
    install_handlers()
    try:
        yield stop_request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        stop_request.reset()
