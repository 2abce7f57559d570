"""Training callbacks: focal gamma schedule, a PNG grid of validation predictions, a checkpoint callback
whose run directory may be moved or copied between a run and its resume, and an EMA of the weights whose
checkpoints are evaluated with their averaged weights."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw
from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor, nn

from safeio import atomic_path
from seglosses.checks import check_int
from seglosses.focal import CrossEntropyLoss, FocalLoss
from seglosses.modes import BINARY_MODE, MULTILABEL_MODE

__all__ = [
    "EMAWeights",
    "GammaScheduleCallback",
    "PredictionGridCallback",
    "RunCheckpoint",
    "color_palette",
    "default_class_colors",
    "flag_palette",
    "focal_terms",
    "label_flags",
    "render_grid",
]


def focal_terms(module: nn.Module) -> list[FocalLoss]:
    """Every :class:`seglosses.focal.FocalLoss` inside ``module`` whose gamma can change (not the
    ``CrossEntropyLoss`` subclass, whose gamma is fixed at 0)."""
    return [m for m in module.modules() if isinstance(m, FocalLoss) and not isinstance(m, CrossEntropyLoss)]


class GammaScheduleCallback(pl.Callback):
    """Sets ``gamma = schedule(epoch)`` on every focal term of the module's loss and logs ``train/gamma``.

    Gamma is a function of the 0-based epoch only, so a run resumed from a checkpoint continues the
    schedule where it stopped. It is applied at the start of every training epoch and of every
    validation loop (so validation uses the gamma of the epoch it belongs to).

    Args:
        schedule: ``schedule(epoch) -> gamma``, e.g. :class:`seglosses.schedules.GammaSchedule`;
            ``None`` disables the callback (losses without a focal term).

    Raises:
        ValueError: at fit start, when a schedule is given but the loss has no focal term.
    """

    def __init__(self, schedule: Callable[[int], float] | None) -> None:
        super().__init__()
        self.schedule = schedule

    def apply(self, pl_module: nn.Module, epoch: int) -> float | None:
        """Set and return the gamma of ``epoch`` (``None`` without a schedule)."""
        if self.schedule is None:
            return None
        gamma = float(self.schedule(epoch))
        for term in focal_terms(pl_module):
            term.gamma = gamma
        return gamma

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule is not None and not focal_terms(pl_module):
            raise ValueError(
                "a gamma schedule is configured but the loss has no focal term "
                f"({type(getattr(pl_module, 'loss', pl_module)).__name__}); set the schedule to null"
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        gamma = self.apply(pl_module, trainer.current_epoch)
        if gamma is not None:
            pl_module.log("train/gamma", gamma, on_step=False, on_epoch=True)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self.apply(pl_module, trainer.current_epoch)


log = logging.getLogger(__name__)


class RunCheckpoint(ModelCheckpoint):
    """:class:`~pytorch_lightning.callbacks.ModelCheckpoint` that resumes the same run when the run
    directory was moved or copied since the checkpoint was written.

    Lightning stores absolute paths in the checkpoint (``dirpath``, ``best_model_path``, ``best_k_models``,
    ``kth_best_model_path``, ``last_model_path``); when ``dirpath`` differs on resume it drops the best
    score (so a worse epoch becomes "best") and keeps the old ``best_model_path``, which then names a file
    that is gone or, worse, the other directory's checkpoint (evaluated, or deleted when a better epoch
    comes). Here every path inside the saved ``dirpath`` is re-based onto the current one and the scores
    are kept. A best checkpoint missing from the current directory is copied there from the saved one
    (resuming another run's ``last.ckpt`` into a new directory); one found in neither place is dropped
    with a warning, and the best is then chosen among the epochs trained from now on.

    ``last.ckpt`` (``save_last=True``) is written at every checkpointing point (every validation, or every
    training epoch when checkpointing on train epoch end). Since pytorch_lightning 2.6 ``ModelCheckpoint``
    writes it only when a top-k checkpoint was saved at the same step, so in epochs that do not improve the
    monitored score ``last.ckpt`` kept an older epoch and a resume repeated the epochs after it.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: pl.Trainer) -> None:
        """``last.ckpt`` of this step when the parent saved nothing at it (no top-k improvement)."""
        if self.save_last is not True or self._should_skip_saving_checkpoint(trainer):
            return
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if not old or not self.dirpath:
            super().load_state_dict(state_dict)
            return
        if _same_dir(old, self.dirpath):  # also when spelled differently (a symlink): keep everything
            super().load_state_dict({**state_dict, "dirpath": self.dirpath})
            return
        old_dir, new_dir = Path(old), Path(self.dirpath)

        def rebase(path: Any) -> Any:
            if isinstance(path, str) and path and Path(path).parent == old_dir:
                return str(new_dir / Path(path).name)
            return path

        def available(path: str, original: str) -> bool:
            """Whether ``path`` (re-based) holds the checkpoint, copying it from ``original`` if needed.
            The decision is the same on every rank (only rank 0 copies)."""
            if Path(path).is_file():
                return True
            if path == original or not Path(original).is_file():
                return False
            if rank_zero_only.rank == 0:
                new_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy2(original, path)
                log.info("copied the best checkpoint %s of the resumed run to %s", original, path)
            return True

        best_k = {}
        for path, score in (state_dict.get("best_k_models") or {}).items():
            new = rebase(path)
            if available(new, path):
                best_k[new] = score
            else:
                log.warning(
                    "checkpoint %s of the resumed run was found neither there nor in %s: it is no longer "
                    "a candidate for the best checkpoint", path, new_dir,
                )  # fmt: skip
        state = {**state_dict, "dirpath": self.dirpath, "best_k_models": best_k}
        state["last_model_path"] = rebase(state_dict.get("last_model_path", ""))
        state["kth_best_model_path"] = rebase(state_dict.get("kth_best_model_path", ""))
        best = rebase(state_dict.get("best_model_path", ""))
        if best_k and best not in best_k:  # the best one was lost: the best of those left
            pick = min if self.mode == "min" else max
            best = pick(best_k, key=lambda k: float(best_k[k]))
            state["best_model_score"] = best_k[best]
        if not best_k and state_dict.get("best_model_path"):
            best, state["best_model_score"] = "", None
            state["kth_best_model_path"], state["kth_value"] = "", self.kth_value
        state["best_model_path"] = best
        super().load_state_dict(state)


