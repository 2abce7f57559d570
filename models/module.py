"""LightningModule for semantic segmentation: network + loss from config, loss terms and per-class metrics."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import rich
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from evaluation.confusion import MultilabelSegmentationMetrics, SegmentationMetrics, metric_logs
from evaluation.per_image import PerImageCounts, per_image_counts
from evaluation.tables import print_class_table, summarize, worst_images_table
from models.inference import InferenceConfig, activation_for_mode, predict_probabilities
from models.inference_checkpoint import INFERENCE_KEY
from seglosses.checks import check_choice, check_ignore_index, check_int
from seglosses.distributed import distributed_world
from seglosses.modes import BINARY_MODE, MULTILABEL_MODE, check_mode, check_num_classes, scored_classes

__all__ = ["SegmentationModule"]

EVAL_STAGES = ("val", "test")
SCHEDULER_INTERVALS = ("epoch", "step")


class SegmentationModule(pl.LightningModule):
    """Trains ``network`` with ``loss``; logs every loss term and per-class metrics by class name.

    Args:
        network: maps images (B, C_in, H, W) to logits (B, num_classes, H, W).
        loss: ``loss(logits, target)`` -> scalar. Multiclass: target is the int64 mask (B, H, W);
            binary: the mask as float (B, 1, H, W); multilabel: the mask as float (B, C, H, W) (binary and
            multilabel: ignored elements keep the value ``ignore_index``, which seglosses compares per
            element).
            If it has a ``last_values: dict[str, Tensor]`` attribute (``seglosses.CombinedLoss``), each term
            is logged as ``<stage>/loss/<name>``.
        optimizer: ``optimizer(params=...)`` -> Optimizer (a Hydra partial such as ``torch.optim.AdamW``).
        num_classes: classes the network predicts, its output channels (:mod:`seglosses.modes`): binary 1,
            the foreground (metrics score background and foreground); multiclass >= 2; multilabel the
            number of labels.
        class_names: one name per scored class, used in metric keys (``val/iou/<name>``); default
            ``class_0``, ... (binary: ``background``, ``foreground``; a single name is the foreground).
        ignore_index: mask value left out of loss and metrics (``None``: none).
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"`` (labels scored one by one as binary
            problems, prediction ``logit > 0``: :class:`evaluation.confusion.MultilabelSegmentationMetrics`).
        scheduler: ``scheduler(optimizer=...)`` -> LR scheduler (Hydra partial) or ``None``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        scheduler_monitor: metric for ``ReduceLROnPlateau``-style schedulers.
        print_tables: print the per-class table at the end of validation (rank 0, not during the sanity
            check) and test.
        inference_info: :meth:`models.InferenceInfo.to_dict` of this model, written into every checkpoint
            (``checkpoint["inference"]``) so that :func:`models.load_for_inference` needs nothing else.
        test_inference: how the test split is predicted (:class:`models.inference.InferenceConfig`:
            whole image, sliding window, flip TTA), the same inferer as ``predict.py``. ``None`` or plain
            whole-image inference without TTA: one forward pass of the padded batch. Otherwise the loss is
            computed on the logits of the blended probabilities (``log p``; sigmoid: ``log(p / (1 - p))``).
        worst_images: rows of the table of the test images with the lowest mIoU, printed after the test's
            per-class table (with ``print_tables``); 0: no table.

    Batches are dicts: ``"image"`` float (B, C_in, H, W), ``"mask"`` int64 (B, H, W) class ids with
    ``ignore_index`` intact (binary: {0, 1}; multilabel: (B, C, H, W) {0, 1} per label, ignored pixels
    ``ignore_index`` in every channel) and, optionally, ``"name"`` (B image names: the rows of
    ``per_image``; without it ``batch<index>_<i>``).

    A non-finite loss fails the run with FloatingPointError naming stage, epoch and batch: in training at
    the step, in validation/test at the end of the epoch (before the checkpoint callback saves the weights;
    tracked on the device, so without a device sync per batch).

    Attributes:
        results: ``{"val": ..., "test": ...}``, the latest :func:`evaluation.tables.summarize` of each stage
            plus its ``"epoch"`` (the epoch validated during fit; ``None`` in a separate validate/test run);
            what the training script writes to ``metrics.json``.
        confusion: ``{"val": ..., "test": ...}``, the confusion matrix of each stage's latest evaluation
            (not of the sanity check), summed over DDP ranks, on the CPU, int64: (C, C) ``[true, predicted]``
            (multilabel: (C, 2, 2) ``[[TN, FP], [FN, TP]]`` per label).
        per_image: ``{"test": PerImageCounts}``, the per-class pixel counts of every test image
            (:class:`evaluation.per_image.PerImageCounts`), gathered from all DDP ranks onto every rank (each
            image once: the evaluation samplers do not pad), rows sorted by image name.
    """

    def __init__(
        self,
        network: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., Optimizer],
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = None,
        mode: str = "multiclass",
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/mIoU",
        print_tables: bool = True,
        inference_info: Mapping[str, Any] | None = None,
        test_inference: InferenceConfig | None = None,
        worst_images: int = 5,
    ) -> None:
        super().__init__()
        check_num_classes(check_mode(mode), num_classes)
        check_ignore_index(ignore_index)
        check_choice(scheduler_interval, "scheduler_interval", SCHEDULER_INTERVALS)
        self.network = network
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.mode = mode
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.print_tables = print_tables
        self.worst_images = check_int(worst_images, "worst_images", minimum=0)
        self.inference_info = None if inference_info is None else dict(inference_info)
        self.test_inference = test_inference
        self.metric_classes = scored_classes(mode, num_classes)
        self.class_names = _class_names(class_names, self.metric_classes, mode)
        metric_type = MultilabelSegmentationMetrics if mode == MULTILABEL_MODE else SegmentationMetrics
        self.metrics = nn.ModuleDict(
            {stage: metric_type(self.metric_classes, ignore_index) for stage in EVAL_STAGES}
        )
        self.results: dict[str, dict[str, Any]] = {}
        self.confusion: dict[str, Tensor] = {}
        self.per_image: dict[str, PerImageCounts] = {}
        # This process's test images of the running epoch: (names, (B, C, 4) counts on the device) per batch.
        self._image_parts: list[tuple[list[str], Tensor]] = []
        # Per evaluation stage: first non-finite loss of the epoch, on the loss's device (see _track_finite).
        self._nonfinite: dict[str, dict[str, Tensor]] = {}
        # epoch of the last checkpoint Lightning loaded into this module (fit resume, validate/test)
        self.loaded_checkpoint_epoch: int | None = None
        self.save_hyperparameters(
            {
                "num_classes": num_classes,
                "class_names": list(self.class_names),
                "ignore_index": ignore_index,
                "mode": mode,
            },
            logger=False,
        )

    @property
    def test_inference(self) -> InferenceConfig | None:
        """The test split's inferer; ``None`` for one forward pass of the padded batch (also what plain
        whole-image inference without TTA is)."""
        return self._test_inference

    @test_inference.setter
    def test_inference(self, config: InferenceConfig | None) -> None:
        if config is not None and not isinstance(config, InferenceConfig):
            got = type(config).__name__
            raise ValueError(f"test_inference must be an InferenceConfig or None, got {got}")
        self._test_inference = None if _single_pass(config) else config

    def forward(self, images: Tensor) -> Tensor:
        return self.network(images)

    def predict_classes(self, logits: Tensor) -> Tensor:
        """(B, num_classes, H, W) logits -> (B, H, W) int64 class ids (binary: foreground where logit > 0);
        multilabel: (B, C, H, W) int64, 1 where the label's logit > 0 (sigmoid > 0.5)."""
        if self.mode == BINARY_MODE:
            return (logits[:, 0] > 0).long()
        if self.mode == MULTILABEL_MODE:
            return (logits > 0).long()
        return logits.argmax(dim=1)

    def loss_target(self, mask: Tensor) -> Tensor:
        """The mask in the form ``loss`` expects: multiclass (B, H, W) int64; binary (B, 1, H, W) float;
        multilabel (B, C, H, W) float. Ignored elements keep the value ``ignore_index``."""
        if self.mode == BINARY_MODE:
            return mask.unsqueeze(1).float()
        if self.mode == MULTILABEL_MODE:
            return mask.float()
        return mask

    # ---- steps -------------------------------------------------------------------------------------------

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss, _, _ = self._step(batch, "train")
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}; "
                "lower the learning rate, check the loss options and the data (NaN/inf in the images?)"
            )
        # Step value for the progress bar only; loggers get the epoch mean "train/loss".
        self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        loss, preds, mask = self._step(batch, "val")
        self.metrics["val"].update(preds, mask)
        self._track_finite("val", loss, batch_idx)
        return {"loss": loss, "preds": preds}

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        loss, preds, mask = self._step(batch, "test")
        self.metrics["test"].update(preds, mask)
        self._track_finite("test", loss, batch_idx)
        counts = per_image_counts(preds, mask, self.metric_classes, self.ignore_index,
                                  multilabel=self.mode == MULTILABEL_MODE)
        self._image_parts.append((_batch_names(batch, batch_idx, preds.shape[0]), counts))
        return {"loss": loss, "preds": preds}

    def _track_finite(self, stage: str, loss: Tensor, batch_idx: int) -> None:
        """Remember the first non-finite ``stage`` loss of the epoch (its batch and value) and count them.

        Device ops only, no ``.item()``: checking each step like ``training_step`` does would wait for the
        device at every evaluation batch. :meth:`_check_finite` reads the result once, at the epoch end.
        """
        loss = loss.detach()
        state = self._nonfinite.get(stage)
        if state is None:
            state = {
                "batch": torch.full((), -1, dtype=torch.long, device=loss.device),
                "value": torch.zeros((), dtype=torch.float32, device=loss.device),
                "count": torch.zeros((), dtype=torch.long, device=loss.device),
            }
            self._nonfinite[stage] = state
        bad = ~torch.isfinite(loss)
        first = bad & (state["batch"] < 0)
        state["batch"].masked_fill_(first, batch_idx)  # a Python scalar: no host-to-device copy
        state["value"].copy_(torch.where(first, loss.float(), state["value"]))
        state["count"].add_(bad.long())

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        images = batch["image"] if isinstance(batch, Mapping) else batch
        return self.predict_classes(self(images))

    def _logits(self, images: Tensor, stage: str) -> Tensor:
        if stage != "test" or self.test_inference is None:
            return self(images)
        probs = predict_probabilities(
            self.network, images, self.test_inference, activation=activation_for_mode(self.mode)
        )
        return logits_from_probabilities(probs.to(images.device), self.mode)

    def _step(self, batch: Mapping[str, Any], stage: str) -> tuple[Tensor, Tensor, Tensor]:
        images, mask = _unpack(batch, self.mode, self.num_classes)
        logits = self._logits(images, stage)
        expected = (images.shape[0], self.num_classes, *mask.shape[-2:])
        if tuple(logits.shape) != expected:
            raise ValueError(
                f"network output has shape {tuple(logits.shape)}, expected {expected} (batch, classes, "
                f"mask H, W) for mode={self.mode!r}, num_classes={self.num_classes}; check the model's "
                "classes and that the image size suits the architecture (e.g. divisible by 2**encoder_depth)"
            )
        loss = self.loss(logits, self.loss_target(mask))
        # Epoch means, averaged over DDP ranks at the epoch end.
        options = {"on_step": False, "on_epoch": True, "sync_dist": True, "batch_size": images.shape[0]}
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", **options)
        for name, value in getattr(self.loss, "last_values", {}).items():
            self.log(f"{stage}/loss/{name}", value, **options)
        return loss, self.predict_classes(logits.detach()), mask

    # ---- epoch ends --------------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._nonfinite.pop("val", None)  # left over by an epoch that was interrupted

    def on_test_epoch_start(self) -> None:
        self._nonfinite.pop("test", None)
        self._image_parts = []

    def on_validation_epoch_end(self) -> None:
        self._finish_stage("val")

    def on_test_epoch_end(self) -> None:
        self._finish_stage("test")

    def _finish_stage(self, stage: str) -> None:
        metric = self.metrics[stage]
        # compute() syncs the confusion matrix over DDP ranks (a collective: every rank calls it), so the
        # values are already global: logged without sync_dist.
        matrix = metric.compute_matrix()
        scores = metric.score(matrix)
        metric.reset()
        self._check_finite(stage)
        per_image = self._gather_images() if stage == "test" else None  # a collective under DDP too
        logs = metric_logs(stage, scores, self.class_names)
        miou = logs.pop(f"{stage}/mIoU")
        with warnings.catch_warnings():  # Lightning's advice to sync epoch-level values does not apply here
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
            self.log_dict(logs, sync_dist=False)
            self.log(f"{stage}/mIoU", miou, prog_bar=stage == "val", sync_dist=False)
        if self.trainer.sanity_checking:
            return
        # During fit, current_epoch is the epoch being validated; after it (validate/test) it counts the
        # finished epochs and says nothing about the weights, so no epoch is reported then.
        epoch = self.current_epoch if self.trainer.state.fn == "fit" else None
        self.results[stage] = {"epoch": epoch, **summarize(scores, self.class_names)}
        self.confusion[stage] = matrix.detach().cpu().long()
        if per_image is not None:
            self.per_image[stage] = per_image
        if self.print_tables and self.trainer.is_global_zero:
            title = stage if epoch is None else f"{stage} (epoch {epoch})"
            console = rich.get_console()
            cpu_scores = {k: v.cpu() for k, v in scores.items()}
            print_class_table(cpu_scores, self.class_names, title, console=console)
            if per_image is not None and self.worst_images > 0:
                n = min(self.worst_images, len(per_image))
                console.print(worst_images_table(per_image.names, per_image.scores(), self.class_names, n,
                                                 title=f"{title}: {n} worst images by mIoU"))

    def _gather_images(self) -> PerImageCounts:
        """This epoch's per-image counts of every DDP process (``all_gather_object``: every rank calls it),
        on the CPU, sorted by image name."""
        parts = [(names, counts.cpu()) for names, counts in self._image_parts]
        self._image_parts = []
        if distributed_world() is not None:
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, parts)
            parts = [part for rank_parts in gathered for part in rank_parts]
        return PerImageCounts.merge(parts, self.metric_classes)

    def _check_finite(self, stage: str) -> None:
        """Raise FloatingPointError when a ``stage`` loss of the epoch was NaN/inf (on any DDP process):
        scores of such weights are meaningless, and raising here (before the checkpoint callback's
        ``on_validation_end``) keeps them from being saved as the best checkpoint.

        One device sync per epoch (the ``.item()``), plus one collective under DDP so that every process
        raises (a process that raised alone would leave the others waiting in the next collective).
        """
        state = self._nonfinite.pop(stage, None)
        count = int(state["count"].item()) if state is not None else 0
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            anywhere = trainer.strategy.reduce_boolean_decision(count > 0, all=False)
        else:
            anywhere = count > 0
        if not anywhere:
            return
        name = {"val": "validation", "test": "test"}[stage]
        if trainer is not None and trainer.sanity_checking:
            name += " (sanity check)"
        epoch = self.current_epoch if trainer is not None and trainer.state.fn == "fit" else None
        where = "" if epoch is None else f" at epoch {epoch}"
        if count > 0:
            value, batch = float(state["value"].item()), int(state["batch"].item())
            what = f"{name} loss is {value}{where}, batch {batch} ({count} non-finite batches in this epoch)"
        else:
            what = f"{name} loss is not finite{where} on another DDP process"
        raise FloatingPointError(
            f"{what}; the weights give NaN/inf, so their scores would be meaningless: lower the learning "
            "rate (optimizer.lr=), check the loss options and the data (NaN/inf in the images?)"
        )

    # ---- optimisation and checkpoints -------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.scheduler_interval,
                "monitor": self.scheduler_monitor,
            },
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Focal gammas set by a schedule are plain attributes, not in the state dict: keep them so that a
        # checkpoint evaluates with the loss it was trained with.
        checkpoint["loss_gammas"] = {
            name: float(m.gamma) for name, m in self.loss.named_modules() if _has_float_gamma(m)
        }
        if self.inference_info is not None:
            checkpoint[INFERENCE_KEY] = self.inference_info

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.loaded_checkpoint_epoch = checkpoint.get("epoch")
        gammas = checkpoint.get("loss_gammas", {})
        for name, m in self.loss.named_modules():
            if name in gammas and _has_float_gamma(m):
                m.gamma = gammas[name]


