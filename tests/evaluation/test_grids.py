"""Class colours, bit flags and the prediction grid (evaluation.grids, evaluation.callbacks)."""

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.callbacks import PredictionGridCallback
from evaluation.grids import GAP, HEADER, IGNORE_COLOR, color_palette, label_flags, render_grid
from seglosses.focal import CrossEntropyLoss, FocalLoss


def test_palette_is_voc():
    palette = color_palette(4)
    assert palette.tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert len({tuple(c) for c in color_palette(21)}) == 21


def test_render_grid_layout_and_colours():
    images = torch.zeros(2, 3, 8, 8)
    masks = torch.ones(2, 8, 8, dtype=torch.long)
    masks[:, 0, 0] = 255
    preds = torch.full((2, 8, 8), 2)
    grid = np.asarray(render_grid(images, masks, preds, num_classes=3, min_tile=16))  # tiles 16 x 16
    assert grid.shape == (HEADER + 2 * (16 + GAP) + GAP, 3 * 16 + 4 * GAP, 3)
    top = HEADER + GAP
    gt_x, pred_x = GAP + (16 + GAP), GAP + 2 * (16 + GAP)
    assert tuple(grid[top + 8, gt_x + 8]) == (128, 0, 0)  # class 1
    assert tuple(grid[top, gt_x]) == IGNORE_COLOR  # ignored pixel, scaled x2
    assert tuple(grid[top + 8, pred_x + 8]) == (0, 128, 0)  # class 2


@pytest.mark.slow
def test_prediction_grid_is_saved_each_validation_epoch(make_module, trainer, loader, tmp_path):
    module = make_module(CrossEntropyLoss(ignore_index=255))
    callback = PredictionGridCallback(dirpath=str(tmp_path / "pred"), num_samples=3)
    t = trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=2, callbacks=[callback])
    t.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    files = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert files == ["val_epoch000.png", "val_epoch001.png"]
    with Image.open(tmp_path / "pred" / "val_epoch001.png") as img:
        # 32 px images enlarged x4 to 128 px tiles; 3 samples taken from the first (4-image) batch
        assert img.size == (3 * 128 + 4 * GAP, HEADER + 3 * (128 + GAP) + GAP)


def test_prediction_grid_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        PredictionGridCallback(num_samples=0)


def test_label_flags_encode_label_sets_and_mark_ignored_pixels():
    masks = torch.tensor([[[[0, 1, 1, 255]], [[0, 0, 1, 255]], [[0, 1, 1, 255]]]])  # (1, 3, 1, 4)
    assert label_flags(masks).tolist() == [[[0, 1 + 4, 1 + 2 + 4, -1]]]


def test_multilabel_prediction_grid_draws_label_sets(make_module, trainer, multilabel_loader, tmp_path):
    module = make_module(FocalLoss(mode="multilabel", ignore_index=255), mode="multilabel")
    callback = PredictionGridCallback(dirpath=str(tmp_path / "pred"), num_samples=2)
    t = trainer(fast_dev_run=True, callbacks=[callback])
    t.fit(module, train_dataloaders=multilabel_loader(), val_dataloaders=multilabel_loader())
    with Image.open(callback.last_path) as img:
        grid = np.asarray(img.convert("RGB"))
    assert grid.shape == (HEADER + 2 * (128 + GAP) + GAP, 3 * 128 + 4 * GAP, 3)
    # ground truth of sample 0, enlarged x4: pixel (0, 0) ignored (white), pixel (8, 8) its label set's colour
    mask = multilabel_loader().dataset[0]["mask"]
    gt_x, top = GAP + (128 + GAP), HEADER + GAP
    assert tuple(grid[top, gt_x]) == IGNORE_COLOR
    flag = int(label_flags(mask[None, :, 8:9, 8:9]))
    assert tuple(grid[top + 8 * 4, gt_x + 8 * 4]) == tuple(color_palette(8)[flag])
