"""The guard against NaN/inf losses: :class:`NonFiniteGuard` tracks each batch's loss on the device (no host
sync per step) and fails with FloatingPointError naming stage, epoch and batch when it is read: evaluation
stages at their epoch end, training every few steps and before anything uses the weights (validation, a
checkpoint)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["NonFiniteGuard"]

STAGE_NAMES = {"train": "training", "val": "validation", "test": "test"}


class NonFiniteGuard:
    """First non-finite loss per stage since the last read, tracked without a device sync per batch
    (:meth:`track`), read by :meth:`check`.

    Raising at the evaluation epoch end, before the checkpoint callback's ``on_validation_end``, keeps
    weights whose scores are meaningless from being saved as the best checkpoint; the training record is
    read before validation and before every checkpoint for the same reason.
    """

    def __init__(self) -> None:
        self._state: dict[str, dict[str, Tensor]] = {}

    def reset(self, stage: str) -> None:
        """Forget ``stage``'s record (left over by an epoch that was interrupted)."""
        self._state.pop(stage, None)

    @property
    def tracking(self) -> list[str]:
        """The stages with a record of the running epoch."""
        return list(self._state)

    def track(self, stage: str, loss: Tensor, batch_idx: int) -> None:
        """Remember the first non-finite ``stage`` loss of the epoch (its batch and value) and count them.

        Device ops only, no ``.item()``: checking each step as training does would wait for the device at
        every evaluation batch.
        """
        loss = loss.detach()
        state = self._state.get(stage)
        if state is None:
            state = {
                "batch": torch.full((), -1, dtype=torch.long, device=loss.device),
                "value": torch.zeros((), dtype=torch.float32, device=loss.device),
                "count": torch.zeros((), dtype=torch.long, device=loss.device),
            }
            self._state[stage] = state
        bad = ~torch.isfinite(loss)
        first = bad & (state["batch"] < 0)
        state["batch"].masked_fill_(first, batch_idx)  # a Python scalar: no host-to-device copy
        state["value"].copy_(torch.where(first, loss.float(), state["value"]))
        state["count"].add_(bad.long())

    def check(self, stage: str, trainer: Any = None) -> None:
        """Raise FloatingPointError when a ``stage`` loss since the last check was NaN/inf (on any DDP
        process of ``trainer``); the record is cleared either way.

        One device sync per epoch (the ``.item()``), plus one collective under DDP so that every process
        raises (a process that raised alone would leave the others waiting in the next collective).
        """
        state = self._state.pop(stage, None)
        count = int(state["count"].item()) if state is not None else 0
        if trainer is not None and trainer.world_size > 1:
            anywhere = trainer.strategy.reduce_boolean_decision(count > 0, all=False)
        else:
            anywhere = count > 0
        if not anywhere:
            return
        name = STAGE_NAMES[stage]
        if trainer is not None and trainer.sanity_checking and stage != "train":
            name += " (sanity check)"
        epoch = trainer.current_epoch if trainer is not None and trainer.state.fn == "fit" else None
        where = "" if epoch is None else f" at epoch {epoch}"
        if count > 0:
            assert state is not None
            value, batch = float(state["value"].item()), int(state["batch"].item())
            since = "since the last check" if stage == "train" else "in this epoch"
            what = f"{name} loss is {value}{where}, batch {batch} ({count} non-finite batches {since})"
        else:
            what = f"{name} loss is not finite{where} on another DDP process"
        raise FloatingPointError(
            f"{what}; the weights give NaN/inf, so their scores would be meaningless: lower the learning "
            "rate (optimizer.lr=), check the loss options and the data (NaN/inf in the images?)"
        )
