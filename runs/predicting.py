"""What ``python predict.py`` does: apply a trained checkpoint to new images of any size.

For every image of ``input`` (:func:`datamodules.list_inputs`: a file, a folder searched recursively, or a
list file), under ``output``, with subfolders mirrored:

- ``masks/<name>.png``: the predicted labels, an 8-bit palette PNG whose palette is the checkpoint's class
  colours (multiclass: class ids; binary: 0/1; multilabel: the bit flags ``sum_c 2**c`` of the labels on,
  the encoding mask files use);
- ``probabilities/<name>.npy`` with ``save.probabilities=uint8|float16``: (K, H, W) per-class
  probabilities; uint8 stores ``round(255 p)`` (read back as ``x / 255``, step 1/255), float16 stores
  ``p`` (about 3 significant digits);
- ``overlays/<name>.png`` with ``save.overlays=true``: the image blended with the class colours;
- ``summary.json``: images done, skipped (with the reason), conversions, time and images/s.

With ``roi.dir`` (region masks mirroring the input's names, nonzero = inside, as ``datamodule.roi``) the
pixels outside an image's region are background in the mask (multilabel: no label) and 0 in the
probabilities.

Unreadable files are reported and skipped (``on_error=skip``) or stop the run (``on_error=fail``); the
exit status is non-zero when any image was skipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from datamodules import InputImage, list_inputs, read_image_converted, write_index_mask, write_rgb
from datamodules.roi import RoiSpec, read_roi
from evaluation.grids import flag_palette
from evaluation.posthoc import temperature_tensor
from inference import (
    InferenceInfo,
    activation_for_mode,
    labels_from_probabilities,
    load_for_inference,
    predict_probabilities,
)
from inference.config import AUTO_THRESHOLD
from models.speed import INFERENCE_PRECISIONS, autocast_dtype, resolve_precision
from runs.build import build_inference
from safeio import atomic_path, write_json
from seglosses.checks import check_bool, check_choice, check_number
from seglosses.modes import MULTILABEL_MODE

log = logging.getLogger(__name__)

__all__ = ["ON_ERROR", "PROBABILITY_FORMATS", "PredictionSummary", "predict", "progress_bar",
           "resolve_device"]

ON_ERROR = ("skip", "fail")
PROBABILITY_FORMATS = ("uint8", "float16")
OUTPUT_FOLDERS = ("masks", "probabilities", "overlays")


@dataclass
class PredictionSummary:
    output: str
    done: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    conversions: dict[str, int] = field(default_factory=dict)  # note -> number of images
    ignored_files: int = 0  # files of an input folder without an image extension
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_second": self.images_per_second}


def resolve_device(device: str) -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; otherwise ``device`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a device (auto, cpu, cuda, cuda:1, ...): {e}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine; use device=cpu or auto")
    return resolved


def normalise(image: np.ndarray, info: InferenceInfo) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (1, C, H, W) as the eval pipeline makes it: ``(x / 255 - mean) / std``
    (``x / 255`` when the checkpoint records no normalisation)."""
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div_(255.0)
    if info.mean is not None and info.std is not None:
        mean = torch.tensor(info.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(info.std, dtype=torch.float32).view(-1, 1, 1)
        x = (x - mean) / std
    return x.unsqueeze(0)


def mask_values(labels: torch.Tensor, mode: str) -> np.ndarray:
    """(H, W) values of the mask file: class ids, or multilabel (K, H, W) flags as ``sum_c 2**c``."""
    if mode == MULTILABEL_MODE:
        weights = (2 ** torch.arange(labels.shape[0], dtype=torch.int64)).view(-1, 1, 1)
        labels = (labels.cpu().long() * weights).sum(0)
    return labels.cpu().numpy()


def overlay(image: np.ndarray, labels: torch.Tensor, info: InferenceInfo, alpha: float) -> np.ndarray:
    """The image (as RGB) blended with the colour of each pixel's label (multilabel: the mean colour of the
    labels on; pixels with none keep the image)."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    colors = torch.tensor(info.class_colors, dtype=torch.float32)
    labels = labels.cpu()
    if info.mode == MULTILABEL_MODE:
        on = labels.float()  # (K, H, W)
        count = on.sum(0)
        color = torch.einsum("khw,kc->hwc", on, colors) / count.clamp_min(1)[..., None]
        weight = (count > 0).float()[..., None] * alpha
    else:
        color = colors[labels]
        weight = torch.full((*labels.shape, 1), alpha)
    out = torch.from_numpy(np.array(rgb, copy=True)).float() * (1 - weight) + color * weight
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def roi_mask(roi: RoiSpec, item: InputImage, image: np.ndarray) -> torch.Tensor:
    """Bool (H, W) region of ``item``: ``<roi.dir>/<name><suffix><extension>``, ``name`` the image's path
    relative to the input (without extension); ValueError when it is missing or of another size."""
    path = Path(str(roi.dir)) / f"{item.relative}{roi.suffix}{roi.extension}"
    if not path.is_file():
        raise ValueError(f"no region mask {path} for {item.path} (roi.dir={roi.dir!r})")
    region = read_roi(path)
    if region.shape != image.shape[:2]:
        raise ValueError(f"size mismatch: region mask {path} is {region.shape[1]}x{region.shape[0]} (WxH) "
                         f"but image {item.path} is {image.shape[1]}x{image.shape[0]}")
    return torch.from_numpy(region)


def outside_region_is_background(probs: torch.Tensor, labels: torch.Tensor,
                                 region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (K, H, W) 0 and labels 0 (background; multilabel (K, H, W): none) outside ``region``."""
    region = region.to(probs.device)
    return probs * region, labels * region.to(labels.device, labels.dtype)


def _check_output(output: Path, overwrite: bool) -> None:
    existing = [
        output / d for d in OUTPUT_FOLDERS if (output / d).is_dir() and any((output / d).rglob("*.*"))
    ]
    if existing and not overwrite:
        raise FileExistsError(
            f"output folder {output} already holds predictions ({', '.join(str(p) for p in existing)}); "
            "pass overwrite=true to replace them, or choose another output=DIR"
        )


def progress_bar(enabled: bool, label: str = "predict") -> Progress:
    """The bar of ``predict.py`` and ``evaluate.py`` (on stderr): ``label``, bar, done/total, the current
    file (``bar.update(task, name=...)``), elapsed and remaining time."""
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[name]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        console=Console(stderr=True),
    )


