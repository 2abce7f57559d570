"""A quiet console (runs.console): the third-party messages that say nothing in a run are filtered at their
source, one by one, and nothing else is; the model summary is one line without FLOPs."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl

from runs import console
from runs.console import OneLineModelSummary, quiet_third_party
from tests.overrides import SMALL_UNET, SYNTHETIC_TINY

ROOT = Path(__file__).resolve().parents[2]
RANK_ZERO = "pytorch_lightning.utilities.rank_zero"

#: (message, category, module that emits it): the warnings a run shows without runs.console.
SILENCED_WARNINGS = [
    ("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
     "treespec.is_leaf()` instead.", FutureWarning, "pytorch_lightning.utilities._pytree"),
    ("Checkpoint directory /runs/x/checkpoints exists and is not empty.", UserWarning,
     "pytorch_lightning.callbacks.model_checkpoint"),
    ("The number of training batches (2) is smaller than the logging interval Trainer(log_every_n_steps=5). "
     "Set a lower value for log_every_n_steps if you want to see logs for the training epoch.", UserWarning,
     "pytorch_lightning.loops.fit_loop"),
    ("The 'train_dataloader' does not have many workers which may be a bottleneck. Consider increasing the "
     "value of the `num_workers` argument` to `num_workers=7` in the `DataLoader` to improve performance.",
     UserWarning, "pytorch_lightning.trainer.connectors.data_connector"),
]
SILENCED_INFO = [
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
    "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]",
    "Trainer already configured with model summary callbacks: [<class 'RichModelSummary'>]. Skipping setting "
    "a default `ModelSummary` callback.",
    "TPU available: False, using: 0 TPU cores",
    "Loaded model weights from the checkpoint at /runs/x/checkpoints/best-epoch001.ckpt",
]
KEPT_INFO = [
    "GPU available: True (cuda), used: False",
    "Restoring states from the checkpoint path at /runs/x/checkpoints/best-epoch001.ckpt",
    "`Trainer.fit` stopped: `max_epochs=2` reached.",
]


@pytest.fixture
def quiet():
    """quiet_third_party() for one test: the warning filters inside catch_warnings, the logging filters and
    levels taken off again."""
    seed = logging.getLogger("lightning_fabric.utilities.seed")
    onnxscript = logging.getLogger("onnxscript")
    levels = seed.level, onnxscript.level
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        quiet_third_party()
        yield shown
    for name in console._RANK_ZERO_LOGGERS:
        logging.getLogger(name).removeFilter(console._LIGHTNING_INFO_FILTER)
    seed.setLevel(levels[0])
    onnxscript.setLevel(levels[1])


def _warn(message: str, category: type[Warning], module: str) -> None:
    filename = module.replace(".", "/") + ".py"
    warnings.warn_explicit(message, category, filename=filename, lineno=1, module=module)


@pytest.mark.parametrize(("message", "category", "module"), SILENCED_WARNINGS)
def test_each_silenced_warning_is_silenced_only_from_its_source(quiet, message, category, module):
    _warn(message, category, module)
    assert quiet == []
    _warn(message, category, "models.module")  # the same text from elsewhere still shows
    _warn("a warning of ours", UserWarning, module)  # another text from the same place still shows
    assert [str(w.message) for w in quiet] == [message, "a warning of ours"]


def test_other_warnings_still_show(quiet):
    warnings.warn("loss.alpha has 4 values, expected 5", UserWarning, stacklevel=1)
    warnings.warn("old API", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in quiet] == ["loss.alpha has 4 values, expected 5", "old API"]


class _Records(logging.Handler):
    """The records that reach one logger (its filters applied), whether or not it propagates to the root
    (Lightning stops propagation when it is imported before logging is configured, e.g. by a conftest)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger, self.records = logging.getLogger(name), []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())

    def __enter__(self) -> list[str]:
        self.logger.addHandler(self)
        return self.records

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


def test_lightning_info_lines(quiet):
    with _Records(RANK_ZERO) as records:
        for line in [*SILENCED_INFO, *KEPT_INFO]:
            logging.getLogger(RANK_ZERO).info(line)
    assert records == KEPT_INFO


def test_seed_line_is_silenced(quiet):
    seed_logger = "lightning_fabric.utilities.seed"
    with _Records(seed_logger) as records:
        pl.seed_everything(3)
        logging.getLogger(seed_logger).warning("a real problem")
    assert records == ["a real problem"]


def test_quiet_third_party_is_idempotent(quiet):
    quiet_third_party()
    assert logging.getLogger(RANK_ZERO).filters.count(console._LIGHTNING_INFO_FILTER) == 1


def test_one_line_model_summary(capsys):
    data = [("Name", ["network", "loss", "metrics"]), ("Type", ["Unet", "CombinedLoss", "ModuleDict"]),
            ("Params", ["12.0 M", "0", "0"]), ("Mode", ["train"] * 3), ("FLOPs", ["0"] * 3)]
    OneLineModelSummary.summarize(data, 12_000_000, 11_000_000, 48.0, {"train": 3, "eval": 0}, 0)
    out = capsys.readouterr().out
    assert out.strip() == "model: 12.0 M parameters (11.0 M trainable), 48.000 MB; network Unet 12.0 M"


@pytest.mark.slow
def test_a_default_run_prints_no_third_party_noise(tmp_path):
    """A tiny run with the default callbacks (one-line summary, no progress bar): none of the silenced
    messages, the device line and the summary line; a warning of ours still shows."""
    args = [
        f"hydra.run.dir={tmp_path / 'run'}", f"datamodule.stats_cache_dir={tmp_path / 'cache'}",
        *SYNTHETIC_TINY, *SMALL_UNET, "datamodule.batch_size=4", "trainer.max_epochs=1", "logger=csv",
        "datamodule.progress=false", "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false",
        "callbacks.prediction_grid=null", f"+callbacks.warner._target_={__name__}.WarnAtFitStart",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for message, _, _ in SILENCED_WARNINGS:
        assert message[:40] not in out, message
    for line in [*SILENCED_INFO, "Seed set to", "FLOPs", "Total estimated model params size"]:
        assert line[:40] not in out, line
    assert "smaller than the logging interval" not in out  # 2 batches < log_every_n_steps=5
    assert "GPU available: False, used: False" in out and "model: " in out and "final results" in out
    assert "a warning of ours (runs.console must not hide it)" in out


class WarnAtFitStart(pl.Callback):
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        warnings.warn("a warning of ours (runs.console must not hide it)", UserWarning, stacklevel=1)
