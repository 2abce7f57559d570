"""Per-class results table (like mmsegmentation's), printed with rich, the worst images, the one-line summary
of a validation epoch and a JSON-ready summary."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

__all__ = [
    "class_table",
    "epoch_line",
    "print_class_table",
    "summarize",
    "worst_images",
    "worst_images_table",
]

COLUMNS = (("IoU", "iou"), ("Dice", "dice"), ("Precision", "precision"), ("Recall", "recall"))


def _pct(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.2f}"


def class_table(scores: dict[str, Tensor], class_names: Sequence[str], title: str = "") -> Table:
    """Rich table: one row per class (IoU, Dice, precision, recall, pixel share, all in %) and a mean
    row (``nanmean`` of each column, i.e. mIoU and mDice); pixel accuracy in the caption."""
    table = Table(title=title, caption=f"pixel accuracy {_pct(float(scores['pixel_acc']))}%")
    table.add_column("Class", justify="left")
    for header, _ in COLUMNS:
        table.add_column(header, justify="right")
    table.add_column("Pixel share", justify="right")
    for i, name in enumerate(class_names):
        row = [_pct(float(scores[key][i])) for _, key in COLUMNS]
        table.add_row(str(name), *row, _pct(float(scores["pixel_share"][i])))
    means = [_pct(float(torch.nanmean(scores[key]))) for _, key in COLUMNS]
    # no share in the mean row: a sum of per-label shares (multilabel) is not a share of the pixels
    table.add_row("mean", *means, "", style="bold")
    return table


def worst_images(names: Sequence[str], miou: Tensor, n: int) -> list[int]:
    """Indices of the (at most) ``n`` images with the lowest ``miou`` (N,), lowest first, ties by name;
    images whose mIoU is NaN (no class scored) are left out."""
    values = miou.tolist()
    scored = [i for i, v in enumerate(values) if not math.isnan(v)]
    return sorted(scored, key=lambda i: (values[i], str(names[i])))[: max(n, 0)]


def worst_images_table(names: Sequence[str], scores: dict[str, Tensor], class_names: Sequence[str], n: int,
                       title: str = "") -> Table:
    """Rich table of the :func:`worst_images` by mIoU: rank, image name, mIoU, mDice (%) and the image's
    class of lowest IoU. ``scores``: per-image scores, (N, C) ``iou`` and (N,) ``mIoU``, ``mDice``
    (:meth:`evaluation.per_image.PerImageCounts.scores`)."""
    table = Table(title=title)
    for header in ("#", "Image", "mIoU", "mDice", "Lowest IoU"):
        table.add_column(header, justify="left" if header in ("Image", "Lowest IoU") else "right")
    iou = scores["iou"]
    for rank, i in enumerate(worst_images(names, scores["mIoU"], n), start=1):
        row = torch.nan_to_num(iou[i].double(), nan=math.inf)
        c = int(row.argmin())
        means = (_pct(float(scores["mIoU"][i])), _pct(float(scores["mDice"][i])))
        table.add_row(str(rank), str(names[i]), *means, f"{class_names[c]} {_pct(float(iou[i, c]))}")
    return table


def print_class_table(
    scores: dict[str, Tensor], class_names: Sequence[str], title: str = "", console: Console | None = None
) -> None:
    (console or Console()).print(class_table(scores, class_names, title))


def summarize(scores: dict[str, Tensor], class_names: Sequence[str]) -> dict[str, object]:
    """JSON-ready dict: ``{"mIoU", "mDice", "pixel_acc"}`` floats and ``"per_class"``:
    ``{class: {"iou", "dice", "precision", "recall", "pixel_share"}}``. NaN becomes ``None`` (JSON null)."""

    def clean(value: float) -> float | None:
        return None if math.isnan(value) else value

    per_class = {
        str(name): {
            key: clean(float(scores[key][i])) for key in ("iou", "dice", "precision", "recall", "pixel_share")
        }
        for i, name in enumerate(class_names)
    }
    return {
        "mIoU": clean(float(scores["mIoU"])),
        "mDice": clean(float(scores["mDice"])),
        "pixel_acc": clean(float(scores["pixel_acc"])),
        "per_class": per_class,
    }


def epoch_line(epoch: int, scores: dict[str, Tensor], class_names: Sequence[str], rare: Sequence[str],
               best: tuple[float, int] | None) -> str:
    """One line for a validation epoch: mIoU, the mean IoU of the ``rare`` classes (left out when they are
    all the classes), the class of lowest IoU and its IoU, and the ``best`` (mIoU, epoch) so far; in %.
    Example: ``val epoch 3: mIoU 85.12 | rare (cross, bar, square) 61.40 | weakest cross 20.31 | best
    85.12 (epoch 3)``."""
    iou = scores["iou"].double().cpu()
    parts = [f"val epoch {epoch}: mIoU {_pct(float(scores['mIoU']))}"]
    index = [list(class_names).index(n) for n in rare if n in class_names]
    if index and len(index) < len(class_names):
        parts.append(f"rare ({', '.join(rare)}) {_pct(float(torch.nanmean(iou[index])))}")
    scored = torch.nan_to_num(iou, nan=math.inf)
    if bool(torch.isfinite(scored).any()):
        c = int(scored.argmin())
        parts.append(f"weakest {class_names[c]} {_pct(float(iou[c]))}")
    if best is not None:
        parts.append(f"best {_pct(best[0])} (epoch {best[1]})")
    return " | ".join(parts)
