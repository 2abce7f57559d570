"""Self-contained checkpoints: the inference metadata every checkpoint carries, and
inference.load_for_inference (safe loading, clear errors, old checkpoints still evaluate)."""

from __future__ import annotations

import pickle

import pytest
import torch

from evaluation.grids import color_palette
from inference import load_for_inference, read_checkpoint
from inference.metadata import INFERENCE_FORMAT, INFERENCE_KEY, InferenceInfo
from runs.trained import load_trained_module
from tests.overrides import SMALL_UNET
from tests.runs.inference_helpers import make_checkpoint
from tests.test_train import make_cfg

# Builds runs from the configs, trains or predicts: the full suite, not the fast loop (docs/developing.md).
pytestmark = pytest.mark.slow


def test_checkpoint_carries_what_inference_needs(tmp_path):
    path, _module = make_checkpoint(tmp_path)
    entry = torch.load(path, weights_only=True)[INFERENCE_KEY]
    assert entry["format"] == INFERENCE_FORMAT and entry["version"] == 1
    info = InferenceInfo.from_dict(entry)
    assert info.mode == "multiclass" and info.num_classes == 5
    assert info.class_names == ["background", "disc", "square", "bar", "cross"]
    assert info.class_colors == color_palette(5).tolist()
    assert info.in_channels == 3 and info.mean == [0.5] * 3 and info.std == [0.25] * 3
    assert info.ignore_index == 255 and info.crop_size == [32, 32]
    assert info.size_multiple == 8  # 3 encoder stages
    # rebuilt offline, without the prior init that needs the training labels
    assert info.network["encoder_weights"] is None and info.network["prior_init"] is False
    assert info.network["arch"]["decoder_channels"] == [32, 16, 8]


def test_load_for_inference_rebuilds_the_trained_network(tmp_path):
    path, module = make_checkpoint(tmp_path)
    network, _info = load_for_inference(path)
    assert not network.training
    x = torch.randn(2, 3, 32, 40)
    module.network.eval()
    with torch.no_grad():
        torch.testing.assert_close(network(x), module.network(x), rtol=0, atol=0)


def test_class_colors_from_the_datamodule_reach_the_checkpoint(tmp_path):
    colors = [[10, 20, 30], [40, 50, 60], [70, 80, 90], [1, 2, 3], [4, 5, 6]]
    override = "datamodule.class_colors=" + str(colors).replace(" ", "")
    path, _ = make_checkpoint(tmp_path, override)
    assert load_for_inference(path)[1].class_colors == colors


def test_bad_class_colors_are_named(tmp_path):
    from runs.build import build

    cfg = make_cfg(tmp_path, "datamodule.class_colors=[[1,2,3]]")
    with pytest.raises(ValueError, match=r"datamodule.class_colors has 1 colours"):
        build(cfg.datamodule, "datamodule")
    cfg = make_cfg(tmp_path, "datamodule.class_colors=[[1,2,3],[1,2,3],[1,2,3],[1,2,3],[1,2,300]]")
    with pytest.raises(ValueError, match=r"class_colors\[4\]"):
        build(cfg.datamodule, "datamodule")


def test_old_checkpoint_without_metadata_is_refused_for_inference_but_still_evaluates(tmp_path):
    path, _ = make_checkpoint(tmp_path, inference=False)
    with pytest.raises(ValueError, match=r"no inference metadata.*train=false"):
        load_for_inference(path)
    cfg = make_cfg(tmp_path, *SMALL_UNET, "train=false", f"ckpt_path={path}")
    trained = load_trained_module(cfg, path)  # the train=false path
    assert trained.epoch == 0 and "state_dict" in read_checkpoint(path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path, _ = make_checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated or not a PyTorch checkpoint"):
        load_for_inference(path)


def test_missing_file_and_other_kinds_of_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ckpt_path="):
        load_for_inference(tmp_path / "nope.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match=r"not a PyTorch Lightning checkpoint"):
        load_for_inference(tmp_path / "plain.pt")
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(ValueError, match=r"truncated or not a PyTorch checkpoint"):
        load_for_inference(tmp_path / "text.ckpt")


class _Payload:
    def __reduce__(self):  # would run code when unpickled without weights_only
        return (print, ("unpickled!",))


def test_checkpoint_with_python_objects_is_not_unpickled(tmp_path, capsys):
    path, _ = make_checkpoint(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["extra"] = _Payload()
    with open(path, "wb") as f:
        torch.save(checkpoint, f, pickle_module=pickle)
    with pytest.raises(ValueError, match=r"weights_only"):
        load_for_inference(path)
    assert "unpickled!" not in capsys.readouterr().out


def test_network_config_naming_other_code_is_refused(tmp_path):
    path, _ = make_checkpoint(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint[INFERENCE_KEY]["network"]["arch"]["_target_"] = "os.system"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"only models.build_network"):
        load_for_inference(path)


def test_weights_that_do_not_fit_the_stored_config(tmp_path):
    path, _ = make_checkpoint(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint[INFERENCE_KEY]["network"]["encoder_depth"] = 4
    checkpoint[INFERENCE_KEY]["network"]["arch"]["decoder_channels"] = [64, 32, 16, 8]
    torch.save(checkpoint, path)
    with pytest.raises((ValueError, RuntimeError), match=r"do not fit|size mismatch"):
        load_for_inference(path)
