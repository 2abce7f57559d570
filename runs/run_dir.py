"""A run directory is never reused by accident: a new run refuses a directory that holds a run's results.

``python train.py hydra.run.dir=RUN`` a second time would overwrite ``metrics.json``, the evaluation
files and ``csv/metrics.csv`` of the first run and leave its checkpoints next to the new results. So:

- a training run without ``ckpt_path`` in a directory with results (``metrics.json`` or a checkpoint in
  ``checkpoints/``) stops before anything is written (also Hydra's ``.hydra/``), naming the directory and
  the two ways on: another directory, or ``ckpt_path=RUN/checkpoints/last.ckpt`` to resume it in place;
- ``train=false`` (evaluate a checkpoint) into such a directory writes into a new subfolder
  ``RUN/evaluations/<checkpoint name>[-2, -3, ...]`` instead, so the training run's files stay;
- a ``-m`` sweep into a sweep directory whose jobs hold results stops the same way;
- resuming (``ckpt_path=``) works in place as before; so does a SLURM job that SLURM requeued (Lightning
  resumes it from its ``hpc_ckpt_*.ckpt`` in the run directory).

:class:`RunDirectoryGuard` applies these rules as a Hydra callback (``conf/hydra/default.yaml``), before
Hydra writes into the directory; :func:`check_run_directory` is the same check for
:func:`runs.training.run` called without Hydra's command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from runs.errors import refuse_cleanly
from runs.ranks import CHILD_ENV, external_world_size, is_ddp_child

__all__ = [
    "RunDirectoryGuard",
    "RunDirectoryInUse",
    "check_run_directory",
    "check_sweep_directory",
    "evaluation_directory",
    "run_results",
]

RESULT_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
EVALUATIONS_DIR = "evaluations"


class RunDirectoryInUse(ValueError):
    """The run directory holds the results of an earlier run."""


def run_results(directory: str | Path) -> list[Path]:
    """The files of ``directory`` that are an earlier run's results: ``metrics.json`` and checkpoints."""
    directory = Path(directory)
    found = [directory / RESULT_FILE] if (directory / RESULT_FILE).is_file() else []
    checkpoints = directory / CHECKPOINT_DIR
    if checkpoints.is_dir():
        found += sorted(p for p in checkpoints.glob("*.ckpt") if p.is_file())
    return found


def _slurm_requeued(directory: Path) -> bool:
    """A SLURM job with Lightning's requeue checkpoint in its directory: Lightning resumes from it."""
    return "SLURM_JOB_ID" in os.environ and any(directory.glob("hpc_ckpt_*.ckpt"))


def check_run_directory(directory: str | Path, train: bool, ckpt_path: Any) -> None:
    """Raise :class:`RunDirectoryInUse` when a new training run (``train`` without ``ckpt_path``) or an
    evaluation (``train=false``) would write into ``directory`` over an earlier run's results."""
    directory = Path(directory)
    if (train and ckpt_path is not None) or _slurm_requeued(directory):
        return
    found = run_results(directory)
    if not found:
        return
    names = ", ".join(str(p.relative_to(directory)) for p in found[:4]) + (" ..." if len(found) > 4 else "")
    last = directory / CHECKPOINT_DIR / "last.ckpt"
    resume = f"ckpt_path={last}" if last.is_file() else f"ckpt_path={directory / CHECKPOINT_DIR}/<file>.ckpt"
    if train:
        raise RunDirectoryInUse(
            f"{directory} already holds a run's results ({names}); a new run would overwrite them. Start it "
            f"in another directory (leave out hydra.run.dir, or give a new one), or resume this run in "
            f"place: {resume} hydra.run.dir={directory}"
        )
    raise RunDirectoryInUse(
        f"{directory} already holds a run's results ({names}); evaluate into another directory "
        f"(python train.py sets it to {directory / EVALUATIONS_DIR}/<checkpoint name>)"
    )


def evaluation_directory(directory: str | Path, ckpt_path: Any) -> Path:
    """A new folder of ``directory/evaluations`` for evaluating ``ckpt_path``: its file name without the
    extension, numbered ``-2``, ``-3``, ... when taken."""
    base = Path(directory) / EVALUATIONS_DIR
    stem = Path(str(ckpt_path)).stem or "checkpoint"
    candidate, n = base / stem, 1
    while candidate.exists():
        n += 1
        candidate = base / f"{stem}-{n}"
    return candidate


class RunDirectoryGuard(Callback):
    """Hydra callback that applies the rules of this module before Hydra writes into the directory.

    Every process checks, DDP processes started by torchrun/srun included (they see the same files);
    processes re-launched by :class:`runs.ddp.HydraDDPStrategy` join the parent's run and are not checked.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get(CHILD_ENV) == "1":
            return
        directory = Path(str(config.hydra.run.dir))
        train, ckpt_path = bool(config.get("train", True)), config.get("ckpt_path")
        # torchrun/srun processes would each number their own subfolder: they get the error instead
        if not train and run_results(directory) and external_world_size() is None:
            target = evaluation_directory(directory, ckpt_path)
            with read_write(config), open_dict(config):
                config.hydra.run.dir = str(target)
            print(f"{directory} holds a training run: this evaluation writes into\n{target}", flush=True)
            return
        refuse_cleanly(RunDirectoryInUse, check_run_directory, directory, train, ckpt_path)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_ddp_child():
            return
        refuse_cleanly(RunDirectoryInUse, check_sweep_directory, Path(str(config.hydra.sweep.dir)))


def check_sweep_directory(sweep_dir: Path) -> None:
    """Raise :class:`RunDirectoryInUse` when job directories of ``sweep_dir`` hold results."""
    jobs = [job for job in sorted(sweep_dir.iterdir()) if job.is_dir() and run_results(job)] \
        if sweep_dir.is_dir() else []
    if jobs:
        names = ", ".join(j.name for j in jobs[:5]) + (" ..." if len(jobs) > 5 else "")
        raise RunDirectoryInUse(
            f"{sweep_dir} already holds the results of a sweep (job directories {names}); a new sweep "
            "would overwrite them: leave out hydra.sweep.dir or give a new one"
        )


