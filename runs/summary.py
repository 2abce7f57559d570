"""Summary of a Hydra sweep: one row per job, as a rich table, ``summary.csv`` and ``summary.png``; and one
row per configuration (the jobs that differ only in ``seed``), mean ± sample standard deviation over the
seeds, as ``summary_by_config.csv`` and ``summary_by_config.png`` (error bars).

Registered in ``conf/hydra/default.yaml`` as a Hydra callback, so every ``python train.py -m ...`` ends with
the summary of its sweep directory, and exits with status 1 when a job failed (:class:`SweepSummary`). The
same summary of an existing sweep directory, outside Hydra::

    python -m runs.summary multirun/2024-05-01/12-00-00-000000

    from runs.summary import collect, collect_by_config, write_summary
    rows = collect(sweep_dir)          # list of dicts, one per job (stable keys, see collect)
    configs = collect_by_config(sweep_dir)  # one per configuration, mean/std/n over seeds
    csv_path = write_summary(sweep_dir)

Each job directory is read, not the sweeper's memory: ``.hydra/overrides.yaml`` (the job's overrides),
``job_status.json`` (status, error, wall time; :mod:`runs.jobs`), ``metrics.json`` (scores of the best
checkpoint) and ``class_weights.json`` (training pixel counts, which name the rarest classes).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runs.jobs import STATUS_FILE, sweep_interrupt_status
from runs.ranks import is_ddp_child
from safeio import atomic_path

log = logging.getLogger(__name__)

NUM_RARE = 3
ERROR_WIDTH = 80  # characters of the error shown in the table (summary.csv has all of it)
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
# Overrides that every sweep may vary but that say nothing about the experiment.
_NOT_SWEPT_PREFIXES = ("hydra.", "paths.", "datamodule.stats_cache_dir")


# ---- reading job directories ------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable as JSON ({e})") from None


def _split_override(override: str) -> tuple[str, str]:
    """``'+loss.gamma=0.5'`` -> ``('loss.gamma', '0.5')``; ``'~logger'`` -> ``('logger', '~')``."""
    if override.startswith("~"):
        key, _, value = override[1:].partition("=")
        return key, "~" + value
    key, _, value = override.lstrip("+").partition("=")
    return key, value


def _read_overrides(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [str(o) for o in OmegaConf.load(path)]


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """The job directories of a sweep: every directory below ``sweep_dir`` holding ``.hydra/overrides.yaml``
    or ``job_status.json``, in job order (numeric subdirectory names sort as numbers)."""
    root = Path(sweep_dir)
    found = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    found |= {p.parent for p in root.rglob(STATUS_FILE)}
    found.discard(root)

    def order(p: Path) -> tuple:
        parts = p.relative_to(root).parts
        return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in parts)

    return sorted(found, key=order)


def _declared_sweep_keys(sweep_dir: Path, jobs: list[Path]) -> list[str]:
    """Keys swept on the command line (``key=a,b``, ``key=range(...)``; from the basic sweeper's
    ``multirun.yaml``) or in ``hydra.sweeper.params`` (Optuna; from ``multirun.yaml`` or a job's
    ``.hydra/hydra.yaml``); [] when neither file is there."""
    keys: list[str] = []
    path = sweep_dir / "multirun.yaml"
    cfg = OmegaConf.load(path) if path.is_file() else None
    if cfg is not None:
        task = OmegaConf.select(cfg, "hydra.overrides.task", default=None) or []
        try:
            from hydra.core.override_parser.overrides_parser import OverridesParser

            for override in OverridesParser.create().parse_overrides([str(o) for o in task]):
                if override.is_sweep_override():
                    keys.append(override.get_key_element().lstrip("+~"))
        except Exception as e:  # a hand-edited multirun.yaml: the keys whose values differ still count
            log.warning("%s: could not parse hydra.overrides.task (%s)", path, e)
    else:
        found = [j / ".hydra" / "hydra.yaml" for j in jobs if (j / ".hydra" / "hydra.yaml").is_file()]
        cfg = OmegaConf.load(found[0]) if found else None
    params = (OmegaConf.select(cfg, "hydra.sweeper.params", default=None) if cfg is not None else None) or {}
    keys += [str(k) for k in params]
    return list(dict.fromkeys(keys))


def _rarest_classes(class_weights: dict[str, Any] | None, k: int = NUM_RARE) -> list[str]:
    """The ``k`` classes with the fewest training pixels (ties: class order)."""
    if not class_weights or "classes" not in class_weights:
        return []
    classes = class_weights["classes"]
    names = list(classes)
    return sorted(names, key=lambda n: (classes[n]["pixel_count"], names.index(n)))[:k]


def _score(metrics: dict[str, Any] | None, split: str, key: str) -> float | None:
    value = ((metrics or {}).get(split) or {}).get(key)
    return None if value is None or not math.isfinite(value) else float(value)


def _class_iou(metrics: dict[str, Any] | None, split: str, name: str) -> float | None:
    scores = (((metrics or {}).get(split) or {}).get("per_class") or {}).get(name) or {}
    value = scores.get("iou")
    return None if value is None or not math.isfinite(value) else float(value)


def _status(status: dict[str, Any] | None, metrics: dict[str, Any] | None) -> tuple[str, str | None]:
    if status is None:  # a job run without runs.jobs.run_job (or before it started)
        if metrics is not None:
            return "ok", None
        return "incomplete", "no job_status.json and no metrics.json: the job did not start or was killed"
    if status.get("status") == "running":
        return "incomplete", "job_status.json says running: the job was killed or is still running"
    if status.get("status") == "interrupted":
        resume = status.get("resume")
        how = f"resume: {resume}" if resume else "no checkpoint: run it again"
        return "interrupted", f"{status.get('signal')} after {status.get('epochs_done')} epoch(s); {how}"
    return str(status.get("status")), status.get("error")


@dataclass(frozen=True)
class _Job:
    """What a job directory holds: its overrides (key -> value as typed) and its JSON files (None when
    absent)."""

    dir: Path
    overrides: dict[str, str]
    status: dict[str, Any] | None  # job_status.json
    metrics: dict[str, Any] | None  # metrics.json
    class_weights: dict[str, Any] | None  # class_weights.json

    @classmethod
    def read(cls, job_dir: Path) -> _Job:
        overrides = dict(_split_override(o) for o in _read_overrides(job_dir / ".hydra" / "overrides.yaml"))
        status, metrics, weights = (_read_json(job_dir / name)
                                    for name in (STATUS_FILE, "metrics.json", "class_weights.json"))
        return cls(job_dir, overrides, status, metrics, weights)


def _test_classes(metrics: dict[str, Any] | None) -> list[str]:
    return list(((metrics or {}).get("test") or {}).get("per_class") or {})


@dataclass(frozen=True)
class _Sweep:
    """What :func:`_collect` reads: the per-job rows, the swept keys, the rare classes (union over the jobs,
    rarest first), every class scored on a test split (union, class order) and, per job, the scores that
    :func:`collect_by_config` aggregates (``AGGREGATED``, ``test_IoU/<class>`` of every class,
    ``wall_time_s``) and its overrides (all of them, swept or not)."""

    rows: list[dict[str, Any]]
    keys: list[str]
    rare: list[str]
    classes: list[str]
    scores: list[dict[str, float | None]]
    overrides: list[dict[str, str]]


def _collect(sweep_dir: str | Path) -> _Sweep:
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {root} does not exist")
    jobs = [_Job.read(job_dir) for job_dir in job_dirs(root)]

    # Swept: declared as a sweep, or differing between jobs (e.g. submitted one by one into one directory).
    keys = _declared_sweep_keys(root, [job.dir for job in jobs])
    all_keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    keys += [k for k in all_keys if len({job.overrides.get(k) for job in jobs}) > 1 and k not in keys]
    keys = [k for k in keys if not k.startswith(_NOT_SWEPT_PREFIXES)]

    rare_per_job = [_rarest_classes(job.class_weights) for job in jobs]
    rare = list(dict.fromkeys(name for names in rare_per_job for name in names))
    classes = list(dict.fromkeys(name for job in jobs for name in _test_classes(job.metrics)))

    rows, scores = [], []
    for job, rare_job in zip(jobs, rare_per_job, strict=True):
        metrics = job.metrics
        state, error = _status(job.status, metrics)
        row: dict[str, Any] = {"job": str(job.dir.relative_to(root)), "status": state}
        row.update({k: job.overrides.get(k) for k in keys})
        row["overrides"] = " ".join(f"{k}={job.overrides[k]}" for k in keys if k in job.overrides)
        best_epoch = (metrics or {}).get("best_epoch")
        if best_epoch is None:
            best_epoch = ((metrics or {}).get("val") or {}).get("epoch")
        row.update(
            val_mIoU=_score(metrics, "val", "mIoU"),
            val_mDice=_score(metrics, "val", "mDice"),
            test_mIoU=_score(metrics, "test", "mIoU"),
        )
        for name in rare:
            row[f"test_IoU/{name}"] = _class_iou(metrics, "test", name)
        rare_scores = [row[f"test_IoU/{n}"] for n in rare_job if row[f"test_IoU/{n}"] is not None]
        row["rare_mIoU"] = sum(rare_scores) / len(rare_scores) if rare_scores else None
        row.update(
            best_epoch=best_epoch,
            wall_time_s=(job.status or {}).get("wall_time_s"),
            job_dir=str(job.dir.resolve()),
            error=error,
        )
        rows.append(row)
        job_scores = {k: row.get(k) for k in AGGREGATED}
        job_scores["test_mDice"] = _score(metrics, "test", "mDice")
        job_scores.update({f"test_IoU/{name}": _class_iou(metrics, "test", name) for name in classes})
        job_scores["wall_time_s"] = row["wall_time_s"]
        scores.append(job_scores)
    return _Sweep(rows, keys, rare, classes, scores, [job.overrides for job in jobs])


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per job of the sweep in ``sweep_dir``, in job order. Keys, in this order:

    - ``job``: the job directory relative to ``sweep_dir`` (``"0"``, ``"1"``, ...)
    - ``status``: ``"ok"``, ``"failed"`` (the job raised), ``"interrupted"`` (Ctrl+C/SIGTERM; ``error`` says
      how to resume), ``"skipped"`` (after an interrupted job) or ``"incomplete"`` (killed, or still running)
    - one key per swept override (e.g. ``"loss.gamma"``, ``"loss"``) with the job's value as typed (str;
      None when the job did not set it), then ``overrides``: those as one ``"key=value ..."`` string
    - ``val_mIoU``, ``val_mDice``: validation scores of the best checkpoint (fractions in [0, 1])
    - ``test_mIoU``: test mIoU of the best checkpoint
    - ``test_IoU/<class>``: test IoU of each of the ``NUM_RARE`` classes with the fewest training pixels
      (``class_weights.json``); ``rare_mIoU``: their mean (classes absent from the test split left out)
    - ``best_epoch`` (int), ``wall_time_s`` (float, the whole job), ``job_dir`` (absolute path),
      ``error`` (``"ValueError: ..."`` of a failed job, else None)

    Scores that were not computed are None. Raises FileNotFoundError when ``sweep_dir`` does not exist.
    """
    return _collect(sweep_dir).rows