def _predict_one(
    item: InputImage,
    network: torch.nn.Module,
    info: InferenceInfo,
    cfg: DictConfig,
    inference: Any,
    output: Path,
    summary: PredictionSummary,
    roi: RoiSpec | None = None,
) -> None:
    image, note = read_image_converted(item.path, info.in_channels)
    if note is not None:
        if note not in summary.conversions:
            log.warning("%s: converted %s (the model takes %d channels)", item.path, note, info.in_channels)
        summary.conversions[note] = summary.conversions.get(note, 0) + 1
    x = normalise(image, info)
    probs = predict_probabilities(network, x, inference, activation=activation_for_mode(info.mode),
                                  temperature=temperature_tensor(info.temperature))[0]
    threshold, thresholds = decision_thresholds(inference.threshold, info)
    labels = labels_from_probabilities(probs[None], info.mode, threshold, thresholds)[0]
    if roi is not None:
        probs, labels = outside_region_is_background(probs, labels, roi_mask(roi, item, image))
    save = cfg.save
    if save.masks:
        palette = info.class_colors
        if info.mode == MULTILABEL_MODE:  # the flags' colours, as in the training's prediction grids
            palette = flag_palette(info.num_classes).tolist()
        write_index_mask(output / "masks" / f"{item.relative}.png", mask_values(labels, info.mode), palette)
    if save.probabilities is not None:
        p = probs.float().cpu()
        array = (p * 255).round().to(torch.uint8) if save.probabilities == "uint8" else p.half()
        with atomic_path(output / "probabilities" / f"{item.relative}.npy") as tmp:
            np.save(tmp, array.numpy())
    if save.overlays:
        write_rgb(
            output / "overlays" / f"{item.relative}.png",
            overlay(image, labels, info, float(save.overlay_alpha)),
        )


def decision_thresholds(option: float | str, info: InferenceInfo) -> tuple[float, torch.Tensor | None]:
    """``(threshold, thresholds)`` for :func:`inference.labels_from_probabilities` of
    ``inference.threshold``: ``auto`` is the checkpoint's fitted thresholds (``p >= t``) when it has them,
    else 0.5 (``p > 0.5``); a number overrides them (``p > t``). Multiclass: the argmax either way."""
    if option == AUTO_THRESHOLD:
        if info.thresholds is not None:
            return 0.5, torch.tensor(info.thresholds, dtype=torch.float32)
        return 0.5, None
    return float(option), None


def region_spec(value: Any) -> RoiSpec | None:
    """``roi`` of predict.yaml (``{dir, suffix, extension}``; a ``dir`` is required: region masks beside
    the images would be read as inputs)."""
    roi = RoiSpec.from_config(value)
    if roi is not None and roi.dir is None:
        raise ValueError("roi.dir is required by predict.py (a folder of region masks mirroring the input's "
                         "names): region masks beside the images would be predicted as images")
    if roi is not None and not Path(roi.dir).is_dir():
        raise FileNotFoundError(f"roi.dir={roi.dir!r} is not a folder")
    return roi


