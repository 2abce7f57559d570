"""The experiment trackers among a run's loggers: MLflow's rules for metric keys
(:func:`check_mlflow_class_names`) and the creation of its SQLite database (:func:`creating_database`);
figures and files of a finished run (global rank 0 calls these, after the trainer's loggers were finalised):

- TensorBoard (:class:`~pytorch_lightning.loggers.TensorBoardLogger`): figures as image summaries;
- MLflow (:class:`~pytorch_lightning.loggers.MLFlowLogger`, ``logger=mlflow``): figures and files as
  artifacts of the logger's run (``<artifact root>/<run id>/artifacts/<file name>``);
- other loggers (CSV): nothing.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from PIL import Image
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger

log = logging.getLogger(__name__)

__all__ = ["check_mlflow_class_names", "creating_database", "log_figure", "log_files", "sqlite_file"]


def _image_pixels(png: Path) -> np.ndarray:
    """(H, W, 3) uint8 of the image file (RGBA: (H, W, 4); other modes converted to RGB)."""
    with Image.open(png) as image:
        mode = "RGBA" if "A" in image.getbands() else "RGB"
        return np.asarray(image.convert(mode))


def log_figure(loggers: Sequence[Logger], tag: str, png: Path, step: int | None = None) -> None:
    """The image ``png`` to each logger that shows images: TensorBoard ``add_image(tag, HWC uint8)`` at
    ``step`` (flushed: the run's loggers are finalised before the evaluation files are written); MLflow
    the file as an artifact; others nothing."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, _image_pixels(png), global_step=step, dataformats="HWC")
            logger.experiment.flush()
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, str(png))


def log_files(loggers: Sequence[Logger], paths: Sequence[Path]) -> None:
    """Each existing file of ``paths`` as an artifact of each MLflow logger (a folder: its files, under
    the folder's name; a missing path is skipped with a warning); other loggers keep no files."""
    trackers = [logger for logger in loggers if isinstance(logger, MLFlowLogger)]
    if not trackers:
        return
    for path in map(Path, paths):
        if not path.exists():
            log.warning("%s does not exist: not logged as an artifact", path)
            continue
        for logger in trackers:
            if path.is_dir():
                logger.experiment.log_artifacts(logger.run_id, str(path), artifact_path=path.name)
            else:
                logger.experiment.log_artifact(logger.run_id, str(path))


#: What Lightning's MLFlowLogger removes from metric keys (MLflow allows no other characters).
_MLFLOW_KEY_DROPPED = re.compile(r"[^a-zA-Z0-9_/. -]+")


def check_mlflow_class_names(cfg: DictConfig) -> None:
    """The per-class metric keys (``val/iou/<class>``) that MLflow will get: Lightning's MLFlowLogger drops
    every character but letters, digits, ``_ / . -`` and space, and MLflow refuses keys that are not plain
    relative paths; ValueError, naming ``datamodule.class_names``, when a class name would give no key, a
    refused one, or the key of another class (the run would fail at its first validation)."""
    names = cfg.datamodule.get("class_names")
    if names is None:  # the data module's defaults: class_0, background, disc, ... (all valid)
        return
    seen: dict[str, str] = {}
    for name in (str(n) for n in names):
        kept = _MLFLOW_KEY_DROPPED.sub("", name)
        key = f"val/iou/{kept}"
        if not kept.strip() or posixpath.normpath(key) != key:
            raise ValueError(
                f"datamodule.class_names: class {name!r} gives the MLflow metric key {key!r}, which MLflow "
                "refuses (keys keep only letters, digits, '_', '/', '.', '-' and spaces, and must be plain "
                "paths); rename the class, or choose another logger"
            )
        if kept in seen:
            raise ValueError(
                f"datamodule.class_names: classes {seen[kept]!r} and {name!r} both give the MLflow metric "
                f"key {key!r} (MLflow keeps only letters, digits, '_', '/', '.', '-' and spaces); rename one"
            )
        seen[kept] = name


def sqlite_file(node: Any) -> Path | None:
    """The database file of an MLflow logger's ``sqlite:///PATH`` tracking URI, else None."""
    uri = str(node.get("tracking_uri") or "")
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def creating_database(database: Path | None) -> Iterator[None]:
    """Around an MLflow logger's construction, which creates its SQLite database (its tables): the folder
    made, and the processes of a torchrun/srun job that create it at once taken one at a time (a lock
    file next to it; POSIX)."""
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no concurrent creation to guard against there
        yield
        return
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
