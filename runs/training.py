"""What ``python train.py`` does with a composed config: :func:`run` checks it
(:func:`runs.config_checks.check_config`) and either trains, validates and tests (:func:`fit_and_test`,
``train=true``) or tests the weights of a checkpoint (:func:`evaluate`, ``train=false``). Both write
``metrics.json`` into ``paths.output_dir`` and print the final table (global rank 0)::

    {"optimized_metric": "val/mIoU", "checkpoint": ".../best-epoch007.ckpt", "best_epoch": 7,
     "last_checkpoint": ".../last.ckpt", "best_score": 0.81, "val": {...}, "test": {...}}   # fit_and_test
    {"optimized_metric": "val/mIoU", "checkpoint": "PATH", "epoch": 7, "test": {...}}      # evaluate

``test_inference`` records the ``inference`` options the test split was predicted with (the same
inferer as ``predict.py``: whole image by default, ``inference.mode=slide``, ``inference.tta=[hflip]``).
``val``/``test`` hold the module's results of the split (``mIoU``, ``mDice``, ``pixel_acc``, ``per_class``;
``objects``, ``boundary``, ``topology``, ``calibration`` for the metric families on for the split,
``evaluation.*``) and the ``epoch`` of the weights that were scored; ``outputs`` the names of the evaluation
files written next to it (:mod:`evaluation.files`): ``test_per_image.csv``, ``confusion_val.csv``/``.png``
(the best validation epoch; not with ``train=false``), ``confusion_test.csv``/``.png`` and
``reliability_<split>.png`` (calibration). ``calibration`` and ``threshold``: the post-hoc fits of
``evaluation.calibrate`` and ``inference.threshold=auto`` (:mod:`runs.posthoc`, fitted on validation between
fitting and the test and stored in the best checkpoint). The loggers get the figures (TensorBoard: images
``confusion/<split>``, ``reliability/<split>``) and, where they keep files (MLflow), every file
(:mod:`runs.tracking`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import LightningModule
from pytorch_lightning.callbacks import ModelCheckpoint
from rich.console import Console
from rich.table import Table

from evaluation.files import METRICS_JSON, write_evaluation_outputs, write_metrics
from inference import check_checkpoint, read_checkpoint
from runs.build import build, build_lightning_module, build_trainer
from runs.config_checks import check_config, check_data, check_train_batches
from runs.ddp import ddp_job
from runs.posthoc import apply_stored, check_posthoc_config, fit_posthoc, posthoc_record, store_in_checkpoint
from runs.run_dir import check_run_directory
from runs.tracking import log_figure, log_files
from runs.trained import load_trained_module
from runs.unused_overrides import check_job_overrides

log = logging.getLogger(__name__)

__all__ = ["evaluate", "fit_and_test", "print_summary", "run"]


def checkpoint_callback(trainer: pl.Trainer) -> ModelCheckpoint | None:
    callbacks = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    return callbacks[0] if callbacks else None


def _with_epoch(result: dict[str, Any] | None, epoch: int | None) -> dict[str, Any] | None:
    return None if result is None else {**result, "epoch": epoch}


def print_summary(record: dict[str, Any], output_dir: str | Path | None = None) -> None:
    """The run's final table (mean scores of the best validation epoch and of the test split), then the
    weights that were scored and the files, each path on its own line (never wrapped into a table)."""
    table = Table(title="final results")
    for column in ("split", "epoch", "mIoU", "mDice", "pixel acc"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split in ("val", "test"):
        result = record.get(split)
        if result:
            values = [result.get(k) for k in ("mIoU", "mDice", "pixel_acc")]
            cells = ["nan" if v is None or not math.isfinite(v) else f"{100 * v:.2f}" for v in values]
            table.add_row(split, str(result.get("epoch", "")), *cells)
    Console().print(table)
    print(f"weights: {record.get('checkpoint') or 'the last epoch'}")
    if record.get("last_checkpoint"):
        print(f"last checkpoint: {record['last_checkpoint']}")
    if output_dir is not None:
        print(f"metrics: {Path(output_dir) / METRICS_JSON}", flush=True)


def _inference_record(cfg: DictConfig) -> dict[str, Any] | None:
    """The ``inference`` options the test split was predicted with (``tile: null``: the training crop)."""
    if cfg.get("inference") is None:
        return None
    options = OmegaConf.to_container(cfg.inference, resolve=True)
    options.pop("_target_", None)
    return options


def _report(cfg: DictConfig, trainer: pl.Trainer, module: LightningModule, record: dict[str, Any]) -> None:
    """Global rank 0: the evaluation files of the splits in ``record`` (:mod:`evaluation.files`),
    ``metrics.json``, the final table; the heatmaps and files to the loggers."""
    if record.get("test") is not None:
        record["test_inference"] = _inference_record(cfg)
    if not trainer.is_global_zero:
        return
    out = Path(cfg.paths.output_dir)
    splits = [s for s in ("val", "test") if record.get(s) is not None and s in module.confusion]
    epochs = {s: record[s].get("epoch") for s in splits}
    per_image = module.per_image.get("test") if "test" in splits else None
    families = {s: module.families[s] for s in splits if s in module.families}
    written = write_evaluation_outputs(out, module.class_names, {s: module.confusion[s] for s in splits},
                                       per_image, epochs, families)
    record["outputs"] = {key: path.name for key, path in written.items()}
    write_metrics(out / METRICS_JSON, record)
    print_summary(record, out)
    for split in splits:
        for figure in ("confusion", "reliability"):
            png = written.get(f"{figure}_{split}_png")
            if png is not None:
                log_figure(trainer.loggers, f"{figure}/{split}", png, step=epochs[split])
    files = [out / METRICS_JSON, *(p for key, p in written.items() if not key.endswith("_png"))]
    log_files(trainer.loggers, files)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """``train=false``: test the weights of ``cfg.ckpt_path`` (:func:`runs.trained.load_trained_module`) on
    the test split. Returns the record written to ``metrics.json``."""
    trained = load_trained_module(cfg, cfg.ckpt_path)
    trainer = build_trainer(cfg)
    record: dict[str, Any] = {"optimized_metric": cfg.optimized_metric}
    record.update(checkpoint=str(cfg.ckpt_path), epoch=trained.epoch)
    stored = apply_stored(cfg, trained.module, read_checkpoint(cfg.ckpt_path))
    trainer.test(trained.module, datamodule=trained.datamodule, verbose=False)
    record["test"] = _with_epoch(trained.module.results.get("test"), trained.epoch)
    record.update(posthoc_record(trained.module, stored, record["test"], "checkpoint"))
    _report(cfg, trainer, trained.module, record)
    return record


def _keep_log_history(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> None:
    """Resume: loggers that can (:class:`runs.loggers.ResumableCSVLogger`) keep the rows the run logged up
    to the checkpoint's epoch instead of starting their files afresh."""
    for logger in trainer.loggers:
        keep = getattr(logger, "keep_history", None)
        if callable(keep) and checkpoint.get("epoch") is not None:
            keep(int(checkpoint["epoch"]))


