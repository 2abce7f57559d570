"""What ``python evaluate.py`` does: score saved masks (``predict.py``'s, or any model's) against ground-truth
masks with the metrics, tables and files of a training run's test (``docs/evaluation.md``, "Scoring saved
masks").

- Labels (:func:`label_source`): from ``ckpt_path`` (a checkpoint's inference metadata: mode, classes,
  ignore_index) or from a datamodule config (``datamodule=camvid``: mode, num_classes, class_names,
  ignore_index, value_map, mask_suffix, mask_extension); exactly one of them.
- Pairing: ``pred`` (a folder of masks, or ``predict.py``'s output folder, whose ``masks/`` is taken) and
  ``gt`` by the files' paths relative to their folders (:func:`datamodules.pairing.pair_by_name`).
- Predicted masks: index or palette PNGs (the palette index is the value): class ids (binary 0/1;
  multilabel the bit flags ``sum_c 2**c``); ground truths through :meth:`datamodules.LabelSpec.prepare`
  (value_map, validation) as in training.
- Calibration (when ``evaluation.calibration`` is on and probabilities are there): ``probs`` or
  ``pred/probabilities``, ``<name>.npy`` (K, H, W) uint8 ``round(255 p)`` or float16/float32 ``p``.
- Scores (:class:`evaluation.stage.StageEvaluation`), tables (:class:`evaluation.reporting.EvaluationReport`)
  and files (:func:`evaluation.files.write_evaluation_outputs`) as a training run's test split:
  ``metrics.json`` (``"test"``), ``test_per_image.csv``, ``confusion_test.csv``/``.png``,
  ``reliability_test.png``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from datamodules.io import read_mask
from datamodules.labels import LabelSpec
from datamodules.pairing import pair_by_name
from datamodules.synthetic import SHAPES
from evaluation.files import METRICS_JSON, write_evaluation_outputs, write_metrics
from evaluation.options import EvaluationOptions
from evaluation.reporting import EvaluationReport
from evaluation.stage import StageEvaluation, StageResult
from inference.metadata import read_inference_checkpoint
from models.batches import class_names_for
from runs.build import build
from runs.predicting import progress_bar
from seglosses.checks import check_bool, check_int
from seglosses.modes import scored_classes

log = logging.getLogger(__name__)

__all__ = ["DATAMODULE_KEYS", "LabelSource", "evaluate_masks", "label_source", "read_probabilities"]

#: The keys of a ``datamodule`` config that ``evaluate.py`` reads; an override of any other is refused.
DATAMODULE_KEYS = ("mode", "num_classes", "class_names", "ignore_index", "value_map", "mask_suffix",
                   "mask_extension")
STAGE = "test"
_SHOW = 5


def _few(items: list[str]) -> str:
    return ", ".join(items[:_SHOW]) + (f", ... ({len(items)} in all)" if len(items) > _SHOW else "")


@dataclass(frozen=True)
class LabelSource:
    """How the masks are scored: ``spec`` (mode, num_classes, ignore_index, value_map of the ground
    truths), ``class_names`` (the scored classes: binary background and foreground), ``gt_tail`` (a
    ground truth is ``<name><gt_tail>``) and ``origin`` (where it came from, for ``metrics.json``)."""

    spec: LabelSpec
    class_names: list[str]
    gt_tail: str
    origin: dict[str, str]

    def describe(self) -> str:
        """``num_classes 5 of checkpoint PATH``."""
        where = ", ".join(f"{key} {value}" for key, value in self.origin.items())
        return f"num_classes {self.spec.num_classes} of {where}"


def _dm_value(node: Any, key: str, default: Any = None) -> Any:
    try:
        if OmegaConf.is_missing(node, key):  # ??? (get() would return None)
            raise MissingMandatoryValue(key)
        value = node.get(key, default)
    except MissingMandatoryValue:
        raise ValueError(f"datamodule.{key} must be set for evaluate.py (datamodule.{key}=...)") from None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _datamodule_labels(node: Any) -> tuple[dict[str, Any], dict[str, str]]:
    values = {key: _dm_value(node, key) for key in DATAMODULE_KEYS}
    values["mode"] = values["mode"] or "multiclass"
    target = str(node.get("_target_") or "")
    if values["class_names"] is None and target.endswith("SyntheticDataModule"):  # its default names
        values["class_names"] = ["background", *SHAPES[: int(values["num_classes"]) - 1]]
    choice = HydraConfig.get().runtime.choices.get("datamodule") if HydraConfig.initialized() else None
    return values, {"datamodule": f"{choice} ({target})" if choice else target}


def label_source(cfg: DictConfig) -> LabelSource:
    """The :class:`LabelSource` of ``cfg``: ``ckpt_path`` or ``datamodule`` (exactly one), then the
    top-level ``value_map``, ``mask_suffix``, ``mask_extension`` where they are not null."""
    ckpt, node = cfg.get("ckpt_path"), cfg.get("datamodule")
    if (ckpt is None) == (node is None):
        which = "both" if ckpt is not None else "neither"
        raise ValueError(
            f"evaluate.py takes the classes from ckpt_path=CKPT (a checkpoint of train.py) or from "
            f"datamodule=NAME (a config of conf/datamodule, e.g. datamodule=camvid); exactly one, got {which}"
        )
    if ckpt is not None:
        _, info = read_inference_checkpoint(str(ckpt))
        values = {"mode": info.mode, "num_classes": info.num_classes, "class_names": info.class_names,
                  "ignore_index": info.ignore_index}
        origin = {"checkpoint": str(ckpt)}
    else:
        values, origin = _datamodule_labels(node)
    for key in ("value_map", "mask_suffix", "mask_extension"):
        if cfg.get(key) is not None:
            values[key] = OmegaConf.to_container(cfg[key]) if OmegaConf.is_config(cfg[key]) else cfg[key]
    spec = LabelSpec(values["mode"], values["num_classes"], values["ignore_index"], values.get("value_map"))
    names = class_names_for(values["class_names"], scored_classes(spec.mode, spec.num_classes), spec.mode)
    tail = f"{values.get('mask_suffix') or ''}{values.get('mask_extension') or '.png'}"
    return LabelSource(spec, names, tail, origin)


def check_datamodule_overrides(overrides: list[str]) -> None:
    """Refuse a ``datamodule.<key>=`` override of a key ``evaluate.py`` does not read (it would do
    nothing), naming the keys it reads."""
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.startswith("datamodule.") and key.split(".")[1] not in DATAMODULE_KEYS:
            read = ", ".join(DATAMODULE_KEYS)
            raise ValueError(f"{override}: evaluate.py reads only datamodule.{{{read}}} of a datamodule "
                             "config; this override would do nothing")


def read_probabilities(path: Path, num_classes: int, shape: tuple[int, int], mask: Path) -> torch.Tensor:
    """(K, H, W) float32 probabilities of a ``.npy`` file: uint8 ``round(255 p)`` (read as ``x / 255``),
    float16 or float32 ``p``. ValueError naming the file (and the mask) for another dtype or shape."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read probabilities {path}: {e}") from None
    expected = (num_classes, *shape)
    if array.shape != expected:
        raise ValueError(f"size mismatch: probabilities {path} are {array.shape} but the mask {mask} needs "
                         f"(classes, H, W) = {expected}")
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float32) / 255.0)
    if array.dtype in (np.float16, np.float32, np.float64):
        return torch.from_numpy(array.astype(np.float32))
    raise ValueError(f"probabilities {path} have dtype {array.dtype}; expected uint8 (round(255 p)) or "
                     "float16/float32 (predict.py save.probabilities)")


