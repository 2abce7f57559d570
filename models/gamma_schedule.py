"""The training callback of the loss: :class:`GammaScheduleCallback` sets the focal gamma of every epoch and
keeps the loss's gammas in every checkpoint (``checkpoint["loss_gammas"]``, :func:`loss_gammas`), so that a
checkpoint evaluates with the loss it was trained with (:func:`restore_loss_gammas`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
from torch import nn

from seglosses.focal import CrossEntropyLoss, FocalLoss

__all__ = ["GAMMAS_KEY", "GammaScheduleCallback", "focal_terms", "loss_gammas", "restore_loss_gammas"]

#: The checkpoint entry of :func:`loss_gammas`.
GAMMAS_KEY = "loss_gammas"


def focal_terms(module: nn.Module) -> list[FocalLoss]:
    """Every :class:`seglosses.focal.FocalLoss` inside ``module`` whose gamma can change (not the
    ``CrossEntropyLoss`` subclass, whose gamma is fixed at 0)."""
    return [m for m in module.modules() if isinstance(m, FocalLoss) and not isinstance(m, CrossEntropyLoss)]


def _has_float_gamma(module: nn.Module) -> bool:
    gamma = getattr(module, "gamma", None)
    return isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and math.isfinite(gamma)


def loss_gammas(loss: nn.Module) -> dict[str, float]:
    """``{submodule name: gamma}`` of every term of ``loss`` with a float ``gamma``: a schedule sets plain
    attributes, which the state dict does not hold."""
    return {name: float(m.gamma) for name, m in loss.named_modules() if _has_float_gamma(m)}


def restore_loss_gammas(loss: nn.Module, checkpoint: Mapping[str, Any]) -> None:
    """Set the gammas a checkpoint recorded (:data:`GAMMAS_KEY`) on the terms of ``loss`` (none: nothing)."""
    gammas = checkpoint.get(GAMMAS_KEY, {})
    for name, m in loss.named_modules():
        if name in gammas and _has_float_gamma(m):
            m.gamma = gammas[name]


class GammaScheduleCallback(pl.Callback):
    """Sets ``gamma = schedule(epoch)`` on every focal term of the module's loss and logs ``train/gamma``.

    Gamma is a function of the 0-based epoch only, so a run resumed from a checkpoint continues the
    schedule where it stopped. It is applied at the start of every training epoch and of every
    validation loop (so validation uses the gamma of the epoch it belongs to).

    Args:
        schedule: ``schedule(epoch) -> gamma``, e.g. :class:`seglosses.schedules.GammaSchedule`;
            ``None`` disables the callback (losses without a focal term).

    Every checkpoint gets the loss's gammas (:func:`loss_gammas`, also without a schedule) and loading one
    (resume, ``trainer.validate/test(ckpt_path=)``) sets them back.

    Raises:
        ValueError: at fit start, when a schedule is given but the loss has no focal term.
    """

    def __init__(self, schedule: Callable[[int], float] | None) -> None:
        super().__init__()
        self.schedule = schedule

    def apply(self, pl_module: nn.Module, epoch: int) -> float | None:
        """Set and return the gamma of ``epoch`` (``None`` without a schedule)."""
        if self.schedule is None:
            return None
        gamma = float(self.schedule(epoch))
        for term in focal_terms(pl_module):
            term.gamma = gamma
        return gamma

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule is not None and not focal_terms(pl_module):
            raise ValueError(
                "a gamma schedule is configured but the loss has no focal term "
                f"({type(getattr(pl_module, 'loss', pl_module)).__name__}); set the schedule to null"
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        gamma = self.apply(pl_module, trainer.current_epoch)
        if gamma is not None:
            pl_module.log("train/gamma", gamma, on_step=False, on_epoch=True)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self.apply(pl_module, trainer.current_epoch)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[GAMMAS_KEY] = loss_gammas(getattr(pl_module, "loss", pl_module))

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        restore_loss_gammas(getattr(pl_module, "loss", pl_module), checkpoint)
