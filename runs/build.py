"""The objects of a composed ``conf/`` config: datamodule inputs, loss, LightningModule, loggers, callbacks,
trainer; and :func:`check_config`, the checks that fail before anything is built.

Every object is made by :func:`build` (Hydra's ``instantiate``), so that a bad value fails with the config
key in its message: ``datamodule.root: ...`` instead of Hydra's wrapped ``InstantiationException``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import posixpath
import re
from collections.abc import Iterator, Sequence
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
from evaluation.grids import default_class_colors
from evaluation.rare import rarest
from models import InferenceInfo, size_multiple
from models.inference import InferenceConfig, predictor_for
from runs.checkpoint_io import AtomicCheckpointIO
from runs.graceful_stop import GracefulStop
from runs.ranks import is_global_zero
from seglosses import CombinedLoss
from seglosses.checks import check_number
from seglosses.modes import BINARY_MODE, MULTICLASS_MODE

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
    "check_config",
    "check_data",
    "check_loss_class_values",
    "check_mlflow_class_names",
    "check_train_batches",
    "class_weights",
    "inference_info",
    "probe_loss",
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
    optimizer = cfg.get("optimizer")
    if optimizer is not None and optimizer.get("lr") is not None:  # torch says only "Invalid learning rate"
        check_number(optimizer.lr, "optimizer.lr", minimum=0)


def _length(value: Any) -> int | None:
    """Number of values of a per-class sequence (list, ListConfig, tuple, 1-D tensor); None for a number,
    None or a 0-D tensor."""
    if isinstance(value, Tensor):
        return int(value.numel()) if value.ndim > 0 else None
    if (isinstance(value, Sequence) and not isinstance(value, str)) or OmegaConf.is_list(value):
        return len(value)
    return None


def check_loss_class_values(cfg: DictConfig) -> None:
    """``loss.alpha`` and ``loss.class_weights`` must be a number or have one value per class
    (``datamodule.num_classes``), so that the error names the key the user typed. Binary losses take a
    number (seglosses checks it)."""
    num_classes, mode = cfg.datamodule.num_classes, cfg.datamodule.mode
    if mode == BINARY_MODE:
        return
    for key in ("alpha", "class_weights"):
        value = cfg.loss.get(key)
        n = _length(value)
        if n is not None and n != num_classes:
            raise ValueError(
                f"loss.{key} has {n} values {list(value)}, expected a number or one value per class "
                f"(datamodule.num_classes={num_classes}, {mode}): set loss.{key}= with {num_classes} values"
            )


def probe_loss(cfg: DictConfig, loss: torch.nn.Module) -> None:
    """Call every term of ``loss`` once on a (1, num_classes, 1, 1) input, so that the checks seglosses
    makes on the first batch (per-class values of the wrong length, ...) fail at start-up, naming the term
    (``loss.module.losses.focal: alpha must ...``)."""
    mode, num_classes = cfg.datamodule.mode, cfg.datamodule.num_classes
    x = torch.zeros(1, num_classes, 1, 1)
    target = torch.zeros(1, 1, 1, dtype=torch.long) if mode == MULTICLASS_MODE else torch.zeros_like(x)
    terms = dict(loss.losses.items()) if isinstance(loss, CombinedLoss) else {None: loss}
    for name, term in terms.items():
        try:
            with torch.no_grad():
                term(x, target)
        except ValueError as e:
            key = "loss.module" if name is None else f"loss.module.losses.{name}"
            raise ValueError(f"{key}: {e}") from None


def check_train_batches(datamodule: SegDataModule, trainer: pl.Trainer) -> int:
    """Training batches per epoch and process; ValueError, before fitting, when there are none.

    Lightning would only warn ("No training batches"), train zero steps and report the metrics of the
    untrained model. Under DDP each of the ``trainer.world_size`` processes gets ``ceil(N / world_size)``
    samples (``DistributedSampler`` pads), batched by ``datamodule.batch_size``; ``drop_last`` drops the
    incomplete batch.
    """
    num = len(datamodule.dataset("train"))
    world = max(int(getattr(trainer, "world_size", 1) or 1), 1)
    per_process = math.ceil(num / world)
    batch_size, drop_last = datamodule.batch_size, bool(datamodule.drop_last)
    batches = per_process // batch_size if drop_last else math.ceil(per_process / batch_size)
    if batches > 0:
        return batches
    if num == 0:
        raise ValueError("the training split is empty: 0 training batches; check datamodule.root/splits")
    share = "" if world == 1 else f", {per_process} per process over {world} DDP processes"
    fewer = "fewer processes (trainer.devices=, trainer.num_nodes=), " if world > 1 else ""
    raise ValueError(
        f"0 training batches per epoch: the training split has {num} samples{share}, fewer than "
        f"datamodule.batch_size={batch_size}, and datamodule.drop_last=true drops the incomplete batch, so "
        f"nothing would be trained; set datamodule.batch_size={max(per_process, 1)} (or smaller), "
        f"datamodule.drop_last=false, {fewer}or add training samples"
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
        raise ValueError(f"optimizer: {e} (check the optimizer.* values)") from None
    return factory


#: Loggers whose package is an optional dependency: the extra of pyproject.toml that installs it.
LOGGER_EXTRAS = {"MLFlowLogger": "mlflow"}
#: What Lightning's MLFlowLogger removes from metric keys (MLflow allows no other characters).
_MLFLOW_KEY_DROPPED = re.compile(r"[^a-zA-Z0-9_/. -]+")


def _target_name(node: Any) -> str:
    target = node.get("_target_") if OmegaConf.is_dict(node) or isinstance(node, dict) else None
    return str(target).rsplit(".", 1)[-1] if target else ""


def check_mlflow_class_names(cfg: DictConfig) -> None:
    """The per-class metric keys (``val/iou/<class>``) that MLflow will get: Lightning's MLFlowLogger drops
    every character but letters, digits, ``_ / . -`` and space, and MLflow refuses keys that are not plain
    relative paths; ValueError, naming ``datamodule.class_names``, when a class name would give no key, a
    refused one, or the key of another class (the run would fail at its first validation)."""
    names = cfg.datamodule.get("class_names")
    if names is None:  # the data module's defaults: class_0, background, disc, ... (all valid)
        return
    seen: dict[str, str] = {}
    for name in (str(n) for n in names):
        kept = _MLFLOW_KEY_DROPPED.sub("", name)
        key = f"val/iou/{kept}"
        if not kept.strip() or posixpath.normpath(key) != key:
            raise ValueError(
                f"datamodule.class_names: class {name!r} gives the MLflow metric key {key!r}, which MLflow "
                "refuses (keys keep only letters, digits, '_', '/', '.', '-' and spaces, and must be plain "
                "paths); rename the class, or choose another logger"
            )
        if kept in seen:
            raise ValueError(
                f"datamodule.class_names: classes {seen[kept]!r} and {name!r} both give the MLflow metric "
                f"key {key!r} (MLflow keeps only letters, digits, '_', '/', '.', '-' and spaces); rename one"
            )
        seen[kept] = name


def _sqlite_file(node: Any) -> Path | None:
    """The database file of an MLflow logger's ``sqlite:///PATH`` tracking URI, else None."""
    uri = str(node.get("tracking_uri") or "")
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _creating(database: Path | None) -> Iterator[None]:
    """Around an MLflow logger's construction, which creates its SQLite database (its tables): the folder
    made, and the processes of a torchrun/srun job that create it at once taken one at a time (a lock
    file next to it; POSIX)."""
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no concurrent creation to guard against there
        yield
        return
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
            with _creating(_sqlite_file(node) if target == "MLFlowLogger" else None):
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


