"""Whole-image and sliding-window inference, flip TTA, accumulation plan (inference.predict, inference.tiles,
inference.memory), on tiny CPU networks: each test runs in well under a second."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import inference.memory as memory
from inference import (
    InferenceConfig,
    activation_for_mode,
    importance_vector,
    labels_from_probabilities,
    plan_accumulation,
    predict_probabilities,
    tile_starts,
)
from inference.tiles import pad_bottom_right
from models.networks import build_network


@functools.cache
def small_unet(num_classes: int = 4, in_channels: int = 3) -> nn.Module:
    """tests/overrides.py SMALL_UNET (resnet18 encoder, depth 3, decoder [32, 16, 8]): size multiple 8.
    Built once per set of arguments; tests must not change it."""
    torch.manual_seed(0)
    arch = functools.partial(smp.Unet, decoder_channels=[32, 16, 8])
    return build_network(arch, num_classes=num_classes, in_channels=in_channels, encoder_depth=3).eval()


def pointwise_net(cin: int = 3, k: int = 4) -> nn.Module:
    """1x1 convs with biases: each output pixel depends on its own input pixel only."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(cin, 8, 1), nn.ReLU(), nn.Conv2d(8, k, 1))


def local_net(cin: int = 3, k: int = 4, layers: int = 2) -> nn.Module:
    """Bias-free 3x3 convs with zero padding and ReLU (receptive field radius ``layers``): zero padding
    of the input gives zeros at every layer, so padding the image is the same as the convs' own padding."""
    torch.manual_seed(2)
    chans = [cin] + [8] * (layers - 1) + [k]
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False), nn.ReLU()]
    return nn.Sequential(*mods[:-1])


