"""Summary of a Hydra sweep (no torch): one row per job, as a rich table, ``summary.csv`` and ``summary.png``;
and one row per configuration (the jobs that differ only in ``seed``), mean ± sample standard deviation over
the seeds, as ``summary_by_config.csv`` and ``summary_by_config.png`` (error bars)::

    from evaluation.sweeps import collect, collect_by_config, write_summary
    rows = collect(sweep_dir)               # list of dicts, one per job (stable keys, see collect)
    configs = collect_by_config(sweep_dir)  # one per configuration, mean/std/n over seeds
    csv_path = write_summary(sweep_dir)

Each job directory is read, not the sweeper's memory (:mod:`evaluation.sweeps.jobs`):
``.hydra/overrides.yaml`` (the job's overrides), ``job_status.json`` (status, error, wall time;
``runs.jobs``), ``metrics.json`` (scores of the best checkpoint) and ``class_weights.json`` (training pixel
counts, which name the rarest classes). Modules: ``jobs`` (reading), ``collect`` (rows per job and per
configuration), ``tables``, ``plots``, ``write``; the Hydra callback and ``python -m runs.summary SWEEP_DIR``
are in ``runs.summary``.
"""

from evaluation.sweeps.collect import collect, collect_by_config
from evaluation.sweeps.jobs import STATUS_FILE, job_dirs, job_statuses, rarest_classes
from evaluation.sweeps.names import (
    AGGREGATED,
    BY_CONFIG_CSV_NAME,
    BY_CONFIG_PLOT_NAME,
    CSV_NAME,
    NUM_RARE,
    PLOT_NAME,
    SEED_KEYS,
    STD_NOTE,
)
from evaluation.sweeps.write import summarize_sweep, write_csv, write_summary

__all__ = [
    "AGGREGATED",
    "BY_CONFIG_CSV_NAME",
    "BY_CONFIG_PLOT_NAME",
    "CSV_NAME",
    "NUM_RARE",
    "PLOT_NAME",
    "SEED_KEYS",
    "STATUS_FILE",
    "STD_NOTE",
    "collect",
    "collect_by_config",
    "job_dirs",
    "job_statuses",
    "rarest_classes",
    "summarize_sweep",
    "write_csv",
    "write_summary",
]
