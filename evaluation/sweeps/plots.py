"""The sweep summary as figures: ``summary.png`` (:func:`plot`) and ``summary_by_config.png``
(:func:`plot_by_config`), with matplotlib's Agg canvas (no pyplot). No torch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from evaluation.sweeps.names import STD_NOTE
from evaluation.sweeps.tables import as_float, cell, config_label
from safeio import atomic_path

__all__ = ["plot", "plot_by_config"]


def plot(rows: list[dict[str, Any]], keys: list[str], rare: list[str], path: Path, title: str = "") -> None:
    """mIoU (validation, test) and the rare classes' test IoU against the swept value: a numeric x axis for
    one numeric swept key, else one categorical tick per job labelled by its overrides. Failed jobs are
    marked with an x on the axis."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's inline) stays

    values = [r[keys[0]] for r in rows if r[keys[0]] is not None] if len(keys) == 1 else []
    numeric = bool(values) and all(as_float(v) is not None for v in values)
    if numeric:
        xs = [as_float(r[keys[0]]) for r in rows]
        order = sorted(range(len(rows)), key=lambda i: (xs[i] is None, xs[i] or 0.0))
        xlabel, ticks = keys[0], None
    else:
        xs = list(range(len(rows)))
        order = list(range(len(rows)))
        xlabel = "job: " + ", ".join(keys) if keys else "job"
        ticks = [f"{r['job']}\n" + "\n".join(cell(r[k]) for k in keys) for r in rows]

    fig = Figure(figsize=(max(7.0, 0.7 * len(rows) + 4.0), 4.5 + 0.25 * len(keys)))
    ax = fig.subplots()
    series = [("val_mIoU", "val mIoU", "-", "o"), ("test_mIoU", "test mIoU", "-", "s")]
    series += [(f"test_IoU/{n}", f"test IoU {n} (rare)", "--", ".") for n in rare]
    for column, label, style, marker in series:
        points = [(xs[i], rows[i].get(column)) for i in order if rows[i]["status"] == "ok"]
        points = [(x, y) for x, y in points if x is not None and y is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker=marker, label=label)
    failed = [xs[i] for i in order if rows[i]["status"] != "ok" and xs[i] is not None]
    if failed:
        ax.plot(failed, [0.0] * len(failed), "x", color="red", markersize=10, label="failed job")
    if ticks is not None:
        ax.set_xticks(xs)
        ax.set_xticklabels(ticks, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("IoU")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)  # Agg


def plot_by_config(configs: list[dict[str, Any]], group_keys: list[str], classes: list[str], path: Path,
                   title: str = "") -> None:
    """Mean ± sample std over the seeds, as error bars (none where n = 1): at the top the mean scores (val
    and test mIoU and mDice) per configuration (a numeric x axis for one numeric configuration key, else one
    tick per configuration, labelled with its values and n); below, the test IoU of every class, one series
    per configuration. A configuration without a finished job is marked with a red x on the axis."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's inline) stays

    def point(config: dict[str, Any], metric: str) -> tuple[float | None, float]:
        std = config.get(f"{metric}_std")
        return config.get(f"{metric}_mean"), math.nan if std is None else std

    first = group_keys[0] if len(group_keys) == 1 else None
    values = [c[first] for c in configs if c[first] is not None] if first else []
    numeric = bool(values) and all(as_float(v) is not None for v in values)
    if numeric:
        xs = [as_float(c[first]) for c in configs]
        order = sorted(range(len(configs)), key=lambda i: (xs[i] is None, xs[i] or 0.0))
    else:
        xs = [float(i) for i in range(len(configs))]
        order = list(range(len(configs)))
    ticks = [config_label(c, group_keys) + f"\nn={c['n']}" + (f" ({c['n_not_ok']} not ok)" if c["n_not_ok"]
             else "") for c in configs]

    width = max(8.0, 1.1 * len(configs) + 4.0, 0.35 * len(classes) * max(1, len(configs)) + 3.0)
    fig = Figure(figsize=(min(width, 30.0), 9.0 + 0.25 * len(group_keys)))
    top, bottom = fig.subplots(2, 1)
    series = [("val_mIoU", "val mIoU", "o"), ("test_mIoU", "test mIoU", "s"), ("val_mDice", "val mDice", "^"),
              ("test_mDice", "test mDice", "v")]
    spread = 0.0 if numeric else 0.5
    for k, (metric, label, marker) in enumerate(series):
        shift = (k - (len(series) - 1) / 2) * spread / len(series)
        points = [(xs[i] + shift, *point(configs[i], metric)) for i in order if xs[i] is not None]
        points = [p for p in points if p[1] is not None]
        if points:
            top.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                         fmt=marker + ("-" if numeric else ""), capsize=3, label=label)
    empty = [xs[i] for i in order if configs[i]["n"] == 0 and xs[i] is not None]
    if empty:
        top.plot(empty, [0.0] * len(empty), "x", color="red", markersize=10, label="no finished job")
    top.set_xticks([x for x in xs if x is not None])
    top.set_xticklabels([t for x, t in zip(xs, ticks, strict=True) if x is not None], fontsize=8)
    top.set_xlabel(", ".join(group_keys) if group_keys else "configuration")
    top.set_ylabel("score")
    top.set_title(title + ("\n" if title else "") + STD_NOTE, fontsize=9)

    spread = 0.8
    for k, i in enumerate(order):
        config = configs[i]
        shift = (k - (len(order) - 1) / 2) * spread / max(1, len(order))
        points = [(j + shift, *point(config, f"test_IoU/{name}")) for j, name in enumerate(classes)]
        points = [p for p in points if p[1] is not None]
        if points:
            bottom.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                            fmt="o", markersize=4, capsize=2,
                            label=(config["overrides"] or "all jobs") + f" (n={config['n']})")
    bottom.set_xticks(list(range(len(classes))))
    bottom.set_xticklabels(classes, fontsize=8, rotation=30 if len(classes) > 6 else 0)
    bottom.set_xlabel("class")
    bottom.set_ylabel("test IoU")
    for ax in (top, bottom):
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)  # Agg
