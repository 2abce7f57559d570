"""Train, validate and test a segmentation model from the Hydra config in ``conf/``.

    python train.py                                   # synthetic data, U-Net, focal + Dice
    python train.py loss=ce model=fpn trainer=gpu     # pick options of the config groups
    python train.py -m loss=focal,focal_dice loss.gamma=0,1,2
    python train.py ckpt_path=RUN/checkpoints/last.ckpt hydra.run.dir=RUN   # resume a run in place
    python train.py train=false ckpt_path=RUN/checkpoints/best-epoch007.ckpt   # test a checkpoint

Resuming restores epoch, optimizer, scheduler and callback states; pass the run's own overrides again
(RUN/.hydra/overrides.yaml) so that schedules that read ``trainer.max_epochs`` stay the same. Without
``hydra.run.dir=RUN`` the resumed run writes into a new directory.

Each run writes into its own directory (``paths.output_dir``): the composed config (``.hydra/``),
``checkpoints/`` (best by ``optimized_metric`` and ``last.ckpt``), TensorBoard and CSV logs,
``class_weights.json``, ``predictions/`` (PNG grids) and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import Logger
from rich.console import Console
from rich.table import Table
from torch import Tensor

from datamodules import LabelStatistics, SegDataModule, compute_class_weights
from models import check_checkpoint, load_checkpoint_weights, read_checkpoint
from runs.ddp import ddp_job, is_global_zero, prepare_argv
from runs.jobs import run_job

log = logging.getLogger(__name__)


def build(node: Any, key: str, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``; a ValueError/OSError/TypeError raised by the target is re-raised
    as itself (not wrapped in Hydra's InstantiationException), its message prefixed by the config key."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if not isinstance(cause, (ValueError, OSError, TypeError)):
            raise
        try:
            error = type(cause)(f"{key}: {cause}")
        except Exception:  # an exception type with another signature
            raise cause from None
        raise error from None


def check_config(cfg: DictConfig) -> None:
    """Fail early, naming the override, on required values left unset and on label settings typed twice
    that disagree (``model.num_classes``/``model.mode`` must follow the datamodule)."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        hints = " ".join(f"{key}=..." for key in sorted(missing))
        raise ValueError(
            f"required config values are not set: {sorted(missing)}; pass them as overrides: {hints}"
        )
    if not cfg.train and cfg.ckpt_path is None:
        raise ValueError("train=false evaluates a checkpoint on the test split: pass ckpt_path=PATH")
    for key in ("num_classes", "mode", "in_channels"):
        model_value, data_value = cfg.model.get(key), cfg.datamodule.get(key)
        if model_value is not None and model_value != data_value:
            raise ValueError(
                f"model.{key}={model_value} disagrees with datamodule.{key}={data_value}; leave model.{key} "
                f"at its default ${{datamodule.{key}}} and set datamodule.{key} instead"
            )


def class_weights(cfg: DictConfig, datamodule: SegDataModule, stats: LabelStatistics) -> Tensor | None:
    """The class_weights group's weights of the training labels (None for ``class_weights=none``); prints
    the table and writes ``class_weights.json`` (DDP: every process computes the same weights, global rank
    0 prints and writes them)."""
    method_fn = build(cfg.class_weights, "class_weights")
    zero = is_global_zero()
    out = Path(cfg.paths.output_dir) if zero else None
    return compute_class_weights(datamodule, method_fn, out, stats=stats, show=zero)


def build_loss(cfg: DictConfig, weights: Tensor | None) -> torch.nn.Module:
    """Instantiate ``loss.module`` with ``loss.class_weights`` set to ``weights``.

    The loss configs route ``loss.class_weights`` to the cross-entropy ``weight`` and (unless ``loss.alpha``
    is set) to the focal ``alpha``; Dice terms stay unweighted.
    """
    if weights is not None:
        if cfg.datamodule.mode != "multiclass":
            raise ValueError(
                f"class_weights={cfg.class_weights.method} gives per-class weights for multiclass losses; "
                f"with datamodule.mode={cfg.datamodule.mode} use class_weights=none and set the focal "
                "foreground weight with loss.alpha=A (0 <= A <= 1)"
            )
        cfg.loss.class_weights = [float(w) for w in weights]
    return build(cfg.loss.module, "loss.module")


