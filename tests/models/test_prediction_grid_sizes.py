"""Prediction grids of validation images of different sizes: the advice of the datamodule's collate error
(``datamodule.eval_batch_size=1``) works end to end."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.callbacks import PredictionGridCallback
from evaluation.grids import GAP, HEADER, render_grid
from runs.training import run
from tests.test_train import _short_run


def test_render_grid_draws_each_row_at_its_own_size():
    images = [torch.zeros(3, 8, 8), torch.zeros(3, 16, 4)]
    masks = [torch.ones(8, 8, dtype=torch.long), torch.full((16, 4), 2)]
    grid = np.asarray(render_grid(images, masks, masks, num_classes=3, min_tile=16))
    # one scale (x1: the largest side is 16) for all rows; columns as wide as the widest sample
    assert grid.shape == (HEADER + (8 + GAP) + (16 + GAP) + GAP, 3 * 8 + 4 * GAP, 3)
    gt_x, second_top = GAP + (8 + GAP), HEADER + GAP + 8 + GAP
    assert tuple(grid[HEADER + GAP + 4, gt_x + 4]) == (128, 0, 0)  # class 1, first row
    assert tuple(grid[second_top + 12, gt_x + 2]) == (0, 128, 0)  # class 2, second row (16 x 4)
    assert tuple(grid[second_top + 12, gt_x + 6]) == (40, 40, 40)  # right of the narrow tile: background


def test_callback_with_batches_of_different_sizes(tmp_path):
    callback = PredictionGridCallback(dirpath=str(tmp_path), num_samples=3)
    trainer = SimpleNamespace(
        sanity_checking=False, current_epoch=0, max_epochs=1, is_global_zero=True,
        datamodule=SimpleNamespace(mean=None, std=None), default_root_dir=str(tmp_path),
    )  # fmt: skip
    module = SimpleNamespace(metric_classes=3)
    callback.on_validation_epoch_start(trainer, module)
    for i, (h, w) in enumerate([(32, 32), (64, 32), (32, 64), (64, 64)]):  # batches of one image each
        batch = {"image": torch.rand(1, 3, h, w), "mask": torch.randint(0, 3, (1, h, w))}
        callback.on_validation_batch_end(trainer, module, {"preds": batch["mask"]}, batch, i)
    callback.on_validation_epoch_end(trainer, module)
    with Image.open(tmp_path / "val_epoch000.png") as img:  # 3 samples, scaled x2 (largest side 64)
        assert img.size == (3 * 128 + 4 * GAP, HEADER + (64 + GAP) + (128 + GAP) + (64 + GAP) + GAP)


def _write_mixed_size_dataset(root: Path) -> None:
    """Train images 32x32; val and test images of two sizes, 32x32 and 64x48."""
    rng = np.random.default_rng(0)
    splits = {"train": [(32, 32)] * 4, "val": [(32, 32), (64, 48)], "test": [(64, 48), (32, 32)]}
    for split, sizes in splits.items():
        for d in ("images", "masks"):
            (root / split / d).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                root / split / "images" / f"{i}.png"
            )
            mask = np.zeros((h, w), dtype=np.uint8)
            mask[4:12, 4:12] = 1
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")


@pytest.mark.slow
def test_mixed_size_validation_images_with_eval_batch_size_1(tmp_path):
    root = tmp_path / "data"
    _write_mixed_size_dataset(root)
    cfg = _short_run(
        tmp_path, "datamodule=folder", f"datamodule.root={root}", "datamodule.num_classes=2",
        "datamodule.crop_size=[32,32]", "datamodule.num_workers=0", "datamodule.eval_batch_size=1",
        "datamodule.batch_size=2",
    )  # fmt: skip
    run(cfg)
    grids = sorted((Path(cfg.paths.output_dir) / "predictions").glob("val_epoch*.png"))
    assert grids, "no prediction grid written"
    with Image.open(grids[-1]) as img:  # eval pads to multiples of 32: 32x32 and 64x64, scaled x2
        assert img.size == (3 * 128 + 4 * GAP, HEADER + (64 + GAP) + (128 + GAP) + GAP)
