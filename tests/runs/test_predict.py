"""predict.py (runs.predicting): folders of mixed sizes mirrored into masks/probabilities/overlays, list
files, palettes, the inferer's modes, bad input (unreadable files, wrong channels, existing outputs, empty
input) and the exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from inference import InferenceConfig, load_for_inference, predict_probabilities
from runs.predicting import normalise, predict
from tests.runs.inference_helpers import make_checkpoint, write_image

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def predict_cfg(ckpt: Path, source: Path, output: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="predict",
            overrides=[
                f"ckpt_path={ckpt}",
                f"input={source}",
                f"output={output}",
                "progress=false",
                *overrides,
            ],
        )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))[0]


@pytest.fixture
def images(tmp_path) -> Path:
    """A folder of mixed sizes: one larger than the 32x32 tile, one smaller, one not a multiple of 8, in a
    subfolder, plus a non-image file."""
    root = tmp_path / "in"
    write_image(root / "large.png", 70, 90, seed=1)
    write_image(root / "small.jpg", 20, 24, seed=2)
    write_image(root / "nested" / "odd.png", 33, 41, seed=3)
    (root / "README.md").write_text("not an image")
    return root


def test_folder_of_mixed_sizes_is_mirrored_with_the_image_sizes(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    summary = predict(predict_cfg(checkpoint, images, out, "save.overlays=true", "save.probabilities=uint8"))
    assert summary.done == 3 and not summary.skipped and summary.ignored_files == 1
    sizes = {"large": (90, 70), "small": (24, 20), "nested/odd": (41, 33)}
    _, info = load_for_inference(checkpoint)
    for name, size in sizes.items():
        mask = Image.open(out / "masks" / f"{name}.png")
        assert mask.mode == "P" and mask.size == size
        assert mask.getpalette()[: 3 * 5] == [v for c in info.class_colors for v in c]
        assert np.asarray(mask).max() < 5
        overlay = Image.open(out / "overlays" / f"{name}.png")
        assert overlay.mode == "RGB" and overlay.size == size
        probs = np.load(out / "probabilities" / f"{name}.npy")
        assert probs.dtype == np.uint8 and probs.shape == (5, size[1], size[0])
        assert np.abs(probs.astype(int).sum(0) - 255).max() <= 5  # rounding of 5 values
    record = json.loads((out / "summary.json").read_text())
    assert record["done"] == 3 and record["skipped"] == [] and record["images_per_second"] > 0


def test_mask_is_the_argmax_of_the_inferer_on_the_normalised_image(checkpoint, tmp_path):
    path = write_image(tmp_path / "in" / "a.png", 70, 90, seed=4)
    out = tmp_path / "out"
    predict(predict_cfg(checkpoint, path, out, "save.probabilities=float16", "inference.mode=slide"))
    network, info = load_for_inference(checkpoint)
    x = normalise(np.asarray(Image.open(path)), info)
    config = InferenceConfig(mode="slide", tile=(32, 32), multiple=info.size_multiple)
    probs = predict_probabilities(network, x, config, activation="softmax")[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "masks" / "a.png")), probs.argmax(0).numpy())
    stored = np.load(out / "probabilities" / "a.npy")
    assert stored.dtype == np.float16
    np.testing.assert_allclose(stored.astype(np.float32), probs.numpy(), atol=1e-3)


def test_list_file_and_single_file_inputs(checkpoint, images, tmp_path):
    listing = tmp_path / "in" / "list.txt"
    listing.write_text("# images to predict\nlarge.png\n\nnested/odd.png  extra-column\n")
    summary = predict(predict_cfg(checkpoint, listing, tmp_path / "a"))
    assert summary.done == 2
    assert {p.relative_to(tmp_path / "a" / "masks").as_posix() for p in (tmp_path / "a").rglob("*.png")} == {
        "large.png",
        "nested/odd.png",
    }
    summary = predict(predict_cfg(checkpoint, images / "small.jpg", tmp_path / "b"))
    assert summary.done == 1 and (tmp_path / "b" / "masks" / "small.png").is_file()


def test_names_differing_only_by_extension_do_not_overwrite_each_other(checkpoint, tmp_path):
    write_image(tmp_path / "in" / "a.png", 16, 16)
    write_image(tmp_path / "in" / "a.jpg", 16, 16)
    predict(predict_cfg(checkpoint, tmp_path / "in", tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["a_jpg.png", "a_png.png"]


def test_unreadable_files_are_named_skipped_and_counted(checkpoint, images, tmp_path):
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    summary = predict(predict_cfg(checkpoint, images, tmp_path / "out"))
    assert summary.done == 3 and len(summary.skipped) == 1
    assert summary.skipped[0]["path"].endswith("broken.png") and "cannot read" in summary.skipped[0]["reason"]
    with pytest.raises(ValueError, match=r"broken.png.*on_error=fail"):
        predict(predict_cfg(checkpoint, images, tmp_path / "out2", "on_error=fail"))


def test_channel_conversions_are_made_and_said(checkpoint, tmp_path):
    write_image(tmp_path / "in" / "gray.png", 16, 16, mode="L")
    write_image(tmp_path / "in" / "alpha.png", 16, 16, mode="RGBA")
    summary = predict(predict_cfg(checkpoint, tmp_path / "in", tmp_path / "out"))
    assert summary.done == 2
    assert summary.conversions == {
        "grayscale -> RGB (channel replicated)": 1,
        "RGBA -> RGB (alpha dropped)": 1,
    }


def test_colour_image_for_a_grayscale_model_is_refused_unless_its_channels_are_equal(tmp_path):
    ckpt, _ = make_checkpoint(
        tmp_path, "datamodule.in_channels=1", "datamodule.mean=[0.5]", "datamodule.std=[0.25]"
    )
    write_image(tmp_path / "in" / "colour.png", 16, 16)
    gray = np.asarray(Image.open(write_image(tmp_path / "g.png", 16, 16, mode="L")))
    Image.fromarray(np.repeat(gray[..., None], 3, axis=2)).save(tmp_path / "in" / "equal.png")
    summary = predict(predict_cfg(ckpt, tmp_path / "in", tmp_path / "out"))
    assert summary.done == 1 and summary.conversions == {"RGB with equal channels -> grayscale": 1}
    assert "colour (RGB) image but the model takes 1 channel" in summary.skipped[0]["reason"]


def test_existing_predictions_are_not_overwritten_without_overwrite(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    predict(predict_cfg(checkpoint, images, out))
    before = (out / "masks" / "large.png").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="overwrite=true"):
        predict(predict_cfg(checkpoint, images, out))
    assert (out / "masks" / "large.png").stat().st_mtime_ns == before
    assert predict(predict_cfg(checkpoint, images, out, "overwrite=true")).done == 3


def test_empty_or_missing_input_is_a_clear_error(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        predict(predict_cfg(checkpoint, tmp_path / "empty", tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predict(predict_cfg(checkpoint, tmp_path / "missing", tmp_path / "out"))
    (tmp_path / "list.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists no images"):
        predict(predict_cfg(checkpoint, tmp_path / "list.txt", tmp_path / "out"))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("on_error=ignore", "on_error"),
        ("inference.threshold=2", "inference.threshold"),
        ("save.probabilities=int8", "save.probabilities"),
        ("inference.overlap=1.5", "inference.overlap"),
        ("device=tpu", "device"),
    ],
)
def test_bad_options_are_named(checkpoint, images, tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        predict(predict_cfg(checkpoint, images, tmp_path / "out", override))


def test_tta_and_tiles_change_nothing_but_the_probabilities(checkpoint, images, tmp_path):
    base = predict(predict_cfg(checkpoint, images, tmp_path / "a"))
    tta = predict(
        predict_cfg(
            checkpoint,
            images,
            tmp_path / "b",
            "inference.tta=[hflip,vflip]",
            "inference.mode=slide",
            "inference.overlap=0.5",
        )
    )
    assert base.done == tta.done == 3
    for name in ("large", "small", "nested/odd"):
        assert (
            Image.open(tmp_path / "a" / "masks" / f"{name}.png").size
            == Image.open(tmp_path / "b" / "masks" / f"{name}.png").size
        )


@pytest.mark.slow
def test_predict_command_exit_status(checkpoint, images, tmp_path):
    command = [
        sys.executable,
        str(ROOT / "predict.py"),
        f"ckpt_path={checkpoint}",
        f"input={images}",
        "progress=false",
    ]
    ok = subprocess.run([*command, f"output={tmp_path / 'a'}"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "images done" in ok.stdout
    (images / "broken.png").write_text("x")
    bad = subprocess.run([*command, f"output={tmp_path / 'b'}"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "1 of 4 images were skipped" in bad.stderr
    assert (tmp_path / "b" / "masks" / "large.png").is_file()  # the others were written


def test_binary_threshold_masks_are_0_1(tmp_path):
    """Multilabel/binary: labels are thresholded probabilities (mask_values encodes multilabel as bits)."""
    from runs.predicting import mask_values

    labels = torch.tensor([[[1, 0], [1, 1]], [[0, 0], [1, 0]]])
    assert mask_values(labels, "multilabel").tolist() == [[1, 0], [3, 1]]
    assert mask_values(labels[0], "binary").tolist() == [[1, 0], [1, 1]]


@pytest.mark.slow
def test_camvid_test_images_give_masks_of_their_size(tmp_path):
    """Real photographs (the first 40 of CamVid's test split, linked into a folder) through predict()."""
    from tests.datamodules.helpers import CAMVID

    if not CAMVID.is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (see /work/shared/data/README.md)")
    ckpt, _ = make_checkpoint(
        tmp_path, "experiment=camvid", f"datamodule.root={CAMVID}", "model.encoder_name=resnet18"
    )
    images = tmp_path / "images"
    images.mkdir()
    for image in sorted((CAMVID / "test").glob("*.png"))[:40]:
        (images / image.name).symlink_to(image)
    out = tmp_path / "out"
    # whole-image inference (360x480 padded to 384x480): one pass per image keeps the test short
    summary = predict(predict_cfg(ckpt, images, out, "inference.mode=whole"))
    assert summary.done == 40 and not summary.skipped
    masks = sorted((out / "masks").glob("*.png"))
    assert [m.stem for m in masks] == sorted(p.stem for p in images.iterdir())
    for mask in masks:
        assert Image.open(mask).size == Image.open(images / mask.name).size


def test_binary_checkpoint_writes_thresholded_0_1_masks(tmp_path):
    from tests.runs.test_failures import folder_overrides, write_folder_dataset

    root = tmp_path / "data"
    write_folder_dataset(root, {"train": 4, "val": 2, "test": 2})  # masks {0, 1}
    ckpt, _ = make_checkpoint(
        tmp_path,
        *folder_overrides(root),
        "datamodule.num_classes=1",
        "datamodule.mode=binary",
        "datamodule.class_colors=[[255,0,0]]",
    )
    network, info = load_for_inference(ckpt)
    assert info.mode == "binary" and info.class_names == ["background", "class_0"]
    assert info.class_colors == [[0, 0, 0], [255, 0, 0]]
    path = write_image(tmp_path / "in" / "a.png", 40, 40)
    x = normalise(np.asarray(Image.open(path)), info)
    probs = predict_probabilities(
        network, x, InferenceConfig(multiple=info.size_multiple), activation="sigmoid"
    )
    threshold = float(probs.median())  # half of the pixels on, whatever the untrained network says
    out = tmp_path / "out"
    predict(
        predict_cfg(
            ckpt, path, out, f"inference.threshold={threshold}", "save.probabilities=float16",
            "inference.mode=whole",
        )
    )
    mask = np.asarray(Image.open(out / "masks" / "a.png"))
    np.testing.assert_array_equal(mask, (probs[0, 0] > threshold).numpy().astype(np.uint8))
    assert np.load(out / "probabilities" / "a.npy").shape == (1, 40, 40)


def test_a_second_prediction_into_the_input_folder_never_reads_the_first(checkpoint, images, tmp_path):
    out = images / "pred"
    first = predict(predict_cfg(checkpoint, images, out))
    second = predict(predict_cfg(checkpoint, images, out, "overwrite=true"))
    assert first.done == second.done == 3
    masks = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png"))
    assert masks == ["large.png", "nested/odd.png", "small.png"]
    assert not (out / "masks" / "pred").exists()


def _binary_checkpoint(tmp_path: Path, *overrides: str) -> Path:
    from tests.runs.test_failures import folder_overrides, write_folder_dataset

    root = tmp_path / "data"
    write_folder_dataset(root, {"train": 4, "val": 2, "test": 2})
    return make_checkpoint(tmp_path, *folder_overrides(root), "datamodule.num_classes=1",
                           "datamodule.mode=binary", *overrides)[0]


@pytest.mark.parametrize("colors", [None, [[0, 200, 0]]])
def test_binary_masks_and_overlays_show_the_foreground(tmp_path, colors):
    """Background and foreground get distinct colours (the grids': black and red by default)."""
    extra = [] if colors is None else [f"datamodule.class_colors={colors}"]
    ckpt = _binary_checkpoint(tmp_path, *extra)
    foreground = [128, 0, 0] if colors is None else colors[0]
    assert load_for_inference(ckpt)[1].class_colors == [[0, 0, 0], foreground]
    path = write_image(tmp_path / "in" / "a.png", 24, 24)
    out = tmp_path / "out"
    # threshold 0: every pixel is foreground, whatever the untrained network says
    predict(predict_cfg(ckpt, path, out, "inference.threshold=0", "save.overlays=true",
                        "save.overlay_alpha=1"))
    mask = Image.open(out / "masks" / "a.png")
    assert mask.mode == "P" and mask.getpalette()[:6] == [0, 0, 0, *foreground]
    assert np.asarray(mask).min() == 1
    overlay = np.asarray(Image.open(out / "overlays" / "a.png"))
    assert (overlay == np.array(foreground, np.uint8)).all()


def test_multilabel_masks_use_the_flag_colours_of_the_grids(tmp_path):
    from evaluation.grids import default_class_colors, flag_palette

    assert default_class_colors("multilabel", 3) == [flag_palette(3)[f].tolist() for f in (1, 2, 4)]
    assert [0, 0, 0] not in default_class_colors("multilabel", 3)  # every label shows
    from tests.runs.test_failures import folder_overrides, write_folder_dataset

    write_folder_dataset(tmp_path / "data", {"train": 4, "val": 2, "test": 2})  # flags 0/1: label 0
    ckpt, _ = make_checkpoint(tmp_path, *folder_overrides(tmp_path / "data"), "datamodule.mode=multilabel",
                              "datamodule.num_classes=3")
    info = load_for_inference(ckpt)[1]
    assert info.class_colors == default_class_colors("multilabel", 3)
    path = write_image(tmp_path / "in" / "a.png", 16, 16)
    predict(predict_cfg(ckpt, path, tmp_path / "out", "inference.threshold=0"))  # all three labels on: flag 7
    mask = Image.open(tmp_path / "out" / "masks" / "a.png")
    assert np.asarray(mask).min() == 7
    assert mask.getpalette()[3 * 7: 3 * 8] == flag_palette(3)[7].tolist()


def test_precision_is_checked_and_bf16_gives_the_float32_masks(checkpoint, images, tmp_path):
    """``precision`` (auto as in training) is one of the listed values; bf16 autocast predicts what float32
    predicts up to pixels near a decision boundary (the probabilities are accumulated in float32)."""
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', '32-true'"):
        predict(predict_cfg(checkpoint, images, tmp_path / "bad", "precision=fp8"))
    predict(predict_cfg(checkpoint, images, tmp_path / "fp32", "precision=32-true"))
    predict(predict_cfg(checkpoint, images, tmp_path / "bf16", "precision=bf16-mixed"))
    for mask in sorted((tmp_path / "fp32" / "masks").glob("*.png")):
        a = np.asarray(Image.open(mask))
        b = np.asarray(Image.open(tmp_path / "bf16" / "masks" / mask.name))
        assert a.shape == b.shape and (a == b).mean() > 0.95


def test_region_masks_make_the_outside_background_and_zero_probability(checkpoint, images, tmp_path):
    regions = tmp_path / "fov"
    inside = {}
    for name, (h, w) in {"large": (70, 90), "small": (20, 24), "nested/odd": (33, 41)}.items():
        region = np.zeros((h, w), np.uint8)
        region[h // 4 : h // 2, w // 4 :] = 255
        (regions / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(region).save(regions / f"{name}_fov.png")
        inside[name] = region > 0
    plain, masked = tmp_path / "plain", tmp_path / "masked"
    predict(predict_cfg(checkpoint, images, plain, "save.probabilities=float16"))
    summary = predict(predict_cfg(checkpoint, images, masked, "save.probabilities=float16",
                                  f"roi={{dir: {regions}, suffix: _fov}}"))
    assert summary.done == 3
    for name, region in inside.items():
        ours, full = (np.asarray(Image.open(d / "masks" / f"{name}.png")) for d in (masked, plain))
        assert (ours[~region] == 0).all() and np.array_equal(ours[region], full[region])
        probs = np.load(masked / "probabilities" / f"{name}.npy")
        assert (probs[:, ~region] == 0).all()
        assert np.array_equal(probs[:, region], np.load(plain / "probabilities" / f"{name}.npy")[:, region])
    (regions / "small_fov.png").unlink()
    again = predict_cfg(checkpoint, images, tmp_path / "again", f"roi={{dir: {regions}, suffix: _fov}}")
    skipped = predict(again)
    assert skipped.done == 2 and "no region mask" in skipped.skipped[0]["reason"]
