"""The checks that fail a run before anything is trained, each naming the config key to change: the
config itself (:func:`check_config`), the loss's per-class values (:func:`check_loss_class_values`,
:func:`probe_loss`), the data (:func:`check_data`) and the training batches (:func:`check_train_batches`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from datamodules import SegDataModule
from runs.errors import prefixed
from runs.ranks import is_global_zero
from seglosses import CombinedLoss
from seglosses.checks import check_number
from seglosses.modes import BINARY_MODE, MULTICLASS_MODE

log = logging.getLogger(__name__)

__all__ = ["check_config", "check_data", "check_loss_class_values", "check_train_batches", "probe_loss"]


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
    _check_family_metric(cfg)


#: The logged keys of each metric family (``evaluation.families.FamilyResults.logs``) by their first part.
_FAMILY_KEYS = {"objects": "objects", "boundary": "boundary", "cldice": "topology", "ece": "calibration",
                "ece_mean": "calibration", "ece_top_label": "calibration"}


def _check_family_metric(cfg: DictConfig) -> None:
    """An ``optimized_metric`` of a metric family (``val/objects/f1``) exists only when the validation
    computes that family: Lightning would fail after the first epoch, without naming the keys to set."""
    evaluation, metric = cfg.get("evaluation"), str(cfg.get("optimized_metric") or "")
    stage, _, rest = metric.partition("/")
    family = _FAMILY_KEYS.get(rest.split("/")[0])
    if evaluation is None or stage != "val" or family is None:
        return
    if "val" not in list(evaluation.get("splits") or []):
        raise ValueError(f"optimized_metric={metric} is computed only when the validation runs the metric "
                         "families: set evaluation.splits=[val,test]")
    if not (evaluation.get(family) or {}).get("enabled"):
        raise ValueError(f"optimized_metric={metric} needs evaluation.{family}.enabled=true")


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
            raise prefixed(e, key) from None


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


def check_data(datamodule: SegDataModule) -> None:
    """Before any training step: the pre-flight pass over every split (:meth:`SegDataModule.preflight`:
    files decodable, modes, sizes, mask values; cached) and the check of the training-label statistics
    (:meth:`SegDataModule.check_label_statistics`: declared classes present, ignored share). Each raises a
    ValueError that lists what is wrong and the config key to change."""
    report = datamodule.preflight()
    if is_global_zero():
        log.info(report.summary())
    datamodule.check_label_statistics(datamodule.label_statistics())
