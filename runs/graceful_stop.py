"""The training side of a clean stop on Ctrl+C or SIGTERM (:mod:`runs.stop_signals`)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from runs.stop_signals import RunInterrupted, install_handlers, stop_request

__all__ = ["GracefulStop", "last_checkpoint_path"]


def last_checkpoint_path(trainer: pl.Trainer) -> Path | None:
    """``<checkpoint dir>/last.ckpt`` of the run's checkpoint callback; None without one."""
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return None


class GracefulStop(pl.Callback):
    """After the training step in which SIGINT/SIGTERM arrived, write ``last.ckpt`` and raise
    :class:`~runs.stop_signals.RunInterrupted` (every run gets this callback from
    :func:`runs.build.build_trainer`).

    Under DDP the processes agree at every step whether any of them received a signal (one boolean
    all-reduce; a single process checks a flag), so all stop after the same step and write the checkpoint
    together. A signal during validation is acted on at the next training step, or at the end of training.

    Lightning's own SIGTERM handler would end the run with ``SystemExit`` (exit status 0, no checkpoint),
    and only after the rank-0 process decides alone; this callback puts :mod:`runs.stop_signals`' handler
    back when training starts (after Lightning has installed its own).
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        install_handlers()
        stop_request.training = True

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object, **kwargs: object) -> None:
        requested = stop_request.signum is not None
        if trainer.world_size > 1:
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            self._stop(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stop_request.training = False
        if stop_request.signum is not None:  # arrived during the last validation: no step followed
            self._stop(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        stop_request.training = False

    @staticmethod
    def _stop(trainer: pl.Trainer) -> None:
        stop_request.training = False
        last = last_checkpoint_path(trainer)
        if last is not None:
            trainer.save_checkpoint(last, weights_only=False)  # collective under DDP: every process is here
        signum = stop_request.signum if stop_request.signum is not None else signal.SIGTERM  # another rank's
        raise RunInterrupted(signum, epochs_done=trainer.current_epoch, last_checkpoint=last)
