"""End-to-end tests of conf/, train.py and runs.training on tiny synthetic data (32x32 images, a few samples).

The trainings and subprocess runs are marked ``slow``; ``-m "not slow"`` keeps the config compositions and the
errors that are raised before (or instead of) a training."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from inference import CheckpointMismatchError
from runs.build import build_loss
from runs.training import run
from seglosses.combined import CombinedLoss
from seglosses.focal import CrossEntropyLoss, FocalLoss
from tests.overrides import SYNTHETIC_TINY

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def tiny(tmp_path: Path, *extra: str) -> list[str]:
    """Overrides for a run of seconds: (synthetic) 8/4/4 images of 32x32, batch 4, CSV logs, all output in
    tmp_path."""
    synthetic = not any(o.startswith(("datamodule=", "experiment=camvid")) for o in extra)
    return [
        f"paths.output_dir={tmp_path / 'run'}",
        f"datamodule.stats_cache_dir={tmp_path / 'cache'}",
        *(SYNTHETIC_TINY if synthetic else []),
        "datamodule.batch_size=4",
        "datamodule.progress=false",
        "logger=csv",
        "callbacks.rich_progress_bar=null",
        "callbacks.rich_model_summary=null",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *extra,
    ]


def make_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=tiny(tmp_path, *overrides))


def read_metrics(cfg: DictConfig) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


# ---- config composition -----------------------------------------------------------------------------------


def test_expected_options_exist():
    assert {"ce", "focal", "dice", "focal_dice", "dice_ce"} <= set(LOSSES)
    assert {"unet", "unetplusplus", "fpn", "deeplabv3plus"} <= set(MODELS)
    for group, option in [("trainer", "cpu"), ("trainer", "gpu"), ("debug", "fdr")]:
        assert (CONF / group / f"{option}.yaml").is_file()


def test_gpu_preset_is_bf16(tmp_path):
    cfg = make_cfg(tmp_path, "trainer=gpu")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.max_epochs == make_cfg(tmp_path).trainer.max_epochs  # read from trainer/default


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_gamma_and_alpha_reach_every_focal_term(tmp_path, loss):
    """`loss.gamma`/`loss.alpha` reach every focal term and the schedule; the options without a focal term
    have them null (setting them there is refused: tests/runs/test_unused_overrides.py)."""
    focal_options = {"focal", "focal_dice"}  # focal_tversky: its own exponent, loss.tversky_gamma
    extra = ("loss.gamma=1.5", "loss.alpha=0.5") if loss in focal_options else ()
    cfg = make_cfg(tmp_path, f"loss={loss}", *extra)
    module = instantiate(cfg.loss.module)
    focal = [m for m in module.modules() if type(m) is FocalLoss]
    assert bool(focal) == (loss in focal_options)
    for term in focal:
        assert term.gamma == 1.5 and term.alpha == 0.5
    if focal:
        schedule = instantiate(cfg.loss.schedule)
        assert schedule(0) == 1.5 and schedule(cfg.trainer.max_epochs - 1) == 1.5
    else:
        assert cfg.loss.schedule is None and cfg.loss.gamma is None and cfg.loss.alpha is None


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_mode_and_ignore_index_come_from_datamodule(tmp_path, loss):
    cfg = make_cfg(tmp_path, f"loss={loss}", "datamodule.ignore_index=7")
    module = instantiate(cfg.loss.module)
    terms = list(module.losses.values()) if isinstance(module, CombinedLoss) else [module]
    assert terms
    assert all(t.ignore_index == 7 and t.mode == "multiclass" for t in terms)


def test_class_weights_reach_focal_alpha_and_ce_weight(tmp_path):
    weights = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0])
    cfg = make_cfg(tmp_path, "loss=focal_dice")
    loss = build_loss(cfg, weights)
    assert isinstance(loss, CombinedLoss)
    torch.testing.assert_close(loss.losses["focal"].alpha, weights)
    assert loss.losses["dice"].class_weights is None  # Dice stays unweighted

    cfg = make_cfg(tmp_path, "loss=dice_ce")
    loss = build_loss(cfg, weights)
    assert isinstance(loss.losses["ce"], CrossEntropyLoss)
    torch.testing.assert_close(loss.losses["ce"].weight, weights)

    cfg = make_cfg(tmp_path, "loss=focal", "loss.alpha=0.25")  # an explicit alpha wins
    assert build_loss(cfg, weights).alpha == 0.25


def test_experiments_compose(tmp_path):
    cfg = make_cfg(tmp_path, "experiment=camvid")
    assert cfg.datamodule.root == "../shared/data/camvid" and cfg.datamodule.num_classes == 11
    assert cfg.class_weights.method == "median_frequency"
    assert len(cfg.model.arch.decoder_channels) == cfg.model.encoder_depth
    schedule = instantiate(make_cfg(tmp_path, "experiment=gamma_ramp", "loss.gamma=3").loss.schedule)
    assert schedule(0) == 0.0 and schedule(11) == 3.0


def test_unknown_option_lists_available_ones(tmp_path):
    with pytest.raises(MissingConfigException) as err:
        make_cfg(tmp_path, "loss=focal_dise")
    message = str(err.value)
    assert "focal_dise" in message and "Available options" in message
    for option in LOSSES:
        assert option in message


# ---- training runs ----------------------------------------------------------------------------------------


def _check_fast_dev_run(cfg: DictConfig) -> None:
    score = run(cfg)
    assert score is not None and 0.0 <= score <= 1.0
    metrics = read_metrics(cfg)
    names = ["background", "disc", "square", "bar", "cross"]
    assert set(metrics["test"]["per_class"]) == set(names)
    assert metrics["val"]["mIoU"] == pytest.approx(score)
    assert (Path(cfg.paths.output_dir) / "class_weights.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSSES)
def test_fast_dev_run_every_loss(tmp_path, loss):
    _check_fast_dev_run(make_cfg(tmp_path, "debug=fdr", f"loss={loss}", "model.encoder_depth=3",
                                 "model.arch.decoder_channels=[32,16,8]"))


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run_every_model(tmp_path, model):
    _check_fast_dev_run(make_cfg(tmp_path, "debug=fdr", f"model={model}", "loss=ce"))


@pytest.mark.slow
def test_class_weights_and_prior_init_run(tmp_path):
    cfg = make_cfg(tmp_path, "debug=fdr", "class_weights=median_frequency", "model.prior_init=true",
                   "loss=focal_dice")
    _check_fast_dev_run(cfg)
    record = json.loads((Path(cfg.paths.output_dir) / "class_weights.json").read_text())
    assert record["method"] == "median_frequency"
    assert all(v["weight"] is not None for v in record["classes"].values())


def _short_run(tmp_path: Path, *extra: str) -> DictConfig:
    return make_cfg(
        tmp_path, "debug=limit", "model.encoder_depth=3", "model.arch.decoder_channels=[32,16,8]", *extra
    )


@pytest.mark.slow
def test_train_then_evaluate_checkpoint_gives_same_test_metrics(tmp_path):
    cfg = _short_run(tmp_path / "a")
    run(cfg)
    trained = read_metrics(cfg)
    best = Path(trained["checkpoint"])
    assert best.is_file() and best.name.startswith("best-epoch")
    assert trained["best_epoch"] == torch.load(best, map_location="cpu", weights_only=False)["epoch"]
    assert trained["test"]["epoch"] == trained["best_epoch"]

    ev = _short_run(tmp_path / "b", "train=false", f"ckpt_path={best}")
    assert run(ev) is None
    evaluated = read_metrics(ev)
    assert evaluated["checkpoint"] == str(best)
    for key in ("mIoU", "mDice", "pixel_acc"):
        assert evaluated["test"][key] == pytest.approx(trained["test"][key], abs=1e-6)
    for name, scores in trained["test"]["per_class"].items():
        for key, value in scores.items():
            other = evaluated["test"]["per_class"][name][key]
            assert (value is None and other is None) or other == pytest.approx(value, abs=1e-6)


@pytest.mark.slow
def test_resume_continues_epoch_optimizer_scheduler_and_gamma(tmp_path):
    # A linear gamma ramp 0 -> 2 over 3 epochs; the first run stops after 2 epochs (2 batches each).
    ramp = ["loss=focal", "loss.gamma=2", "loss.schedule.kind=linear", "loss.schedule.gamma_start=0",
            "trainer.max_epochs=3"]
    first = _short_run(tmp_path / "a", *ramp, "trainer.max_steps=4")
    run(first)
    last = Path(first.paths.checkpoint_dir) / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] == 4
    assert state["loss_gammas"][""] == pytest.approx(1.0)

    second = _short_run(tmp_path / "b", *ramp, f"ckpt_path={last}")
    run(second)
    last = Path(second.paths.checkpoint_dir) / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 and state["global_step"] == 6
    assert state["loss_gammas"][""] == pytest.approx(2.0)
    adam = state["optimizer_states"][0]["state"]
    assert all(int(s["step"]) == 6 for s in adam.values())
    assert state["lr_schedulers"][0]["last_epoch"] == 3
    # Only the third epoch was trained in the resumed run.
    with open(Path(second.paths.output_dir) / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {int(r["epoch"]) for r in rows if r["train/loss"]} == {2}


CAMVID = ROOT.parent / "shared" / "data" / "camvid"


@pytest.mark.slow
@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID} (see shared/data/README.md)")
def test_camvid_fast_dev_run(tmp_path):
    cfg = make_cfg(tmp_path, "datamodule=camvid", f"datamodule.root={CAMVID}", "trainer.fast_dev_run=true",
                   "datamodule.batch_size=2", "datamodule.num_workers=0")
    assert run(cfg) is not None
    metrics = read_metrics(cfg)
    assert "Pedestrian" in metrics["test"]["per_class"] and len(metrics["test"]["per_class"]) == 11


# ---- clear errors -----------------------------------------------------------------------------------------


def test_missing_data_root_names_the_override(tmp_path):
    cfg = make_cfg(tmp_path, "datamodule=camvid")
    with pytest.raises(ValueError, match=r"datamodule\.root="):
        run(cfg)


def test_nonexistent_data_root_names_the_override(tmp_path):
    cfg = make_cfg(tmp_path, "datamodule=camvid", f"datamodule.root={tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match=r"datamodule\.root="):
        run(cfg)


def test_model_classes_disagreeing_with_data(tmp_path):
    cfg = make_cfg(tmp_path, "model.num_classes=3")
    with pytest.raises(ValueError, match=r"model\.num_classes=3 disagrees with datamodule\.num_classes=5"):
        run(cfg)


def _write_folder_dataset(root: Path, mask_value: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for d in ("images", "masks"):
            (root / split / d).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                root / split / "images" / f"{i}.png"
            )
            mask = np.zeros((32, 32), dtype=np.uint8)
            mask[8:16, 8:16] = mask_value
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")


def test_mask_values_beyond_num_classes(tmp_path):
    root = tmp_path / "data"
    _write_folder_dataset(root, mask_value=7)
    cfg = make_cfg(tmp_path, "datamodule=folder", f"datamodule.root={root}", "datamodule.num_classes=3",
                   "datamodule.crop_size=[32,32]", "datamodule.num_workers=0", "debug=fdr")
    with pytest.raises(ValueError, match="7") as err:
        run(cfg)
    assert "masks" in str(err.value)  # names the file at fault


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(tmp_path):
    cfg = make_cfg(tmp_path / "a", "debug=fdr", "loss=ce")
    run(cfg)
    last = Path(cfg.paths.checkpoint_dir) / "last.ckpt"
    assert last.is_file()
    for mode in ("train=false", "train=true"):  # evaluation and resume
        other = make_cfg(tmp_path / "b", "debug=fdr", "loss=ce", "model=fpn", mode, f"ckpt_path={last}")
        with pytest.raises(CheckpointMismatchError, match="does not match the model"):
            run(other)


def test_evaluation_needs_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="ckpt_path="):
        run(make_cfg(tmp_path, "train=false"))
    with pytest.raises(FileNotFoundError, match="ckpt_path="):
        run(make_cfg(tmp_path, "train=false", f"ckpt_path={tmp_path / 'none.ckpt'}"))


# ---- the script -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_py_subprocess_writes_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [o for o in tiny(tmp_path) if not o.startswith(("paths.output_dir", "logger="))]
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", "debug=limit", "model.encoder_depth=3",
           "model.arch.decoder_channels=[32,16,8]", "callbacks.prediction_grid.every_n_epochs=1", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(n.startswith("best-epoch") for n in checkpoints)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert list((run_dir / "predictions").glob("*.png"))
    weights = json.loads((run_dir / "class_weights.json").read_text())
    assert set(weights["classes"]) == {"background", "disc", "square", "bar", "cross"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_epoch"] in (0, 1)
    assert math.isfinite(metrics["val"]["mIoU"]) and math.isfinite(metrics["test"]["mIoU"])
    assert "final results" in proc.stdout
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss", "train/loss/focal", "train/loss/dice", "train/gamma", "val/mIoU", "val/mDice",
                "val/iou/cross", "val/dice/cross"):
        assert key in header


@pytest.mark.slow
def test_multirun_sweeps_gamma_over_focal_losses(tmp_path):
    """A sweep of gamma over options that read it (a sweep that includes `ce` is refused before its first
    job: tests/runs/test_unused_overrides.py)."""
    overrides = [o for o in tiny(tmp_path) if not o.startswith(("paths.output_dir", "logger="))]
    cmd = [sys.executable, "train.py", "-m", "loss=focal,focal_dice", "loss.gamma=0.5", "debug=fdr",
           "~logger", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for job, loss in enumerate(("focal", "focal_dice")):
        job_dir = tmp_path / "sweep" / str(job)
        assert json.loads((job_dir / "metrics.json").read_text())["test"]["mIoU"] is not None
        config = (job_dir / ".hydra" / "config.yaml").read_text()
        assert f"name: {loss}" in config and "gamma: 0.5" in config


# ---- multilabel -------------------------------------------------------------------------------------------

MULTILABEL_NAMES = ["sky", "tree", "car"]


def _write_multilabel_dataset(root: Path) -> None:
    """3 labels stored as bit flags (bit c = label c present) in 8-bit PNG masks, 2 images per split:
    overlapping squares of labels 0 and 1, label 2 in a bar, a few pixels ignored (255)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for d in ("images", "masks"):
            (root / split / d).mkdir(parents=True)
        for i in range(2):
            mask = np.zeros((32, 32), dtype=np.uint8)
            mask[4:20, 4:20] |= 1
            mask[12:28, 12:28] |= 2
            mask[:, 28 - 4 * i :] |= 4
            mask[0, :3] = 255
            image = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            image[..., 0] += (mask & 1).astype(np.uint8) * 150
            Image.fromarray(image).save(root / split / "images" / f"{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")