# ---- per configuration: mean ± std over seeds --------------------------------------------------------------


def _stats(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (ddof=1; None for fewer than 2 values) and count of the values that
    are not None."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None, 0
    std = statistics.stdev(present) if len(present) > 1 else None
    return statistics.fmean(present), std, len(present)


def _aggregate(sweep: _Sweep,
               seed_keys: tuple[str, ...] = SEED_KEYS) -> tuple[list[dict[str, Any]], list[str]]:
    """Configurations (see :func:`collect_by_config`) and the keys that tell them apart."""
    group_keys = [k for k in sweep.keys if k not in seed_keys]
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(sweep.rows):
        groups.setdefault(tuple(row.get(k) for k in group_keys), []).append(i)

    metrics = [*AGGREGATED, *(f"test_IoU/{name}" for name in sweep.classes), "wall_time_s"]
    configs = []
    for values, members in groups.items():
        ok = [i for i in members if sweep.rows[i]["status"] == "ok"]
        not_ok = [i for i in members if sweep.rows[i]["status"] != "ok"]
        config: dict[str, Any] = dict(zip(group_keys, values, strict=True))
        config["overrides"] = " ".join(f"{k}={v}" for k, v in config.items() if v is not None)
        seeds = ["/".join(sweep.overrides[i].get(k, "-") for k in seed_keys) or "-" for i in ok]
        config.update(
            n=len(ok),
            n_not_ok=len(not_ok),
            seeds=" ".join(seeds),
            jobs=" ".join(sweep.rows[i]["job"] for i in ok),
            not_ok_jobs=" ".join(f"{sweep.rows[i]['job']}:{sweep.rows[i]['status']}" for i in not_ok),
        )
        for metric in metrics:
            mean, std, n = _stats([sweep.scores[i].get(metric) for i in ok])
            config.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_n": n})
        configs.append(config)
    return configs, group_keys


def collect_by_config(sweep_dir: str | Path, seed_keys: tuple[str, ...] = SEED_KEYS) -> list[dict[str, Any]]:
    """One dict per configuration of the sweep in ``sweep_dir``: the jobs whose swept overrides are equal
    except for ``seed_keys`` (default ``("seed",)``), in order of their first job. Keys, in this order:

    - one key per swept override other than the seed keys, with the configuration's value as typed (str or
      None), then ``overrides``: those as one ``"key=value ..."`` string (``""`` when only seeds are swept)
    - ``n``: the jobs of the configuration that finished (status ``"ok"``); only they are aggregated
    - ``n_not_ok``: its jobs that failed or did not finish (excluded from every statistic)
    - ``seeds``, ``jobs``: the seeds (as overridden; ``"-"`` when a job did not set one; several seed keys
      joined by ``/``) and job names of the ``n`` finished jobs, space-separated; ``not_ok_jobs``:
      ``"<job>:<status>"`` of the excluded ones, space-separated
    - for each score ``val_mIoU``, ``val_mDice``, ``test_mIoU``, ``test_mDice``, ``rare_mIoU`` (the per-job
      mean of its rarest classes, see :func:`collect`), ``test_IoU/<class>`` for *every* class scored on the
      test split (class order), and ``wall_time_s``: ``<score>_mean``, ``<score>_std`` and ``<score>_n``

    ``_mean`` is the mean over the finished jobs that have the score, ``_n`` their number (below ``n`` when
    a job did not compute it, e.g. a class absent from its test split), ``_std`` the *sample* standard
    deviation (ddof=1, ``statistics.stdev``) of the same values: None when ``_n`` < 2 (a single seed), and
    ``_mean`` None when ``_n`` is 0. Scores are fractions in [0, 1]. Raises FileNotFoundError when
    ``sweep_dir`` does not exist.
    """
    return _aggregate(_collect(sweep_dir), tuple(seed_keys))[0]


# ---- writing ----------------------------------------------------------------------------------------------


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["job", "status"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})


