"""Figures and files of a finished run for the experiment trackers among its loggers (global rank 0 calls
these, after the trainer's loggers were finalised):

- TensorBoard (:class:`~pytorch_lightning.loggers.TensorBoardLogger`): figures as image summaries;
- MLflow (:class:`~pytorch_lightning.loggers.MLFlowLogger`, ``logger=mlflow``): figures and files as
  artifacts of the logger's run (``<artifact root>/<run id>/artifacts/<file name>``);
- other loggers (CSV): nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger

log = logging.getLogger(__name__)

__all__ = ["log_figure", "log_files"]


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
