"""The objects of a composed ``conf/`` config: datamodule inputs, loss, LightningModule, loggers, callbacks,
trainer; and :func:`check_config`, the checks that fail before anything is built.

Every object is made by :func:`build` (Hydra's ``instantiate``), so that a bad value fails with the config
key in its message: ``datamodule.root: ...`` instead of Hydra's wrapped ``InstantiationException``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import Logger
from torch import Tensor

from datamodules import LabelStatistics, SegDataModule, compute_class_weights
from runs.ranks import is_global_zero

__all__ = [
    "build",
    "build_callbacks",
    "build_lightning_module",
    "build_loggers",
    "build_loss",
    "build_module",
    "build_trainer",
    "check_config",
    "class_weights",
]


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


def build_lightning_module(cfg: DictConfig, datamodule: SegDataModule) -> pl.LightningModule:
    """The LightningModule of ``cfg`` for ``datamodule``: the training split's label statistics (cached),
    the class weights (:func:`class_weights`: printed, ``class_weights.json``), the loss, ``seed``, then
    network, optimizer and scheduler (:func:`build_module`)."""
    stats = datamodule.label_statistics()  # training split, cached
    loss = build_loss(cfg, class_weights(cfg, datamodule, stats))
    # Seeded after the statistics pass, which may or may not run (cache): same weights either way.
    pl.seed_everything(cfg.seed, workers=True)
    return build_module(cfg, datamodule, loss, stats)


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """The trainer of ``cfg`` with its callbacks and loggers (which get the resolved config as
    hyperparameters)."""
    loggers = build_loggers(cfg)
    trainer: pl.Trainer = build(
        cfg.trainer, "trainer", callbacks=build_callbacks(cfg, bool(loggers)), logger=loggers or False
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return trainer
