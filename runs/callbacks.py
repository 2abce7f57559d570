"""Lightning plumbing of a run: a checkpoint callback whose run directory may be moved or copied between a
run and its resume (:class:`RunCheckpoint`), and an EMA of the weights whose checkpoints are evaluated with
their averaged weights (:class:`EMAWeights`)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only

from runs.lightning_compat import (
    drop_average_model,
    last_global_step_saved,
    save_last_checkpoint,
    should_save_on_train_epoch_end,
    should_skip_saving_checkpoint,
)

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

    ``last.ckpt`` (``save_last=True``) is written at every checkpointing point (every validation, or every
    training epoch when checkpointing on train epoch end). Since pytorch_lightning 2.6 ``ModelCheckpoint``
    writes it only when a top-k checkpoint was saved at the same step, so in epochs that do not improve the
    monitored score ``last.ckpt`` kept an older epoch and a resume repeated the epochs after it.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if should_save_on_train_epoch_end(self, trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not should_save_on_train_epoch_end(self, trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: pl.Trainer) -> None:
        """``last.ckpt`` of this step when the parent saved nothing at it (no top-k improvement)."""
        if self.save_last is not True or should_skip_saving_checkpoint(self, trainer):
            return
        if last_global_step_saved(self) != trainer.global_step:
            save_last_checkpoint(self, trainer)

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
