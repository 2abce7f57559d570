"""Sweeps: per-job status and failure handling (runs.jobs), the sweep summary (runs.summary), the Optuna
preset and the submitit launchers. End-to-end sweeps run train.py as a subprocess on tiny synthetic data."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from evaluation import sweeps
from runs import jobs, summary
from tests.overrides import QUIET, SMALL_UNET, SYNTHETIC_TINY

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
NAMES = ["background", "disc", "square", "bar", "cross"]

# One batch of one epoch per split, 32x32 images, no loggers or prediction grids: a job takes ~1 s.
TINY = [
    "debug=limit",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    *SMALL_UNET,
    *SYNTHETIC_TINY,
    "datamodule.batch_size=4",
    "~logger",
    *QUIET,
]


def sweep(tmp_path: Path, *overrides: str, multirun: bool = True, threads: int | None = None):
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", *(["-m"] if multirun else []), *overrides, *TINY,
           f"datamodule.stats_cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep_dir}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "COLUMNS": "250"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    return proc, sweep_dir


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def rarest(job_dir: Path, k: int = 3) -> list[str]:
    classes = json.loads((job_dir / "class_weights.json").read_text())["classes"]
    counts = sorted((v["pixel_count"], i, name) for i, (name, v) in enumerate(classes.items()))
    return [name for *_, name in counts[:k]]


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- end-to-end sweeps ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gamma_sweep_gives_two_job_dirs_and_a_summary(tmp_path):
    proc, sweep_dir = sweep(tmp_path, "loss=focal_dice", "loss.gamma=0,2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name for p in job_dirs] == ["0", "1"]

    rows = read_csv(sweep_dir / "summary.csv")
    assert len(rows) == 2
    rare = rarest(job_dirs[0])
    assert {"background"}.isdisjoint(rare) and len(rare) == 3
    for row, gamma, job_dir in zip(rows, ("0", "2"), job_dirs, strict=True):
        metrics = json.loads((job_dir / "metrics.json").read_text())
        status = json.loads((job_dir / "job_status.json").read_text())
        assert row["status"] == "ok" and status["status"] == "ok"
        assert row["loss.gamma"] == gamma and row["overrides"] == f"loss.gamma={gamma}"
        assert "loss" not in row  # the same in both jobs: not a swept key
        assert float(row["val_mIoU"]) == pytest.approx(metrics["val"]["mIoU"])
        assert float(row["val_mDice"]) == pytest.approx(metrics["val"]["mDice"])
        assert float(row["test_mIoU"]) == pytest.approx(metrics["test"]["mIoU"])
        assert float(row["val_mIoU"]) == pytest.approx(status["return_value"])
        for name in rare:
            iou = metrics["test"]["per_class"][name]["iou"]
            assert (row[f"test_IoU/{name}"] == "" and iou is None) or float(row[f"test_IoU/{name}"]) == (
                pytest.approx(iou))
        assert int(row["best_epoch"]) == metrics["best_epoch"] == 0
        assert 0 < float(row["wall_time_s"]) < 240
        assert Path(row["job_dir"]) == job_dir.resolve() and row["error"] == ""
    assert is_png(sweep_dir / "summary.png")
    assert f"sweep {sweep_dir}: 2 jobs" in proc.stdout  # the table's title


@pytest.mark.slow
def test_failing_job_is_a_failed_row_and_the_others_still_run(tmp_path):
    # gamma=-1 is refused by the focal loss: the first job fails, the sweep goes on with the second, and
    # after the summary the sweep exits 1 (shells, CI and SLURM see the failure).
    proc, sweep_dir = sweep(tmp_path, "loss.gamma=-1,1")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"sweep failed: 1 of 2 jobs not ok (1 failed); summary: {sweep_dir / 'summary.csv'}")
    failed, ok = sweeps.collect(sweep_dir)
    assert failed["status"] == "failed" and failed["loss.gamma"] == "-1"
    assert failed["error"].startswith("ValueError:") and "gamma" in failed["error"]
    assert failed["val_mIoU"] is None and failed["test_mIoU"] is None
    assert failed["wall_time_s"] is not None
    status = json.loads((sweep_dir / "0" / "job_status.json").read_text())
    assert status["status"] == "failed" and "Traceback" in status["traceback"]
    assert not (sweep_dir / "0" / "metrics.json").exists()

    assert ok["status"] == "ok" and ok["loss.gamma"] == "1" and ok["error"] is None
    assert ok["val_mIoU"] is not None and math.isfinite(ok["val_mIoU"])
    rows = read_csv(sweep_dir / "summary.csv")
    assert [r["status"] for r in rows] == ["failed", "ok"] and "gamma" in rows[0]["error"]
    assert is_png(sweep_dir / "summary.png")
    assert "failed" in proc.stdout and "2 jobs, 1 not ok" in proc.stdout


@pytest.mark.slow
def test_failing_single_run_still_exits_with_its_error(tmp_path):
    proc, _ = sweep(tmp_path, "loss.gamma=-1", multirun=False)
    assert proc.returncode != 0
    assert "gamma must be >= 0, got -1" in proc.stderr
    status = json.loads((tmp_path / "run" / "job_status.json").read_text())
    assert status["status"] == "failed" and "gamma" in status["error"]


@pytest.mark.slow
def test_optuna_preset_runs_two_trials_and_survives_a_failed_one(tmp_path):
    # gamma from {-1, 1}: with the preset's seeded sampler the first trial gets 1, the second -1 (refused).
    proc, sweep_dir = sweep(tmp_path, "hparams_search=focal_optuna", "hydra.sweeper.n_trials=2",
                            'hydra.sweeper.params={loss.gamma:"choice(-1.0, 1.0)"}',
                            multirun=False)  # the preset switches to multirun itself
    # every trial ran; the failed one makes the search exit 1 at the end
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sweep failed: 1 of 2 jobs not ok (1 failed)" in proc.stderr.strip().splitlines()[-1]
    rows = sweeps.collect(sweep_dir)
    assert len(rows) == 2
    assert [r["status"] for r in rows] == ["failed" if float(r["loss.gamma"]) < 0 else "ok" for r in rows]
    assert {r["status"] for r in rows} == {"ok", "failed"}
    ok = [r for r in rows if r["status"] == "ok"]
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_value == pytest.approx(max(r["val_mIoU"] for r in ok))  # the value train.py returns
    assert results.best_params["loss.gamma"] == 1.0
    for row in rows:  # the searched values are columns, each within its range
        assert 0.1 <= float(row["loss.weights.dice"]) <= 10.0
        assert row["class_weights"] in {"none", "inverse_sqrt", "median_frequency", "effective_number"}
    assert (sweep_dir / "summary.csv").is_file() and is_png(sweep_dir / "summary.png")


@pytest.mark.slow
def test_submitit_local_launcher_runs_jobs_in_parallel_processes(tmp_path):
    proc, sweep_dir = sweep(tmp_path, "hydra/launcher=local_parallel", "loss.gamma=-1,2", threads=1)
    # the failed job's process ends normally (its failure is in job_status.json); the submitting process,
    # which summarises, exits 1
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sweep failed: 1 of 2 jobs not ok (1 failed)" in proc.stderr.strip().splitlines()[-1]
    assert list((sweep_dir / ".submitit").iterdir())  # submitit's per-job folders: separate processes
    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["job"], r["status"], r["loss.gamma"]) for r in rows] == [("0", "failed", "-1"),
                                                                         ("1", "ok", "2")]
    assert float(rows[1]["val_mIoU"]) >= 0.0 and "gamma" in rows[0]["error"]


# ---- configs ----------------------------------------------------------------------------------------------


def _hydra_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.slow
def test_summary_callback_is_registered():
    cfg = _hydra_cfg()
    assert cfg.hydra.callbacks.sweep_summary._target_ == "runs.summary.SweepSummary"


@pytest.mark.slow
def test_optuna_preset_composes():
    cfg = _hydra_cfg("hparams_search=focal_optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.optimized_metric == "val/mIoU"
    assert set(sweeper.params) == {"loss.gamma", "class_weights", "loss.weights.dice"}
    assert cfg.loss.name == "focal_dice" and sweeper.max_failure_rate == 1.0
    for option in ("none", "inverse_sqrt", "median_frequency", "effective_number"):  # every choice exists
        assert (CONF / "class_weights" / f"{option}.yaml").is_file()


@pytest.mark.slow
def test_slurm_launcher_follows_the_trainer():
    cfg = _hydra_cfg("hydra/launcher=slurm", "trainer.devices=4", "+trainer.num_nodes=2",
                     "hydra.launcher.partition=gpu")
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == 4 and launcher["nodes"] == 2
    assert launcher["partition"] == "gpu"
    local = _hydra_cfg("hydra/launcher=local_parallel").hydra.launcher
    assert local._target_.endswith("LocalLauncher")


# ---- runs.jobs --------------------------------------------------------------------------------------------


def _job_cfg(tmp_path: Path):
    return OmegaConf.create({"paths": {"output_dir": str(tmp_path / "job")}})


def _status(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "job" / "job_status.json").read_text())


def test_run_job_records_success(tmp_path):
    assert jobs.run_job(lambda cfg: 0.5, _job_cfg(tmp_path)) == 0.5
    status = _status(tmp_path)
    assert status["status"] == "ok" and status["return_value"] == 0.5 and status["wall_time_s"] >= 0


def test_run_job_reraises_outside_a_sweep(tmp_path):
    def task(cfg):
        raise ValueError("datamodule.root=/nowhere does not exist")

    with pytest.raises(ValueError, match="nowhere"):
        jobs.run_job(task, _job_cfg(tmp_path))
    status = _status(tmp_path)
    assert status["status"] == "failed"
    assert status["error"] == "ValueError: datamodule.root=/nowhere does not exist"
    assert "raise ValueError" in status["traceback"]


def test_run_job_returns_none_in_a_sweep(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "is_multirun", lambda: True)

    def task(cfg):
        raise RuntimeError("boom")

    assert jobs.run_job(task, _job_cfg(tmp_path)) is None  # Optuna: a failed trial (NaN would end the search)
    assert _status(tmp_path)["error"] == "RuntimeError: boom"


def test_run_job_writes_nothing_in_a_ddp_child(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "is_global_zero", lambda: False)
    assert jobs.run_job(lambda cfg: 1.0, _job_cfg(tmp_path)) == 1.0
    assert not (tmp_path / "job" / "job_status.json").exists()


# ---- runs.summary on hand-made sweep directories ----------------------------------------------------------


def _fake_job(sweep_dir: Path, num: int, overrides: list[str], status: str | None, iou: float | None = None,
              counts=(900, 50, 30, 15, 5)) -> Path:
    job = sweep_dir / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    classes = {n: {"weight": None, "pixel_count": c, "image_pixel_count": c, "pixel_share": c / sum(counts)}
               for n, c in zip(NAMES, counts, strict=True)}
    (job / "class_weights.json").write_text(json.dumps({"method": None, "classes": classes}))
    if status is not None:
        record = {"status": status, "wall_time_s": 10.0 + num}
        if status == "failed":
            record["error"] = "ValueError: bad"
        (job / "job_status.json").write_text(json.dumps(record))
    if iou is not None:
        scores = {"mIoU": iou, "mDice": iou + 0.1,
                  "per_class": {n: {"iou": iou / (i + 1), "dice": iou} for i, n in enumerate(NAMES)}}
        scores["per_class"]["cross"]["iou"] = None  # absent from the split
        metrics = {"best_epoch": 3, "val": {"epoch": 3, **scores}, "test": {"epoch": 3, **scores}}
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def test_collect_rows_of_a_hand_made_sweep(tmp_path):
    root = tmp_path / "sweep"
    _fake_job(root, 0, ["loss=focal", "loss.gamma=0", "seed=1"], "ok", iou=0.5)
    _fake_job(root, 1, ["loss=focal", "loss.gamma=2", "seed=1"], "failed")
    _fake_job(root, 2, ["loss=focal", "loss.gamma=5", "seed=1"], "running")  # killed
    _fake_job(root, 10, ["loss=focal", "loss.gamma=1", "seed=1"], None, iou=0.25)  # run without runs.jobs
    rows = sweeps.collect(root)
    assert [r["job"] for r in rows] == ["0", "1", "2", "10"]  # numeric order
    assert [r["status"] for r in rows] == ["ok", "failed", "incomplete", "ok"]
    assert [r["loss.gamma"] for r in rows] == ["0", "2", "5", "1"]
    assert "loss" not in rows[0] and "seed" not in rows[0]  # equal in every job: not swept
    first = rows[0]
    # rarest by training pixels: cross (5), bar (15), square (30)
    assert [k for k in first if k.startswith("test_IoU/")] == ["test_IoU/cross", "test_IoU/bar",
                                                               "test_IoU/square"]
    assert first["test_IoU/cross"] is None
    assert first["test_IoU/bar"] == pytest.approx(0.5 / 4)
    assert first["test_IoU/square"] == pytest.approx(0.5 / 3)
    assert first["rare_mIoU"] == pytest.approx((0.5 / 4 + 0.5 / 3) / 2)
    assert first["val_mIoU"] == 0.5 and first["val_mDice"] == pytest.approx(0.6) and first["best_epoch"] == 3
    assert first["wall_time_s"] == 10.0 and first["error"] is None
    assert rows[1]["error"] == "ValueError: bad" and rows[1]["val_mIoU"] is None
    assert "killed" in rows[2]["error"]
    assert rows[3]["wall_time_s"] is None and rows[3]["val_mIoU"] == 0.25


def test_rarest_classes_come_from_each_job(tmp_path):
    root = tmp_path / "sweep"
    _fake_job(root, 0, ["datamodule.seed=0"], "ok", iou=0.5, counts=(900, 50, 30, 15, 5))
    _fake_job(root, 1, ["datamodule.seed=1"], "ok", iou=0.5, counts=(900, 5, 30, 15, 50))
    rows = sweeps.collect(root)
    columns = [k.removeprefix("test_IoU/") for k in rows[0] if k.startswith("test_IoU/")]
    assert columns == ["cross", "bar", "square", "disc"]  # the union, rarest of the first job first
    # job 1's rare classes: disc, bar, square
    assert rows[1]["rare_mIoU"] == pytest.approx((0.5 / 2 + 0.5 / 4 + 0.5 / 3) / 3)


@pytest.mark.slow
def test_write_summary_numeric_and_categorical_sweeps(tmp_path, capsys):
    numeric = tmp_path / "numeric"
    for i, gamma in enumerate(("0", "0.5", "2")):
        _fake_job(numeric, i, [f"loss.gamma={gamma}"], "ok", iou=0.1 * (i + 1))
    path = sweeps.write_summary(numeric)
    assert path == numeric / "summary.csv" and is_png(numeric / "summary.png")
    assert [r["loss.gamma"] for r in read_csv(path)] == ["0", "0.5", "2"]
    assert "sweep" in capsys.readouterr().out

    categorical = tmp_path / "categorical"
    for i, (loss, weights) in enumerate([("ce", "none"), ("focal", "none"), ("focal", "inverse")]):
        _fake_job(categorical, i, [f"loss={loss}", f"class_weights={weights}"], "ok" if i else "failed",
                  iou=0.3 if i else None)
    rows = read_csv(sweeps.write_summary(categorical, print_it=False))
    assert [r["overrides"] for r in rows] == ["loss=ce class_weights=none", "loss=focal class_weights=none",
                                              "loss=focal class_weights=inverse"]
    assert is_png(categorical / "summary.png")
    assert capsys.readouterr().out == ""


def test_swept_keys_declared_in_multirun_yaml(tmp_path):
    root = tmp_path / "sweep"
    _fake_job(root, 0, ["loss.gamma=2", "loss=focal"], "ok", iou=0.5)  # a one-job sweep
    (root / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - loss.gamma=2\n    - loss=focal,dice\n")
    (row,) = sweeps.collect(root)
    assert row["loss"] == "focal" and "loss.gamma" not in row


@pytest.mark.slow
def test_summary_callback_writes_once_and_not_in_ddp_children(tmp_path, monkeypatch):
    root = tmp_path / "sweep"
    _fake_job(root, 0, ["loss.gamma=1"], "ok", iou=0.5)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(root)}}})
    monkeypatch.setattr(summary, "is_ddp_child", lambda: True)
    summary.SweepSummary().on_multirun_end(config)
    assert not (root / "summary.csv").exists()
    monkeypatch.setattr(summary, "is_ddp_child", lambda: False)
    summary.SweepSummary().on_multirun_end(config)
    assert (root / "summary.csv").is_file()


@pytest.mark.slow
def test_summary_cli(tmp_path, capsys):
    root = tmp_path / "sweep"
    _fake_job(root, 0, ["loss.gamma=1"], "ok", iou=0.5)
    proc = subprocess.run([sys.executable, "-m", "runs.summary", str(root)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("summary.csv") and (root / "summary.csv").is_file()
    assert "RuntimeWarning" not in proc.stderr  # runpy: runs/__init__ does not import runs.summary
    assert summary.main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert summary.main([str(tmp_path / "empty")]) == 1
    assert "no job directory" in capsys.readouterr().err
    assert summary.main([]) == 2 and "usage" in capsys.readouterr().out


@pytest.mark.slow
def test_summary_jobs_and_ranks_load_without_torch():
    # `python -m runs.summary`, the Hydra callback and the job status need no torch (nor seglosses, which
    # imports it): only runs.ranks looks at torch.distributed, and only where torch is loaded already.
    heavy = ("torch", "seglosses", "pytorch_lightning", "runs.ddp")
    code = ("import sys; import runs, runs.summary, runs.jobs, runs.ranks; runs.ranks.is_global_zero(); "
            f"print(sorted(m for m in {heavy} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_collect_of_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        sweeps.collect(tmp_path / "nowhere")
