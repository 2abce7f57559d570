"""Lightning plumbing of a run: a checkpoint callback whose run directory may be moved or copied between a
run and its resume (:class:`RunCheckpoint`), and an EMA of the weights whose checkpoints are evaluated with
their averaged weights (:class:`EMAWeights`)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only

from runs.lightning_compat import (
    drop_average_model,
    last_checkpoint_saved,
    last_global_step_saved,
    should_save_on_train_epoch_end,
    should_skip_saving_checkpoint,
)
from safeio import atomic_path
from seglosses.checks import check_bool, check_number

__all__ = ["EMAWeights", "RunCheckpoint"]

log = logging.getLogger(__name__)


class RunCheckpoint(ModelCheckpoint):
    """:class:`~pytorch_lightning.callbacks.ModelCheckpoint` that resumes the same run when the run
    directory was moved or copied since the checkpoint was written.

    Lightning stores absolute paths in the checkpoint (``dirpath``, ``best_model_path``, ``best_k_models``,
    ``kth_best_model_path``, ``last_model_path``); when ``dirpath`` differs on resume it drops the best
    score (so a worse epoch becomes "best") and keeps the old ``best_model_path``, which then names a file
    that is gone or, worse, the other directory's checkpoint (evaluated, or deleted when a better epoch
    comes). Here every path inside the saved ``dirpath`` is re-based onto the current one and the scores
    are kept. A best checkpoint missing from the current directory is copied there from the saved one
    (resuming another run's ``last.ckpt`` into a new directory); one found in neither place is dropped
    with a warning, and the best is then chosen among the epochs trained from now on.

    ``last.ckpt`` (``save_last=True``) is kept by this class, not by Lightning (which since 2.6 writes it
    only when a top-k checkpoint was saved at the same step, so a resume repeated the epochs since the last
    improvement). At a checkpointing point (a validation, or a training epoch end when checkpointing there):

    - when this point saved a top-k checkpoint, ``last.ckpt`` becomes a hard link to that file (the same
      bytes: no second write of tens of MB; a full write where the file system has no hard links);
    - otherwise it is written when ``last_every_seconds`` have passed since the previous write (0: always),
      at the run's final point (``max_epochs``/``max_steps`` reached, or a callback stopped the run), and
      at the first point of the fit.

    So a resume after a crash repeats at most ``last_every_seconds`` of training plus the epoch in
    progress; Ctrl+C/SIGTERM write ``last.ckpt`` anyway (:mod:`runs.graceful_stop`). Every write and link
    is atomic. Under DDP rank 0 decides and writes.

    Args:
        save_last: keep ``last.ckpt`` (true or false).
        last_every_seconds: least seconds between two full writes of ``last.ckpt`` (>= 0).
        *args, **kwargs: :class:`~pytorch_lightning.callbacks.ModelCheckpoint` arguments.
    """

    def __init__(self, *args: Any, save_last: bool = False, last_every_seconds: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, save_last=False, **kwargs)
        self.keep_last = check_bool(save_last, "callbacks.model_checkpoint.save_last")
        self.last_every_seconds = float(
            check_number(last_every_seconds, "callbacks.model_checkpoint.last_every_seconds", minimum=0)
        )
        self._last_written: float | None = None  # time.monotonic() of this fit's latest last.ckpt

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any,
                           **kwargs: Any) -> None:
        before = last_global_step_saved(self)
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if last_global_step_saved(self) != before:  # every_n_train_steps / train_time_interval saved
            self._update_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.keep_last and not last_checkpoint_saved(self) and self._last_written is None:
            # nothing saved in this fit (fast_dev_run): as ModelCheckpoint, last.ckpt of the end state
            self.last_model_path = str(self.last_path())
            trainer.save_checkpoint(self.last_path())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        skip = should_skip_saving_checkpoint(self, trainer)
        super().on_train_epoch_end(trainer, pl_module)
        if not skip and should_save_on_train_epoch_end(self, trainer):
            self._update_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        skip = should_skip_saving_checkpoint(self, trainer)
        super().on_validation_end(trainer, pl_module)
        if not skip and not should_save_on_train_epoch_end(self, trainer):
            self._update_last(trainer)

    def last_path(self) -> Path:
        """``<dirpath>/last.ckpt``."""
        return Path(self.dirpath or ".") / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    def _update_last(self, trainer: pl.Trainer) -> None:
        if not self.keep_last:
            return
        path = self.last_path()
        saved_now = last_global_step_saved(self) == trainer.global_step and last_checkpoint_saved(self)
        if saved_now and "://" not in str(path):
            self.last_model_path = str(path)
            if trainer.is_global_zero:
                _link_or_copy(Path(last_checkpoint_saved(self)), path)
            trainer.strategy.barrier("RunCheckpoint.last")
        elif trainer.strategy.broadcast(self._due(trainer), src=0):
            self.last_model_path = str(path)  # before saving: part of the saved state
            trainer.save_checkpoint(path)
        else:
            return
        self._last_written = time.monotonic()

    def _due(self, trainer: pl.Trainer) -> bool:
        """Whether ``last.ckpt`` is written in full at this point (see the class docstring)."""
        if self._last_written is None or time.monotonic() - self._last_written >= self.last_every_seconds:
            return True
        max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
        return bool(
            trainer.should_stop
            or (max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps)
            or (max_epochs is not None and max_epochs >= 0 and trainer.current_epoch >= max_epochs - 1)
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if not old or not self.dirpath:
            super().load_state_dict(state_dict)
            return
        if _same_dir(old, self.dirpath):  # also when spelled differently (a symlink): keep everything
            super().load_state_dict({**state_dict, "dirpath": self.dirpath})
            return
        old_dir, new_dir = Path(old), Path(self.dirpath)

        def rebase(path: Any) -> Any:
            if isinstance(path, str) and path and Path(path).parent == old_dir:
                return str(new_dir / Path(path).name)
            return path

        def available(path: str, original: str) -> bool:
            """Whether ``path`` (re-based) holds the checkpoint, copying it from ``original`` if needed.
            The decision is the same on every rank (only rank 0 copies)."""
            if Path(path).is_file():
                return True
            if path == original or not Path(original).is_file():
                return False
            if rank_zero_only.rank == 0:
                new_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy2(original, path)
                log.info("copied the best checkpoint %s of the resumed run to %s", original, path)
            return True

        best_k = {}
        for path, score in (state_dict.get("best_k_models") or {}).items():
            new = rebase(path)
            if available(new, path):
                best_k[new] = score
            else:
                log.warning(
                    "checkpoint %s of the resumed run was found neither there nor in %s: it is no longer "
                    "a candidate for the best checkpoint", path, new_dir,
                )  # fmt: skip
        state = {**state_dict, "dirpath": self.dirpath, "best_k_models": best_k}
        state["last_model_path"] = rebase(state_dict.get("last_model_path", ""))
        state["kth_best_model_path"] = rebase(state_dict.get("kth_best_model_path", ""))
        best = rebase(state_dict.get("best_model_path", ""))
        if best_k and best not in best_k:  # the best one was lost: the best of those left
            pick = min if self.mode == "min" else max
            best = pick(best_k, key=lambda k: float(best_k[k]))
            state["best_model_score"] = best_k[best]
        if not best_k and state_dict.get("best_model_path"):
            best, state["best_model_score"] = "", None
            state["kth_best_model_path"], state["kth_value"] = "", self.kth_value
        state["best_model_path"] = best
        super().load_state_dict(state)


def _link_or_copy(source: Path, path: Path) -> None:
    """``path`` as a hard link to ``source`` (a copy where hard links fail), replaced atomically."""
    with atomic_path(path) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)


class EMAWeights(EMAWeightAveraging):
    """Lightning's :class:`~pytorch_lightning.callbacks.EMAWeightAveraging` (an exponential moving average
    of parameters and buffers, updated after every ``update_every_n_steps``-th optimizer step; validation
    during fitting runs on the average, checkpoints hold it as ``state_dict`` and the raw weights as
    ``current_model_state``; fitting resumed from a checkpoint continues both), which also evaluates the
    average outside fitting.

    Lightning keeps the average of the fit after it: ``trainer.test(ckpt_path=best)`` then loads the raw
    weights of ``current_model_state`` into the module and tests them (no swap for test), and
    ``trainer.validate(ckpt_path=)`` only reaches the average through two swaps. Here validate, test and
    predict drop the average and keep the module's weights: the ``state_dict`` of the checkpoint loaded,
    i.e. its averaged weights, or the average that fitting copied into the module at its end. That is what
    ``train=false ckpt_path=`` and ``predict.py`` (which read ``state_dict``) evaluate too.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            drop_average_model(self)  # no swaps: the module's weights are the average (see above)
        super().setup(trainer, pl_module, stage)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # the module keeps the checkpoint's state_dict: the averaged weights
        super().on_load_checkpoint(trainer, pl_module, checkpoint)


def _same_dir(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b
