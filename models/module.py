"""LightningModule for semantic segmentation: network + loss from config, loss terms and per-class metrics."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from evaluation.calibration import DEFAULT_BINS, CalibrationHistogram, apply_temperature
from evaluation.confusion import metric_logs, segmentation_metrics
from evaluation.families import FamilyEvaluation, FamilyResults
from evaluation.nonfinite import NonFiniteGuard
from evaluation.options import EvaluationOptions
from evaluation.per_image import PerImageCounts, PerImageRecorder, batch_names, per_image_counts
from evaluation.posthoc import PosthocPass, ece_values
from evaluation.reporting import EvaluationReport
from evaluation.spatial import spatial_classes
from evaluation.stage import stage_summary
from evaluation.thresholds import apply_threshold
from models.batches import check_logits, class_names_for, loss_target, predicted_classes, unpack_batch
from models.speed import is_channels_last
from seglosses.checks import check_choice, check_ignore_index, check_int
from seglosses.modes import (
    BINARY_MODE,
    MULTICLASS_MODE,
    MULTILABEL_MODE,
    check_mode,
    check_num_classes,
    scored_classes,
)

__all__ = ["INFERENCE_KEY", "SegmentationModule"]

EVAL_STAGES = ("val", "test")
SCHEDULER_INTERVALS = ("epoch", "step")
#: Checkpoint entry of the inference metadata (``inference.checkpoints.InferenceInfo.to_dict``).
INFERENCE_KEY = "inference"


class SegmentationModule(pl.LightningModule):
    """Trains ``network`` with ``loss``; logs every loss term and per-class metrics by class name.

    Args:
        network: maps images (B, C_in, H, W) to logits (B, num_classes, H, W).
        loss: ``loss(logits, target)`` -> scalar; target as :meth:`loss_target` makes it (ignored elements
            keep ``ignore_index``). A ``last_values: dict[str, Tensor]`` attribute (``CombinedLoss``) is
            logged term by term as ``<stage>/loss/<name>``.
        optimizer: ``optimizer(params=...)`` -> Optimizer (a Hydra partial such as ``torch.optim.AdamW``).
        num_classes: the network's output channels (:mod:`seglosses.modes`): binary 1 (metrics score
            background and foreground), multiclass >= 2, multilabel the number of labels.
        class_names: one per scored class, used in metric keys (:func:`models.batches.class_names_for`).
        ignore_index: mask value left out of loss and metrics (``None``: none).
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"`` (labels scored one by one, ``logit > 0``).
        scheduler: ``scheduler(optimizer=...)`` -> LR scheduler (Hydra partial) or ``None``;
            ``scheduler_interval`` ``"epoch"`` or ``"step"``; ``scheduler_monitor`` for plateau schedulers.
        print_tables: ``"best_and_test"``, ``"every_epoch"`` or ``"none"``: what the console shows of the
            evaluations (:mod:`evaluation.reporting`); ``worst_images``: rows of the worst test images' table;
            ``rare_classes``: the names the epoch line averages (default: the smallest pixel shares).
        inference_info: written into every checkpoint as ``checkpoint["inference"]`` (the metadata
            ``inference.load_for_inference`` reads).
        test_predictor: ``test_predictor(network, images) -> logits`` for the test split (sliding window,
            TTA: ``inference.InferencePredictor``); ``None``: one forward pass of the padded batch.
        evaluation: the metric families of the evaluations beyond the pixel table and their splits
            (:class:`evaluation.options.EvaluationOptions`; default: objects, boundaries and calibration on
            the test split); settable later (``runs.build`` sets the ``evaluation`` config group's).

    Batches are dicts (:func:`models.batches.unpack_batch`): ``"image"`` float (B, C_in, H, W), ``"mask"``
    int64 (B, H, W) class ids (multilabel: (B, C, H, W) {0, 1}) with ``ignore_index`` intact, optionally
    ``"name"`` (B image names: the rows of ``per_image``).

    A non-finite loss fails the run with FloatingPointError naming stage, epoch and batch (tracked on the
    device by :class:`evaluation.nonfinite.NonFiniteGuard`): in training within ``finite_check_every_n_steps``
    steps and before any validation or checkpoint of those weights, in validation/test at the epoch end.

    Attributes:
        results: ``{"val": ..., "test": ...}``, the latest :func:`evaluation.stage.stage_summary` of each
            stage (pixel scores and families) plus its ``"epoch"`` (the epoch validated during fit; ``None``
            in a separate validate/test run).
        confusion: ``{"val": ..., "test": ...}``, the confusion matrix of each stage's latest evaluation,
            summed over DDP ranks, on the CPU, int64: (C, C) ``[true, predicted]`` (multilabel: (C, 2, 2)).
        per_image: ``{"test": PerImageCounts}``, the counts of every test image, gathered from all DDP
            ranks (:class:`evaluation.per_image.PerImageRecorder`), rows sorted by image name.
        families: ``{stage: FamilyResults}`` of the stages in ``evaluation.splits``: the records of every
            image (objects, boundaries, clDice) and the calibration histogram, from all DDP ranks
            (:class:`evaluation.families.FamilyEvaluation`); their values are also in ``results``.

    The families are computed in the validation/test steps of the stages in ``evaluation.splits`` only
    (never in training): per image on the CPU, the calibration histogram on the device.

    Post-hoc fits (:mod:`evaluation.posthoc`, set by ``runs.posthoc``): with :attr:`posthoc_pass` set, a
    validation epoch only feeds the network's logits to it (no metrics, no logs). :meth:`set_posthoc`
    sets what the test split applies: the logits (of the test inferer) divided by ``temperature`` before
    the activation, for the predictions and the families (the test loss stays on the network's logits),
    and binary/multilabel decisions by ``threshold``; :attr:`posthoc_test` then holds the test split's
    mean ECE before and after the temperature. The validation epochs never apply them.
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
        print_tables: str = "best_and_test",
        inference_info: Mapping[str, Any] | None = None,
        test_predictor: Callable[[nn.Module, Tensor], Tensor] | None = None,
        worst_images: int = 5,
        rare_classes: Sequence[str] | None = None,
        finite_check_every_n_steps: int = 50,
        evaluation: EvaluationOptions | None = None,
    ) -> None:
        super().__init__()
        check_num_classes(check_mode(mode), num_classes)
        check_ignore_index(ignore_index)
        self.network, self.loss, self.optimizer_factory = network, loss, optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = check_choice(scheduler_interval, "scheduler_interval", SCHEDULER_INTERVALS)
        self.scheduler_monitor = scheduler_monitor
        self.mode, self.num_classes, self.ignore_index = mode, num_classes, ignore_index
        self.inference_info = None if inference_info is None else dict(inference_info)
        self.test_predictor = test_predictor
        self.metric_classes = scored_classes(mode, num_classes)
        self.class_names = class_names_for(class_names, self.metric_classes, mode)
        self.report = EvaluationReport(self.class_names, print_tables, worst_images, rare_classes)
        self.metrics = nn.ModuleDict({s: segmentation_metrics(mode, self.metric_classes, ignore_index)
                                      for s in EVAL_STAGES})
        self.results: dict[str, dict[str, Any]] = {}
        self.confusion: dict[str, Tensor] = {}
        self.per_image: dict[str, PerImageCounts] = {}
        self.image_counts = PerImageRecorder(self.metric_classes)  # this process's test images of the epoch
        self.families: dict[str, FamilyResults] = {}
        self._family_epoch: FamilyEvaluation | None = None  # this process's families of the running stage
        self.evaluation = EvaluationOptions() if evaluation is None else evaluation
        self.nonfinite = NonFiniteGuard()
        self.finite_check_every_n_steps = check_int(finite_check_every_n_steps, "finite_check_every_n_steps",
                                                    minimum=1)
        self.channels_last = is_channels_last(network)  # inputs follow the weights' memory format
        # epoch of the last checkpoint Lightning loaded into this module (fit resume, validate/test)
        self.loaded_checkpoint_epoch: int | None = None
        self.posthoc_pass: PosthocPass | None = None
        self.posthoc_result: dict[str, Any] | None = None  # the pass's accumulators of every process
        self.test_temperature: Tensor | None = None
        self.test_threshold: float | Tensor | None = None
        self.posthoc_test: dict[str, Any] | None = None
        self._test_ece: tuple[CalibrationHistogram, CalibrationHistogram] | None = None
        hparams = {"num_classes": num_classes, "class_names": list(self.class_names),
                   "ignore_index": ignore_index, "mode": mode}
        self.save_hyperparameters(hparams, logger=False)

    @property
    def evaluation(self) -> EvaluationOptions:
        """The metric families (:class:`evaluation.options.EvaluationOptions`); setting it checks the
        clDice class names against the model's classes."""
        return self._evaluation

    @evaluation.setter
    def evaluation(self, options: EvaluationOptions) -> None:
        if not isinstance(options, EvaluationOptions):
            raise ValueError(f"evaluation must be an EvaluationOptions, got {type(options).__name__}")
        spatial_classes(self.mode, self.class_names, options.topology)  # names of topology.classes
        self._evaluation = options

    def forward(self, images: Tensor) -> Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.network(images)

    def predict_classes(self, logits: Tensor) -> Tensor:
        """Logits -> class ids (:func:`models.batches.predicted_classes`)."""
        return predicted_classes(logits, self.mode)

    def loss_target(self, mask: Tensor) -> Tensor:
        """The mask as ``loss`` expects it (:func:`models.batches.loss_target`)."""
        return loss_target(mask, self.mode)

    # ---- steps -------------------------------------------------------------------------------------------

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss, _, _ = self._step(batch, "train")  # no predictions: an argmax per step costs 1-10 %
        self.nonfinite.track("train", loss, batch_idx)  # read every few steps: no host sync per step
        # Step value for the progress bar only; loggers get the epoch mean "train/loss".
        self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluation_step(batch, batch_idx, "test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        images = batch["image"] if isinstance(batch, Mapping) else batch
        return self.predict_classes(self(images))

    def set_posthoc(self, temperature: Tensor | None, threshold: float | Tensor | None) -> None:
        """What the test split applies (class docstring): ``temperature`` a scalar or (C,) tensor (None:
        none); ``threshold`` (binary/multilabel) a probability (``p > t``), (C,) fitted thresholds
        (``p >= t``) or None (``logit > 0``, as validation)."""
        if threshold is not None and self.mode == MULTICLASS_MODE:
            raise ValueError("thresholds are for binary and multilabel models (multiclass takes the argmax)")
        self.test_temperature = None if temperature is None else torch.as_tensor(temperature).float()
        self.test_threshold = threshold.float() if isinstance(threshold, Tensor) else threshold

    def _test_outputs(self, batch: Mapping[str, Any], logits: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The test split's ``(logits, predictions)`` with :meth:`set_posthoc`'s values applied."""
        if self.test_temperature is not None:
            t = self.test_temperature.to(logits.device)
            if self._test_ece is not None:
                self._test_ece[0].update(logits, mask)
            if self.test_predictor is None:
                logits = apply_temperature(logits.float(), t)
            else:  # every pass's logits divided before the activation, as predict.py
                images, _ = unpack_batch(batch, self.mode, self.num_classes)
                logits = replace(self.test_predictor, temperature=t)(self.network, images).detach()
            if self._test_ece is not None:
                self._test_ece[1].update(logits, mask)
        threshold = self.test_threshold
        if threshold is None:
            return logits, self.predict_classes(logits)
        probs = logits.float().sigmoid()
        if isinstance(threshold, Tensor):
            on = apply_threshold(probs, threshold.to(logits.device))
        else:
            on = (probs > threshold).long()
        return logits, on[:, 0] if self.mode == BINARY_MODE else on

    def _evaluation_step(self, batch: Mapping[str, Any], batch_idx: int,
                         stage: str) -> dict[str, Tensor] | None:
        if stage == "val" and self.posthoc_pass is not None:  # a post-hoc fit's pass: the logits only
            images, mask = unpack_batch(batch, self.mode, self.num_classes)
            logits = self(images)
            check_logits(logits, images, mask, self.mode, self.num_classes)
            self.posthoc_pass.update(logits, mask)
            return None
        loss, logits, mask = self._step(batch, stage)
        if stage == "test":
            logits, preds = self._test_outputs(batch, logits, mask)
        else:
            preds = self.predict_classes(logits)
        self.metrics[stage].update(preds, mask)
        self.nonfinite.track(stage, loss, batch_idx)
        names = batch_names(batch.get("name"), batch_idx, preds.shape[0])
        if stage == "test":
            counts = per_image_counts(preds, mask, self.metric_classes, self.ignore_index,
                                      multilabel=self.mode == MULTILABEL_MODE)
            self.image_counts.add(names, counts)
        if self._family_epoch is not None:
            self._family_epoch.update(names, logits, preds, mask)
        return {"loss": loss, "preds": preds}

    def _step(self, batch: Mapping[str, Any], stage: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, logits (detached), mask)`` of a batch; the loss and its terms logged as epoch means."""
        images, mask = unpack_batch(batch, self.mode, self.num_classes)
        if stage == "test" and self.test_predictor is not None:
            logits = self.test_predictor(self.network, images)
        else:
            logits = self(images)
        check_logits(logits, images, mask, self.mode, self.num_classes)
        loss = self.loss(logits, self.loss_target(mask))
        # Epoch means, averaged over DDP ranks at the epoch end.
        options = {"on_step": False, "on_epoch": True, "sync_dist": True, "batch_size": images.shape[0]}
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", **options)
        for name, value in getattr(self.loss, "last_values", {}).items():
            self.log(f"{stage}/loss/{name}", value, **options)
        return loss, logits.detach(), mask

    # ---- epoch ends --------------------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        self.nonfinite.reset("train")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % self.finite_check_every_n_steps == 0:
            self.nonfinite.check("train", self.trainer)

    def on_train_epoch_end(self) -> None:
        self.nonfinite.check("train", self.trainer)

    def on_validation_epoch_start(self) -> None:
        self.nonfinite.check("train", self.trainer)  # no validation, and so no checkpoint, of NaN weights
        self.nonfinite.reset("val")  # left over by an epoch that was interrupted
        self._start_families("val")

    def on_test_epoch_start(self) -> None:
        self.nonfinite.reset("test")
        self.image_counts.reset()
        self._start_families("test")
        self._test_ece, self.posthoc_test = None, None
        if self.test_temperature is not None:
            family = self.evaluation.calibration
            bins = family.bins if family is not None else DEFAULT_BINS
            self._test_ece = tuple(CalibrationHistogram(self.num_classes, self.mode, bins, self.ignore_index)
                                   for _ in range(2))

    def _start_families(self, stage: str) -> None:
        self._family_epoch = None
        if self.evaluation.runs_on(stage) and not (stage == "val" and self.posthoc_pass is not None):
            self._family_epoch = FamilyEvaluation(self.evaluation, self.mode, self.num_classes,
                                                  self.class_names, self.ignore_index)

    def on_validation_epoch_end(self) -> None:
        self._finish_stage("val")

    def on_test_epoch_end(self) -> None:
        self._finish_stage("test")

    def _finish_stage(self, stage: str) -> None:
        if stage == "val" and self.posthoc_pass is not None:
            self.metrics[stage].reset()
            self.posthoc_result = self.posthoc_pass.finish()  # collectives: every rank
            return
        if stage == "test" and self._test_ece is not None:  # collectives: every rank
            before, after = (h.synced() for h in self._test_ece)
            self.posthoc_test = {"ece_before": ece_values(before), "ece_after": ece_values(after)}
            self._test_ece = None
        metric = self.metrics[stage]
        # compute() syncs the confusion matrix over DDP ranks (a collective: every rank calls it), so the
        # values are already global: logged without sync_dist.
        matrix = metric.compute_matrix()
        scores = metric.score(matrix)
        metric.reset()
        self.nonfinite.check(stage, self.trainer)
        per_image = self.image_counts.gather() if stage == "test" else None  # a collective under DDP too
        families = self._family_epoch.finish() if self._family_epoch is not None else None  # collectives
        self._family_epoch = None
        logs = metric_logs(stage, scores, self.class_names)
        if families is not None:
            logs.update(families.logs(stage))
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
        self.results[stage] = {"epoch": epoch, **stage_summary(scores, self.class_names, families)}
        self.confusion[stage] = matrix.detach().cpu().long()
        if per_image is not None:
            self.per_image[stage] = per_image
        self.families.pop(stage, None)
        if families is not None:
            self.families[stage] = families
        if self.trainer.is_global_zero:
            self.report.show(stage, scores, epoch, per_image, self.loaded_checkpoint_epoch, families)

    # ---- optimisation and checkpoints -------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        lr_scheduler = {"scheduler": scheduler, "interval": self.scheduler_interval,
                        "monitor": self.scheduler_monitor}
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "train" in self.nonfinite.tracking:  # no file of weights trained on a NaN/inf loss
            self.nonfinite.check("train", self.trainer)
        if self.inference_info is not None:
            checkpoint[INFERENCE_KEY] = self.inference_info

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.loaded_checkpoint_epoch = checkpoint.get("epoch")
