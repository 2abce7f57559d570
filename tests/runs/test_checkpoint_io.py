"""Checkpoints are written atomically in place (runs.checkpoint_io): a failed save (disk full, file size
limit) keeps the previous checkpoint, leaves no partial file and ends the run with one clear line."""

from __future__ import annotations

import errno
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runs import checkpoint_io
from runs.checkpoint_io import AtomicCheckpointIO
from safeio import WriteError
from tests.overrides import QUIET, SMALL_UNET, SYNTHETIC_TINY

ROOT = Path(__file__).resolve().parents[2]


def test_save_replaces_and_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1}, path)
    io.save_checkpoint({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 2}

    def full_disk(obj, file):
        file.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk)
    with pytest.raises(WriteError, match=r"last\.ckpt: No space left on device \(ENOSPC\); .* free in"):
        io.save_checkpoint({"epoch": 3}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 2}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def _limit_file_size() -> None:
    limit = 4 * 2**20  # below a checkpoint of the tiny U-Net, above every other file of the run
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow
def test_a_run_that_cannot_write_its_checkpoint_fails_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *SYNTHETIC_TINY, *SMALL_UNET, "datamodule.batch_size=4",
         "debug=limit", "trainer.max_epochs=1", "~logger", *QUIET, f"hydra.run.dir={run_dir}",
         f"datamodule.stats_cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"could not write {run_dir / 'checkpoints'}" in errors[0] and "File too large (EFBIG)" in errors[0]
    assert "free in" in errors[0]
    assert list((run_dir / "checkpoints").iterdir()) == []  # no truncated checkpoint, no temporary file
    status = json.loads((run_dir / "job_status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("WriteError")