def _as_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def plot(rows: list[dict[str, Any]], keys: list[str], rare: list[str], path: Path, title: str = "") -> None:
    """mIoU (validation, test) and the rare classes' test IoU against the swept value: a numeric x axis for
    one numeric swept key, else one categorical tick per job labelled by its overrides. Failed jobs are
    marked with an x on the axis."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's inline) stays

    values = [r[keys[0]] for r in rows if r[keys[0]] is not None] if len(keys) == 1 else []
    numeric = bool(values) and all(_as_float(v) is not None for v in values)
    if numeric:
        xs = [_as_float(r[keys[0]]) for r in rows]
        order = sorted(range(len(rows)), key=lambda i: (xs[i] is None, xs[i] or 0.0))
        xlabel, ticks = keys[0], None
    else:
        xs = list(range(len(rows)))
        order = list(range(len(rows)))
        xlabel = "job: " + ", ".join(keys) if keys else "job"
        ticks = [f"{r['job']}\n" + "\n".join(_cell(r[k]) for k in keys) for r in rows]

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


def _cell(value: Any, percent: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.2f}" if percent else f"{value:.1f}"
    if isinstance(value, str) and "." in value and _as_float(value) is not None:
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
        cells = [_cell(row.get(column), percent) for column, _, percent in columns]
        if row.get("error"):
            cells[-1] = textwrap.shorten(row["error"], ERROR_WIDTH)
        table.add_row(*cells, style=None if row["status"] == "ok" else "red")
    console = Console()
    if not console.is_terminal:  # a log file or pipe: rich's 80 columns would fold every cell
        console = Console(width=200)
    console.print(table)


def _config_label(config: dict[str, Any], group_keys: list[str]) -> str:
    return "\n".join(_cell(config.get(k)) for k in group_keys) if group_keys else "all jobs"


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
    numeric = bool(values) and all(_as_float(v) is not None for v in values)
    if numeric:
        xs = [_as_float(c[first]) for c in configs]
        order = sorted(range(len(configs)), key=lambda i: (xs[i] is None, xs[i] or 0.0))
    else:
        xs = [float(i) for i in range(len(configs))]
        order = list(range(len(configs)))
    ticks = [_config_label(c, group_keys) + f"\nn={c['n']}" + (f" ({c['n_not_ok']} not ok)" if c["n_not_ok"]
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
        cells = [_cell(config.get(k)) for k in group_keys] if group_keys else ["all jobs"]
        cells.append(str(config["n"]))
        cells += [_mean_std(config, metric) for metric, _ in metrics]
        cells.append(_cell(config.get("wall_time_s_mean")))
        if with_excluded:
            cells.append(", ".join(j.replace(":", " ") for j in config["not_ok_jobs"].split()))
        style = "red" if config["n"] == 0 else ("yellow" if config["n_not_ok"] else None)
        table.add_row(*cells, style=style)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)


def write_summary(sweep_dir: str | Path, print_it: bool = True,
                  seed_keys: tuple[str, ...] = SEED_KEYS) -> Path:
    """Collect the sweep in ``sweep_dir`` (:func:`collect`, :func:`collect_by_config`), write
    ``summary.csv``, ``summary.png``, ``summary_by_config.csv`` and ``summary_by_config.png`` into it, print
    the tables (``print_it``; the per-configuration one when a configuration has more than one job).
    Returns the path of ``summary.csv``."""
    return _write_summary(Path(sweep_dir), print_it, tuple(seed_keys))[0]


def _write_summary(root: Path, print_it: bool,
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


def _statuses(sweep_dir: Path) -> list[str]:
    """Each job's status from its files alone (the fallback when the summary could not be written)."""
    states = []
    for job_dir in job_dirs(sweep_dir):
        try:
            status, metrics = _read_json(job_dir / STATUS_FILE), _read_json(job_dir / "metrics.json")
        except ValueError:
            states.append("unreadable")
            continue
        states.append(_status(status, metrics)[0])
    return states


