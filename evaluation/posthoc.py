"""Post-hoc fits on the validation split after training (``docs/evaluation.md``, "Calibration and
thresholds"): the temperature of ``evaluation.calibrate`` and the per-label thresholds of
``inference.threshold=auto``; what one pass over the split accumulates (:class:`PosthocPass`) and what
the fits give (:class:`PosthocFit`).

- Pass 1 (always): the raw logits' :class:`~evaluation.calibration.CalibrationHistogram` (ECE before) and,
  with calibration, a :class:`~evaluation.calibration.LogitSample` for :func:`fit_temperature`; without
  calibration the :class:`~evaluation.thresholds.ThresholdHistogram` of the thresholds.
- Pass 2 (calibration only): the logits divided by the fitted temperature: their histogram (ECE after,
  in-sample: on the pixels the temperature was fitted on) and, with ``threshold=auto``, the threshold
  histogram of the calibrated probabilities (the thresholds apply to them).

Every accumulator sums (histograms) or merges (sample) over the batches and DDP processes, so the fit is
that of the whole split, exactly (the sample: a uniform sample of all its pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from evaluation.calibration import (
    DEFAULT_BINS,
    DEFAULT_SAMPLE_PIXELS,
    CalibrationHistogram,
    LogitSample,
    apply_temperature,
    fit_temperature,
)
from evaluation.thresholds import POSITIVE_RULE, ThresholdHistogram

__all__ = ["CALIBRATE", "PosthocFit", "PosthocPass", "check_calibrate", "ece_values", "temperature_tensor"]

#: ``evaluation.calibrate``: false (off), true (one temperature), per_class (one per class/label).
CALIBRATE = (False, True, "per_class")


def check_calibrate(value: Any) -> str | None:
    """``None`` (off), ``"scalar"`` or ``"per_class"`` of an ``evaluation.calibrate`` value; ValueError
    naming the key otherwise."""
    if value is None or value is False:
        return None
    if value is True:
        return "scalar"
    if value == "per_class":
        return "per_class"
    raise ValueError(f"calibrate must be false, true (one temperature) or per_class (one per class), "
                     f"got {value!r}")


def ece_values(histogram: CalibrationHistogram) -> dict[str, Any]:
    """``{"ece_mean": mean class-wise ECE, "top_label_ece": (multiclass), "per_class": [ECE of each
    class]}`` of a histogram, as floats (NaN for a class without pixels)."""
    ece = histogram.ece()
    out: dict[str, Any] = {"ece_mean": float(ece["mean_ece"])}
    if "top_label_ece" in ece:
        out["top_label_ece"] = float(ece["top_label_ece"])
    out["per_class"] = [float(v) for v in ece["ece"].cpu()]
    return out


class PosthocPass:
    """What one pass over the validation split accumulates (module docstring), batch by batch on the
    batches' device; :meth:`finish` (a collective under DDP: every rank calls it) sums the processes.

    Args:
        mode, num_classes, ignore_index: the labels (:mod:`evaluation.pixels`).
        temperature: divides the logits before anything is accumulated (pass 2); ``None``: raw (pass 1).
        sample: keep a :class:`LogitSample` of the raw logits (``max_pixels``, ``seed``) for the fit.
        thresholds: accumulate a :class:`ThresholdHistogram` (binary/multilabel).
        bins: the ECE's confidence bins.
    """

    def __init__(self, mode: str, num_classes: int, ignore_index: int | None, *,
                 temperature: Tensor | None = None, sample: bool = False, thresholds: bool = False,
                 bins: int = DEFAULT_BINS, max_pixels: int = DEFAULT_SAMPLE_PIXELS, seed: int = 0) -> None:
        self.mode, self.num_classes, self.ignore_index = mode, num_classes, ignore_index
        self.temperature = temperature
        self.histogram = CalibrationHistogram(num_classes, mode, bins, ignore_index)
        self.sample = LogitSample(num_classes, mode, max_pixels, seed, ignore_index) if sample else None
        self.thresholds = ThresholdHistogram(num_classes, mode, ignore_index=ignore_index) if thresholds \
            else None

    def update(self, logits: Tensor, target: Tensor) -> None:
        """One batch: raw logits (N, C, H, W) and the target as the metrics take it."""
        logits = logits.detach().float()
        if self.sample is not None:
            self.sample.update(logits, target)
        if self.temperature is not None:
            logits = apply_temperature(logits, self.temperature.to(logits.device))
        self.histogram.update(logits, target)
        if self.thresholds is not None:
            self.thresholds.update(logits, target)

    def finish(self) -> dict[str, Any]:
        """``{"histogram", "thresholds" (or None), "sample": (logits, target) or None}`` of every process."""
        histogram = self.histogram.synced()
        thresholds = self.thresholds.synced() if self.thresholds is not None else None
        sample = self.sample.gathered() if self.sample is not None else None
        return {"histogram": histogram, "thresholds": thresholds, "sample": sample}


@dataclass
class PosthocFit:
    """The fitted values and their validation figures.

    ``temperature``: scalar or (C,) float64 tensor (None: not calibrated); ``thresholds``: (C,) float32
    (None: not searched); ``val``: what ``metrics.json`` reports of the validation split."""

    temperature: Tensor | None = None
    thresholds: Tensor | None = None
    val: dict[str, Any] | None = None

    @staticmethod
    def fit_temperature(result: dict[str, Any], mode: str, per_class: bool,
                        ignore_index: int | None) -> Tensor:
        """The temperature of pass 1's gathered sample (float64, on the CPU)."""
        logits, target = result["sample"]
        return fit_temperature(logits, target, mode, per_class=per_class, ignore_index=ignore_index).cpu()

    @staticmethod
    def threshold_values(histogram: ThresholdHistogram) -> tuple[Tensor, dict[str, Any]]:
        """The per-label thresholds (float32, the grid's values) of a summed histogram and their
        validation figures (``dice_at_0.5``, ``dice``, ``rule``, ``grid_steps``)."""
        best = histogram.best()
        figures = {"rule": POSITIVE_RULE, "grid_steps": best["steps"],
                   "dice_at_0.5": [float(v) for v in best["dice_at_default"].cpu()],
                   "dice": [float(v) for v in best["dice"].cpu()]}
        return best["threshold"].float().cpu(), figures

    def metadata(self) -> dict[str, Any]:
        """The checkpoint's inference metadata entries: ``temperature`` (a float, or a list per class) and
        ``thresholds`` (a list per label), ``None`` where not fitted."""
        t = self.temperature
        temperature = None if t is None else (float(t) if t.ndim == 0 else [float(v) for v in t])
        thresholds = None if self.thresholds is None else [float(v) for v in self.thresholds]
        return {"temperature": temperature, "thresholds": thresholds}


def temperature_tensor(value: float | list[float] | None) -> Tensor | None:
    """A metadata temperature as a float32 tensor (scalar or (C,)), or None."""
    return None if value is None else torch.tensor(value, dtype=torch.float32)
