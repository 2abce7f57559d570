"""Ctrl+C and SIGTERM (runs.stop_signals, runs.graceful_stop, runs.jobs): the run stops after the step,
writes last.ckpt, is recorded as interrupted with its resume command and exits 130/143; a second Ctrl+C
aborts at once; a sweep skips its remaining jobs and exits non-zero; DDP processes stop together."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from runs import jobs
from runs.graceful_stop import GracefulStop
from runs.stop_signals import RunInterrupted, exit_status, handle_stop_signals, stop_request
from runs.training import run
from tests.overrides import QUIET, SMALL_UNET, SYNTHETIC_ODD, SYNTHETIC_TINY
from tests.runs.test_failures import make_cfg

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300


class SignalAt(pl.Callback):
    """Sends ``signum`` to this process after training step ``step`` (global rank 0 only)."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = int(signum), int(step)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.kill(os.getpid(), self.signum)


def _sender(signum: int, step: int) -> list[str]:
    return [
        f"+callbacks.sender._target_={__name__}.SignalAt",
        f"+callbacks.sender.signum={int(signum)}",
        f"+callbacks.sender.step={step}",
    ]


@pytest.fixture(autouse=True)
def _fresh_sweep_state():
    jobs._sweep_interrupted.clear()
    yield
    jobs._sweep_interrupted.clear()


def _status(directory: Path) -> dict:
    return json.loads((directory / "job_status.json").read_text())


# ---- the handler ------------------------------------------------------------------------------------------


def test_exit_status_is_128_plus_the_signal():
    assert exit_status(signal.SIGINT) == 130 and exit_status(signal.SIGTERM) == 143


def test_outside_training_a_signal_stops_at_once():
    with pytest.raises(RunInterrupted) as info, handle_stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert info.value.signum == signal.SIGTERM and info.value.aborted
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_during_training_the_first_ctrl_c_requests_and_the_second_aborts():
    with handle_stop_signals() as request:
        request.training = True
        os.kill(os.getpid(), signal.SIGINT)
        assert request.signum == signal.SIGINT  # only requested: training goes on to the end of the step
        os.kill(os.getpid(), signal.SIGTERM)  # a later SIGTERM changes nothing
        with pytest.raises(RunInterrupted) as info:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert info.value.aborted and info.value.signum == signal.SIGINT
    assert stop_request.signum is None and not stop_request.training  # reset for the next job


# ---- one run, in this process -----------------------------------------------------------------------------


def test_sigterm_stops_after_the_step_saves_last_and_records_the_resume(tmp_path, capsys):
    cfg = make_cfg(tmp_path, "trainer.max_epochs=3", "~debug", *_sender(signal.SIGTERM, step=3))
    with pytest.raises(SystemExit) as info:
        jobs.run_job(run, cfg)
    assert info.value.code == 143
    out = tmp_path / "run"
    status = _status(out)
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM" and not status["aborted"]
    assert status["epochs_done"] == 1  # 8 images, batch 4: step 3 is the second step of epoch 1
    last = out / "checkpoints" / "last.ckpt"
    assert status["last_checkpoint"] == str(last)
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3 and checkpoint["epoch"] == 1
    assert not (out / "metrics.json").exists()  # no test, no made-up results
    assert f"ckpt_path={last}" in status["resume"] and f"hydra.run.dir={out}" in status["resume"]
    err = capsys.readouterr().err
    assert "interrupted by SIGTERM after 1 complete epoch(s)" in err and status["resume"] in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the job's handlers are gone


def test_a_job_of_a_sweep_is_recorded_and_the_rest_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "is_multirun", lambda: True)
    cfg = make_cfg(tmp_path, "trainer.max_epochs=3", *_sender(signal.SIGINT, step=1))
    assert jobs.run_job(run, cfg) is None
    assert _status(tmp_path / "run")["status"] == "interrupted"
    assert jobs.sweep_interrupt_status() == 130
    called = []
    later = make_cfg(tmp_path / "later")
    assert jobs.run_job(lambda c: called.append(c), later) is None
    assert not called and _status(tmp_path / "later" / "run")["status"] == "skipped"


def test_graceful_stop_is_on_every_trainer(tmp_path):
    from runs.build import build_trainer

    trainer = build_trainer(make_cfg(tmp_path))
    assert sum(isinstance(c, GracefulStop) for c in trainer.callbacks) == 1


# ---- real processes ---------------------------------------------------------------------------------------

TINY = [*SYNTHETIC_TINY, *SMALL_UNET, "datamodule.batch_size=4", "~logger", *QUIET]


def _train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=TIMEOUT)


@pytest.mark.slow
def test_ctrl_c_in_a_real_run_exits_130_and_the_printed_command_resumes_it(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, f"hydra.run.dir={run_dir}", f"datamodule.stats_cache_dir={tmp_path / 'cache'}",
            "datamodule.num_train=64", "trainer.max_epochs=200"]
    with open(tmp_path / "stdout.log", "w") as stdout, open(tmp_path / "stderr.log", "w") as stderr:
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path,
                                stdout=stdout, stderr=stderr)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + TIMEOUT
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the first validation has written last.ckpt: training is under way
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=TIMEOUT)
    err = (tmp_path / "stderr.log").read_text()
    assert proc.returncode == 130, err[-3000:]
    status = _status(run_dir)
    assert status["status"] == "interrupted" and status["signal"] == "SIGINT"
    assert 1 <= status["epochs_done"] < 200 and not (run_dir / "metrics.json").exists()
    assert "Traceback" not in err and status["resume"] in err

    words = shlex.split(status["resume"])
    assert words[:2] == ["python", "train.py"]
    resume = [w for w in words[2:] if not w.startswith("trainer.max_epochs=")]  # finish sooner
    done = _train(tmp_path, *resume, f"trainer.max_epochs={status['epochs_done'] + 1}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _status(run_dir)["status"] == "ok" and (run_dir / "metrics.json").is_file()


@pytest.mark.slow
def test_an_interrupted_sweep_skips_the_rest_and_exits_143(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = _train(tmp_path, "-m", "seed=1,2", *TINY, f"hydra.sweep.dir={sweep_dir}",
                  f"datamodule.stats_cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=3",
                  *_sender(signal.SIGTERM, step=2))
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "sweep interrupted: 2 of 2 jobs not ok (1 interrupted, 1 skipped)" in proc.stderr
    with open(sweep_dir / "summary.csv", newline="") as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["interrupted", "skipped"]


@pytest.mark.slow
def test_sigterm_to_one_ddp_process_stops_every_process(tmp_path):
    run_dir = tmp_path / "run"
    proc = _train(tmp_path, "trainer=ddp_cpu", *SYNTHETIC_ODD, *SMALL_UNET, "~logger", *QUIET,
                  f"hydra.run.dir={run_dir}", f"datamodule.stats_cache_dir={tmp_path / 'cache'}",
                  "trainer.max_epochs=4", *_sender(signal.SIGTERM, step=3))
    assert proc.returncode == 143, proc.stdout[-2000:] + proc.stderr[-3000:]
    status = _status(run_dir)
    assert status["status"] == "interrupted" and status["epochs_done"] == 1  # 8 images, 2 ranks, batch 2
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert not (run_dir / "metrics.json").exists()
