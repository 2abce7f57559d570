"""The non-finite loss guard (evaluation.nonfinite.NonFiniteGuard) on its own; with the LightningModule:
tests/models/test_nonfinite.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from evaluation.nonfinite import NonFiniteGuard


def test_first_non_finite_batch_is_named_and_all_are_counted():
    guard = NonFiniteGuard()
    guard.track("val", torch.tensor(1.0), 0)
    guard.track("val", torch.tensor(float("inf")), 1)
    guard.track("val", torch.tensor(float("nan")), 2)
    assert guard.tracking == ["val"]
    with pytest.raises(FloatingPointError, match=r"validation loss is inf, batch 1 \(2 non-finite"):
        guard.check("val")
    guard.check("val")  # cleared: the next epoch starts clean
    assert guard.tracking == []


def test_finite_losses_pass_and_reset_forgets():
    guard = NonFiniteGuard()
    for i in range(3):
        guard.track("test", torch.tensor(0.5 + i), i)
    guard.check("test")
    guard.track("test", torch.tensor(float("nan")), 0)
    guard.reset("test")
    guard.check("test")


def test_the_trainer_names_epoch_and_sanity_check():
    guard = NonFiniteGuard()
    trainer = SimpleNamespace(world_size=1, sanity_checking=True, current_epoch=4,
                              state=SimpleNamespace(fn="fit"))
    guard.track("val", torch.tensor(float("nan")), 0)
    expected = r"validation \(sanity check\) loss is nan at epoch 4, batch 0"
    with pytest.raises(FloatingPointError, match=expected):
        guard.check("val", trainer)


def test_another_ddp_process_makes_every_process_raise():
    class Strategy:
        def reduce_boolean_decision(self, decision, all=True):
            return True  # another process saw a NaN

    guard = NonFiniteGuard()
    trainer = SimpleNamespace(world_size=2, sanity_checking=False, current_epoch=0,
                              state=SimpleNamespace(fn="test"), strategy=Strategy())
    with pytest.raises(FloatingPointError, match="test loss is not finite on another DDP process"):
        guard.check("test", trainer)
