"""Checkpoints written atomically in their own directory (every ``.ckpt`` of a run: best and last).

Lightning's ``TorchCheckpointIO`` serialises into memory and moves a temporary file from the system's
temporary directory into place; across filesystems that move is a copy that truncates the destination
first, so a full disk leaves a broken ``last.ckpt`` where the only resumable checkpoint was.
:class:`AtomicCheckpointIO` writes the temporary file next to the destination and replaces it with
``os.replace`` (:func:`safeio.atomic_path`): on a failure the previous file is intact and the run stops
with one line naming the file, the reason and the free space (:class:`safeio.WriteError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from safeio import atomic_path

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`~pytorch_lightning.plugins.TorchCheckpointIO` whose local saves are atomic in place;
    remote paths (``s3://...``) are left to Lightning."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as file:
            try:
                torch.save(checkpoint, file)
            except RuntimeError as e:  # torch's writer reports the failed file.write as "enforce fail"
                if isinstance(e.__context__, OSError):
                    raise e.__context__ from None
                raise
