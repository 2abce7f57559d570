"""The test split is scored with the ``inference`` group's inferer (the one predict.py uses): in
``train=false`` evaluation and at the end of training; a run's checkpoints are self-contained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from inference import load_for_inference
from inference.metadata import INFERENCE_KEY
from runs.predicting import predict
from runs.training import run
from tests.runs.inference_helpers import make_checkpoint, write_image
from tests.runs.test_predict import predict_cfg
from tests.test_train import _short_run, make_cfg, read_metrics

SMALL = ["model.encoder_depth=3", "model.arch.decoder_channels=[32,16,8]"]


def _evaluate(tmp_path: Path, ckpt: Path, name: str, *overrides: str) -> dict:
    cfg = make_cfg(tmp_path / name, *SMALL, "train=false", f"ckpt_path={ckpt}", *overrides)
    run(cfg)
    return read_metrics(cfg)


@pytest.mark.slow
def test_evaluation_uses_the_chosen_inference(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path)
    whole = _evaluate(tmp_path, ckpt, "whole")
    assert whole["test_inference"]["mode"] == "whole"
    # One 32x32 tile covers the 32x32 test images: sliding-window inference is whole-image inference.
    slide = _evaluate(tmp_path, ckpt, "slide", "inference.mode=slide", "inference.tile=32")
    assert slide["test_inference"]["mode"] == "slide"
    assert slide["test"]["mIoU"] == pytest.approx(whole["test"]["mIoU"], abs=1e-6)
    for name, scores in whole["test"]["per_class"].items():
        assert slide["test"]["per_class"][name]["iou"] == pytest.approx(scores["iou"], abs=1e-6, nan_ok=True)
    # 16x16 tiles with gaussian blending and flips: another inferer, other (finite) scores
    tta = _evaluate(
        tmp_path, ckpt, "tta", "inference.mode=slide", "inference.tile=16", "inference.tta=[hflip,vflip]"
    )
    assert tta["test_inference"]["tta"] == ["hflip", "vflip"]
    assert 0 <= tta["test"]["mIoU"] <= 1


@pytest.mark.slow
def test_training_writes_self_contained_checkpoints_that_predict_any_size(tmp_path):
    cfg = _short_run(tmp_path / "train")
    run(cfg)
    metrics = read_metrics(cfg)
    for key in ("checkpoint", "last_checkpoint"):
        _network, info = load_for_inference(metrics[key])
        assert info.class_names[0] == "background" and info.crop_size == [32, 32]
    import torch

    assert INFERENCE_KEY in torch.load(metrics["checkpoint"], weights_only=True)
    write_image(tmp_path / "in" / "big.png", 100, 75)
    write_image(tmp_path / "in" / "tiny.png", 9, 13)
    out = tmp_path / "pred"
    assert predict(predict_cfg(Path(metrics["checkpoint"]), tmp_path / "in", out)).done == 2
    assert Image.open(out / "masks" / "big.png").size == (75, 100)
    assert Image.open(out / "masks" / "tiny.png").size == (13, 9)
    assert json.loads((out / "summary.json").read_text())["done"] == 2


def test_a_training_crop_that_is_no_tile_is_named_only_when_a_tile_is_needed():
    from omegaconf import OmegaConf

    from runs.build import build_inference

    node = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "inference" / "default.yaml")
    assert build_inference(node, 32, [100, 100]).tile is None  # whole: no tile needed
    assert build_inference(node, 32, [96, 128]).tile == (96, 128)
    node.mode = "auto"
    with pytest.raises(ValueError, match=r"training crop \[100, 100\].*set inference.tile"):
        build_inference(node, 32, [100, 100])