def _multilabel_cfg(tmp_path: Path, *extra: str) -> DictConfig:
    root = tmp_path / "data"
    if not root.exists():
        _write_multilabel_dataset(root)
    return make_cfg(tmp_path, "datamodule=folder", f"datamodule.root={root}", "datamodule.mode=multilabel",
                    "datamodule.num_classes=3", f"datamodule.class_names=[{','.join(MULTILABEL_NAMES)}]",
                    "datamodule.crop_size=[32,32]", "datamodule.num_workers=0", "datamodule.batch_size=2",
                    "debug=fdr", "model.encoder_depth=3", "model.arch.decoder_channels=[32,16,8]", *extra)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["focal_dice", "ce"])
def test_multilabel_folder_fast_dev_run(tmp_path, loss):
    cfg = _multilabel_cfg(tmp_path, f"loss={loss}")
    score = run(cfg)
    assert score is not None and 0.0 <= score <= 1.0
    metrics = read_metrics(cfg)
    for split in ("val", "test"):
        assert set(metrics[split]["per_class"]) == set(MULTILABEL_NAMES)
        assert 0.0 <= metrics[split]["pixel_acc"] <= 1.0
    assert metrics["val"]["mIoU"] == pytest.approx(score)
    # label statistics count each label's pixels (16 x 16 squares of labels 0 and 1 in both training images)
    record = json.loads((Path(cfg.paths.output_dir) / "class_weights.json").read_text())
    assert set(record["classes"]) == set(MULTILABEL_NAMES)
    assert record["classes"]["sky"]["pixel_count"] == record["classes"]["tree"]["pixel_count"] == 512


def test_multilabel_refuses_per_class_weights(tmp_path):
    with pytest.raises(ValueError, match=r"datamodule\.mode=multilabel use class_weights=none"):
        run(_multilabel_cfg(tmp_path, "class_weights=inverse"))
