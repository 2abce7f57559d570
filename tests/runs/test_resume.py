"""Resuming a run (``ckpt_path=RUN/checkpoints/last.ckpt``) in place, from a moved or copied run directory
and into a new one: the same run continues with its best checkpoint and score, its full ``metrics.csv``
history, and ``metrics.json`` names the last checkpoint."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from runs.callbacks import RunCheckpoint
from runs.loggers import ResumableCSVLogger
from runs.training import run
from tests.test_train import _short_run, read_metrics

EPOCHS = ["trainer.max_epochs=3"]


def _checkpoint_state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    (key,) = [k for k in state["callbacks"] if k.startswith("RunCheckpoint")]
    return state["callbacks"][key]


def _csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _val_scores(rows: list[dict], epochs: int) -> dict[int, float]:
    """val/mIoU of each trained epoch (the rows of the validation after fit/test have epoch == epochs)."""
    val = [r for r in rows if r.get("val/mIoU") and int(r["epoch"]) < epochs]
    return {int(r["epoch"]): float(r["val/mIoU"]) for r in val}


def _first_run(run_root: Path):
    cfg = _short_run(run_root, *EPOCHS, "trainer.max_steps=4")  # stops after 2 of 3 epochs
    run(cfg)
    return cfg, Path(cfg.paths.output_dir)


def _check_continued(cfg, run_dir: Path) -> None:
    """The resumed run of 3 epochs in ``run_dir``: full history, best over all epochs, paths inside."""
    rows = _csv_rows(run_dir)
    assert {int(r["epoch"]) for r in rows if r.get("train/loss")} == {0, 1, 2}
    scores = _val_scores(rows, 3)
    assert sorted(scores) == [0, 1, 2]  # one validation row per epoch: none lost, none duplicated
    assert sum(1 for r in rows if r.get("val/mIoU") and int(r["epoch"]) < 3) == 3
    best_epoch = max(scores, key=lambda e: (scores[e], -e))  # the first epoch reaching the best score
    metrics = read_metrics(cfg)
    state = _checkpoint_state(run_dir / "checkpoints" / "last.ckpt")
    assert float(state["best_model_score"]) == pytest.approx(max(scores.values()))
    assert Path(state["best_model_path"]).parent == run_dir / "checkpoints"
    assert Path(metrics["checkpoint"]) == run_dir / "checkpoints" / f"best-epoch{best_epoch:03d}.ckpt"
    assert Path(metrics["checkpoint"]).is_file()
    assert metrics["best_epoch"] == best_epoch
    assert metrics["last_checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(
        {"last.ckpt", f"best-epoch{best_epoch:03d}.ckpt"}
    )


@pytest.mark.slow
def test_resume_in_place_keeps_best_score_and_csv_history(tmp_path):
    first, run_dir = _first_run(tmp_path)
    metrics = read_metrics(first)
    assert metrics["last_checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    first_rows = _csv_rows(run_dir)
    assert {int(r["epoch"]) for r in first_rows if r.get("train/loss")} == {0, 1}

    second = _short_run(tmp_path, *EPOCHS, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert Path(second.paths.output_dir) == run_dir
    run(second)
    _check_continued(second, run_dir)
    # The earlier epochs' rows are the very rows the first run wrote.
    kept = [r for r in _csv_rows(run_dir) if r.get("train/loss") and int(r["epoch"]) < 2]
    before = [r for r in first_rows if r.get("train/loss")]
    assert [r["train/loss"] for r in kept] == [r["train/loss"] for r in before]


@pytest.mark.slow
def test_resume_from_a_moved_run_directory(tmp_path):
    _, old_dir = _first_run(tmp_path / "a")
    new_root = tmp_path / "b"
    shutil.copytree(old_dir.parent, new_root)
    shutil.rmtree(old_dir.parent)  # moved: the original is gone
    new_dir = new_root / old_dir.name

    second = _short_run(new_root, *EPOCHS, f"ckpt_path={new_dir / 'checkpoints' / 'last.ckpt'}")
    assert Path(second.paths.output_dir) == new_dir
    run(second)  # used to fail on the vanished best checkpoint of the old directory
    _check_continued(second, new_dir)
    assert not old_dir.exists()


@pytest.mark.slow
def test_resume_from_a_copy_leaves_the_original_alone(tmp_path):
    _, old_dir = _first_run(tmp_path / "a")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (old_dir / "checkpoints").iterdir())
    new_root = tmp_path / "b"
    shutil.copytree(old_dir.parent, new_root)
    new_dir = new_root / old_dir.name

    second = _short_run(new_root, *EPOCHS, f"ckpt_path={new_dir / 'checkpoints' / 'last.ckpt'}")
    run(second)
    _check_continued(second, new_dir)  # the copy's own best checkpoint, never the original's
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (old_dir / "checkpoints").iterdir()) == before


@pytest.mark.slow
def test_resume_into_a_new_directory_copies_the_best_checkpoint(tmp_path):
    first, old_dir = _first_run(tmp_path / "a")
    old_best = read_metrics(first)["checkpoint"]
    second = _short_run(tmp_path / "b", *EPOCHS, f"ckpt_path={old_dir / 'checkpoints' / 'last.ckpt'}")
    run(second)
    new_dir = Path(second.paths.output_dir)
    metrics = read_metrics(second)
    assert Path(metrics["checkpoint"]).parent == new_dir / "checkpoints"
    assert Path(old_best).is_file()  # the other run's files are not touched
    state = _checkpoint_state(new_dir / "checkpoints" / "last.ckpt")
    old_scores = _val_scores(_csv_rows(old_dir), 2)
    assert float(state["best_model_score"]) >= max(old_scores.values()) - 1e-6


@pytest.mark.slow
def test_last_checkpoint_is_reported_when_the_best_is_the_first_epoch(tmp_path):
    """Validating the best checkpoint restores the callback state saved with it; at epoch 0 that state has no
    last checkpoint yet, which metrics.json used to report."""
    first_is_best = ["callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"]
    cfg = _short_run(tmp_path, *first_is_best)
    run(cfg)
    metrics = read_metrics(cfg)
    checkpoints = Path(cfg.paths.checkpoint_dir)
    assert metrics["checkpoint"] == str(checkpoints / "best-epoch000.ckpt")
    assert metrics["last_checkpoint"] == str(checkpoints / "last.ckpt")


# ---- RunCheckpoint.load_state_dict and ResumableCSVLogger without a training ---------------------------


def _saved_state(old_dir: Path) -> dict:
    scores = {old_dir / "best-epoch001.ckpt": 0.7, old_dir / "best-epoch000.ckpt": 0.5}
    return {
        "monitor": "val/mIoU",
        "best_model_score": torch.tensor(0.7),
        "best_model_path": str(old_dir / "best-epoch001.ckpt"),
        "current_score": torch.tensor(0.7),
        "dirpath": str(old_dir),
        "best_k_models": {str(k): torch.tensor(v) for k, v in scores.items()},
        "kth_best_model_path": str(old_dir / "best-epoch000.ckpt"),
        "kth_value": torch.tensor(0.5),
        "last_model_path": str(old_dir / "last.ckpt"),
    }


def _callback(new_dir: Path) -> RunCheckpoint:
    return RunCheckpoint(dirpath=new_dir, monitor="val/mIoU", mode="max", save_top_k=2, save_last=True)


def test_state_of_a_moved_directory_is_rebased(tmp_path):
    old_dir, new_dir = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    new_dir.mkdir(parents=True)
    for name in ("best-epoch000.ckpt", "best-epoch001.ckpt", "last.ckpt"):
        (new_dir / name).write_bytes(b"x")
    cb = _callback(new_dir)
    cb.load_state_dict(_saved_state(old_dir))
    assert cb.best_model_path == str(new_dir / "best-epoch001.ckpt")
    assert float(cb.best_model_score) == pytest.approx(0.7)
    assert set(cb.best_k_models) == {str(new_dir / "best-epoch000.ckpt"), str(new_dir / "best-epoch001.ckpt")}
    assert cb.kth_best_model_path == str(new_dir / "best-epoch000.ckpt")
    assert float(cb.kth_value) == pytest.approx(0.5)
    assert cb.last_model_path == str(new_dir / "last.ckpt")


def test_plain_model_checkpoint_loses_the_score_of_a_moved_directory(tmp_path):
    """The behaviour RunCheckpoint exists for."""
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    cb = ModelCheckpoint(dirpath=new_dir, monitor="val/mIoU", mode="max")
    with pytest.warns(UserWarning, match="dirpath has changed"):
        cb.load_state_dict(_saved_state(old_dir))
    assert cb.best_model_score is None and cb.best_model_path == str(old_dir / "best-epoch001.ckpt")


def test_missing_best_checkpoint_falls_back_to_the_others(tmp_path):
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    new_dir.mkdir()
    (new_dir / "best-epoch000.ckpt").write_bytes(b"x")  # epoch 1's best is in neither directory
    cb = _callback(new_dir)
    cb.load_state_dict(_saved_state(old_dir))
    assert cb.best_model_path == str(new_dir / "best-epoch000.ckpt")
    assert float(cb.best_model_score) == pytest.approx(0.5)
    assert list(cb.best_k_models) == [str(new_dir / "best-epoch000.ckpt")]


def test_no_best_checkpoint_left_resets_the_best(tmp_path):
    cb = _callback(tmp_path / "new")
    cb.load_state_dict(_saved_state(tmp_path / "old"))
    assert cb.best_model_path == "" and cb.best_model_score is None and cb.best_k_models == {}


def test_best_checkpoint_only_in_the_old_directory_is_copied(tmp_path):
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    (old_dir / "best-epoch001.ckpt").write_bytes(b"best")
    cb = _callback(new_dir)
    cb.load_state_dict(_saved_state(old_dir))
    assert cb.best_model_path == str(new_dir / "best-epoch001.ckpt")
    assert (new_dir / "best-epoch001.ckpt").read_bytes() == b"best"
    assert (old_dir / "best-epoch001.ckpt").is_file()
    assert float(cb.best_model_score) == pytest.approx(0.7)


def test_same_directory_keeps_everything(tmp_path):
    cb = _callback(tmp_path)
    cb.load_state_dict(_saved_state(tmp_path))
    assert cb.best_model_path == str(tmp_path / "best-epoch001.ckpt") and len(cb.best_k_models) == 2
    assert float(cb.best_model_score) == pytest.approx(0.7)


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", "train/loss", "val/mIoU"])
        writer.writeheader()
        writer.writerows(rows)


def test_csv_logger_keeps_the_rows_up_to_the_resumed_epoch(tmp_path):
    old = [
        {"epoch": 0, "step": 1, "train/loss": 1.0},
        {"epoch": 0, "step": 1, "val/mIoU": 0.1},
        {"epoch": 1, "step": 3, "train/loss": 0.5},
        {"epoch": 2, "step": 4, "val/mIoU": 0.3},  # logged after the checkpoint of epoch 1
    ]
    _write_csv(tmp_path / "csv" / "metrics.csv", old)
    logger = ResumableCSVLogger(tmp_path, name="csv", version="")
    logger.keep_history(1)
    logger.log_metrics({"train/loss": 0.25, "lr": 0.1, "epoch": 2}, step=5)
    logger.save()
    rows = _csv_rows(tmp_path)
    assert [(r["epoch"], r["step"]) for r in rows] == [("0", "1"), ("0", "1"), ("1", "3"), ("2", "5")]
    assert rows[-1]["lr"] == "0.1" and rows[0]["train/loss"] == "1.0" and rows[0]["lr"] == ""
    with pytest.raises(RuntimeError, match="before"):
        logger.keep_history(1)


def test_csv_logger_without_resume_starts_afresh(tmp_path):
    _write_csv(tmp_path / "csv" / "metrics.csv", [{"epoch": 0, "step": 1, "train/loss": 1.0}])
    logger = ResumableCSVLogger(tmp_path, name="csv", version="")
    logger.log_metrics({"train/loss": 0.25, "epoch": 0}, step=1)
    with pytest.warns(UserWarning, match="earlier run is replaced"):
        logger.save()
    assert [r["train/loss"] for r in _csv_rows(tmp_path)] == ["0.25"]
