"""A CSV logger that keeps the earlier epochs' rows of ``metrics.csv`` when a run is resumed."""

from __future__ import annotations

import csv
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_warn

from runs.lightning_compat import CSVWriter, logger_experiment, logger_filesystem, set_logger_experiment
from safeio import atomic_path

__all__ = ["ResumableCSVLogger"]


class _HistoryWriter(CSVWriter):
    """Lightning's CSV writer, which deletes an existing ``metrics.csv`` when it is created and appends to
    the file in place. This one decides at its first save instead: when its logger was told to keep the
    history (``keep_until_epoch`` set), the file's rows of the epochs up to ``keep_until_epoch`` (and its
    columns) stay and the new rows follow; else the earlier file is replaced, as Lightning does. Every save
    rewrites the whole file atomically (:func:`safeio.atomic_path`), so a full disk or an interrupt never
    leaves a truncated ``metrics.csv``."""

    def __init__(self, log_dir: str, logger: ResumableCSVLogger) -> None:
        self._logger = logger
        self.settled = False
        self._rows: list[dict[str, Any]] = []
        super().__init__(log_dir=log_dir)

    def check_log_dir(self) -> None:
        """Deferred to the first :meth:`save` (Lightning creates the writer before a resume is known)."""

    def save(self) -> None:
        if not self.metrics:
            return
        if not self.settled:
            self._settle()
        self.record_new_keys()
        self._rows += self.metrics
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(self._rows)
        self.metrics = []

    def _settle(self) -> None:
        self.settled = True
        until = self._logger.keep_until_epoch
        if not self.filesystem.isfile(self.metrics_file_path):
            return
        if until is None:
            rank_zero_warn(
                f"{self.metrics_file_path} of an earlier run is replaced (a run resumed with ckpt_path= "
                "keeps its rows)"
            )
            return
        with self.filesystem.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            self.metrics_keys = list(reader.fieldnames or [])  # new columns are added to these
            self._rows = [row for row in reader if _row_epoch(row) is None or _row_epoch(row) <= until]


def _row_epoch(row: dict[str, Any]) -> float | None:
    try:
        return float(row.get("epoch") or "")
    except ValueError:
        return None


class ResumableCSVLogger(CSVLogger):
    """:class:`~pytorch_lightning.loggers.CSVLogger` (same arguments) whose ``metrics.csv`` survives a
    resume: after :meth:`keep_history` the rows the earlier run logged up to the resumed checkpoint's epoch
    are kept and the resumed run's rows appended (rows of later epochs, logged by the earlier run after that
    checkpoint, are dropped: the resumed run logs them again). Without it the file starts afresh, as
    Lightning's does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_until_epoch: int | None = None

    def keep_history(self, until_epoch: int) -> None:
        """Keep the existing rows of the epochs ``<= until_epoch`` (the ``epoch`` of the checkpoint the run
        resumes from). Call before the first metrics are saved."""
        writer = logger_experiment(self)
        if isinstance(writer, _HistoryWriter) and writer.settled:
            raise RuntimeError("keep_history() must be called before the logger saves its first metrics")
        self.keep_until_epoch = int(until_epoch)

    @property
    @rank_zero_experiment
    def experiment(self) -> CSVWriter:
        if logger_experiment(self) is None:
            logger_filesystem(self).makedirs(self.root_dir, exist_ok=True)
            set_logger_experiment(self, _HistoryWriter(log_dir=self.log_dir, logger=self))
        return logger_experiment(self)