def _predicted(path: Path, labels: LabelSource) -> np.ndarray:
    raw = read_mask(path)
    top = labels.spec.num_values
    if raw.size and int(raw.max()) >= top:
        values = np.unique(raw[raw >= top])
        shown = ", ".join(str(int(v)) for v in values[:10]) + (" ..." if values.size > 10 else "")
        raise ValueError(f"predicted mask {path} holds values outside the {labels.spec.mode} labels "
                         f"0..{top - 1} ({labels.describe()}): {shown}")
    return raw


def _target(mask: np.ndarray, spec: LabelSpec) -> torch.Tensor:
    """A mask as the metrics take it: (1, H, W) class ids, multilabel (1, C, H, W) {0, 1}."""
    return spec.to_target(mask).unsqueeze(0)


def _score_one(name: str, pred_path: Path, gt_path: Path, probs_dir: Path | None, labels: LabelSource,
               stage: StageEvaluation) -> None:
    pred = _predicted(pred_path, labels)
    truth, _ = labels.spec.prepare(read_mask(gt_path), str(gt_path))
    if pred.shape != truth.shape:
        raise ValueError(f"size mismatch: predicted mask {pred_path} is {pred.shape[1]}x{pred.shape[0]} "
                         f"(WxH) but ground truth {gt_path} is {truth.shape[1]}x{truth.shape[0]}")
    plain = LabelSpec(labels.spec.mode, labels.spec.num_classes)  # predictions: no value_map, no ignore
    probs = None
    if probs_dir is not None:
        probs = read_probabilities(probs_dir / f"{name}.npy", labels.spec.num_classes, pred.shape, pred_path)
        probs = probs.unsqueeze(0)
    stage.update([name], _target(pred, plain), _target(truth, labels.spec), probs)