class CoordinateNet(nn.Module):
    """A pointwise map plus ramps over the (padded) input's rows and columns: equivariant under no flip."""

    def __init__(self, cin: int = 3, k: int = 4) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(cin, k, 1)
        self.rows = nn.Parameter(torch.randn(k, 1, 1) * 3)
        self.cols = nn.Parameter(torch.randn(k, 1, 1) * 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ys = torch.linspace(0, 1, h, device=x.device)[:, None]
        xs = torch.linspace(0, 1, w, device=x.device)[None, :]
        return self.conv(x) + self.rows * ys + self.cols * xs


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions: one thread is fastest, and does not stall when other processes load the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def image(n: int, h: int, w: int, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def probs(net, x, activation="softmax", **config) -> torch.Tensor:
    return predict_probabilities(net, x, InferenceConfig(**config), activation=activation)


def reference_whole(net, x, multiple):
    """Pad bottom/right with 0 to the multiple, forward, softmax, crop: written out."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    with torch.no_grad():
        return net(F.pad(x, (0, pw, 0, ph))).softmax(1)[:, :, :h, :w]


def reference_slide(net, x, tile, overlap, blend):
    """Naive sliding window: full 2-D importance and count maps (what inference.predict avoids)."""
    n, _, h, w = x.shape
    th, tw = tile
    hp, wp = max(h, th), max(w, tw)
    xp = F.pad(x, (0, wp - w, 0, hp - h))

    def starts(length, t):
        stride, out, s = max(1, int(t * (1 - overlap))), [], 0
        while True:
            out.append(min(s, length - t))
            if s + t >= length:
                return out
            s += stride

    def gauss(t):
        d = torch.arange(t, dtype=torch.float64) - (t - 1) / 2
        g = torch.exp(-(d**2) / (2 * (t / 8) ** 2))
        return g / g.max()

    weight = torch.ones(th, tw, dtype=torch.float64)
    if blend == "gaussian":
        weight = gauss(th)[:, None] * gauss(tw)[None, :]
    out, count = None, torch.zeros(hp, wp, dtype=torch.float64)
    with torch.no_grad():
        for a in starts(hp, th):
            for b in starts(wp, tw):
                p = net(xp[:, :, a : a + th, b : b + tw]).softmax(1).double()
                if out is None:
                    out = torch.zeros(n, p.shape[1], hp, wp, dtype=torch.float64)
                out[:, :, a : a + th, b : b + tw] += p * weight
                count[a : a + th, b : b + tw] += weight
    return (out / count)[:, :, :h, :w].float()


# --- config -------------------------------------------------------------------------------------------


def test_config_normalises_tile_and_tta():
    c = InferenceConfig(mode="slide", tile=64, tta="hflip", multiple=32)
    assert c.tile == (64, 64) and c.tta == ("hflip",) and c.overlap == 0.25 and c.batch_size == 4
    assert InferenceConfig(tile=[64, 96], tta=None).tile == (64, 96)
    assert InferenceConfig().tta == () and InferenceConfig().flip_passes == [()]
    hv = InferenceConfig(tta=["hflip", "vflip"])
    assert hv.flip_passes == [(), (3,), (2,), (2, 3)]  # identity, h (width), v (height), hv
    assert InferenceConfig(overlap=0).overlap == 0.0
    assert InferenceConfig(tile=None).with_default_tile([64, 32]).tile == (64, 32)
    assert InferenceConfig(tile=96).with_default_tile([64, 32]).tile == (96, 96)


def test_config_from_hydra_instantiate():
    cfg = OmegaConf.create(
        {"_target_": "inference.InferenceConfig", "mode": "auto", "tile": [64, 64],
         "tta": ["hflip", "vflip"], "blend": "constant"}
    )  # fmt: skip
    c = instantiate(cfg)
    assert isinstance(c, InferenceConfig)
    assert c.tile == (64, 64) and c.tta == ("hflip", "vflip") and c.blend == "constant"
    hash(c)  # frozen, hashable: its fields are tuples, not ListConfigs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "tiles"}, r"inference\.mode must be one of \('whole', 'slide', 'auto'\)"),
        ({"tile": 0}, r"inference\.tile must be an int >= 1"),
        ({"tile": 100}, r"inference\.tile=\[100, 100\] must be a multiple of inference\.multiple=32.*96"),
        ({"tile": [64, 64, 3]}, r"inference\.tile must be an int, \[h, w\]"),
        ({"tile": "256"}, r"inference\.tile must be an int"),
        ({"tile": 64.0}, r"inference\.tile must be an int"),
        ({"overlap": 1.0}, r"inference\.overlap must be in \[0, 1\)"),
        ({"overlap": -0.1}, r"inference\.overlap must be >= 0"),
        ({"overlap": "half"}, r"inference\.overlap must be a finite number"),
        ({"overlap": float("nan")}, r"inference\.overlap must be a finite number"),
        ({"blend": "cosine"}, r"inference\.blend must be one of \('gaussian', 'constant'\)"),
        ({"batch_size": 0}, r"inference\.batch_size must be an int >= 1"),
        ({"batch_size": True}, r"inference\.batch_size must be an int >= 1"),
        ({"tta": ["rot90"]}, r"inference\.tta\[0\] must be one of \('hflip', 'vflip'\)"),
        ({"tta": ["hflip", "hflip"]}, r"inference\.tta lists a flip twice"),
        ({"tta": 1}, r"inference\.tta must be a list of flips"),
        ({"pad_mode": "edge"}, r"inference\.pad_mode must be one of \('constant', 'reflect'\)"),
        ({"multiple": 0}, r"inference\.multiple must be an int >= 1"),
    ],
)
def test_bad_config_names_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InferenceConfig(**kwargs)


def test_bad_call_arguments():
    net, x = pointwise_net(), image(1, 16, 16)
    with pytest.raises(ValueError, match=r"inference\.mode='slide' needs a tile: set inference\.tile"):
        probs(net, x, mode="slide")
    with pytest.raises(ValueError, match=r"inference\.mode='auto' needs a tile"):
        probs(net, x, mode="auto")
    with pytest.raises(ValueError, match="activation must be one of"):
        probs(net, x, activation="relu")
    with pytest.raises(ValueError, match=r"image must be a normalised \(N, C_in, H, W\) float tensor"):
        probs(net, x[0])
    with pytest.raises(ValueError, match="image must be a normalised"):
        probs(net, (x * 100).long())
    with pytest.raises(ValueError, match="config must be an InferenceConfig"):
        predict_probabilities(net, x, {"mode": "whole"}, activation="softmax")
    with pytest.raises(ValueError, match="accumulate_dtype must be"):
        predict_probabilities(net, x, InferenceConfig(), activation="softmax", accumulate_dtype=torch.int8)
    strided = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match=r"network's output \(1, 4, 16, 16\) does not have its input's size"):
        probs(strided, image(1, 32, 32))


# --- grid, importance map ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("size", [1, 50, 64, 65, 100, 255, 256, 257, 1000])
@pytest.mark.parametrize(("tile", "overlap"), [(64, 0.25), (64, 0.0), (64, 0.5), (32, 0.9), (8, 0.99)])
def test_tile_starts(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    length = max(size, tile)
    assert starts[0] == 0 and starts[-1] == length - tile and starts == sorted(set(starts))
    stride = max(1, int(tile * (1 - overlap)))
    assert all(b - a == stride for a, b in itertools.pairwise(starts[:-1]))
    assert starts[-1] - (starts[-2] if len(starts) > 1 else 0) <= stride  # the last one shifted back
    monai_utils = pytest.importorskip("monai.data.utils")
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval((length,), (tile,), 1, (overlap,))
    assert starts == [s[0].start for s in monai_utils.dense_patch_slices((length,), (tile,), interval)]


@pytest.mark.parametrize("length", [1, 7, 8, 64, 255])
def test_importance_vector(length):
    g = importance_vector(length, "gaussian")
    d = torch.arange(length, dtype=torch.float64) - (length - 1) / 2
    expected = torch.exp(-(d**2) / (2 * (length / 8) ** 2))
    torch.testing.assert_close(g, expected / expected.max())
    assert g.max() == 1 and (g > 0).all() and torch.equal(g, g.flip(0))
    assert torch.equal(importance_vector(length, "constant"), torch.ones(length, dtype=torch.float64))


# --- whole / slide equivalences ------------------------------------------------------------------------

SIZES = [(8, 8), (13, 21), (64, 64), (70, 150), (150, 70), (40, 200)]  # smaller, odd, larger, tall, wide


@pytest.mark.slow
@pytest.mark.parametrize(("h", "w"), SIZES)
def test_whole_is_pad_forward_crop(h, w):
    net, x = small_unet(), image(2, h, w)
    out = probs(net, x, mode="whole", multiple=8)
    assert out.shape == (2, 4, h, w) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference_whole(net, x, 8), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_slide_with_a_tile_covering_the_image_is_whole(h, w):
    net, x = small_unet(), image(2, h, w)
    tile = (math.ceil(h / 8) * 8, math.ceil(w / 8) * 8)
    whole = probs(net, x, mode="whole", multiple=8)
    for blend in ("gaussian", "constant"):
        slide = probs(net, x, mode="slide", tile=tile, blend=blend, multiple=8)
        torch.testing.assert_close(slide, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("h", "w"), SIZES)
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_slide_matches_the_naive_sliding_window(h, w, blend):
    """Separable normalisation == full importance and count maps; tiles padded when the image is smaller."""
    net, x = small_unet(), image(1, h, w)
    out = probs(net, x, mode="slide", tile=(32, 48), overlap=0.25, blend=blend, multiple=8)
    assert out.shape == (1, 4, h, w)
    # the reference divides full-size sums: float32 rounding differs by a few ulps of the probabilities
    torch.testing.assert_close(out, reference_slide(net, x, (32, 48), 0.25, blend), rtol=0, atol=4e-6)


@pytest.mark.parametrize(("h", "w"), SIZES)
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_pointwise_network_any_blend_is_whole(h, w, blend):
    net, x = pointwise_net(), image(2, h, w)
    whole = probs(net, x, mode="whole", multiple=8)
    for overlap in (0.0, 0.25, 0.5):
        slide = probs(net, x, mode="slide", tile=16, overlap=overlap, blend=blend, multiple=8)
        torch.testing.assert_close(slide, whole, rtol=0, atol=1e-6)


def test_constant_blend_is_exact_where_the_receptive_field_fits_every_covering_tile():
    """A 3x3 stack of radius r = 2 is exact at pixels farther than r from every interior tile edge (the
    overlap of 8 px leaves such pixels in every overlap), and not elsewhere: a tile's output within r of
    its edge sees the tile's zero padding, and constant blending still averages it in. (Sizes are multiples
    of 8 so that whole-image inference pads nothing: padding changes a multi-layer network's output within
    r of the padded border too.)"""
    r, tile, overlap, h, w = 2, 16, 0.5, 48, 56
    net, x = local_net(layers=r), image(1, h, w)
    whole = probs(net, x, mode="whole", multiple=8)
    slide = probs(net, x, mode="slide", tile=tile, overlap=overlap, blend="constant", multiple=8)

    def ok(length):  # (tiles, pixels): the pixel lies in the tile at least r from its interior edges
        starts = tile_starts(length, tile, overlap)
        y = torch.arange(length)
        covers = torch.stack([(y >= s) & (y < s + tile) for s in starts])
        inner = torch.stack([((y - s >= r) | (s == 0)) & ((s + tile - 1 - y >= r) | (s + tile == length))
                             for s in starts])  # fmt: skip
        return ~covers | inner  # a tile that does not cover the pixel does not matter

    exact = ok(h).all(0)[:, None] & ok(w).all(0)[None, :]
    assert 0.3 < exact.float().mean() < 1
    torch.testing.assert_close(slide[..., exact], whole[..., exact], rtol=0, atol=1e-6)
    assert (slide - whole).abs()[..., ~exact].max() > 1e-3
    # with the whole receptive field inside one tile (no interior edge), it is exact everywhere
    single = probs(net, x, mode="slide", tile=(48, 56), blend="constant", multiple=8)
    torch.testing.assert_close(single, whole, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_slide_equals_monai(blend):
    """Constant: MONAI's own. Gaussian: MONAI given our importance map (its default floors the 2-D map at
    1e-3, which weighs tiles equally near the image borders, where the maps are smaller than that)."""
    monai_inferers = pytest.importorskip("monai.inferers")
    net, x = small_unet(), image(2, 70, 150)
    config = {"tile": (32, 48), "overlap": 0.25, "blend": blend, "batch_size": 3, "multiple": 8}
    ours = probs(net, x, mode="slide", **config)
    weight = (importance_vector(32, blend)[:, None] * importance_vector(48, blend)[None, :]).float()
    with torch.no_grad():
        theirs = monai_inferers.sliding_window_inference(
            x, (32, 48), 3, lambda t: net(t).softmax(1), overlap=0.25, mode=blend, roi_weight_map=weight
        )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


# --- auto, batch size, batch of images, probabilities ---------------------------------------------------


def test_auto_slides_only_when_the_image_exceeds_the_tile():
    c = InferenceConfig(mode="auto", tile=(32, 48), multiple=8)
    assert [c.mode_for(h, w) for h, w in [(32, 48), (8, 8), (33, 48), (32, 49), (100, 100)]] == [
        "whole", "whole", "slide", "slide", "slide"]  # fmt: skip
    net = small_unet()
    for h, w in [(32, 48), (20, 30), (33, 20), (20, 49)]:
        x = image(1, h, w)
        expected = "slide" if h > 32 or w > 48 else "whole"
        same = probs(net, x, mode=expected, tile=(32, 48), multiple=8)
        auto = probs(net, x, mode="auto", tile=(32, 48), multiple=8)
        torch.testing.assert_close(auto, same, rtol=0, atol=0)
    assert InferenceConfig(mode="whole").mode_for(10_000, 10_000) == "whole"
    assert InferenceConfig(mode="slide", tile=64).mode_for(8, 8) == "slide"


@pytest.mark.slow
def test_batch_size_and_batching_of_images_do_not_change_results():
    """Up to the float rounding of convolutions over batches of different sizes (~1e-6)."""
    net, x = small_unet(), image(3, 70, 90)
    results = [probs(net, x, mode="slide", tile=32, batch_size=b, multiple=8) for b in (1, 2, 5, 64)]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=0, atol=1e-5)
    one_by_one = torch.cat([probs(net, x[i : i + 1], mode="slide", tile=32, multiple=8) for i in range(3)])
    torch.testing.assert_close(one_by_one, results[0], rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_probabilities_sum_to_one_and_lie_in_unit_interval(mode):
    net, x = small_unet(num_classes=5), image(2, 45, 77) * 5
    out = probs(net, x, mode=mode, tile=32, tta=["hflip", "vflip"], multiple=8)
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out.sum(1), torch.ones(2, 45, 77), rtol=0, atol=1e-5)
    sig = probs(small_unet(num_classes=3), x, activation="sigmoid", mode=mode, tile=32, multiple=8)
    assert sig.shape == (2, 3, 45, 77) and sig.min() >= 0 and sig.max() <= 1


@pytest.mark.slow
def test_network_state_and_result_tensor():
    net = small_unet.__wrapped__().train()  # a fresh one: the cached network stays in eval mode
    out = probs(net, image(1, 20, 20), mode="whole", multiple=8)
    assert net.training  # restored
    assert not out.is_inference() and not out.requires_grad
    out += 1  # an ordinary tensor: callers may change it in place
    with pytest.raises(ValueError):  # restored after an error too
        probs(net, image(1, 20, 20), activation="relu")
    assert net.training


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 9), (3, 5), (9, 1), (30, 17)])
def test_padding_bottom_right(pad_mode, h, w):
    x = image(2, h, w)
    for ph, pw in [(0, 3), (2, 0), (7, 40), (63, 63)]:
        padded = pad_bottom_right(x, ph, pw, pad_mode)
        # numpy's reflect also reflects repeatedly past the border, and repeats a 1-pixel side
        expected = np.pad(x.numpy(), ((0, 0), (0, 0), (0, ph), (0, pw)), mode=pad_mode)
        np.testing.assert_array_equal(padded.numpy(), expected)
    # reflect padding runs through the engine (tiles and whole) and the pad never shows in the output
    net = pointwise_net()
    whole = probs(net, x, mode="whole", multiple=8, pad_mode=pad_mode)
    torch.testing.assert_close(probs(net, x, mode="slide", tile=64, pad_mode=pad_mode, multiple=8), whole)


# --- test-time augmentation -----------------------------------------------------------------------------


def explicit_tta(net, x, tta, **config):
    """The mean over every combination of the flips of: flip the image, infer, flip back."""
    dims = [{"hflip": 3, "vflip": 2}[f] for f in tta]
    passes = [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]
    outs = [probs(net, x.flip(d), **config).flip(d) if d else probs(net, x, **config) for d in passes]
    return torch.stack(outs).mean(0)


@pytest.mark.parametrize("tta", [("hflip",), ("vflip",), ("hflip", "vflip"), ("vflip", "hflip")])
@pytest.mark.parametrize(("h", "w"), [(13, 21), (45, 70), (70, 45), (100, 37)])
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_tta_is_the_mean_of_the_flipped_passes_unflipped(tta, h, w, mode):
    """A coordinate network makes every pass different; padding, grid and flips must all be mirrored."""
    net, x = CoordinateNet(), image(2, h, w)
    config = {"mode": mode, "tile": (32, 48), "overlap": 0.25, "multiple": 8}
    ours = probs(net, x, tta=list(tta), **config)
    torch.testing.assert_close(ours, explicit_tta(net, x, tta, **config), rtol=0, atol=1e-6)
    assert (ours - probs(net, x, **config)).abs().max() > 1e-2  # the flips matter for this network


@pytest.mark.parametrize("tta", [["hflip"], ["vflip"], ["hflip", "vflip"]])
def test_tta_of_a_flip_equivariant_network_changes_nothing(tta):
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 4, 3, padding=1)  # one conv layer with a kernel symmetric under both flips
    with torch.no_grad():
        k = conv.weight
        k.copy_((k + k.flip(-1) + k.flip(-2) + k.flip(-1, -2)) / 4)
    x = image(2, 27, 35)
    plain = probs(conv, x, mode="whole", multiple=8)
    torch.testing.assert_close(probs(conv, x, mode="whole", multiple=8, tta=tta), plain, rtol=0, atol=1e-6)
    point = pointwise_net()
    plain = probs(point, x, mode="slide", tile=16, multiple=8)
    torch.testing.assert_close(probs(point, x, mode="slide", tile=16, multiple=8, tta=tta), plain,
                               rtol=0, atol=1e-6)  # fmt: skip


@pytest.mark.slow
def test_tta_with_a_real_unet():
    net, x = small_unet(), image(1, 50, 75)
    config = {"mode": "slide", "tile": 32, "multiple": 8}
    ours = probs(net, x, tta=["hflip", "vflip"], **config)
    torch.testing.assert_close(ours, explicit_tta(net, x, ("hflip", "vflip"), **config), rtol=0, atol=1e-6)


# --- accumulation plan --------------------------------------------------------------------------------


def test_plan_accumulation_rule(monkeypatch):
    shape = (1, 12, 1000, 1000)  # 48 MB in float32
    plan = plan_accumulation(shape, "cpu")
    assert (plan.device.type, plan.dtype, plan.bytes, plan.budget_bytes) == ("cpu", torch.float32, 48e6, None)
    monkeypatch.setattr(memory, "_cuda_available_bytes", lambda device: 10**9)
    assert plan_accumulation(shape, "cuda").device == torch.device("cuda")
    monkeypatch.setattr(memory, "_cuda_available_bytes", lambda device: 90 * 10**6)
    plan = plan_accumulation(shape, "cuda")  # 48 MB > 0.5 * 90 MB: on the CPU
    assert plan.device == torch.device("cpu") and plan.dtype == torch.float32 and plan.budget_bytes == 45e6
    assert "CPU" in plan.reason
    assert plan_accumulation(shape, "cuda", accumulate_device="cuda").device == torch.device("cuda")
    # exact by default, even beyond the CPU budget; float16 only when asked ("auto" or a dtype)
    monkeypatch.setattr(memory, "_cpu_available_bytes", lambda: 50 * 10**6)
    assert plan_accumulation(shape, "cpu").dtype == torch.float32
    plan = plan_accumulation(shape, "cpu", accumulate_dtype="auto")
    assert plan.dtype == torch.float16 and plan.bytes == 24e6 and "float16" in plan.reason
    monkeypatch.setattr(memory, "_cpu_available_bytes", lambda: 10**9)
    assert plan_accumulation(shape, "cpu", accumulate_dtype="auto").dtype == torch.float32
    assert plan_accumulation(shape, "cpu", accumulate_dtype=torch.float16).dtype == torch.float16


def test_reduced_precision_accumulation_and_returned_plan():
    net, x = small_unet(), image(1, 70, 90)
    config = InferenceConfig(mode="slide", tile=32, tta=["hflip"], multiple=8)
    exact, plan = predict_probabilities(net, x, config, activation="softmax", return_plan=True)
    assert plan.device.type == "cpu" and plan.dtype == torch.float32 and plan.bytes == exact.numel() * 4
    half, plan = predict_probabilities(
        net, x, config, activation="softmax", accumulate_dtype=torch.float16, return_plan=True
    )
    assert half.dtype == plan.dtype == torch.float16
    torch.testing.assert_close(half.float(), exact, rtol=0, atol=2e-3)


# --- labels -------------------------------------------------------------------------------------------


def test_labels_from_probabilities():
    p = torch.tensor([[[[0.2, 0.7]], [[0.5, 0.1]], [[0.3, 0.2]]]])  # (1, 3, 1, 2)
    assert labels_from_probabilities(p, "multiclass").tolist() == [[[1, 0]]]
    assert labels_from_probabilities(p, "multilabel").tolist() == [[[[0, 1]], [[0, 0]], [[0, 0]]]]
    low = labels_from_probabilities(p, "multilabel", threshold=0.25)
    assert low.tolist() == [[[[0, 1]], [[1, 0]], [[1, 0]]]]
    b = labels_from_probabilities(p[:, :1], "binary")
    assert b.shape == (1, 1, 2) and b.dtype == torch.int64 and b.tolist() == [[[0, 1]]]
    with pytest.raises(ValueError, match="binary probabilities have one channel"):
        labels_from_probabilities(p, "binary")
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        labels_from_probabilities(p, "binary", threshold=1.5)
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        labels_from_probabilities(p, "binary", threshold=None)
    with pytest.raises(ValueError, match="mode must be one of"):
        labels_from_probabilities(p, "multi")
    with pytest.raises(ValueError, match=r"probabilities must be \(N, K, H, W\)"):
        labels_from_probabilities(p[0], "multiclass")
    assert [activation_for_mode(m) for m in ("binary", "multiclass", "multilabel")] == [
        "sigmoid", "softmax", "sigmoid"]  # fmt: skip


@pytest.mark.slow
def test_binary_end_to_end():
    torch.manual_seed(0)
    net = build_network(functools.partial(smp.Unet, decoder_channels=[32, 16, 8]), num_classes=1,
                        mode="binary", encoder_depth=3).eval()  # fmt: skip
    x = image(2, 40, 90)
    p = probs(net, x, activation=activation_for_mode("binary"), mode="auto", tile=32, multiple=8)
    assert p.shape == (2, 1, 40, 90)
    labels = labels_from_probabilities(p, "binary")
    assert labels.shape == (2, 40, 90) and set(labels.unique().tolist()) <= {0, 1}
