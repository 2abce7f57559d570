"""Post-hoc fits of a run (``docs/evaluation.md``, "Calibration and thresholds"): after training, before
the test, ``evaluation.calibrate`` fits a temperature and ``inference.threshold=auto`` per-label thresholds
on the validation split with the best checkpoint's weights (:func:`fit_posthoc`, passes of
:class:`evaluation.posthoc.PosthocPass` run by ``trainer.validate``: every DDP rank its shard, the
accumulators summed over the ranks); :func:`store_in_checkpoint` writes them into the best checkpoint's
inference metadata (global rank 0, atomically), so ``predict.py`` and ``export.py`` find them there; the
test applies them (:meth:`models.SegmentationModule.set_posthoc`), and :func:`posthoc_record` is what
``metrics.json`` reports (``calibration``, ``threshold``).

``train=false`` (:func:`apply_stored`) applies what the checkpoint carries: its temperature always, its
thresholds with ``inference.threshold=auto`` (a number overrides them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from evaluation.calibration import DEFAULT_BINS
from evaluation.posthoc import PosthocFit, PosthocPass, ece_values, temperature_tensor
from inference import InferenceInfo, read_checkpoint
from inference.config import AUTO_THRESHOLD, check_threshold
from inference.metadata import INFERENCE_KEY, INFERENCE_VERSION
from safeio import atomic_path
from seglosses.modes import MULTICLASS_MODE

log = logging.getLogger(__name__)

__all__ = ["apply_stored", "check_posthoc_config", "fit_posthoc", "posthoc_record", "store_in_checkpoint"]


def _threshold_option(cfg: DictConfig) -> float | str:
    inference = cfg.get("inference")
    return check_threshold(inference.get("threshold", 0.5)) if inference is not None else 0.5


def check_posthoc_config(cfg: DictConfig) -> None:
    """``inference.threshold`` other than 0.5 (``auto`` included) is refused for a multiclass model,
    naming the key: its predictions are the argmax."""
    threshold = _threshold_option(cfg)
    if cfg.datamodule.get("mode") == MULTICLASS_MODE and threshold != 0.5:
        raise ValueError(
            f"inference.threshold={threshold} is for binary and multilabel models; a multiclass model "
            "predicts the argmax (calibration does not change it): leave inference.threshold at 0.5"
        )


def _test_threshold(option: float | str, fitted: torch.Tensor | None,
                    mode: str) -> float | torch.Tensor | None:
    """What the test applies: fitted thresholds (``auto``), a number other than 0.5, or None (0.5)."""
    if mode == MULTICLASS_MODE:
        return None
    if option == AUTO_THRESHOLD:
        return fitted
    return None if option == 0.5 else float(option)


def _run_pass(trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any, ckpt: str | None,
              posthoc: PosthocPass) -> dict[str, Any]:
    module.posthoc_pass = posthoc
    try:
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        return module.posthoc_result
    finally:
        module.posthoc_pass, module.posthoc_result = None, None


def fit_posthoc(cfg: DictConfig, trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any,
                best: str | None) -> PosthocFit | None:
    """The fits asked for (module docstring) with the weights of ``best`` (None: the module's), set on
    ``module`` for the test; None when nothing is asked for. One validation pass, two with calibration
    (the second on the calibrated logits: ECE after, and the thresholds of the calibrated probabilities)."""
    calibrate = module.evaluation.calibrate
    option = _threshold_option(cfg)
    auto = option == AUTO_THRESHOLD and module.mode != MULTICLASS_MODE
    if calibrate is None and not auto:
        module.set_posthoc(None, _test_threshold(option, None, module.mode))
        return None
    family = module.evaluation.calibration
    common = {"mode": module.mode, "num_classes": module.num_classes, "ignore_index": module.ignore_index,
              "bins": family.bins if family is not None else DEFAULT_BINS}
    first = PosthocPass(**common, sample=calibrate is not None, thresholds=auto and calibrate is None,
                        seed=int(cfg.get("seed") or 0))
    result = _run_pass(trainer, module, datamodule, best, first)
    fit = PosthocFit(val={})
    if calibrate is not None:
        fit.temperature = PosthocFit.fit_temperature(result, module.mode, calibrate == "per_class",
                                                     module.ignore_index)
        second = _run_pass(trainer, module, datamodule, best,
                           PosthocPass(**common, temperature=fit.temperature, thresholds=auto))
        fit.val.update(ece_before=ece_values(result["histogram"]), ece_after=ece_values(second["histogram"]))
        result = second
    if auto:
        fit.thresholds, fit.val["threshold"] = PosthocFit.threshold_values(result["thresholds"])
    module.set_posthoc(fit.temperature, _test_threshold(option, fit.thresholds, module.mode))
    return fit


def store_in_checkpoint(path: str | Path, fit: PosthocFit) -> None:
    """Write ``fit``'s temperature and thresholds into the inference metadata of the checkpoint at ``path``
    (checked, then the file replaced atomically)."""
    checkpoint = read_checkpoint(path, weights_only=False)
    entry = {**checkpoint[INFERENCE_KEY], **fit.metadata(), "version": INFERENCE_VERSION}
    InferenceInfo.from_dict(entry, path)
    checkpoint[INFERENCE_KEY] = entry
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as file:
        torch.save(checkpoint, file)


def apply_stored(cfg: DictConfig, module: pl.LightningModule, checkpoint: dict[str, Any]) -> PosthocFit:
    """``train=false``: the checkpoint's temperature, and its thresholds under ``inference.threshold=auto``
    (else the number), set on ``module`` for the test; returns what was applied."""
    entry = checkpoint.get(INFERENCE_KEY) or {}
    temperature = temperature_tensor(entry.get("temperature"))
    stored = entry.get("thresholds")
    option = _threshold_option(cfg)
    fitted = torch.tensor(stored, dtype=torch.float32) if stored is not None else None
    threshold = _test_threshold(option, fitted, module.mode)
    module.set_posthoc(temperature, threshold)
    return PosthocFit(temperature, fitted if isinstance(threshold, torch.Tensor) else None)


def _named(values: list[float], names: list[str]) -> dict[str, float]:
    return dict(zip(names, values, strict=True))


def posthoc_record(module: pl.LightningModule, fit: PosthocFit | None, test: dict[str, Any] | None,
                   source: str) -> dict[str, Any]:
    """``metrics.json``'s ``calibration`` and ``threshold`` entries (those that apply): the values (per
    label by name), where they come from (``source``: ``"fitted on val"``, ``"checkpoint"``), the
    validation figures of a fit and the test split's (ECE before/after; Dice per label)."""
    if fit is None:
        return {}
    names = list(module.class_names)[-module.num_classes:]  # binary: the foreground
    out: dict[str, Any] = {}
    val = fit.val or {}
    if fit.temperature is not None:
        t = fit.metadata()["temperature"]
        out["calibration"] = {"temperature": _named(t, names) if isinstance(t, list) else t, "source": source}
        if "ece_before" in val:
            out["calibration"]["val"] = {k: _ece(val[k], names) for k in ("ece_before", "ece_after")}
        if module.posthoc_test is not None:
            out["calibration"]["test"] = {k: _ece(v, names) for k, v in module.posthoc_test.items()}
    if fit.thresholds is not None:
        entry: dict[str, Any] = {"value": _named([float(v) for v in fit.thresholds], names), "source": source,
                                 "rule": "p >= t"}
        if "threshold" in val:
            figures = val["threshold"]
            entry["grid_steps"] = figures["grid_steps"]
            entry["val"] = {"dice_at_0.5": _named(figures["dice_at_0.5"], names),
                            "dice": _named(figures["dice"], names)}
        if test is not None:
            entry["test"] = {"dice": {n: test["per_class"][n]["dice"] for n in names}}
        out["threshold"] = entry
    return out


def _ece(values: dict[str, Any], names: list[str]) -> dict[str, Any]:
    means = {k: v for k, v in values.items() if k != "per_class"}
    return {**means, "per_class": _named(values["per_class"], names)}
