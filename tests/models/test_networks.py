import functools
import math
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import segmentation_models_pytorch.encoders as smp_encoders
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from models.networks import build_network, find_head_conv, init_head_prior, output_channels, prior_bias

CONF = Path(__file__).resolve().parents[2] / "conf"
MODEL_OPTIONS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
TINY = "tu-test_resnet"  # timm's test model: random init, no download, ~0.1M parameters


def tiny_unet(**kwargs):
    return functools.partial(smp.Unet, decoder_channels=(16, 8, 8), **kwargs)


def build_tiny(mode="multiclass", num_classes=4, **kwargs):
    return build_network(
        tiny_unet(), num_classes=num_classes, mode=mode, encoder_name=TINY, encoder_depth=3, **kwargs
    )


def test_output_channels():
    assert output_channels("multiclass", 5) == 5
    assert output_channels("multilabel", 3) == 3
    assert output_channels("binary", 1) == 1
    for num_classes in (2, 3):  # binary is one foreground class: background is not counted
        match = f"binary mode has one foreground class.*num_classes must be 1, got {num_classes}"
        with pytest.raises(ValueError, match=match):
            output_channels("binary", num_classes)
    with pytest.raises(ValueError, match="multiclass mode needs num_classes >= 2"):
        output_channels("multiclass", 1)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got True"):
        output_channels("multilabel", True)
    with pytest.raises(ValueError, match="mode must be one of"):
        output_channels("softmax", 3)


def compose_model(option: str, **datamodule) -> nn.Module:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=[f"+model={option}"])
    dm = {"in_channels": 3, "num_classes": 4, "mode": "multiclass", **datamodule}
    root = OmegaConf.create({"datamodule": dm, "model": OmegaConf.to_container(cfg.model)})
    return root


@pytest.mark.slow
@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_each_model_option_instantiates_and_runs_at_64px(option):
    root = compose_model(option)
    assert root.model.encoder_weights is None  # offline default
    assert root.model.num_classes == 4 and root.model.in_channels == 3  # interpolated from the datamodule
    root.model.encoder_name = TINY  # keep the test fast; the architecture options are the ones under test
    net = instantiate(root.model)
    assert isinstance(net, getattr(smp, root.model.arch._target_.rsplit(".", 1)[1]))
    with torch.no_grad():
        out = net.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 4, 64, 64)


@pytest.mark.slow
def test_default_model_config_builds_binary_and_grayscale():
    root = compose_model("unet", mode="binary", num_classes=1, in_channels=1)
    assert root.model.encoder_name == "resnet18"
    net = instantiate(root.model)
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 1, 64, 64))
    assert out.shape == (1, 1, 64, 64)


def test_unknown_encoder_is_a_value_error_naming_the_key():
    with pytest.raises(ValueError, match=r"model.encoder_name='resnet1'.*supported encoders"):
        build_network(tiny_unet(), num_classes=3, encoder_name="resnet1", encoder_depth=3)


@pytest.mark.slow
def test_failed_weight_download_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known (huggingface.co)")

    monkeypatch.setattr(smp_encoders, "hf_hub_download", offline)
    with pytest.raises(RuntimeError) as info:
        build_network(
            tiny_unet(), num_classes=3, encoder_name="resnet18", encoder_depth=3, encoder_weights="imagenet"
        )
    message = str(info.value)
    assert "could not download the pretrained weights model.encoder_weights='imagenet'" in message
    assert "resnet18" in message and "Name or service not known" in message
    assert "model.encoder_weights=null" in message
    assert isinstance(info.value.__cause__, OSError)


def test_prior_bias_formulas():
    f = torch.tensor([0.7, 0.2, 0.1])
    torch.testing.assert_close(prior_bias("multiclass", 3, f), torch.log(f))
    torch.testing.assert_close(prior_bias("multiclass", 3, [70, 20, 10]), torch.log(f))  # any scale
    assert float(prior_bias("binary", 1, 0.01)) == pytest.approx(-math.log(0.99 / 0.01))
    assert float(prior_bias("binary", 1, [0.75, 0.25])) == pytest.approx(-math.log(3.0))
    torch.testing.assert_close(prior_bias("multilabel", 2, [0.5, 0.2]), torch.tensor([0.0, -math.log(4.0)]))
    # a class never seen gets a finite bias
    assert torch.isfinite(prior_bias("multiclass", 3, [0.5, 0.5, 0.0])).all()
    with pytest.raises(ValueError, match="one frequency per class"):
        prior_bias("multiclass", 3, [0.5, 0.5])
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        prior_bias("binary", 1, 3.0)


def zero_head_predictions(net: nn.Module, channels: int) -> torch.Tensor:
    conv = find_head_conv(net, channels)
    with torch.no_grad():
        conv.weight.zero_()
        return net.eval()(torch.randn(2, 3, 32, 32))


def test_prior_init_softmax_predicts_class_frequencies():
    freqs = torch.tensor([0.85, 0.1, 0.04, 0.01])
    net = build_tiny(prior_init=True, class_frequencies=freqs)
    conv = find_head_conv(net, 4)
    assert conv.weight.std() < 0.02  # RetinaNet-style small output weights
    probs = zero_head_predictions(net, 4).softmax(dim=1)
    torch.testing.assert_close(probs, freqs.view(1, 4, 1, 1).expand_as(probs))


def test_prior_init_sigmoid_predicts_prior():
    net = build_tiny(mode="binary", num_classes=1, prior_init=True, prior=0.01, class_frequencies=[0.5])
    probs = zero_head_predictions(net, 1).sigmoid()
    torch.testing.assert_close(probs, torch.full_like(probs, 0.01))
    # without an explicit prior, the foreground frequency of [background, foreground]
    net = build_tiny(mode="binary", num_classes=1, prior_init=True, class_frequencies=[0.8, 0.2])
    probs = zero_head_predictions(net, 1).sigmoid()
    torch.testing.assert_close(probs, torch.full_like(probs, 0.2))


def test_build_network_checks_num_classes_and_in_channels():
    with pytest.raises(ValueError, match="num_classes must be 1, got 2; use mode='multiclass'"):
        build_tiny(mode="binary", num_classes=2)
    with pytest.raises(ValueError, match="in_channels must be an int >= 1, got 0"):
        build_tiny(in_channels=0)


def test_prior_init_without_frequencies_is_a_clear_error():
    with pytest.raises(ValueError, match=r"prior_init=true needs frequencies.*model.prior"):
        build_tiny(prior_init=True)


def test_init_head_prior_needs_a_matching_conv():
    with pytest.raises(ValueError, match="no Conv2d with 3 output channels"):
        init_head_prior(nn.Sequential(nn.Conv2d(3, 4, 1)), "multiclass", 3, [1, 1, 1])


@pytest.mark.slow
def test_no_download_attempted_by_default(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(smp_encoders, "hf_hub_download", fail)
    net = build_network(tiny_unet(), num_classes=3, encoder_name="resnet18", encoder_depth=3)
    assert isinstance(net, smp.Unet)
