"""The callback presets of conf/callbacks: ``callbacks=ema`` (runs.callbacks.EMAWeights: what is
validated, saved, tested and resumed is the exponential moving average of the trained weights),
``callbacks=early_stopping`` (stops a run whose ``optimized_metric`` does not improve) and both at once."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping

from inference import load_for_inference
from runs.build import build_callbacks
from runs.callbacks import EMAWeights, RunCheckpoint
from runs.training import run
from tests.test_train import _short_run, make_cfg, read_metrics

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow

DECAY = 0.5  # large enough a step for 2 epochs of 2 steps to move the average away from the weights
RECORDER = "+callbacks.recorder._target_=tests.runs.test_callback_presets.WeightRecorder"

State = dict[str, torch.Tensor]


def _floats(state: dict[str, Any]) -> State:
    """The floating-point entries (parameters, BatchNorm statistics), detached copies on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in state.items() if torch.is_floating_point(v)}


def _assert_same(a: State, b: State) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=key)


def _differs(a: State, b: State) -> bool:
    return any(not torch.allclose(a[k], b[k]) for k in a)


class WeightRecorder(pl.Callback):
    """The module's weights after every optimizer step, at the start and the end of fitting, and at the
    first batch of every validation/test (with the trainer's function and epoch). The last instance is
    kept."""

    last: ClassVar[WeightRecorder | None] = None

    def __init__(self) -> None:
        self.steps: list[State] = []
        self.start: State | None = None
        self.end: State | None = None
        self.evaluated: list[tuple[str, int, State]] = []
        WeightRecorder.last = self

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = _floats(pl_module.state_dict())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end = _floats(pl_module.state_dict())  # after every on_train_end: EMA copied its average in

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.steps.append(_floats(pl_module.state_dict()))

    def _evaluated(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch_idx: int) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            fn = trainer.state.fn.value if trainer.state.fn is not None else ""
            self.evaluated.append((fn, trainer.current_epoch, _floats(pl_module.state_dict())))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._evaluated(trainer, pl_module, batch_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._evaluated(trainer, pl_module, batch_idx)


def ema(steps: list[State], decay: float, start: State | None = None) -> State:
    """The EMA of ``steps`` kept independently of Lightning: the first step's weights (or ``start``, an
    average to continue), then ``decay * average + (1 - decay) * weights`` per step."""
    average = start
    for weights in steps:
        average = dict(weights) if average is None else {
            k: decay * average[k] + (1 - decay) * weights[k] for k in weights
        }
    assert average is not None
    return average


def _load(path: Path | str) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _ema_run(root: Path, *extra: str):
    cfg = _short_run(root, "callbacks=ema", f"callbacks.ema.decay={DECAY}", "callbacks.prediction_grid=null",
                     RECORDER, *extra)
    run(cfg)
    recorder = WeightRecorder.last
    assert recorder is not None
    return cfg, Path(cfg.paths.checkpoint_dir), recorder


# ---- composition ------------------------------------------------------------------------------------------


def test_presets_add_their_callback_to_the_defaults(tmp_path):
    defaults = list(make_cfg(tmp_path).callbacks)
    for option, added in [("ema", ["ema"]), ("early_stopping", ["early_stopping"]),
                          ("[ema,early_stopping]", ["ema", "early_stopping"])]:
        assert list(make_cfg(tmp_path, f"callbacks={option}").callbacks) == [*defaults, *added]
    cfg = make_cfg(tmp_path, "callbacks=[ema,early_stopping]", "optimized_metric=val/mDice",
                   "callbacks.early_stopping.patience=3", "callbacks.ema.decay=0.99")
    callbacks = build_callbacks(cfg, has_logger=True)
    (stopper,) = [c for c in callbacks if isinstance(c, EarlyStopping)]
    (averager,) = [c for c in callbacks if isinstance(c, EMAWeights)]
    assert (stopper.monitor, stopper.mode, stopper.patience, stopper.min_delta) == ("val/mDice", "max", 3, 0)
    assert any(isinstance(c, RunCheckpoint) for c in callbacks)  # the default callbacks stay
    assert averager.update_every_n_steps == 1


# ---- EMA --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ema_weights_are_validated_saved_and_tested(tmp_path):
    """2 epochs of 2 steps: validation during fitting, the checkpoints, the module after fitting, the
    validation and the test of the best checkpoint after fitting, predict.py's network and ``train=false``
    all use the EMA of the trained weights."""
    cfg, checkpoints, recorder = _ema_run(tmp_path / "a")
    steps = recorder.steps
    assert len(steps) == 4
    assert recorder.end is not None
    _assert_same(recorder.end, ema(steps, DECAY))
    assert _differs(ema(steps, DECAY), steps[-1])
    # Lightning >= 2.6 writes last.ckpt only with a new best checkpoint: the epoch it holds may be 0 or 1
    last = _load(checkpoints / "last.ckpt")
    n = 2 * (last["epoch"] + 1)  # the steps up to its epoch
    _assert_same(_floats(last["state_dict"]), ema(steps[:n], DECAY))
    _assert_same(_floats(last["current_model_state"]), steps[n - 1])  # the raw weights, for resuming
    assert int(last["averaging_state"]["n_averaged"]) == n

    fit_val = [(epoch, w) for fn, epoch, w in recorder.evaluated if fn == "fit"]
    assert [epoch for epoch, _ in fit_val] == [0, 1]
    for epoch, weights in fit_val:  # validation of epoch e: the average of its 2 * (e + 1) steps
        _assert_same(weights, ema(steps[: 2 * (epoch + 1)], DECAY))

    metrics = read_metrics(cfg)
    best = _load(metrics["checkpoint"])
    assert best["epoch"] == metrics["best_epoch"]
    _assert_same(_floats(best["state_dict"]), ema(steps[: 2 * (best["epoch"] + 1)], DECAY))
    after_fit = {fn: w for fn, _, w in recorder.evaluated if fn in ("validate", "test")}
    assert after_fit.keys() == {"validate", "test"}
    _assert_same(after_fit["validate"], _floats(best["state_dict"]))
    _assert_same(after_fit["test"], _floats(best["state_dict"]))  # Lightning's callback: the raw weights

    network, _ = load_for_inference(metrics["checkpoint"])  # predict.py's weights
    averaged = {k[len("network."):]: v for k, v in _floats(best["state_dict"]).items()}
    _assert_same(_floats(network.state_dict()), averaged)

    evaluated = _short_run(tmp_path / "b", "callbacks=ema", RECORDER, "train=false",
                           f"ckpt_path={metrics['checkpoint']}")
    run(evaluated)
    (test,) = WeightRecorder.last.evaluated
    _assert_same(test[2], _floats(best["state_dict"]))
    assert read_metrics(evaluated)["test"]["mIoU"] == pytest.approx(metrics["test"]["mIoU"], abs=1e-6)


@pytest.mark.slow
def test_resumed_fit_continues_the_average(tmp_path):
    """Stopped after epoch 0 (max_steps=2), resumed: the fit restarts from the raw weights and the average
    continues from the checkpoint's (not from the weights): the end of the fit holds EMA(saved average,
    new steps)."""
    _, checkpoints, first = _ema_run(tmp_path, "trainer.max_steps=2")
    saved = _load(checkpoints / "last.ckpt")
    assert saved["epoch"] == 0 and int(saved["averaging_state"]["n_averaged"]) == 2
    _assert_same(_floats(saved["state_dict"]), ema(first.steps, DECAY))

    _, _, resumed = _ema_run(tmp_path, f"ckpt_path={checkpoints / 'last.ckpt'}")
    assert resumed.start is not None and resumed.end is not None and len(resumed.steps) == 2
    _assert_same(resumed.start, first.steps[-1])  # training goes on from the raw weights
    continued = ema(resumed.steps, DECAY, start=_floats(saved["state_dict"]))
    _assert_same(resumed.end, continued)
    assert _differs(continued, ema(resumed.steps, DECAY))  # not an average restarted at the resume
    fit_val = [w for fn, epoch, w in resumed.evaluated if fn == "fit"]
    assert len(fit_val) == 1  # epoch 1 only
    _assert_same(fit_val[0], continued)


# ---- early stopping ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_early_stopping_stops_a_run_that_does_not_improve(tmp_path):
    """lr=0 and an output bias from the class frequencies (every pixel: background, whatever the BatchNorm
    statistics): val/mIoU stays the same, so patience 1 stops the run of 5 epochs after 2 epochs; the best
    checkpoint (the first epoch's) is still validated and tested."""
    cfg = _short_run(tmp_path, "callbacks=early_stopping", "callbacks.early_stopping.patience=1",
                     "trainer.max_epochs=5", "optimizer.lr=0", "model.prior_init=true",
                     "callbacks.prediction_grid=null")
    run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    trained = {int(r["epoch"]) for r in rows if r.get("train/loss")}
    assert trained == {0, 1}
    scores = [float(r["val/mIoU"]) for r in rows if r.get("val/mIoU") and int(r["epoch"]) < 2]
    assert len(scores) == 2 and scores[0] == scores[1]
    metrics = read_metrics(cfg)
    assert metrics["best_epoch"] == 0 and metrics["test"] is not None