class EMAWeights(EMAWeightAveraging):
    """Lightning's :class:`~pytorch_lightning.callbacks.EMAWeightAveraging` (an exponential moving average
    of parameters and buffers, updated after every ``update_every_n_steps``-th optimizer step; validation
    during fitting runs on the average, checkpoints hold it as ``state_dict`` and the raw weights as
    ``current_model_state``; fitting resumed from a checkpoint continues both), which also evaluates the
    average outside fitting.

    Lightning keeps the average of the fit after it: ``trainer.test(ckpt_path=best)`` then loads the raw
    weights of ``current_model_state`` into the module and tests them (no swap for test), and
    ``trainer.validate(ckpt_path=)`` only reaches the average through two swaps. Here validate, test and
    predict drop the average and keep the module's weights: the ``state_dict`` of the checkpoint loaded,
    i.e. its averaged weights, or the average that fitting copied into the module at its end. That is what
    ``train=false ckpt_path=`` and ``predict.py`` (which read ``state_dict``) evaluate too.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            self._average_model = None  # no swaps: the module's weights are the average (see above)
        super().setup(trainer, pl_module, stage)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # the module keeps the checkpoint's state_dict: the averaged weights
        super().on_load_checkpoint(trainer, pl_module, checkpoint)


def _same_dir(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def color_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: the PASCAL VOC palette (bits of the class id spread over R, G, B;
    class 0 black)."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for c in range(num_classes):
        value, r, g, b = c, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[c] = (r, g, b)
    return palette


def flag_palette(num_labels: int) -> np.ndarray:
    """The colours of multilabel bit-flag values ``sum_c 2**c`` (masks and grids): :func:`color_palette`
    over every flag value (at most 256 entries: 8 labels fit an 8-bit palette PNG)."""
    return color_palette(min(2**num_labels, 256))


def default_class_colors(mode: str, num_classes: int) -> list[list[int]]:
    """One colour per name of the scored classes, the colours the prediction grids draw them in: multiclass
    the palette of the class ids; binary ``[background, foreground]`` black and the palette's colour 1
    (red); multilabel label c the colour of its flag ``2**c`` (no label is black: every one shows)."""
    if mode == BINARY_MODE:
        return color_palette(2).tolist()
    if mode == MULTILABEL_MODE:
        palette = color_palette(2 ** (num_classes - 1) + 1)
        return [palette[2**c].tolist() for c in range(num_classes)]
    return color_palette(num_classes).tolist()


IGNORE_COLOR = (255, 255, 255)
GAP = 2
HEADER = 14


def _to_rgb(image: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """(C, H, W) normalised float image -> (H, W, 3) uint8 for display."""
    x = image.detach().float().cpu()
    if mean is not None and std is not None and len(mean) == len(std) == x.shape[0]:
        x = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
        if x.max() > 1.5:  # mean/std given in 0..255 units
            x = x / 255.0
    else:  # unknown normalisation: stretch each image to [0, 1]
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    x = x.clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return (x[:3].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _colorize(mask: Tensor, palette: np.ndarray) -> np.ndarray:
    m = mask.detach().cpu().long().numpy()
    out = np.empty((*m.shape, 3), dtype=np.uint8)
    valid = (m >= 0) & (m < len(palette))
    out[valid] = palette[m[valid]]
    out[~valid] = IGNORE_COLOR  # ignore_index (and anything else outside the classes)
    return out


def label_flags(masks: Tensor) -> Tensor:
    """(N, C, H, W) multilabel {0, 1} masks -> (N, H, W) int64 bit flags ``sum_c mask_c * 2**c`` (the
    encoding of multilabel mask files), so that every combination of labels gets its own colour. A pixel
    with any channel outside {0, 1} (``ignore_index``) becomes -1, drawn as ignored."""
    m = masks.detach().long()
    shifts = torch.arange(m.shape[1], device=m.device).view(1, -1, 1, 1)
    flags = (m.clamp(0, 1) << shifts).sum(dim=1)
    return flags.masked_fill(((m != 0) & (m != 1)).any(dim=1), -1)


def render_grid(
    images: Tensor | Sequence[Tensor],
    masks: Tensor | Sequence[Tensor],
    preds: Tensor | Sequence[Tensor],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    min_tile: int = 128,
) -> Image.Image:
    """One row per sample: image | ground truth | prediction, masks coloured by :func:`color_palette`
    (ignored pixels white). ``images`` (N, C, H, W) float, ``masks``/``preds`` (N, H, W) int, or sequences
    of one (C, H, W) image and (H, W) masks per sample, whose sizes may differ (data sets of mixed image
    sizes evaluated with ``eval_batch_size=1``): each row is drawn at its own size.
    Tiles are enlarged by one integer factor to at least ``min_tile`` pixels for the largest sample
    (nearest neighbour), so that relative sizes are kept."""
    n = len(images)
    sizes = [tuple(img.shape[-2:]) for img in images]
    largest = max((max(h, w) for h, w in sizes), default=1)
    scale = max(1, -(-min_tile // max(1, largest)))
    col_w = max((w for _, w in sizes), default=1) * scale
    row_h = [h * scale for h, _ in sizes]
    palette = color_palette(max(num_classes, 2))
    grid = Image.new("RGB", (3 * col_w + 4 * GAP, HEADER + sum(row_h) + n * GAP + GAP), (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate(("image", "ground truth", "prediction")):
        draw.text((GAP + j * (col_w + GAP) + 2, 1), title, fill=(255, 255, 255))
    top = HEADER + GAP
    for i in range(n):
        w, th = sizes[i][1], row_h[i]
        tiles = (_to_rgb(images[i], mean, std), _colorize(masks[i], palette), _colorize(preds[i], palette))
        for j, tile in enumerate(tiles):
            img = Image.fromarray(tile).resize((w * scale, th), Image.Resampling.NEAREST)
            grid.paste(img, (GAP + j * (col_w + GAP), top))
        top += th + GAP
    return grid


class PredictionGridCallback(pl.Callback):
    """Saves ``<dirpath>/val_epoch<NNN>.png``: the first ``num_samples`` validation images with their
    ground truth and predictions, every ``every_n_epochs`` epochs (rank 0; not during the sanity check).

    Args:
        dirpath: output folder (default ``<trainer.default_root_dir>/predictions``).
        num_samples: images in the grid.
        every_n_epochs: save every n-th validation epoch (the last epoch is always saved).

    Predictions come from the ``"preds"`` entry of ``validation_step``'s output
    (:class:`~models.SegmentationModule`) or, failing that, from the module's ``predict_classes`` (or the
    argmax) of its output. Images are de-normalised with the datamodule's ``mean``/``std`` when it has them.
    Samples may differ in size (mixed image sizes with ``datamodule.eval_batch_size=1``): each row of the
    grid is drawn at its sample's size (:func:`render_grid`).

    Multilabel masks and predictions (N, C, H, W) are drawn as their bit flags (:func:`label_flags`): each
    pixel is coloured by its set of labels, with the palette entry of the value a mask file stores for it
    (label ``c`` alone: ``2**c``; none: black; overlaps: their own colour; ignored: white).
    """

    def __init__(self, dirpath: str | None = None, num_samples: int = 4, every_n_epochs: int = 1) -> None:
        super().__init__()
        self.dirpath = dirpath
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=1)
        self._samples: list[tuple[Tensor, Tensor, Tensor]] = []
        self._multilabel = False
        self.last_path: Path | None = None

    def _active(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs - 1
        return (epoch + 1) % self.every_n_epochs == 0 or last

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._samples = []
        self._multilabel = False

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        taken = sum(s[0].shape[0] for s in self._samples)
        if dataloader_idx != 0 or taken >= self.num_samples or not self._active(trainer):
            return
        k = self.num_samples - taken
        images, masks = batch["image"][:k], batch["mask"][:k]
        if isinstance(outputs, dict) and "preds" in outputs:
            preds = outputs["preds"][:k]
        else:
            with torch.no_grad():
                logits = pl_module(images)
            predict = getattr(pl_module, "predict_classes", None)
            preds = predict(logits) if callable(predict) else logits.argmax(dim=1)
        if masks.ndim == 4:  # multilabel (N, C, H, W)
            masks, preds = label_flags(masks), label_flags(preds)
            self._multilabel = True
        self._samples.append((images.detach().cpu(), masks.detach().cpu(), preds.detach().cpu()))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._samples or not self._active(trainer) or not trainer.is_global_zero:
            self._samples = []
            return
        # One entry per sample: batches of different image sizes (eval_batch_size=1) are not stacked.
        samples = zip(*self._samples, strict=True)
        images, masks, preds = ([x for part in parts for x in part] for parts in samples)
        self._samples = []
        dm = trainer.datamodule
        top = max(int(p.max()) for p in preds)
        if self._multilabel:  # palette up to the largest flag value shown (at most 2**C)
            num_classes = max(max(int(m.max()) for m in masks), top) + 1
        else:
            num_classes = getattr(pl_module, "metric_classes", None) or top + 1
        grid = render_grid(
            images, masks, preds, num_classes, getattr(dm, "mean", None), getattr(dm, "std", None)
        )
        folder = Path(self.dirpath or Path(trainer.default_root_dir) / "predictions")
        self.last_path = folder / f"val_epoch{trainer.current_epoch:03d}.png"
        with atomic_path(self.last_path) as tmp:
            grid.save(tmp)