# ---- Hydra callback ---------------------------------------------------------------------------------------


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, :func:`write_summary` of ``hydra.sweep.dir``; then, when a
    job is not ok (failed, or killed/incomplete), a last line on stderr saying how many and where the
    summary is, and ``SystemExit(1)`` (130/143 when the sweep was interrupted by Ctrl+C/SIGTERM,
    :mod:`runs.stop_signals`): the sweep process exits non-zero (shells, CI, an ``sbatch`` script
    that runs the sweep). ``exit_on_failure=false`` (``hydra.callbacks.sweep_summary.exit_on_failure=false``)
    keeps exit status 0.

    The exit comes after every job ran and after the sweeper finished (Optuna has written
    ``optimization_results.yaml``); Hydra calls ``on_multirun_end`` of its callbacks in reverse order, and
    callbacks that would come after this one are skipped when it exits.

    Only in the process that ran the sweep: a DDP child process (``runs.ranks.is_ddp_child``) does
    nothing. An error while summarising is logged, not raised: the jobs' results are on disk and
    ``python -m runs.summary SWEEP_DIR`` rebuilds the summary (the exit status then follows the jobs'
    ``job_status.json``).
    """

    def __init__(self, enabled: bool = True, exit_on_failure: bool = True,
                 seed_keys: tuple[str, ...] | list[str] = SEED_KEYS) -> None:
        self.enabled = enabled
        self.exit_on_failure = exit_on_failure
        self.seed_keys = tuple(str(k) for k in seed_keys)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled or is_ddp_child():
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        where = str(sweep_dir / CSV_NAME)
        try:
            _, rows = _write_summary(sweep_dir, print_it=True, seed_keys=self.seed_keys)
            states = [str(r["status"]) for r in rows]
        except Exception:
            log.exception("could not summarise the sweep in %s (rebuild: python -m runs.summary %s)",
                          sweep_dir, sweep_dir)
            where = f"not complete, rebuild it with python -m runs.summary {sweep_dir}"
            try:
                states = _statuses(sweep_dir)
            except Exception:
                log.exception("could not read the job statuses in %s", sweep_dir)
                states = []
        not_ok = [s for s in states if s != "ok"]
        interrupted = sweep_interrupt_status()  # Ctrl+C/SIGTERM: 130/143 even with exit_on_failure=false
        if interrupted is None and (not not_ok or not self.exit_on_failure):
            return
        counts = ", ".join(f"{n} {state}" for state, n in sorted(Counter(not_ok).items()))
        sys.stdout.flush()
        what = "sweep interrupted" if interrupted is not None else "sweep failed"
        print(f"{what}: {len(not_ok)} of {len(states)} jobs not ok ({counts}); summary: {where}",
              file=sys.stderr, flush=True)
        raise SystemExit(1 if interrupted is None else interrupted)


USAGE = f"""usage: python -m runs.summary SWEEP_DIR [--seed-key KEY ...]
Writes into SWEEP_DIR and prints as tables:
  {CSV_NAME}, {PLOT_NAME}  one row per job
  {BY_CONFIG_CSV_NAME}, {BY_CONFIG_PLOT_NAME}  one row per configuration (the jobs that differ only
      in the seed keys): mean ± sample std (ddof=1) and n over its finished jobs; failed jobs excluded
