"""The objects of a composed ``conf/`` config: datamodule inputs, loss, LightningModule, loggers, callbacks,
trainer (the checks before a run: :mod:`runs.config_checks`).

Every object is made by :func:`build` (Hydra's ``instantiate``), so that a bad value fails with the config
key in its message: ``datamodule.root: ...`` instead of Hydra's wrapped ``InstantiationException``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
from evaluation.rare import rarest
from inference import InferenceConfig, predictor_for
from models import size_multiple
from models.speed import resolve_precision
from runs.checkpoint_io import AtomicCheckpointIO
from runs.checkpoint_metadata import inference_info
from runs.config_checks import check_loss_class_values, probe_loss
from runs.errors import prefixed
from runs.graceful_stop import GracefulStop
from runs.ranks import is_global_zero
from runs.tracking import check_mlflow_class_names, creating_database, sqlite_file

log = logging.getLogger(__name__)

__all__ = [
    "build",
    "build_callbacks",
    "build_inference",
    "build_lightning_module",
    "build_loggers",
    "build_loss",
    "build_module",
    "build_optimizer",
    "build_trainer",
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
        raise prefixed(cause, key) from None








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
    check_loss_class_values(cfg)
    loss = build(cfg.loss.module, "loss.module")
    probe_loss(cfg, loss)
    return loss


def build_optimizer(cfg: DictConfig, network: torch.nn.Module) -> Any:
    """The optimizer partial of ``cfg.optimizer``, tried once on ``network``'s parameters so that a bad
    value (negative weight decay, betas outside [0, 1), ...) fails now, naming the group, and not when
    Lightning calls ``configure_optimizers`` at the start of fitting."""
    factory = build(cfg.optimizer, "optimizer")
    try:
        factory(params=network.parameters())
    except ValueError as e:
        raise prefixed(e, "optimizer", hint="check the optimizer.* values") from None
    return factory


#: Loggers whose package is an optional dependency: the extra of pyproject.toml that installs it.
LOGGER_EXTRAS = {"MLFlowLogger": "mlflow"}


def _target_name(node: Any) -> str:
    target = node.get("_target_") if OmegaConf.is_dict(node) or isinstance(node, dict) else None
    return str(target).rsplit(".", 1)[-1] if target else ""




def build_loggers(cfg: DictConfig) -> list[Logger]:
    """The ``logger`` group's loggers (null entries skipped). A logger whose optional package is missing
    fails with the ``pip install`` of its extra; MLflow loggers check the class names first
    (:func:`check_mlflow_class_names`) and create their SQLite database's folder."""
    loggers = []
    for key, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        target = _target_name(node)
        if target == "MLFlowLogger":
            check_mlflow_class_names(cfg)
        try:
            with creating_database(sqlite_file(node) if target == "MLFlowLogger" else None):
                loggers.append(build(node, f"logger.{key}"))
        except InstantiationException as e:
            extra = LOGGER_EXTRAS.get(target)
            if extra is None or not isinstance(e.__cause__, ImportError):
                raise
            raise ModuleNotFoundError(
                f"logger.{key}: {target} needs a package that is not installed ({e.__cause__}); install "
                f'the extra: pip install -e ".[{extra}]", or choose another logger (logger=default)'
            ) from None
    return loggers


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[pl.Callback]:
    callbacks = [build(c, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c is not None]
    if not has_logger:  # Lightning refuses a learning-rate monitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks




def build_inference(node: Any, multiple: int, default_tile: Sequence[int] | None) -> InferenceConfig:
    """The ``inference`` group's :class:`inference.InferenceConfig` for a network whose input must
    be a multiple of ``multiple``; ``inference.tile: null`` becomes ``default_tile`` (the training crop)."""
    tile = node.get("tile")
    if tile is None and default_tile is not None:
        tile = list(default_tile)
        if any(int(v) % multiple for v in tile):
            if node.get("mode") != "whole":
                raise ValueError(
                    f"inference.tile is null, so the training crop {tile} would be the tile, but it is "
                    f"not a multiple of the network's size multiple {multiple}: set inference.tile=[h,w] "
                    f"(multiples of {multiple})"
                )
            tile = None  # whole-image inference needs no tile
    return build(node, "inference", multiple=multiple, tile=tile)


def build_module(cfg: DictConfig, datamodule: SegDataModule, loss: torch.nn.Module,
                 stats: LabelStatistics) -> pl.LightningModule:
    model_cfg = cfg.model
    evaluation = build(cfg.evaluation, "evaluation") if cfg.get("evaluation") is not None else None
    frequencies = None
    if model_cfg.get("prior_init") and model_cfg.get("prior") is None:
        frequencies = stats.frequencies.tolist()
    network = build(model_cfg, "model", class_frequencies=frequencies)
    scheduler = build(cfg.scheduler, "scheduler") if cfg.get("scheduler") is not None else None
    test_inference = None
    if cfg.get("inference") is not None:
        test_inference = build_inference(cfg.inference, size_multiple(network), datamodule.training_size)
    rare = rarest(dict(zip(stats.class_names, stats.pixel_counts.tolist(), strict=True)))  # the epoch line's
    module = build(
        cfg.module,
        "module",
        network=network,
        loss=loss,
        optimizer=build_optimizer(cfg, network),
        scheduler=scheduler,
        class_names=list(datamodule.class_names),
        rare_classes=rare,
    )
    # Set here, not passed to instantiate: OmegaConf would try to merge the dataclass into the config.
    module.test_predictor = predictor_for(test_inference, module.mode)
    if evaluation is not None:
        try:
            module.evaluation = evaluation  # checks evaluation.topology.classes against the classes
        except ValueError as e:
            raise prefixed(e, "evaluation") from None
    module.inference_info = inference_info(cfg, datamodule, network, module.class_names).to_dict()
    return module




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
    hyperparameters), ``precision: auto`` resolved (:func:`models.speed.resolve_precision`), checkpoints
    written atomically (:class:`runs.checkpoint_io.AtomicCheckpointIO`) and Ctrl+C/SIGTERM turned into a
    clean stop (:class:`runs.graceful_stop.GracefulStop`)."""
    loggers = build_loggers(cfg)
    callbacks = [*build_callbacks(cfg, bool(loggers)), GracefulStop()]
    precision, note = resolve_precision(cfg.trainer.get("precision"), str(cfg.trainer.get("accelerator")))
    if note is not None and is_global_zero():
        log.info(note)
    # +trainer.plugins=... of the user replace ours (Lightning takes one checkpoint IO plugin)
    plugins = {} if cfg.trainer.get("plugins") is not None else {"plugins": [AtomicCheckpointIO()]}
    trainer: pl.Trainer = build(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, precision=precision, **plugins
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return trainer
