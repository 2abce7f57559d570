"""Bad data and failed runs never end green: zero training batches, non-finite validation, NaN scores in
metrics.json, per-class loss values of the wrong length, a negative learning rate (runs.build,
runs.training). The sweep exit status is tested in test_sweeps.py (end to end) and here (the callback)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from evaluation.files import write_metrics
from evaluation.sweeps import write as sweep_write
from runs import jobs
from runs.build import build, build_loss
from runs.config_checks import check_train_batches
from runs.training import print_summary, run
from tests.overrides import QUIET, SMALL_UNET, SYNTHETIC_TINY

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def make_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """A tiny run (synthetic 8/4/4 images of 32x32 unless a datamodule is chosen, batch 4, one short epoch,
    no loggers or prediction grids), all output in tmp_path."""
    synthetic = not any(o.startswith("datamodule=") for o in overrides)
    tiny = [
        f"paths.output_dir={tmp_path / 'run'}",
        f"datamodule.stats_cache_dir={tmp_path / 'cache'}",
        *(SYNTHETIC_TINY if synthetic else []),
        "datamodule.batch_size=4",
        "debug=limit",
        "trainer.max_epochs=1",
        *SMALL_UNET,
        "~logger",
        *QUIET,
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[*tiny, *overrides])


def write_folder_dataset(root: Path, num: dict[str, int], ignored: tuple[str, ...] = ()) -> None:
    """Image/mask folders, 32x32, classes 0/1 (a square of class 1); every pixel of the masks of the
    splits in ``ignored`` is 255 (ignore_index)."""
    rng = np.random.default_rng(0)
    for split, n in num.items():
        for d in ("images", "masks"):
            (root / split / d).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((32, 32), dtype=np.uint8)
            mask[8:20, 8:20] = 1
            if split in ignored:
                mask[:] = 255
            image = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
            image[..., 0] += mask.astype(np.uint8) * 100
            Image.fromarray(image).save(root / split / "images" / f"{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")


def folder_overrides(root: Path) -> list[str]:
    return ["datamodule=folder", f"datamodule.root={root}", "datamodule.num_classes=2",
            "datamodule.crop_size=[32,32]", "datamodule.num_workers=0"]


def nothing_trained(cfg: DictConfig) -> bool:
    out = Path(cfg.paths.output_dir)
    checkpoints = Path(cfg.paths.checkpoint_dir)
    no_checkpoint = not checkpoints.exists() or not any(checkpoints.iterdir())
    return no_checkpoint and not (out / "metrics.json").exists()


# ---- 0 training batches -----------------------------------------------------------------------------------


def test_synthetic_split_smaller_than_a_batch_with_drop_last_fails_before_fit(tmp_path):
    cfg = make_cfg(tmp_path, "datamodule.num_train=3", "datamodule.drop_last=true")
    with pytest.raises(ValueError, match="0 training batches") as err:
        run(cfg)
    message = str(err.value)
    assert "3 samples" in message and "datamodule.batch_size=4" in message
    assert "datamodule.drop_last=true" in message and "datamodule.drop_last=false" in message
    assert "datamodule.batch_size=3" in message  # what to set
    assert nothing_trained(cfg)


def test_folder_split_smaller_than_a_batch_fails_with_the_folder_default_drop_last(tmp_path):
    root = tmp_path / "data"
    write_folder_dataset(root, {"train": 2, "val": 2, "test": 2})
    cfg = make_cfg(tmp_path, *folder_overrides(root))
    assert cfg.datamodule.drop_last is True  # the folder default
    with pytest.raises(ValueError, match=r"2 samples, fewer than datamodule\.batch_size=4.*drop_last=false"):
        run(cfg)
    assert nothing_trained(cfg)


# ---- data checks before the first training step (runs.config_checks.check_data) ----------------------------


@pytest.mark.slow  # the second run trains
def test_binary_0_255_masks_stop_the_run_before_training(tmp_path):
    root = tmp_path / "data"
    write_folder_dataset(root, {"train": 4, "val": 2, "test": 2})
    for mask_file in root.glob("*/masks/*.png"):  # foreground stored as 255, the default ignore_index
        mask = np.array(Image.open(mask_file))
        Image.fromarray((mask * 255).astype(np.uint8)).save(mask_file)
    overrides = [*folder_overrides(root), "datamodule.num_classes=1", "datamodule.mode=binary",
                 "datamodule.drop_last=false"]
    cfg = make_cfg(tmp_path, *overrides)
    with pytest.raises(ValueError, match=r"looks like 0/255 masks: set datamodule\.value_map=\{255:1\}"):
        run(cfg)
    assert nothing_trained(cfg)
    fixed = make_cfg(tmp_path / "fixed", *overrides, "datamodule.value_map={255:1}")
    run(fixed)  # the advice works
    assert (Path(fixed.paths.output_dir) / "metrics.json").exists()


def test_a_bad_validation_mask_stops_the_run_before_training(tmp_path):
    root = tmp_path / "data"
    write_folder_dataset(root, {"train": 4, "val": 2, "test": 2})
    bad = root / "val" / "masks" / "1.png"
    mask = np.array(Image.open(bad))
    mask[0, 0] = 7  # neither class 0/1 nor ignore_index 255
    Image.fromarray(mask).save(bad)
    cfg = make_cfg(tmp_path, *folder_overrides(root), "datamodule.drop_last=false")
    with pytest.raises(ValueError, match=r"(?s)val.*1\.png.*7"):
        run(cfg)
    assert nothing_trained(cfg)


def _datamodule(num_train: int, batch_size: int, drop_last: bool):
    from datamodules import SyntheticDataModule

    return SyntheticDataModule(num_train=num_train, image_size=32, batch_size=batch_size, drop_last=drop_last)


def test_train_batches_per_ddp_process():
    ddp = SimpleNamespace(world_size=2)
    with pytest.raises(ValueError, match=r"6 samples, 3 per process over 2 DDP processes.*trainer\.devices="):
        check_train_batches(_datamodule(6, 4, drop_last=True), ddp)
    assert check_train_batches(_datamodule(8, 4, drop_last=True), ddp) == 1
    assert check_train_batches(_datamodule(6, 4, drop_last=False), ddp) == 1
    assert check_train_batches(_datamodule(7, 4, drop_last=True), SimpleNamespace(world_size=1)) == 1
    assert check_train_batches(_datamodule(9, 4, drop_last=False), SimpleNamespace(world_size=1)) == 3


# ---- per-class loss values, learning rate -----------------------------------------------------------------


def test_alpha_of_the_wrong_length_names_the_key_when_the_loss_is_built(tmp_path):
    cfg = make_cfg(tmp_path, "loss=focal_dice", "loss.alpha=[1.0,2.0,3.0]")
    with pytest.raises(ValueError, match=r"loss\.alpha has 3 values.*datamodule\.num_classes=5"):
        build_loss(cfg, None)
    with pytest.raises(ValueError, match=r"loss\.alpha has 3 values"):
        run(cfg)  # at start-up, before any training step
    assert nothing_trained(cfg)


def test_per_term_alpha_and_weight_of_the_wrong_length(tmp_path):
    cfg = make_cfg(tmp_path, "loss=focal_dice", "loss.module.losses.focal.alpha=[1.0,2.0]")
    with pytest.raises(ValueError, match=r"loss\.module\.losses\.focal: alpha must be a number or have one "
                       r"value per class \(5\), got shape \(2,\)"):
        build_loss(cfg, None)
    cfg = make_cfg(tmp_path, "loss=ce", "loss.class_weights=[1.0,2.0]")
    with pytest.raises(ValueError, match=r"loss\.class_weights has 2 values"):
        build_loss(cfg, None)
    assert build_loss(make_cfg(tmp_path, "loss=focal", "loss.alpha=[1,1,1,2,2]"), None).alpha.numel() == 5
    cfg = make_cfg(tmp_path, "loss=ce", "loss.module.weight=[1.0,2.0,3.0]")  # a single-term loss
    with pytest.raises(ValueError, match=r"^loss\.module: weight must be a number or have one value per"):
        build_loss(cfg, None)


def test_negative_learning_rate_names_the_key(tmp_path):
    cfg = make_cfg(tmp_path, "optimizer.lr=-0.001")
    with pytest.raises(ValueError, match=r"optimizer\.lr must be >= 0, got -0\.001"):
        run(cfg)
    assert nothing_trained(cfg)


def test_other_bad_optimizer_values_fail_before_fit(tmp_path):
    cfg = make_cfg(tmp_path, "optimizer.weight_decay=-1")
    with pytest.raises(ValueError, match=r"^optimizer: Invalid weight_decay value: -1"):
        run(cfg)
    assert nothing_trained(cfg)


# ---- non-finite validation --------------------------------------------------------------------------------


@pytest.mark.slow
def test_exploding_learning_rate_fails_the_run_and_the_sweep_job(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, "optimizer.lr=1e30", "trainer.limit_train_batches=1", "loss=ce")
    with pytest.raises(FloatingPointError, match=r"validation loss is (nan|inf) at epoch 0, batch 0"):
        run(cfg)
    checkpoints = Path(cfg.paths.checkpoint_dir)
    assert not checkpoints.exists() or not list(checkpoints.glob("best-*.ckpt"))
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()

    monkeypatch.setattr(jobs, "is_multirun", lambda: True)  # a sweep job: recorded as failed, not raised
    assert jobs.run_job(run, make_cfg(tmp_path / "job", "optimizer.lr=1e30", "trainer.limit_train_batches=1",
                                      "loss=ce")) is None
    status = json.loads((tmp_path / "job" / "run" / "job_status.json").read_text())
    assert status["status"] == "failed" and "validation loss is" in status["error"]


@pytest.mark.slow
def test_exploding_learning_rate_under_ddp_fails_on_every_process_without_hanging(tmp_path):
    # Only one process may see the NaN: every process must raise (a collective decides), or the others
    # would wait forever in the next collective.
    cmd = [sys.executable, "train.py", "trainer=ddp_cpu", "optimizer.lr=1e30", "loss=ce",
           "trainer.limit_train_batches=1", "trainer.max_epochs=1", "~logger",
           "callbacks.prediction_grid=null", "datamodule.image_size=[32,32]", "datamodule.num_train=8",
           "datamodule.num_val=4", "datamodule.num_test=4", "datamodule.batch_size=2",
           "datamodule.progress=false", "model.encoder_depth=3", "model.arch.decoder_channels=[32,16,8]",
           "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null",
           "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
           f"hydra.run.dir={tmp_path / 'run'}", f"datamodule.stats_cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "FloatingPointError: validation loss is" in proc.stderr, proc.stderr[-3000:]
    status = json.loads((tmp_path / "run" / "job_status.json").read_text())
    assert status["status"] == "failed" and "validation loss is" in status["error"]
    assert not list((tmp_path / "run").rglob("best-*.ckpt"))


# ---- NaN scores -------------------------------------------------------------------------------------------


def test_nan_scores_are_written_as_null_and_printed_as_nan(tmp_path, capsys):
    record = {"best_score": math.nan, "val": {"epoch": 0, "mIoU": math.nan, "mDice": math.inf,
                                              "pixel_acc": 0.5, "per_class": {"a": {"iou": math.nan}}},
              "checkpoint": None, "epochs": [1.0, math.nan]}
    write_metrics(tmp_path / "metrics.json", record)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["best_score"] is None
    assert written["val"]["mIoU"] is None and written["val"]["mDice"] is None
    assert written["val"]["per_class"]["a"]["iou"] is None and written["epochs"] == [1.0, None]
    assert written["val"]["pixel_acc"] == 0.5
    print_summary(record)
    out = capsys.readouterr().out
    assert "nan" in out and "50.00" in out


@pytest.mark.slow
def test_fully_ignored_validation_and_test_splits_keep_the_results(tmp_path):
    root = tmp_path / "data"
    write_folder_dataset(root, {"train": 4, "val": 2, "test": 2}, ignored=("val", "test"))
    cfg = make_cfg(tmp_path, *folder_overrides(root), "datamodule.batch_size=2")
    assert run(cfg) is None  # the val/mIoU of no scored pixel: NaN, not a value for a sweeper
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["best_score"] is None
    for split in ("val", "test"):
        assert metrics[split]["mIoU"] is None and metrics[split]["per_class"]["class_1"]["iou"] is None
    assert Path(cfg.paths.checkpoint_dir, "last.ckpt").is_file()


# ---- the sweep's exit status (callback on hand-made sweep directories) ------------------------------------


def _job(sweep_dir: Path, num: int, status: str | None, gamma: str) -> None:
    job = sweep_dir / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- loss.gamma={gamma}\n")
    if status is not None:
        record = {"status": status, "wall_time_s": 1.0}
        if status == "failed":
            record["error"] = "ValueError: gamma must be >= 0, got -1"
        (job / "job_status.json").write_text(json.dumps(record))


def _end(sweep_dir: Path, **kwargs) -> None:
    callback = build(OmegaConf.create({"_target_": "runs.summary.SweepSummary", **kwargs}), "callback")
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))


def test_sweep_with_failed_jobs_exits_1_after_the_summary(tmp_path, capsys):
    root = tmp_path / "sweep"
    _job(root, 0, "failed", "-1")
    _job(root, 1, "ok", "1")
    _job(root, 2, "running", "2")  # killed
    with pytest.raises(SystemExit) as exit_info:
        _end(root)
    assert exit_info.value.code == 1
    assert (root / "summary.csv").is_file() and (root / "summary.png").is_file()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"sweep failed: 2 of 3 jobs not ok (1 failed, 1 incomplete); summary: "
                       f"{root / 'summary.csv'}")

    _end(root, exit_on_failure=False)  # the summary, exit status 0


def test_sweep_without_failures_returns(tmp_path):
    root = tmp_path / "sweep"
    _job(root, 0, "ok", "0")
    _job(root, 1, "ok", "1")
    _end(root)
    assert (root / "summary.csv").is_file()


def test_sweep_exit_status_when_the_summary_itself_fails(tmp_path, capsys, monkeypatch):
    root = tmp_path / "sweep"
    _job(root, 0, "failed", "-1")
    _job(root, 1, "ok", "1")

    def broken(*args, **kwargs):
        raise RuntimeError("no plot today")

    monkeypatch.setattr(sweep_write, "plot", broken)
    with pytest.raises(SystemExit):
        _end(root)
    assert "1 of 2 jobs not ok (1 failed); summary: not complete, rebuild it with python -m runs.summary" in (
        capsys.readouterr().err)
