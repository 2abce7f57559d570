"""Every use of a private member of ``pytorch_lightning`` in the project, behind public names.

Lightning keeps no promise about these between releases; each is listed in :data:`PRIVATE_MEMBERS` and
``tests/runs/test_lightning_compat.py`` checks that they exist in the installed version (and records the
versions they were checked with: :data:`CHECKED_WITH`). Where a release renames one, this module is the one
place to change.

Used by :class:`runs.callbacks.RunCheckpoint` (``last.ckpt`` at every checkpointing point),
:class:`runs.callbacks.EMAWeights` (no weight swaps outside fitting), :class:`runs.loggers.ResumableCSVLogger`
(a ``metrics.csv`` that survives a resume) and :mod:`runs.ddp` (re-launching the Hydra job).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

__all__ = [
    "CHECKED_WITH",
    "PRIVATE_MEMBERS",
    "CSVWriter",
    "LauncherDDPStrategy",
    "ScriptLauncher",
    "drop_average_model",
    "last_checkpoint_saved",
    "last_global_step_saved",
    "logger_experiment",
    "logger_filesystem",
    "set_logger_experiment",
    "should_save_on_train_epoch_end",
    "should_skip_saving_checkpoint",
]

#: pytorch_lightning versions whose private members below were checked (tests/runs/test_lightning_compat.py
#: checks the installed one; the floor in pyproject.toml is the oldest of these).
CHECKED_WITH = ("2.6.0", "2.6.6")

#: (class, member) of every private member used here.
PRIVATE_MEMBERS: tuple[tuple[type, str], ...] = (
    (ModelCheckpoint, "_should_save_on_train_epoch_end"),
    (ModelCheckpoint, "_should_skip_saving_checkpoint"),
    (EMAWeightAveraging, "setup"),  # sets _average_model (instance attribute: checked on an instance)
    (ExperimentWriter, "_check_log_dir_exists"),
    (ExperimentWriter, "_record_new_keys"),
    (_SubprocessScriptLauncher, "_call_children_scripts"),
    (_SubprocessScriptLauncher, "_check_can_spawn_children"),
    (DDPStrategy, "_configure_launcher"),
)
#: Instance attributes used (set in ``__init__``): ``ModelCheckpoint._last_global_step_saved``,
#: ``ModelCheckpoint._last_checkpoint_saved``,
#: ``EMAWeightAveraging._average_model``, ``CSVLogger._fs``, ``CSVLogger._experiment``,
#: ``ExperimentWriter._fs``, ``DDPStrategy._launcher``.


# ---- ModelCheckpoint --------------------------------------------------------------------------------------


def should_save_on_train_epoch_end(callback: ModelCheckpoint, trainer: pl.Trainer) -> bool:
    """Whether ``callback`` checkpoints at the end of the training epoch (else after validation)."""
    return callback._should_save_on_train_epoch_end(trainer)


def should_skip_saving_checkpoint(callback: ModelCheckpoint, trainer: pl.Trainer) -> bool:
    """Whether ``callback`` saves nothing at this point (sanity check, fast_dev_run, saved at this step)."""
    return callback._should_skip_saving_checkpoint(trainer)


def last_global_step_saved(callback: ModelCheckpoint) -> int:
    """The global step of ``callback``'s latest save."""
    return callback._last_global_step_saved


def last_checkpoint_saved(callback: ModelCheckpoint) -> str:
    """The path of ``callback``'s latest save ("" before the first)."""
    return callback._last_checkpoint_saved


# ---- EMAWeightAveraging -----------------------------------------------------------------------------------


def drop_average_model(callback: EMAWeightAveraging) -> None:
    """Forget ``callback``'s averaged copy, so that it swaps no weights (call before its ``setup``)."""
    callback._average_model = None


# ---- CSVLogger ------------------------------------------------------------------------------------------


class CSVWriter(ExperimentWriter):
    """Lightning's CSV ``ExperimentWriter`` with public names for what a subclass changes or uses:
    :meth:`check_log_dir` (called where Lightning checks the log directory, when the writer is made),
    :meth:`record_new_keys` and :attr:`filesystem`."""

    def _check_log_dir_exists(self) -> None:
        self.check_log_dir()

    def check_log_dir(self) -> None:
        super()._check_log_dir_exists()

    def record_new_keys(self) -> None:
        """Add the keys of the pending metrics to ``metrics_keys``."""
        self._record_new_keys()

    @property
    def filesystem(self) -> Any:
        return self._fs


def logger_filesystem(logger: CSVLogger) -> Any:
    return logger._fs


def logger_experiment(logger: CSVLogger) -> Any:
    """The logger's writer, None before it made one."""
    return logger._experiment


def set_logger_experiment(logger: CSVLogger, experiment: Any) -> None:
    logger._experiment = experiment


# ---- DDP launching ---------------------------------------------------------------------------------------


class ScriptLauncher(_SubprocessScriptLauncher):
    """Lightning's launcher that starts the extra processes by running the script again, with public names:
    override :meth:`call_children_scripts`; :meth:`check_can_spawn_children` as Lightning's."""

    def _call_children_scripts(self) -> None:
        self.call_children_scripts()

    def call_children_scripts(self) -> None:
        super()._call_children_scripts()

    def check_can_spawn_children(self) -> None:
        self._check_can_spawn_children()

    @staticmethod
    def is_lightning_default(launcher: Any) -> bool:
        """Whether ``launcher`` is Lightning's own script launcher (not a subclass)."""
        return type(launcher) is _SubprocessScriptLauncher


class LauncherDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose launcher a subclass may replace: :meth:`choose_launcher` gets the one Lightning
    configured and returns the one to use."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        self._launcher = self.choose_launcher(self._launcher)

    def choose_launcher(self, launcher: Any) -> Any:
        return launcher
