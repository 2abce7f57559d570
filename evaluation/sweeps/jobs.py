"""Reading the job directories of a sweep: each job's overrides (``.hydra/overrides.yaml``), status
(``job_status.json``, written by ``runs.jobs``), scores (``metrics.json``, :mod:`evaluation.files`) and
training pixel counts (``class_weights.json``, which name the rarest classes). No torch."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from evaluation.rare import NUM_RARE, rarest

log = logging.getLogger(__name__)

__all__ = ["STATUS_FILE", "job_dirs", "job_statuses", "rarest_classes"]

#: Each job's status file (``runs.jobs`` writes it; defined here, the lower layer, which reads it).
STATUS_FILE = "job_status.json"


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


def rarest_classes(class_weights: dict[str, Any] | None, k: int = NUM_RARE) -> list[str]:
    """The ``k`` classes with the fewest training pixels of a ``class_weights.json`` (ties: class order)."""
    if not class_weights or "classes" not in class_weights:
        return []
    return rarest({name: c["pixel_count"] for name, c in class_weights["classes"].items()}, k)


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


def job_statuses(sweep_dir: Path) -> list[str]:
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
