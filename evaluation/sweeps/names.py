"""The names a sweep summary writes and the keys it groups and aggregates by (shared by its modules)."""

from __future__ import annotations

from evaluation.rare import NUM_RARE

CSV_NAME = "summary.csv"
PLOT_NAME = "summary.png"
BY_CONFIG_CSV_NAME = "summary_by_config.csv"
BY_CONFIG_PLOT_NAME = "summary_by_config.png"
# Overrides that repeat a configuration rather than change it: jobs that differ only in these are one
# configuration in summary_by_config.csv.
SEED_KEYS = ("seed",)
# Scores aggregated per configuration, besides test_IoU/<class> of every class (see collect_by_config).
AGGREGATED = ("val_mIoU", "val_mDice", "test_mIoU", "test_mDice", "rare_mIoU")
STD_NOTE = ("mean ± sample standard deviation (ddof=1) over the finished jobs of a configuration; "
            "n = finished jobs; no std for n = 1")

__all__ = [
    "AGGREGATED",
    "BY_CONFIG_CSV_NAME",
    "BY_CONFIG_PLOT_NAME",
    "CSV_NAME",
    "NUM_RARE",
    "PLOT_NAME",
    "SEED_KEYS",
    "STD_NOTE",
]