The last line printed is the path of {CSV_NAME}.
  --seed-key KEY  an override that repeats a configuration rather than changing it
                  (default: {' '.join(SEED_KEYS)}); once per key,
                  e.g. --seed-key seed --seed-key datamodule.seed"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    seed_keys: list[str] = []
    positional: list[str] = []
    while args:
        arg = args.pop(0)
        if arg == "--seed-key" and args:
            seed_keys.append(args.pop(0))
        elif arg.startswith("--seed-key="):
            seed_keys.append(arg.partition("=")[2])
        elif arg.startswith("-"):
            positional = []
            break
        else:
            positional.append(arg)
    if len(positional) != 1:
        print(USAGE)
        return 2
    sweep_dir = Path(positional[0])
    if not sweep_dir.is_dir():
        print(f"error: sweep directory {sweep_dir} does not exist", file=sys.stderr)
        return 2
    if not job_dirs(sweep_dir):
        print(f"error: {sweep_dir} holds no job directory (none with .hydra/overrides.yaml or {STATUS_FILE})",
              file=sys.stderr)
        return 1
    csv_path = write_summary(sweep_dir, seed_keys=tuple(seed_keys) or SEED_KEYS)
    print(f"per configuration (mean ± std over seeds): {sweep_dir / BY_CONFIG_CSV_NAME}")
    print(csv_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