def inference_info(cfg: DictConfig, datamodule: SegDataModule, network: torch.nn.Module,
                   class_names: Sequence[str]) -> InferenceInfo:
    """What the checkpoints of this run carry for :func:`models.load_for_inference`: the network config
    (weights from the checkpoint: no download, no prior init), labels, colours, normalisation, crop."""
    network_config = OmegaConf.to_container(cfg.model, resolve=True)
    network_config.update(encoder_weights=None, prior_init=False, prior=None)
    colors = default_class_colors(datamodule.mode, datamodule.num_classes)
    if datamodule.class_colors is not None:  # binary: the foreground's, on the default background
        colors = colors[: len(class_names) - len(datamodule.class_colors)] + datamodule.class_colors
    return InferenceInfo(
        network=network_config,
        mode=datamodule.mode,
        num_classes=datamodule.num_classes,
        class_names=list(class_names),
        class_colors=[[int(v) for v in c] for c in colors],
        in_channels=datamodule.in_channels,
        mean=datamodule.mean,
        std=datamodule.std,
        ignore_index=datamodule.ignore_index,
        crop_size=datamodule.training_size,
        size_multiple=size_multiple(network),
    )


def build_inference(node: Any, multiple: int, default_tile: Sequence[int] | None) -> InferenceConfig:
    """The ``inference`` group's :class:`models.inference.InferenceConfig` for a network whose input must
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
    module.inference_info = inference_info(cfg, datamodule, network, module.class_names).to_dict()
    return module


def check_data(datamodule: SegDataModule) -> None:
    """Before any training step: the pre-flight pass over every split (:meth:`SegDataModule.preflight`:
    files decodable, modes, sizes, mask values; cached) and the check of the training-label statistics
    (:meth:`SegDataModule.check_label_statistics`: declared classes present, ignored share). Each raises a
    ValueError that lists what is wrong and the config key to change."""
    report = datamodule.preflight()
    if is_global_zero():
        log.info(report.summary())
    datamodule.check_label_statistics(datamodule.label_statistics())


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
    hyperparameters), checkpoints written atomically (:class:`runs.checkpoint_io.AtomicCheckpointIO`) and
    Ctrl+C/SIGTERM turned into a clean stop (:class:`runs.graceful_stop.GracefulStop`)."""
    loggers = build_loggers(cfg)
    callbacks = [*build_callbacks(cfg, bool(loggers)), GracefulStop()]
    # +trainer.plugins=... of the user replace ours (Lightning takes one checkpoint IO plugin)
    plugins = {} if cfg.trainer.get("plugins") is not None else {"plugins": [AtomicCheckpointIO()]}
    trainer: pl.Trainer = build(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, **plugins
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return trainer