def fit_and_test(cfg: DictConfig) -> dict[str, Any]:
    """``train=true``: train (resume from ``cfg.ckpt_path`` when set), validate the best checkpoint and, with
    ``cfg.test``, test it. Returns the record written to ``metrics.json``."""
    datamodule = build(cfg.datamodule, "datamodule")
    check_data(datamodule)  # every split and the label statistics, before anything is trained
    module = build_lightning_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    record: dict[str, Any] = {"optimized_metric": cfg.optimized_metric}

    if cfg.ckpt_path is not None:  # resume: check first, Lightning's own load fails deep inside torch
        resumed = read_checkpoint(cfg.ckpt_path, weights_only=False)  # our own: optimizer, callbacks
        check_checkpoint(module, resumed, cfg.ckpt_path)
        _keep_log_history(trainer, resumed)
    check_train_batches(datamodule, trainer)  # Lightning would train 0 steps and only warn
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    ckpt_cb = checkpoint_callback(trainer)
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    # Read before validate/test: loading `best` restores the callback state saved with it (an older one).
    last = (ckpt_cb.last_model_path or None) if ckpt_cb is not None else None
    # evaluation.calibrate, inference.threshold=auto: fitted on validation, stored in the best checkpoint
    fit = fit_posthoc(cfg, trainer, module, datamodule, best)
    if fit is not None and best is not None:
        if trainer.is_global_zero:
            store_in_checkpoint(best, fit)
        trainer.strategy.barrier("posthoc")  # the checkpoint is complete before any rank reads it again
    elif fit is not None:
        log.warning("no best checkpoint to store the post-hoc fits in: they apply to this run's test only")
    # Score the checkpoint that is kept as the result: the table printed here is the best epoch's.
    trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    best_epoch = module.loaded_checkpoint_epoch if best else None  # set when validate loaded `best`
    record.update(
        checkpoint=best,
        best_epoch=best_epoch,
        last_checkpoint=last,
    )
    score = trainer.callback_metrics.get(cfg.optimized_metric)
    record["best_score"] = None if score is None else float(score)
    # Without a best checkpoint (fast_dev_run, no checkpoint callback) the last epoch's weights are scored.
    epoch = best_epoch if best_epoch is not None else max(trainer.current_epoch - 1, 0)
    record["val"] = _with_epoch(module.results.get("val"), epoch)
    if cfg.test:
        trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        record["test"] = _with_epoch(module.results.get("test"), epoch)
    record.update(posthoc_record(module, fit, record.get("test"), "fitted on val"))
    _report(cfg, trainer, module, record)
    return record


@ddp_job  # DDP: re-launches this job (not the sweep) for extra processes; cleans up when it ends
def run(cfg: DictConfig) -> float | None:
    """Everything ``python train.py`` does with the composed ``cfg``: :func:`fit_and_test` or, with
    ``train=false``, :func:`evaluate`. Returns ``cfg.optimized_metric`` of the best checkpoint (the value a
    sweeper optimises), or None when it was not computed or is NaN (always None for ``train=false``;
    Optuna counts None as a failed trial, a NaN would end the search)."""
    check_config(cfg)
    if cfg.train:
        check_posthoc_config(cfg)
    check_job_overrides(cfg)  # a job of a sweep: every override it sets is used (runs.unused_overrides)
    check_run_directory(cfg.paths.output_dir, bool(cfg.train), cfg.ckpt_path)  # never over earlier results
    if not cfg.train:
        evaluate(cfg)
        return None
    score = fit_and_test(cfg)["best_score"]
    return score if score is None or math.isfinite(score) else None