def check_predict_config(cfg: DictConfig) -> None:
    """The keys of ``conf/predict.yaml`` that are not checked where they are used, named when wrong."""
    check_choice(cfg.on_error, "on_error", ON_ERROR)
    check_bool(cfg.overwrite, "overwrite")
    check_choice(str(cfg.precision), "precision", INFERENCE_PRECISIONS)
    if cfg.get("threshold") is not None:
        raise ValueError("threshold is now inference.threshold (auto: the checkpoint's fitted thresholds, "
                         "else 0.5; or a number): pass inference.threshold=...")
    check_bool(cfg.save.masks, "save.masks")
    check_bool(cfg.save.overlays, "save.overlays")
    if cfg.save.probabilities is not None:
        check_choice(cfg.save.probabilities, "save.probabilities", PROBABILITY_FORMATS)
    check_number(cfg.save.overlay_alpha, "save.overlay_alpha", minimum=0)
    if not (cfg.save.masks or cfg.save.overlays or cfg.save.probabilities is not None):
        raise ValueError(
            "nothing to write: save.masks=false, save.overlays=false and save.probabilities=null"
        )


def predict(cfg: DictConfig) -> PredictionSummary:
    """Predict every image of ``cfg.input`` with the checkpoint ``cfg.ckpt_path`` into ``cfg.output``;
    returns (and writes to ``summary.json``) the :class:`PredictionSummary`.

    Raises:
        FileNotFoundError, ValueError: bad checkpoint, missing or empty input, bad option (named).
        FileExistsError: the output holds predictions and ``overwrite=false``.
        ValueError/OSError of an image with ``on_error=fail``.
    """
    check_predict_config(cfg)
    output = Path(cfg.output)
    _check_output(output, bool(cfg.overwrite))
    device = resolve_device(str(cfg.device))
    network, info = load_for_inference(cfg.ckpt_path, map_location=device)
    precision, note = resolve_precision(str(cfg.precision), device.type)
    if note is not None:
        log.info(note)
    dtype = autocast_dtype(precision)
    inference = build_inference(cfg.inference, info.size_multiple, info.crop_size)
    roi = region_spec(cfg.get("roi"))
    listing = list_inputs(cfg.input, exclude=output)  # never what this run (or an earlier one) wrote
    summary = PredictionSummary(output=str(output), ignored_files=len(listing.ignored))
    if listing.ignored:
        log.info(
            "%d files without an image extension in %s are not read, e.g. %s",
            len(listing.ignored),
            cfg.input,
            listing.ignored[0],
        )
    if info.temperature is not None or info.thresholds is not None:
        threshold, thresholds = decision_thresholds(inference.threshold, info)
        used = thresholds.tolist() if thresholds is not None else threshold
        log.info("calibration: temperature %s; thresholds %s (inference.threshold=%s)", info.temperature,
                 used, inference.threshold)
    log.info(
        "predicting %d images with %s (%s, %d classes) on %s, precision %s: %s",
        len(listing.images),
        cfg.ckpt_path,
        info.mode,
        info.num_classes,
        device,
        precision,
        inference,
    )
    start = time.perf_counter()
    autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    with progress_bar(bool(cfg.progress)) as bar, autocast:
        task = bar.add_task("predict", total=len(listing.images), name="")
        for item in listing.images:
            bar.update(task, name=str(item.relative))
            try:
                _predict_one(item, network, info, cfg, inference, output, summary, roi)
                summary.done += 1
            except (ValueError, OSError) as e:
                if cfg.on_error == "fail":
                    raise type(e)(
                        f"{e} (on_error=fail stops at the first bad image; on_error=skip goes on)"
                    ) from None
                log.warning("skipped %s: %s", item.path, e)
                summary.skipped.append({"path": str(item.path), "reason": str(e)})
            bar.advance(task)
    summary.seconds = time.perf_counter() - start
    write_json(output / "summary.json", summary.to_dict())
    print_summary(summary)
    return summary


def print_summary(summary: PredictionSummary) -> None:
    table = Table(title="prediction summary", caption=f"output: {summary.output}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("images done", str(summary.done))
    table.add_row("skipped", str(len(summary.skipped)))
    for note, count in summary.conversions.items():
        table.add_row(f"converted: {note}", str(count))
    if summary.ignored_files:
        table.add_row("files not read (no image extension)", str(summary.ignored_files))
    table.add_row("time", f"{summary.seconds:.1f} s")
    table.add_row("images/s", f"{summary.images_per_second:.2f}")
    console = Console()
    console.print(table)
    for skip in summary.skipped[:10]:
        console.print(f"[red]skipped[/red] {skip['path']}: {skip['reason']}")
    if len(summary.skipped) > 10:
        console.print(f"... and {len(summary.skipped) - 10} more (see summary.json)")