def _single_pass(config: InferenceConfig | None) -> bool:
    return config is None or (config.mode == "whole" and not config.tta)


def logits_from_probabilities(probs: Tensor, mode: str, eps: float = 1e-7) -> Tensor:
    """Logits whose activation gives ``probs`` back (softmax: ``log p``; sigmoid: ``log(p / (1 - p))``),
    clamped to ``[eps, 1 - eps]`` so that they stay finite."""
    p = probs.float().clamp(eps, 1 - eps)
    if activation_for_mode(mode) == "softmax":
        return p.log()
    return p.log() - torch.log1p(-p)


def _has_float_gamma(module: nn.Module) -> bool:
    gamma = getattr(module, "gamma", None)
    return isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and math.isfinite(gamma)


def _class_names(names: Sequence[str] | None, num_classes: int, mode: str) -> list[str]:
    if names is None:
        if mode == BINARY_MODE:
            return ["background", "foreground"]
        return [f"class_{i}" for i in range(num_classes)]
    names = [str(n) for n in names]
    if mode == BINARY_MODE and len(names) == 1:
        names = ["background", *names]
    if len(names) != num_classes:
        raise ValueError(
            f"class_names has {len(names)} names {names}, expected one per class ({num_classes})"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique (they name the metric keys), got {names}")
    return names


def _unpack(batch: Mapping[str, Any], mode: str, num_classes: int) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, Mapping) or "image" not in batch or "mask" not in batch:
        got = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"a batch must be a dict with 'image' and 'mask' tensors, got {got}")
    images, mask = batch["image"], batch["mask"]
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"batch['image'] must be a float tensor (B, C, H, W), got {_describe(images)}")
    multilabel = mode == MULTILABEL_MODE
    if multilabel:
        ndim, what = 4, f"multilabel {{0, 1}} flags (B, {num_classes}, H, W)"
    else:
        ndim, what = 3, "class ids (B, H, W)"
    integer = isinstance(mask, Tensor) and not mask.is_floating_point() and mask.dtype != torch.bool
    if not integer or mask.ndim != ndim:
        raise ValueError(f"batch['mask'] must be integer {what}, got {_describe(mask)}")
    if multilabel and mask.shape[1] != num_classes:
        raise ValueError(
            f"batch['mask'] has {mask.shape[1]} label channels {tuple(mask.shape)}, expected num_classes="
            f"{num_classes}: (B, {num_classes}, H, W)"
        )
    if mask.shape[0] != images.shape[0] or mask.shape[-2:] != images.shape[2:]:
        raise ValueError(
            f"batch['mask'] {tuple(mask.shape)} does not match batch['image'] {tuple(images.shape)}: "
            f"expected {what} for images (B, C, H, W)"
        )
    return images, mask.long()


def _batch_names(batch: Mapping[str, Any], batch_idx: int, size: int) -> list[str]:
    """The batch's ``"name"`` list (``batch<batch_idx>_<i>`` when it has none)."""
    names = batch.get("name")
    if isinstance(names, str):
        names = [names]
    if names is None or len(names) != size:
        return [f"batch{batch_idx}_{i}" for i in range(size)]
    return [str(n) for n in names]


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
