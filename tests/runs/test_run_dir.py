"""A run directory with results is never reused by accident (runs.run_dir): a new run refuses it before
anything is written, resuming works in place, ``train=false`` evaluates into a subfolder, a sweep refuses
a sweep directory with results; a SLURM-requeued job resumes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runs.run_dir import (
    RunDirectoryGuard,
    RunDirectoryInUse,
    check_run_directory,
    check_sweep_directory,
    evaluation_directory,
    run_results,
)
from runs.training import run
from tests.overrides import QUIET, SMALL_UNET, SYNTHETIC_TINY
from tests.runs.test_failures import make_cfg

ROOT = Path(__file__).resolve().parents[2]


def finished_run(directory: Path) -> Path:
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (directory / "metrics.json").write_text('{"val": {}}')
    return directory


def hydra_config(run_dir: Path, **keys: object):
    return OmegaConf.create({"hydra": {"run": {"dir": str(run_dir)}, "sweep": {"dir": str(run_dir)}},
                             "train": True, "ckpt_path": None, **keys})


def test_results_are_metrics_json_and_checkpoints(tmp_path):
    assert run_results(tmp_path / "none") == []
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "job_status.json").write_text("{}")
    (tmp_path / "train.log").write_text("")
    assert run_results(tmp_path) == []  # what a failed start leaves is not a result
    finished_run(tmp_path)
    assert run_results(tmp_path) == [tmp_path / "metrics.json", tmp_path / "checkpoints" / "last.ckpt"]


def test_a_new_run_is_refused_with_both_ways_on_and_a_resume_is_not(tmp_path):
    finished_run(tmp_path)
    with pytest.raises(RunDirectoryInUse) as info:
        check_run_directory(tmp_path, train=True, ckpt_path=None)
    message = str(info.value)
    assert str(tmp_path) in message and "another directory" in message
    assert f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'} hydra.run.dir={tmp_path}" in message
    check_run_directory(tmp_path, train=True, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    check_run_directory(tmp_path / "fresh", train=True, ckpt_path=None)
    with pytest.raises(RunDirectoryInUse, match="evaluate into another directory"):
        check_run_directory(tmp_path, train=False, ckpt_path="x.ckpt")


def test_a_slurm_requeued_job_resumes_from_lightnings_checkpoint(tmp_path, monkeypatch):
    finished_run(tmp_path)
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"requeue")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(RunDirectoryInUse):
        check_run_directory(tmp_path, train=True, ckpt_path=None)
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    check_run_directory(tmp_path, train=True, ckpt_path=None)


def test_evaluation_folders_are_numbered(tmp_path):
    first = evaluation_directory(tmp_path, "/x/best-epoch007.ckpt")
    assert first == tmp_path / "evaluations" / "best-epoch007"
    first.mkdir(parents=True)
    assert evaluation_directory(tmp_path, "/x/best-epoch007.ckpt").name == "best-epoch007-2"


def test_guard_refuses_before_hydra_writes_and_redirects_an_evaluation(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    finished_run(tmp_path)
    guard = RunDirectoryGuard()
    with pytest.raises(SystemExit) as info:
        guard.on_run_start(hydra_config(tmp_path))
    assert info.value.code == 1 and "already holds a run's results" in capsys.readouterr().err
    guard.on_run_start(hydra_config(tmp_path, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt")))
    evaluation = hydra_config(tmp_path, train=False, ckpt_path="/x/last.ckpt")
    guard.on_run_start(evaluation)
    assert evaluation.hydra.run.dir == str(tmp_path / "evaluations" / "last")
    monkeypatch.setenv("IMBALANCED_SEG_DDP_CHILD", "1")  # joins its parent's run: not checked
    guard.on_run_start(hydra_config(tmp_path))


def test_a_sweep_directory_with_results_is_refused(tmp_path):
    check_sweep_directory(tmp_path / "new")
    (tmp_path / "0").mkdir()
    check_sweep_directory(tmp_path)  # a job that did not finish anything
    finished_run(tmp_path / "1")
    with pytest.raises(RunDirectoryInUse, match=r"job directories 1\b"):
        check_sweep_directory(tmp_path)


@pytest.mark.slow
def test_run_without_the_command_line_checks_too(tmp_path):
    finished_run(tmp_path / "run")
    with pytest.raises(RunDirectoryInUse):
        run(make_cfg(tmp_path))


@pytest.mark.slow
def test_a_rerun_into_a_finished_run_changes_nothing_and_an_evaluation_writes_beside_it(tmp_path):
    run_dir = tmp_path / "run"
    args = [*SYNTHETIC_TINY, *SMALL_UNET, "datamodule.batch_size=4", "debug=limit", "trainer.max_epochs=1",
            "~logger", *QUIET, f"datamodule.stats_cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]

    def train(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "train.py"), *args, *extra], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    first = train()
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "train.log" not in p.name}
    again = train("loss=ce")
    assert again.returncode == 1 and "already holds a run's results" in again.stderr
    assert "Traceback" not in again.stderr
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "train.log" not in p.name}
    assert after == before  # metrics, checkpoints, CSVs and .hydra/ of the first run untouched

    last = run_dir / "checkpoints" / "last.ckpt"
    evaluation = train("train=false", f"ckpt_path={last}")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert (run_dir / "evaluations" / "last" / "metrics.json").is_file()
    assert (run_dir / "metrics.json").read_bytes() == before[run_dir / "metrics.json"]