def _probabilities_dir(cfg: DictConfig, pred: Path, options: EvaluationOptions) -> Path | None:
    """The folder of the probabilities calibration reads, or None (calibration then off)."""
    given = cfg.get("probs")
    if given is not None and options.calibration is None:
        raise ValueError(f"probs={given}: the probabilities are read for calibration only, and "
                         "evaluation.calibration.enabled=false")
    folder = Path(str(given)) if given is not None else pred / "probabilities"
    if given is not None and not folder.is_dir():
        raise FileNotFoundError(f"probs={given} is not a folder")
    return folder if folder.is_dir() and options.calibration is not None else None


def _check_probabilities(folder: Path, names: list[str]) -> None:
    missing = [f"{n}.npy" for n in names if not (folder / f"{n}.npy").is_file()]
    if missing:
        raise ValueError(f"{len(missing)} of {len(names)} predicted masks have no probabilities in {folder}: "
                         f"{_few(missing)}")


def _check_config(cfg: DictConfig, output: Path) -> None:
    check_bool(cfg.overwrite, "overwrite")
    check_bool(cfg.progress, "progress")
    check_int(cfg.worst_images, "worst_images", minimum=0)
    if (output / METRICS_JSON).is_file() and not cfg.overwrite:
        raise FileExistsError(f"output folder {output} already holds {METRICS_JSON}; pass overwrite=true to "
                              "replace it, or choose another output=DIR")


def _score(pairs: list[tuple[str, Path, Path]], probs: Path | None, labels: LabelSource,
           stage: StageEvaluation, progress: bool) -> StageResult:
    with progress_bar(progress, "evaluate") as bar:
        task = bar.add_task("evaluate", total=len(pairs), name="")
        for name, pred_path, gt_path in pairs:
            bar.update(task, name=name)
            _score_one(name, pred_path, gt_path, probs, labels, stage)
            bar.advance(task)
    return stage.finish()


def evaluate_masks(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Score ``cfg.pred`` against ``cfg.gt`` (module docstring); print the tables, write the files into
    ``cfg.output`` and return the record written to ``metrics.json``. ``overrides``: the command line's
    (Hydra's ``overrides.task``), checked by :func:`check_datamodule_overrides`.

    Raises:
        ValueError, FileNotFoundError: bad config, unpaired files, masks of other sizes or values (named).
        FileExistsError: ``output`` holds a ``metrics.json`` and ``overwrite=false``.
    """
    output = Path(str(cfg.output))
    _check_config(cfg, output)
    check_datamodule_overrides(list(overrides or []))
    labels = label_source(cfg)
    options = build(cfg.evaluation, "evaluation")
    pred = Path(str(cfg.pred))
    masks = pred / "masks" if (pred / "masks").is_dir() else pred
    pairs = pair_by_name(masks, Path(str(cfg.gt)), gt_tail=labels.gt_tail)
    probs = _probabilities_dir(cfg, pred, options)
    if probs is not None:
        _check_probabilities(probs, [name for name, _, _ in pairs])
    elif options.calibration is not None:
        log.info("calibration is off: no probabilities (probs=DIR, or %s/probabilities)", pred)
        options = dataclasses.replace(options, calibration=None)
    spec = labels.spec
    stage = StageEvaluation(spec.mode, spec.num_classes, labels.class_names, spec.ignore_index, options,
                            STAGE)
    log.info("scoring %d masks of %s against %s (%s, %d classes)", len(pairs), masks, cfg.gt, spec.mode,
             len(labels.class_names))
    result = _score(pairs, probs, labels, stage, bool(cfg.progress))
    return _report(cfg, output, labels, result, {"pred": str(masks), "gt": str(cfg.gt),
                                                 "probabilities": None if probs is None else str(probs)})


def _report(cfg: DictConfig, output: Path, labels: LabelSource, result: StageResult,
            sources: Mapping[str, Any]) -> dict[str, Any]:
    """Print the tables (as a run's test), write the evaluation files and ``metrics.json``."""
    EvaluationReport(labels.class_names, worst_images=int(cfg.worst_images)).show(
        STAGE, result.scores, None, result.per_image, families=result.families)
    families = {STAGE: result.families} if result.families is not None else None
    written = write_evaluation_outputs(output, labels.class_names, {STAGE: result.matrix}, result.per_image,
                                       {STAGE: None}, families)
    record: dict[str, Any] = {**sources, "labels": labels.origin, "mode": labels.spec.mode,
                              "ignore_index": labels.spec.ignore_index, "images": len(result.per_image),
                              STAGE: result.summary,
                              "outputs": {key: path.name for key, path in written.items()}}
    write_metrics(output / METRICS_JSON, record)
    miou = result.summary.get("mIoU")
    shown = "nan" if miou is None or not math.isfinite(miou) else f"{100 * miou:.2f}"
    print(f"{len(result.per_image)} images: mIoU {shown}\nmetrics: {output / METRICS_JSON}", flush=True)
    return record
