"""A sweep as rows: one per job (:func:`collect`) and one per configuration, mean ± sample standard
deviation over its seeds (:func:`collect_by_config`). No torch."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.sweeps.jobs import (
    _class_iou,
    _declared_sweep_keys,
    _Job,
    _score,
    _status,
    _test_classes,
    job_dirs,
    rarest_classes,
)
from evaluation.sweeps.names import AGGREGATED, SEED_KEYS

__all__ = ["collect", "collect_by_config"]

# Overrides that every sweep may vary but that say nothing about the experiment.
_NOT_SWEPT_PREFIXES = ("hydra.", "paths.", "datamodule.stats_cache_dir")


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

    rare_per_job = [rarest_classes(job.class_weights) for job in jobs]
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