def build_loggers(cfg: DictConfig) -> list[Logger]:
    return [build(c, f"logger.{k}") for k, c in (cfg.get("logger") or {}).items() if c is not None]


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[pl.Callback]:
    callbacks = [build(c, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c is not None]
    if not has_logger:  # Lightning refuses a learning-rate monitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def build_module(cfg: DictConfig, datamodule: SegDataModule, loss: torch.nn.Module,
                 stats: LabelStatistics) -> pl.LightningModule:
    model_cfg = cfg.model
    frequencies = None
    if model_cfg.get("prior_init") and model_cfg.get("prior") is None:
        frequencies = stats.frequencies.tolist()
    network = build(model_cfg, "model", class_frequencies=frequencies)
    scheduler = build(cfg.scheduler, "scheduler") if cfg.get("scheduler") is not None else None
    return build(
        cfg.module,
        "module",
        network=network,
        loss=loss,
        optimizer=build(cfg.optimizer, "optimizer"),
        scheduler=scheduler,
        class_names=list(datamodule.class_names),
    )


def checkpoint_callback(trainer: pl.Trainer) -> ModelCheckpoint | None:
    callbacks = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    return callbacks[0] if callbacks else None


def _with_epoch(result: dict[str, Any] | None, epoch: int | None) -> dict[str, Any] | None:
    return None if result is None else {**result, "epoch": epoch}


def write_metrics(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, allow_nan=False))
    log.info("metrics written to %s", path)


def print_summary(record: dict[str, Any]) -> None:
    """The run's final table: mean scores of the best validation epoch and of the test split."""
    table = Table(title="final results", caption=f"weights: {record.get('checkpoint') or 'last epoch'}")
    for column in ("split", "epoch", "mIoU", "mDice", "pixel acc"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split in ("val", "test"):
        result = record.get(split)
        if result:
            values = [result.get(k) for k in ("mIoU", "mDice", "pixel_acc")]
            cells = ["nan" if v is None else f"{100 * v:.2f}" for v in values]
            table.add_row(split, str(result.get("epoch", "")), *cells)
    Console().print(table)


@ddp_job  # DDP: re-launches this job (not the sweep) for extra processes; cleans up when it ends
def run(cfg: DictConfig) -> float | None:
    """Everything ``python train.py`` does with the composed ``cfg``; returns ``cfg.optimized_metric`` of
    the best checkpoint (the value a sweeper optimises), or None when it was not computed."""
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)

    datamodule: SegDataModule = build(cfg.datamodule, "datamodule")
    stats = datamodule.label_statistics()  # training split, cached
    loss = build_loss(cfg, class_weights(cfg, datamodule, stats))
    # Seeded after the statistics pass, which may or may not run (cache): same weights either way.
    pl.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg, datamodule, loss, stats)

    loggers = build_loggers(cfg)
    trainer: pl.Trainer = build(
        cfg.trainer, "trainer", callbacks=build_callbacks(cfg, bool(loggers)), logger=loggers or False
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    record: dict[str, Any] = {"optimized_metric": cfg.optimized_metric}
    if not cfg.train:
        checkpoint = load_checkpoint_weights(module, cfg.ckpt_path)
        record.update(checkpoint=str(cfg.ckpt_path), epoch=checkpoint.get("epoch"))
        trainer.test(module, datamodule=datamodule, verbose=False)
        record["test"] = _with_epoch(module.results.get("test"), checkpoint.get("epoch"))
        if trainer.is_global_zero:
            write_metrics(output_dir / "metrics.json", record)
            print_summary(record)
        return None

    if cfg.ckpt_path is not None:  # resume: check first, Lightning's own load fails deep inside torch
        check_checkpoint(module, read_checkpoint(cfg.ckpt_path), cfg.ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    ckpt_cb = checkpoint_callback(trainer)
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    # Score the checkpoint that is kept as the result: the table printed here is the best epoch's.
    trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    best_epoch = module.loaded_checkpoint_epoch if best else None  # set when validate loaded `best`
    record.update(
        checkpoint=best,
        best_epoch=best_epoch,
        last_checkpoint=(ckpt_cb.last_model_path or None) if ckpt_cb is not None else None,
    )
    score = trainer.callback_metrics.get(cfg.optimized_metric)
    record["best_score"] = None if score is None else float(score)
    # Without a best checkpoint (fast_dev_run, no checkpoint callback) the last epoch's weights are scored.
    epoch = best_epoch if best_epoch is not None else max(trainer.current_epoch - 1, 0)
    record["val"] = _with_epoch(module.results.get("val"), epoch)
    if cfg.test:
        trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        record["test"] = _with_epoch(module.results.get("test"), epoch)
    if trainer.is_global_zero:
        write_metrics(output_dir / "metrics.json", record)
        print_summary(record)
    return record["best_score"]


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    # Timed, recorded in job_status.json; in a -m sweep a failing job returns NaN and the sweep goes on.
    return run_job(run, cfg)


if __name__ == "__main__":
    prepare_argv()  # torchrun/srun: one run directory for all processes, quiet non-zero ranks
    main()
