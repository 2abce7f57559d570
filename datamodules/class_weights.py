"""Class weights from the training split's label statistics: computed, printed as a table, saved as JSON."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from safeio import write_json

from .statistics import LabelStatistics

WeightFn = Callable[..., Tensor]


class HasLabelStatistics(Protocol):
    def label_statistics(self, cache_dir: str | Path | None = None) -> LabelStatistics: ...


def weights_from_statistics(stats: LabelStatistics, method_fn: WeightFn) -> Tensor:
    """``method_fn(pixel_counts, image_pixel_counts=...)`` as a float32 (C,) tensor.

    ``method_fn`` is what ``hydra.utils.instantiate(cfg.class_weights)`` returns: a partial of
    ``seglosses.class_weights.class_weights_from_counts`` with ``method`` bound.
    """
    weights = torch.as_tensor(
        method_fn(stats.pixel_counts, image_pixel_counts=stats.image_pixel_counts), dtype=torch.float32
    )
    if weights.shape != stats.pixel_counts.shape:
        raise ValueError(
            f"class weight function returned shape {tuple(weights.shape)}, expected "
            f"({stats.pixel_counts.numel()},) for classes {list(stats.class_names)}"
        )
    return weights


def print_class_weights(stats: LabelStatistics, weights: Tensor | None, title: str = "class weights") -> None:
    """Print a rich table: class name, pixel count, pixel share (of labelled pixels), weight."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("class")
    table.add_column("pixels", justify="right")
    table.add_column("pixel share", justify="right")
    table.add_column("weight", justify="right")
    for i, name in enumerate(stats.class_names):
        w = "-" if weights is None else f"{float(weights[i]):.4f}"
        table.add_row(name, f"{int(stats.pixel_counts[i]):,}", f"{float(stats.frequencies[i]):.4%}", w)
    Console().print(table)


def class_weights_record(
    stats: LabelStatistics, weights: Tensor | None, method: str | None
) -> dict[str, Any]:
    """The content of ``class_weights.json``: per class name its weight, pixel count, image pixel count."""
    return {
        "method": method,
        "num_images": stats.num_images,
        "total_pixels": stats.total_pixels,
        "ignored_pixels": stats.ignored_pixels,
        "classes": {
            name: {
                "weight": None if weights is None else float(weights[i]),
                "pixel_count": int(stats.pixel_counts[i]),
                "image_pixel_count": int(stats.image_pixel_counts[i]),
                "pixel_share": float(stats.frequencies[i]),
            }
            for i, name in enumerate(stats.class_names)
        },
    }


def _method_name(method_fn: WeightFn | None) -> str | None:
    if method_fn is None:
        return None
    keywords = getattr(method_fn, "keywords", None) or {}
    return str(keywords.get("method", getattr(method_fn, "__name__", type(method_fn).__name__)))


def compute_class_weights(
    datamodule: HasLabelStatistics,
    method_fn: WeightFn | None,
    output_dir: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    stats: LabelStatistics | None = None,
    show: bool = True,
) -> Tensor | None:
    """Class weights of the training split for the loss (``class_weights=<method>`` in the config).

    Args:
        datamodule: provides ``label_statistics(cache_dir)`` (train split, ignore_index excluded).
        method_fn: ``hydra.utils.instantiate(cfg.class_weights)``: a partial of
            ``class_weights_from_counts`` with ``method`` bound, or None for ``class_weights=none``.
        output_dir: where ``class_weights.json`` is written (the run directory); None writes nothing.
        cache_dir: label statistics cache (default: the datamodule's).
        stats: precomputed statistics (skips the pass).
        show: print the table.

    Returns:
        (C,) float32 weights, or None when ``method_fn`` is None. The table and ``class_weights.json``
        record the label statistics either way (weights ``null`` for ``class_weights=none``).
    """
    if stats is None:
        stats = datamodule.label_statistics(cache_dir=cache_dir)
    if method_fn is None:
        weights, method = None, None
        title = "training labels (class_weights=none)"
    else:
        weights = weights_from_statistics(stats, method_fn)
        method = _method_name(method_fn)
        title = f"class weights ({method})"
    if show:
        print_class_weights(stats, weights, title=title)
    if output_dir is not None:
        write_json(Path(output_dir) / "class_weights.json", class_weights_record(stats, weights, method))
    return weights
