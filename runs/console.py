"""A quiet console: what third-party libraries print in a default run that tells the user nothing is
silenced at its source, one filter per message, and the model summary is one line.

:func:`quiet_third_party` is called once at the start of the ``main`` of ``train.py``, ``predict.py`` and
``export.py`` (in every process: DDP children and submitit jobs run ``main`` too). Each filter matches one
message by its text and the module that emits it, so the same text from elsewhere, and every other warning,
still shows; warnings the user can act on stay (Lightning's "GPU available but not used", a resumed
checkpoint from another version, ...), and so do the lines that say which device is used (``GPU available:
..., used: ...``), why fitting stopped and which checkpoint is restored.

:class:`OneLineModelSummary` (``callbacks.rich_model_summary``) replaces Lightning's layer table, whose
FLOPs column is 0 unless the LightningModule defines ``example_input_array``.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

from pytorch_lightning.callbacks import RichModelSummary
from pytorch_lightning.utilities.model_summary import get_formatted_model_size, get_human_readable_count

__all__ = ["LIGHTNING_INFO_SILENCED", "OneLineModelSummary", "quiet_third_party"]

#: Lightning's info lines (logger ``pytorch_lightning.utilities.rank_zero``, where every ``rank_zero_info``
#: goes) that are dropped, by the start of their text.
LIGHTNING_INFO_SILENCED = (
    # "💡 Tip: For seamless cloud logging ... try installing litlogger" and the litmodels tip: adverts for
    # Lightning's cloud products, printed by every Trainer.
    "💡 Tip: ",
    # "Trainer already configured with model summary callbacks: [RichModelSummary]. Skipping setting a
    # default `ModelSummary` callback.": the summary is ours on purpose (conf/callbacks).
    "Trainer already configured with model summary callbacks",
    # "TPU available: False, using: 0 TPU cores": the GPU line before it says which device is used.
    "TPU available: ",
    # "Loaded model weights from the checkpoint at PATH": repeats "Restoring states from the checkpoint path
    # at PATH", the line before it, at every validate/test of the best checkpoint.
    "Loaded model weights from the checkpoint at ",
)

#: Lightning's loggers that the filter of :data:`LIGHTNING_INFO_SILENCED` is attached to (Lightning points
#: lightning_fabric's rank_zero_info at the first one when it is imported).
_RANK_ZERO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")


class _DropLines(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


_LIGHTNING_INFO_FILTER = _DropLines(LIGHTNING_INFO_SILENCED)


def quiet_third_party() -> None:
    """Install the filters of this module (idempotent)."""
    # torch >= 2.10 deprecates `isinstance(treespec, LeafSpec)`; Lightning 2.6's own pytree helper still
    # builds LeafSpec() at every validation/test start. Nothing for the user to change (a Lightning update
    # removes it).
    warnings.filterwarnings("ignore", message=re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
                            category=FutureWarning, module=r"pytorch_lightning\.utilities\._pytree")
    # "Checkpoint directory RUN/checkpoints exists and is not empty.": a new run never gets a directory with
    # checkpoints (runs.run_dir refuses it before Hydra writes); the only runs that do are resumes (in place,
    # or into a new directory, where RunCheckpoint has copied the resumed run's best checkpoint).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty",
                            category=UserWarning, module=r"pytorch_lightning\.callbacks\.model_checkpoint")
    # "The number of training batches (N) is smaller than the logging interval Trainer(log_every_n_steps=5)":
    # the module logs epoch means only (on_epoch=True), which the loggers get at every epoch end anyway.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the "
                            "logging interval", category=UserWarning,
                            module=r"pytorch_lightning\.loops\.fit_loop")
    # "The 'train_dataloader' does not have many workers which may be a bottleneck...": printed for each
    # split whenever num_workers < 2 on a machine with more cores; the workers are datamodule.num_workers
    # (0 for the synthetic data, which is generated in memory; 2+ for image folders), chosen per data set.
    warnings.filterwarnings("ignore", message=r"The '\w+' does not have many workers", category=UserWarning,
                            module=r"pytorch_lightning\.trainer\.connectors\.data_connector")
    for name in _RANK_ZERO_LOGGERS:
        logging.getLogger(name).addFilter(_LIGHTNING_INFO_FILTER)  # once: addFilter skips a filter it has
    # "Seed set to 42" (under DDP once per process, "[rank: 1] Seed set to 42"): the seed is in the run's
    # .hydra/config.yaml. Only this logger's info lines; its warnings (a seed out of range) are warnings.
    logging.getLogger("lightning_fabric.utilities.seed").setLevel(logging.WARNING)
    # export.py: onnxscript's optimizer logs each node it does not fold and each rewrite pass at INFO
    # ("Skipping constant folding for node 'node_Shape_0' ...", "Applied 34 of general pattern rewrite
    # rules."), which Hydra's root logger prints; its warnings stay.
    logging.getLogger("onnxscript").setLevel(logging.WARNING)


class OneLineModelSummary(RichModelSummary):
    """Lightning's model summary as one line: ``model: 12.0 M parameters (12.0 M trainable), 47.9 MB;
    network Unet 12.0 M`` (the children of the LightningModule that hold parameters). Lightning's table
    would add the loss and metrics rows with 0 parameters, each module's train/eval mode, and a FLOPs column
    that is 0 unless the module defines ``example_input_array``."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console

        columns = dict(summary_data)
        rows = zip(columns.get("Name", []), columns.get("Type", []), columns.get("Params", []), strict=False)
        parts = "; " + ", ".join(f"{n} {t} {p}" for n, t, p in rows if str(p).strip() != "0")
        get_console().print(
            f"model: {get_human_readable_count(int(total_parameters))} parameters "
            f"({get_human_readable_count(int(trainable_parameters))} trainable), "
            f"{get_formatted_model_size(model_size)} MB" + (parts if parts != "; " else ""),
            highlight=False,
        )
