"""The pieces of sliding-window prediction on their own (inference.tiles, inference.predict.forward_tiles and
accumulate); the whole, against naive references: tests/inference/test_predict.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inference import InferenceConfig
from inference.predict import accumulate, forward_tiles
from inference.tiles import axis_weights, tile_boxes, tile_grid, tile_starts, tile_weights


def coverage(grid, images: int, dims=()) -> torch.Tensor:
    """How many tiles of one pass cover each pixel: (images, H, W)."""
    count = torch.zeros(images, grid.height, grid.width)
    valid_h, valid_w = grid.valid
    for boxes in tile_boxes(grid, images, dims):
        assert 0 < len(boxes) <= grid.batch_size
        for box in boxes:
            count[box.image, box.top : box.top + valid_h, box.left : box.left + valid_w] += 1
    return count


@pytest.mark.parametrize(("h", "w"), [(70, 90), (32, 32), (20, 100), (1, 1)])
@pytest.mark.parametrize("dims", [(), (2,), (3,), (2, 3)])
def test_the_boxes_of_a_pass_cover_every_pixel(h, w, dims):
    config = InferenceConfig(mode="slide", tile=32, overlap=0.5, batch_size=3, multiple=8)
    grid = tile_grid(config, 2, h, w)
    assert grid.starts_h == tile_starts(h, 32, 0.5) and grid.starts_w == tile_starts(w, 32, 0.5)
    count = coverage(grid, 2, dims)
    assert bool((count >= 1).all())
    assert int(sum(len(b) for b in tile_boxes(grid, 2, dims))) == 2 * len(grid.starts_h) * len(grid.starts_w)
    # a flipped pass covers the mirrored image: its coverage is the flipped coverage of the plain pass
    torch.testing.assert_close(count, coverage(grid, 2).flip([d - 1 for d in dims]) if dims else count)


def test_whole_is_one_padded_tile_per_image_in_one_batch():
    grid = tile_grid(InferenceConfig(mode="whole", multiple=32), 3, 70, 90)
    assert (grid.tile, grid.starts_h, grid.starts_w, grid.blend) == ((96, 96), [0], [0], "constant")
    assert grid.valid == (70, 90) and grid.pad == (26, 6)
    assert [[(b.image, b.top, b.left) for b in boxes] for boxes in tile_boxes(grid, 3)] == [
        [(0, 0, 0), (1, 0, 0), (2, 0, 0)]
    ]


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_tile_weights_of_a_pass_sum_to_its_share_everywhere(blend):
    config = InferenceConfig(mode="slide", tile=32, overlap=0.25, blend=blend, multiple=8)
    grid = tile_grid(config, 1, 70, 90)
    scale = 0.25  # one of four TTA passes
    weights_h, _ = axis_weights(70, 32, grid.starts_h, blend, scale, torch.device("cpu"))
    weights_w, _ = axis_weights(90, 32, grid.starts_w, blend, 1.0, torch.device("cpu"))
    acc = torch.zeros(1, 1, 70, 90)
    for boxes in tile_boxes(grid, 1):
        accumulate(acc, tile_weights(weights_h, weights_w, boxes), boxes, grid)
    torch.testing.assert_close(acc, torch.full_like(acc, scale))


def test_forward_tiles_is_crop_flip_pad_forward_activation_crop():
    torch.manual_seed(0)
    net = nn.Conv2d(3, 4, 3, padding=1)
    image = torch.randn(1, 3, 20, 50)
    config = InferenceConfig(mode="slide", tile=32, overlap=0.5, multiple=8)
    grid = tile_grid(config, 1, 20, 50)
    assert grid.valid == (20, 32) and grid.pad == (12, 0)
    boxes = next(tile_boxes(grid, 1, (3,)))
    got = forward_tiles(net, image, boxes, grid, (3,), "softmax", "constant", 8)
    box = boxes[0]
    tile = image[:, :, :, box.left : box.left + 32].flip(3)
    padded = torch.nn.functional.pad(tile, (0, 0, 0, 12))
    with torch.no_grad():
        expected = net(padded).softmax(1)[:, :, :20]
    torch.testing.assert_close(got[:1], expected)
    assert got.shape == (len(boxes), 4, 20, 32)


def test_forward_tiles_refuses_an_output_of_another_size():
    grid = tile_grid(InferenceConfig(mode="whole", multiple=8), 1, 16, 16)
    boxes = next(tile_boxes(grid, 1))
    with pytest.raises(ValueError, match=r"does not have its input's size.*inference\.multiple=8"):
        forward_tiles(nn.Conv2d(3, 2, 3), torch.zeros(1, 3, 16, 16), boxes, grid, (), "sigmoid", "constant",
                      8)
