"""The sweep summary as rich tables: one row per job (:func:`print_table`) and one per configuration
(:func:`print_by_config_table`). No torch."""

from __future__ import annotations

import textwrap
from typing import Any

from evaluation.sweeps.names import BY_CONFIG_CSV_NAME, STD_NOTE

__all__ = ["as_float", "cell", "print_by_config_table", "print_table"]

ERROR_WIDTH = 80  # characters of the error shown in the table (summary.csv has all of it)


def as_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def cell(value: Any, percent: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.2f}" if percent else f"{value:.1f}"
    if isinstance(value, str) and "." in value and as_float(value) is not None:
        return f"{float(value):.4g}"  # a sampled value such as 1.8727005942368125
    return str(value)


def print_table(rows: list[dict[str, Any]], keys: list[str], rare: list[str], title: str) -> None:
    """The summary as a rich table; scores in percent, wall time in seconds."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = [("job", "job", False), ("status", "status", False)]
    columns += [(k, k, False) for k in keys]
    columns += [("val_mIoU", "val mIoU", True), ("val_mDice", "val mDice", True),
                ("test_mIoU", "test mIoU", True)]
    columns += [(f"test_IoU/{n}", f"test IoU {n}", True) for n in rare]
    columns += [("best_epoch", "best epoch", False), ("wall_time_s", "time (s)", False)]
    if any(row.get("error") for row in rows):
        columns.append(("error", "error", False))
    for _, header, numeric in columns:
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        cells = [cell(row.get(column), percent) for column, _, percent in columns]
        if row.get("error"):
            cells[-1] = textwrap.shorten(row["error"], ERROR_WIDTH)
        table.add_row(*cells, style=None if row["status"] == "ok" else "red")
    console = Console()
    if not console.is_terminal:  # a log file or pipe: rich's 80 columns would fold every cell
        console = Console(width=200)
    console.print(table)


def config_label(config: dict[str, Any], group_keys: list[str]) -> str:
    return "\n".join(cell(config.get(k)) for k in group_keys) if group_keys else "all jobs"


def _mean_std(config: dict[str, Any], metric: str) -> str:
    """``"86.60 ± 1.23"`` (percent); ``"86.60 ± -"`` for a single value; ``"-"`` for none."""
    mean, std = config.get(f"{metric}_mean"), config.get(f"{metric}_std")
    if mean is None:
        return "-"
    return f"{100 * mean:.2f} ± " + ("-" if std is None else f"{100 * std:.2f}")


def print_by_config_table(configs: list[dict[str, Any]], group_keys: list[str], rare: list[str],
                          title: str) -> None:
    """The per-configuration summary as a rich table: mean ± std in percent, n, the excluded jobs, the rare
    classes' test IoU (every class: ``summary_by_config.csv``) and the mean wall time."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=STD_NOTE + "; IoU of every class: " + BY_CONFIG_CSV_NAME)
    for header in (group_keys or ["configuration"]):
        table.add_column(header, overflow="fold")
    table.add_column("n", justify="right")
    metrics = [("val_mIoU", "val mIoU"), ("val_mDice", "val mDice"), ("test_mIoU", "test mIoU"),
               ("test_mDice", "test mDice")] + [(f"test_IoU/{n}", f"test IoU {n}") for n in rare]
    for _, header in metrics:
        table.add_column(header, justify="right")
    table.add_column("time (s)", justify="right")
    with_excluded = any(c["n_not_ok"] for c in configs)
    if with_excluded:
        table.add_column("excluded (not ok)", overflow="fold")
    for config in configs:
        cells = [cell(config.get(k)) for k in group_keys] if group_keys else ["all jobs"]
        cells.append(str(config["n"]))
        cells += [_mean_std(config, metric) for metric, _ in metrics]
        cells.append(cell(config.get("wall_time_s_mean")))
        if with_excluded:
            cells.append(", ".join(j.replace(":", " ") for j in config["not_ok_jobs"].split()))
        style = "red" if config["n"] == 0 else ("yellow" if config["n_not_ok"] else None)
        table.add_row(*cells, style=style)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)
