"""Writing a sweep's summary into its directory: ``summary.csv``, ``summary.png``,
``summary_by_config.csv``, ``summary_by_config.png`` (:func:`write_summary`). No torch."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from evaluation.sweeps.collect import _aggregate, _collect
from evaluation.sweeps.names import BY_CONFIG_CSV_NAME, BY_CONFIG_PLOT_NAME, CSV_NAME, PLOT_NAME, SEED_KEYS
from evaluation.sweeps.plots import plot, plot_by_config
from evaluation.sweeps.tables import print_by_config_table, print_table
from safeio import atomic_path

log = logging.getLogger(__name__)

__all__ = ["summarize_sweep", "write_csv", "write_summary"]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["job", "status"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})


def write_summary(sweep_dir: str | Path, print_it: bool = True,
                  seed_keys: tuple[str, ...] = SEED_KEYS) -> Path:
    """Collect the sweep in ``sweep_dir`` (:func:`collect`, :func:`collect_by_config`), write
    ``summary.csv``, ``summary.png``, ``summary_by_config.csv`` and ``summary_by_config.png`` into it, print
    the tables (``print_it``; the per-configuration one when a configuration has more than one job).
    Returns the path of ``summary.csv``."""
    return summarize_sweep(Path(sweep_dir), print_it, tuple(seed_keys))[0]


def summarize_sweep(root: Path, print_it: bool,
                   seed_keys: tuple[str, ...] = SEED_KEYS) -> tuple[Path, list[dict[str, Any]]]:
    sweep = _collect(root)
    rows, keys, rare = sweep.rows, sweep.keys, sweep.rare
    csv_path = root / CSV_NAME
    write_csv(rows, csv_path)
    failed = sum(r["status"] != "ok" for r in rows)
    title = f"sweep {root}: {len(rows)} jobs" + (f", {failed} not ok" if failed else "")
    plot(rows, keys, rare, root / PLOT_NAME, title=title.replace(f"{root}", root.name))

    configs, group_keys = _aggregate(sweep, seed_keys)
    write_csv(configs, root / BY_CONFIG_CSV_NAME)
    finished = len(rows) - failed
    by_title = (f"sweep {root}: {len(configs)} configuration{'s' * (len(configs) != 1)} (jobs differing "
                f"only in {', '.join(seed_keys) or 'nothing'} grouped), "
                f"{finished} finished job{'s' * (finished != 1)}"
                + (f", {failed} not ok (excluded)" if failed else ""))
    plot_by_config(configs, group_keys, sweep.classes, root / BY_CONFIG_PLOT_NAME,
                   title=by_title.replace(f"{root}", root.name))
    if print_it:
        print_table(rows, keys, rare, title)
        if any(c["n"] + c["n_not_ok"] > 1 for c in configs):
            print_by_config_table(configs, group_keys, rare, by_title)
    log.info("sweep summary written to %s, %s, %s and %s", csv_path, root / PLOT_NAME,
             root / BY_CONFIG_CSV_NAME, root / BY_CONFIG_PLOT_NAME)
    return csv_path, rows
