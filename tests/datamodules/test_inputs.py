"""datamodules.inputs and the prediction side of datamodules.io: which files are predicted, under which
output names, and how images are converted to the model's channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules import list_inputs, read_image_converted, write_index_mask


def _image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_folder_is_searched_recursively_skipping_hidden_and_non_images(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    _image(tmp_path / "b.PNG", rgb)
    _image(tmp_path / "sub" / "deeper" / "a.jpg", rgb)
    _image(tmp_path / ".hidden" / "c.png", rgb)
    _image(tmp_path / ".d.png", rgb)
    (tmp_path / "notes.txt").write_text("x")
    listing = list_inputs(tmp_path)
    assert [i.relative.as_posix() for i in listing.images] == ["b", "sub/deeper/a"]
    assert [p.name for p in listing.ignored] == ["notes.txt"]


def test_the_output_folder_is_never_an_input(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    _image(tmp_path / "a.png", rgb)
    _image(tmp_path / "pred" / "masks" / "a.png", rgb)  # an earlier prediction into input/pred
    _image(tmp_path / "predictions_other" / "b.png", rgb)  # a sibling with a similar name stays
    listing = list_inputs(tmp_path, exclude=tmp_path / "pred")
    assert [i.relative.as_posix() for i in listing.images] == ["a", "predictions_other/b"]
    assert len(list_inputs(tmp_path).images) == 3
    (tmp_path / "list.txt").write_text("a.png\npred/masks/a.png\n")
    with pytest.raises(ValueError, match=r"list.txt, line 2: .*inside the output folder"):
        list_inputs(tmp_path / "list.txt", exclude=tmp_path / "pred")
    with pytest.raises(ValueError, match="inside the output folder"):
        list_inputs(tmp_path / "pred" / "masks", exclude=tmp_path / "pred")


def test_list_file_paths_are_relative_to_the_list(tmp_path):
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "val.lst"
    listing.write_text("../img/x.png  ../masks/x.png\n# comment\n/abs/y.png\n")
    images = list_inputs(listing).images
    assert [i.path for i in images] == [tmp_path / "lists" / ".." / "img" / "x.png", Path("/abs/y.png")]
    assert [i.relative.as_posix() for i in images] == ["x", "y"]  # outside the list's folder: the name


def test_output_names_never_coincide(tmp_path):
    listing = tmp_path / "l.txt"
    listing.write_text("a/x.png\nb/x.png\n/elsewhere/x.png\n/other/x.png\nx.jpg\n")
    names = [i.relative.as_posix() for i in list_inputs(listing).images]
    assert names == ["a/x", "b/x", "x_png_1", "x_png_2", "x_jpg"]


def test_empty_inputs(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        list_inputs(tmp_path)
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(ValueError, match=r"1 other files, e\.g\. a\.json"):
        list_inputs(tmp_path)
    with pytest.raises(FileNotFoundError, match="input="):
        list_inputs(tmp_path / "missing")


@pytest.mark.parametrize(
    ("array", "note"),
    [
        (np.full((3, 5), 7, np.uint8), "grayscale -> RGB (channel replicated)"),
        (np.full((3, 5, 4), 7, np.uint8), "RGBA -> RGB (alpha dropped)"),
        (np.full((3, 5, 3), 7, np.uint8), None),
    ],
)
def test_conversions_to_rgb(tmp_path, array, note):
    image, said = read_image_converted(_image(tmp_path / "x.png", array), 3)
    assert image.shape == (3, 5, 3) and (image == 7).all() and said == note


def test_grayscale_model_takes_equal_channel_rgb_but_not_colour(tmp_path):
    image, said = read_image_converted(_image(tmp_path / "eq.png", np.full((2, 2, 3), 9, np.uint8)), 1)
    assert image.shape == (2, 2, 1) and said == "RGB with equal channels -> grayscale"
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[..., 0] = 255
    with pytest.raises(ValueError, match="convert the images to grayscale"):
        read_image_converted(_image(tmp_path / "c.png", colour), 1)


def test_sixteen_bit_images_are_refused_by_name(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((2, 2), 1000, np.uint16)).save(path)
    with pytest.raises(ValueError, match=r"deep\.png.*16-bit"):
        read_image_converted(path, 3)


def test_index_mask_is_a_palette_png(tmp_path):
    mask = np.array([[0, 1], [2, 1]], np.int64)
    write_index_mask(tmp_path / "m.png", mask, [[0, 0, 0], [255, 0, 0], [0, 0, 255]])
    img = Image.open(tmp_path / "m.png")
    assert img.mode == "P" and np.array_equal(np.asarray(img), mask)
    assert img.getpalette()[:9] == [0, 0, 0, 255, 0, 0, 0, 0, 255]
    write_index_mask(tmp_path / "gray.png", np.array([[0, 7], [3, 7]]), None)  # no palette: 8-bit grayscale
    assert np.asarray(Image.open(tmp_path / "gray.png")).tolist() == [[0, 7], [3, 7]]
    write_index_mask(tmp_path / "wide.png", np.array([[0, 300]]), None)  # > 8 bits: 16-bit, no palette
    assert np.asarray(Image.open(tmp_path / "wide.png")).tolist() == [[0, 300]]
