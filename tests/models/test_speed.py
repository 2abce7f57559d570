"""Precision, memory format and compiling (models.speed, models.build_network): the options resolve as
documented, bf16 steps stay finite with float32 losses, channels_last changes no logit."""

from __future__ import annotations

import functools

import pytest
import segmentation_models_pytorch as smp
import torch

from inference import InferenceConfig, predict_probabilities
from models import build_network
from models.speed import _cpuinfo_flags as cpuinfo_flags
from models.speed import (
    autocast_dtype,
    is_channels_last,
    native_bf16,
    resolve_precision,
    to_channels_last,
)
from seglosses.focal import CrossEntropyLoss

NATIVE_BF16 = native_bf16()


def _network(channels_last: bool = False, **kwargs):
    torch.manual_seed(0)
    arch = functools.partial(smp.Unet, decoder_channels=(16, 8, 8))
    return build_network(arch, num_classes=3, encoder_name="tu-test_resnet", encoder_depth=3,
                         channels_last=channels_last, **kwargs)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True),
     ({"fp", "asimd", "bf16"}, True), (set(), False)],
)
def test_native_bf16_from_the_cpu_flags(flags, expected):
    assert native_bf16(flags) is expected


def test_cpuinfo_flags_are_read_from_the_x86_and_arm_lines(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpuinfo_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert cpuinfo_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpuinfo_flags(tmp_path / "missing") == set()


def test_auto_precision_on_the_cpu_follows_native_bf16():
    precision, note = resolve_precision("auto", "cpu")
    if NATIVE_BF16:
        assert (precision, note) == ("bf16-mixed", None)
    else:
        assert precision == "32-true" and "no native bf16" in note


@pytest.mark.parametrize("value", ["32-true", "bf16-mixed", "16-mixed", 32])
def test_explicit_precision_is_kept(value):
    assert resolve_precision(value, "cpu") == (value, None)


def test_autocast_dtypes():
    assert autocast_dtype("bf16-mixed") is torch.bfloat16 and autocast_dtype("16-mixed") is torch.float16
    assert autocast_dtype("32-true") is None


@pytest.mark.slow
def test_trainer_cpu_preset_resolves_auto(tmp_path):
    from runs.build import build_trainer
    from tests.test_train import make_cfg

    cfg = make_cfg(tmp_path, "trainer=cpu", "trainer.precision=auto")
    assert build_trainer(cfg).precision == ("bf16-mixed" if NATIVE_BF16 else "32-true")
    fp32 = make_cfg(tmp_path, "trainer=cpu", "trainer.precision=32-true")
    assert build_trainer(fp32).precision == "32-true"


def test_bf16_training_step_gives_a_finite_float32_loss_and_keeps_float32_weights(make_module):
    """Runs where bf16 is emulated too (slowly): the numbers, not the speed, are under test."""
    module = make_module(CrossEntropyLoss(mode="multiclass", ignore_index=255))
    module.log = lambda *args, **kwargs: None  # not attached to a trainer
    g = torch.Generator().manual_seed(0)
    image, mask = torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 3, (2, 32, 32), generator=g)
    batch = {"image": image, "mask": mask}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = module(batch["image"])
        loss = module.training_step(batch, 0)
    assert logits.dtype is torch.bfloat16
    assert loss.dtype is torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.dtype is torch.float32 and torch.isfinite(p.grad).all()
               for p in module.parameters() if p.grad is not None)
    module.nonfinite.check("train")  # nothing non-finite was tracked


def test_channels_last_network_gives_the_logits_of_the_contiguous_one():
    contiguous, nhwc = _network(), _network(channels_last=True)
    assert not is_channels_last(contiguous) and is_channels_last(nhwc)
    assert nhwc.state_dict().keys() == contiguous.state_dict().keys()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected = contiguous.eval()(x)
        got = nhwc.eval()(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_module_and_inference_convert_their_inputs_to_the_weights_format(make_module):
    module = make_module(CrossEntropyLoss(mode="multiclass"))
    reference = module.network
    to_channels_last(module.network)
    module.channels_last = is_channels_last(module.network)
    seen = []
    module.network.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    x = torch.randn(1, 3, 32, 32)
    module.eval()
    with torch.no_grad():
        module(x)
        predict_probabilities(module.network, x, InferenceConfig(mode="slide", tile=(32, 32), multiple=8),
                              activation="softmax")
    assert seen == [False, False]  # channels_last inputs (not contiguous NCHW) on both paths
    assert reference is module.network


def test_channels_last_state_dict_loads_into_a_contiguous_network():
    nhwc = _network(channels_last=True)
    fresh = _network()
    fresh.load_state_dict(nhwc.state_dict())
    assert not is_channels_last(fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), nhwc.state_dict().values(),
                                                  strict=True))


@pytest.mark.slow  # imports torch._dynamo: 2 s
def test_compile_option_compiles_the_forward_in_place_keeping_the_keys():
    compiled = _network(compile=True)
    assert compiled._compiled_call_impl is not None  # nn.Module.compile(): not run here (minutes on a CPU)
    assert list(compiled.state_dict()) == list(_network().state_dict())


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag): "
                    "precision auto resolves to float32 here")
def test_auto_is_bf16_on_a_cpu_with_native_bf16():
    assert resolve_precision("auto", "cpu") == ("bf16-mixed", None)
