"""Calibration primitives (evaluation.calibration): the class-wise and top-label ECE histogram, temperature
scaling and the logit sample it is fitted on (their DDP merges: test_calibration_ddp.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from evaluation.calibration import (
    DEFAULT_BINS,
    CalibrationHistogram,
    LogitSample,
    apply_temperature,
    fit_temperature,
)

IGNORE = 255


def _multiclass(seed: int, shape=(2, 4, 12, 10), scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    logits = torch.randn(shape, generator=g, dtype=torch.float64).float() * scale
    target = torch.randint(0, c, (b, h, w), generator=g)
    target[0, :3, :4] = IGNORE
    return logits, target


def _np_ece(p: np.ndarray, correct: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """Float64 ECE: sum_b n_b / N |acc_b - conf_b| over equal-width bins (the last one closed)."""
    which = np.clip(np.floor(p * bins).astype(int), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.sum() / len(p) * abs(correct[m].mean() - p[m].mean())
    return total


def _np_softmax(logits: torch.Tensor) -> np.ndarray:
    z = logits.double().numpy()
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---- ECE ------------------------------------------------------------------------------------------------


def test_multiclass_ece_matches_a_float64_numpy_computation():
    logits, target = _multiclass(0)
    hist = CalibrationHistogram(4, "multiclass", ignore_index=IGNORE)
    hist.update(logits, target)
    result = hist.ece()
    probs = _np_softmax(logits).transpose(0, 2, 3, 1).reshape(-1, 4)
    y = target.numpy().reshape(-1)
    probs, y = probs[y != IGNORE], y[y != IGNORE]
    expected = [_np_ece(probs[:, c], (y == c).astype(float)) for c in range(4)]
    torch.testing.assert_close(result["ece"], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-6)
    assert float(result["mean_ece"]) == pytest.approx(np.mean(expected), abs=1e-6)
    top = _np_ece(probs.max(1), (probs.argmax(1) == y).astype(float))
    assert float(result["top_label_ece"]) == pytest.approx(top, abs=1e-6)
    assert result["bins"] == DEFAULT_BINS == 15
    assert result["pixels"].tolist() == [len(y)] * 4
    assert min(expected) > 0.05  # random logits are badly calibrated: the comparison is not of zeros


def test_ece_equals_torchmetrics_binary_and_top_label():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 9, 11, generator=g) * 2
    target = (torch.rand(3, 9, 11, generator=g) < torch.sigmoid(logits[:, 0] * 0.5)).long()
    target[1, 2:5] = IGNORE
    hist = CalibrationHistogram(1, "binary", bins=10, ignore_index=IGNORE)
    hist.update(logits, target)
    expected = binary_calibration_error(torch.sigmoid(logits[:, 0]), target, n_bins=10, norm="l1",
                                        ignore_index=IGNORE)
    assert float(hist.ece()["ece"][0]) == pytest.approx(float(expected), abs=1e-6)
    assert "top_label_ece" not in hist.ece()

    logits, target = _multiclass(2)
    hist = CalibrationHistogram(4, "multiclass", ignore_index=IGNORE)
    hist.update(logits, target)
    expected = multiclass_calibration_error(torch.softmax(logits, 1), target, num_classes=4, n_bins=15,
                                            norm="l1", ignore_index=IGNORE)
    assert float(hist.ece()["top_label_ece"]) == pytest.approx(float(expected), abs=1e-6)


def test_multilabel_ece_leaves_ignored_elements_out_of_their_label_only():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 8, 8, generator=g) * 3
    target = torch.randint(0, 2, (2, 3, 8, 8), generator=g)
    target[:, 1, :4] = IGNORE  # half of label 1 ignored
    hist = CalibrationHistogram(3, "multilabel", ignore_index=IGNORE)
    hist.update(logits, target)
    result = hist.ece()
    assert result["pixels"].tolist() == [128, 64, 128]
    p = torch.sigmoid(logits.double()).numpy()
    y = target.numpy()
    for c in range(3):
        keep = y[:, c] != IGNORE
        expected = _np_ece(p[:, c][keep], (y[:, c][keep] == 1).astype(float))
        assert float(result["ece"][c]) == pytest.approx(expected, abs=1e-6)


def test_batches_accumulate_to_the_state_of_one_batch():
    logits, target = _multiclass(4, shape=(3, 4, 10, 10))
    whole = CalibrationHistogram(4, "multiclass", ignore_index=IGNORE)
    whole.update(logits, target)
    parts = CalibrationHistogram(4, "multiclass", ignore_index=IGNORE)
    parts.update(logits[:1], target[:1])
    parts.update(logits[1:, :, :3], target[1:, :3])
    parts.update(logits[1:, :, 3:], target[1:, 3:])
    assert torch.equal(parts.state[0], whole.state[0])  # counts exactly
    torch.testing.assert_close(parts.state, whole.state, rtol=1e-12, atol=1e-9)
    assert int(whole.state[0, 0].sum()) == int((target != IGNORE).sum())
    parts.reset()
    assert int(parts.state.abs().sum()) == 0


def test_ignored_pixels_change_nothing():
    logits, target = _multiclass(5)
    hist = CalibrationHistogram(4, "multiclass", ignore_index=IGNORE)
    hist.update(logits, target)
    # the scored pixels alone, as (n, C) rows
    keep = target != IGNORE
    rows = CalibrationHistogram(4, "multiclass")
    rows.update(logits.movedim(1, -1)[keep], target[keep])
    torch.testing.assert_close(hist.state, rows.state, rtol=1e-12, atol=1e-9)
    # other logits under the ignored pixels: the same state
    changed = logits.clone()
    changed[0, :, :3, :4] = 50.0
    again = CalibrationHistogram(4, "multiclass", ignore_index=IGNORE)
    again.update(changed, target)
    torch.testing.assert_close(again.state, hist.state, rtol=1e-12, atol=1e-9)
    # without ignore_index the same pixels count (and 255 is no class's)
    counted = CalibrationHistogram(4, "multiclass")
    counted.update(logits, target)
    assert int(counted.state[0, 0].sum()) == target.numel() > int(hist.state[0, 0].sum())


def test_binary_targets_with_and_without_channel_agree_and_shapes_are_checked():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 1, 5, 5, generator=g)
    target = torch.randint(0, 2, (2, 5, 5), generator=g)
    a, b = CalibrationHistogram(1, "binary"), CalibrationHistogram(1, "binary")
    a.update(logits, target)
    b.update(logits, target.unsqueeze(1))
    assert torch.equal(a.state, b.state) and int(a.state[0].sum()) == 50
    with pytest.raises(ValueError, match="multiclass target must be"):
        CalibrationHistogram(4, "multiclass").update(torch.randn(2, 4, 5, 5), torch.zeros(2, 5, 4).long())
    with pytest.raises(ValueError, match="3 channels, the histogram 4"):
        CalibrationHistogram(4, "multiclass").update(torch.randn(2, 3, 5, 5), torch.zeros(2, 5, 5).long())


@pytest.mark.parametrize("mode, channels", [("multiclass", 4), ("binary", 1), ("multilabel", 3)])
def test_probabilities_give_the_state_of_their_logits(mode, channels):
    """update_probabilities (saved probabilities, evaluate.py) of softmax/sigmoid(logits) = update(logits)."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, channels, 8, 8, generator=g) * 3
    shape = (2, 8, 8) if mode != "multilabel" else (2, channels, 8, 8)
    target = torch.randint(0, channels if mode == "multiclass" else 2, shape, generator=g)
    target[0, ..., 0] = 255
    probs = logits.softmax(1) if mode == "multiclass" else logits.sigmoid()
    from_logits, from_probs = (CalibrationHistogram(channels, mode, ignore_index=255) for _ in range(2))
    from_logits.update(logits, target)
    from_probs.update_probabilities(probs, target)
    torch.testing.assert_close(from_probs.state, from_logits.state)
    if mode == "multiclass":
        with pytest.raises(ValueError, match="probabilities have 2 channels, the histogram 4"):
            from_probs.update_probabilities(probs[:, :2], target)


def test_reliability_diagram_png(tmp_path):
    logits, target = _multiclass(7)
    hist = CalibrationHistogram(4, "multiclass", ignore_index=IGNORE)
    hist.update(logits, target)
    path = hist.reliability_diagram(tmp_path / "out" / "reliability_val.png", ["a", "b", "c", "d"], "val")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 500
    assert sorted(p.name for p in path.parent.iterdir()) == ["reliability_val.png"]  # no temporary left
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        hist.reliability_diagram(tmp_path / "x.png", ["a", "b", "c"])
    binary = CalibrationHistogram(1, "binary")
    binary.update(logits[:, :1], (target == 1).long())
    binary.reliability_diagram(tmp_path / "b.png", ["background", "lesion"])
    assert (tmp_path / "b.png").stat().st_size > 1000


# ---- temperature scaling ---------------------------------------------------------------------------------


def _calibrated_labels(z: torch.Tensor, temperature, mode: str, seed: int) -> torch.Tensor:
    """Labels drawn from the model softmax(z / T) (sigmoid for multilabel): T is then the NLL optimum."""
    g = torch.Generator().manual_seed(seed)
    scaled = apply_temperature(z, torch.as_tensor(temperature))
    if mode == "multiclass":
        probs = torch.softmax(scaled, 1).movedim(1, -1).reshape(-1, z.shape[1])
        return torch.multinomial(probs, 1, generator=g).reshape(z.shape[0], *z.shape[2:])
    return torch.bernoulli(torch.sigmoid(scaled), generator=g).long()


@pytest.mark.parametrize(("mode", "channels", "true"), [("multiclass", 5, 2.0), ("binary", 1, 0.5),
                                                         ("multilabel", 3, 1.5)])
def test_fit_recovers_a_known_temperature(mode, channels, true):
    z = torch.randn(4, channels, 50, 100, generator=torch.Generator().manual_seed(8)) * 3
    target = _calibrated_labels(z, true, mode, seed=9)
    fitted = fit_temperature(z, target, mode)
    assert fitted.shape == () and fitted.dtype == torch.float64
    assert float(fitted) == pytest.approx(true, rel=0.04)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_fit_recovers_per_class_temperatures(mode):
    true = torch.tensor([0.5, 1.0, 2.0, 4.0])
    z = torch.randn(30000, 4, generator=torch.Generator().manual_seed(10)) * 3
    target = _calibrated_labels(z, true, mode, seed=11)
    fitted = fit_temperature(z, target, mode, per_class=True)
    assert fitted.shape == (4,)
    torch.testing.assert_close(fitted.float(), true, rtol=0.06, atol=0)


def test_fit_leaves_ignored_pixels_out_and_scaling_improves_ece():
    z = torch.randn(2, 4, 60, 60, generator=torch.Generator().manual_seed(12)) * 4
    target = _calibrated_labels(z, 3.0, "multiclass", seed=13)  # z is over-confident by 3x
    noisy = target.clone()
    noisy[:, :20] = IGNORE
    adversarial = target.clone()
    adversarial[:, :20] = z[:, :, :20].argmin(1)  # what the ignored pixels would teach otherwise
    fitted = fit_temperature(z, noisy, "multiclass", ignore_index=IGNORE)
    kept = fit_temperature(z[:, :, 20:], target[:, 20:], "multiclass")
    assert float(fitted) == pytest.approx(float(kept), rel=1e-6)
    assert float(fit_temperature(z, adversarial, "multiclass")) > 1.1 * float(fitted)
    before, after = CalibrationHistogram(4, "multiclass"), CalibrationHistogram(4, "multiclass")
    before.update(z, target)
    after.update(apply_temperature(z, fitted), target)
    assert float(after.ece()["top_label_ece"]) < 0.3 * float(before.ece()["top_label_ece"])
    with pytest.raises(ValueError, match="no scored pixels"):
        fit_temperature(z, torch.full_like(target, IGNORE), "multiclass", ignore_index=IGNORE)


def test_apply_temperature_divides_along_channels_and_keeps_the_argmax():
    z = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(14)) * 3
    scaled = apply_temperature(z, torch.tensor(2.5, dtype=torch.float64))
    assert scaled.dtype == z.dtype
    torch.testing.assert_close(scaled, z / 2.5)
    assert torch.equal(scaled.argmax(1), z.argmax(1))
    per_class = torch.tensor([1.0, 2.0, 4.0])
    expected = torch.stack([z[:, c] / per_class[c] for c in range(3)], dim=1)
    torch.testing.assert_close(apply_temperature(z, per_class), expected)
    torch.testing.assert_close(apply_temperature(z[:, :, 0, 0], per_class), expected[:, :, 0, 0])
    with pytest.raises(ValueError, match="2 temperatures for 3 channels"):
        apply_temperature(z, torch.ones(2))


# ---- the logit sample ------------------------------------------------------------------------------------


def _batches(seed: int, n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [_multiclass(seed + i, shape=(2, 3, 8, 8)) for i in range(n)]


def _sample(batches, **kwargs) -> LogitSample:
    sample = LogitSample(3, "multiclass", ignore_index=IGNORE, **kwargs)
    for logits, target in batches:
        sample.update(logits, target)
    return sample


def test_sample_is_bounded_deterministic_and_made_of_scored_pixels():
    batches = _batches(20)
    a, b = _sample(batches, max_pixels=100, seed=3), _sample(batches, max_pixels=100, seed=3)
    la, ta = a.gathered()
    lb, tb = b.gathered()
    assert la.shape == (100, 3) and ta.shape == (100,) and la.dtype == torch.float32
    assert torch.equal(la, lb) and torch.equal(ta, tb)
    other, _ = _sample(batches, max_pixels=100, seed=4).gathered()
    assert not torch.equal(other, la)
    # every sampled row is a scored pixel of the data, with its target
    rows = {tuple(r): int(t) for lg, tg in batches for r, t in zip(lg.movedim(1, -1).reshape(-1, 3).tolist(),
                                                                     tg.reshape(-1).tolist(), strict=True)}
    assert all(rows[tuple(r)] == t != IGNORE for r, t in zip(la.tolist(), ta.tolist(), strict=True))
    assert len({tuple(r) for r in la.tolist()}) == 100  # without replacement
    a.reset()
    assert a.gathered()[0].shape == (0, 3)


def test_sample_keeps_every_scored_pixel_when_fewer_than_its_size():
    batches = _batches(30, n=2)
    logits, target = _sample(batches, max_pixels=1000).gathered()
    scored = sum(int((t != IGNORE).sum()) for _, t in batches)
    assert logits.shape == (scored, 3) and bool((target != IGNORE).all())
    expected = torch.cat([lg.movedim(1, -1)[tg != IGNORE] for lg, tg in batches])
    assert sorted(map(tuple, logits.tolist())) == sorted(map(tuple, expected.tolist()))


def test_sample_is_uniform_over_batches():
    g = torch.Generator().manual_seed(40)
    first = (torch.randn(1, 2, 40, 1, generator=g), torch.zeros(1, 40, 1, dtype=torch.long))
    second = (torch.randn(1, 2, 160, 1, generator=g), torch.ones(1, 160, 1, dtype=torch.long))
    shares = []
    for seed in range(300):
        sample = LogitSample(2, "multiclass", max_pixels=50, seed=seed)
        sample.update(*first)
        sample.update(*second)
        shares.append(float((sample.gathered()[1] == 0).double().mean()))
    assert np.mean(shares) == pytest.approx(40 / 200, abs=0.015)


def test_multilabel_sample_drops_fully_ignored_pixels_and_merges_by_smallest_keys():
    g = torch.Generator().manual_seed(50)
    logits = torch.randn(1, 2, 6, 6, generator=g)
    target = torch.randint(0, 2, (1, 2, 6, 6), generator=g)
    target[:, :, 0] = IGNORE  # 6 pixels ignored in both labels
    target[:, 1, 1] = IGNORE  # 6 pixels ignored in label 1 only
    sample = LogitSample(2, "multilabel", max_pixels=100, ignore_index=IGNORE)
    sample.update(logits, target)
    _, t = sample.gathered()
    assert t.shape == (30, 2) and int((t == IGNORE).sum()) == 6
    a = LogitSample(2, "multilabel", max_pixels=20, ignore_index=IGNORE, rank=0)
    b = LogitSample(2, "multilabel", max_pixels=20, ignore_index=IGNORE, rank=1)
    a.update(logits, target)
    b.update(logits.flip(-1), target.flip(-1))
    union = torch.cat([a.keys, b.keys]).sort().values[:20]
    assert not torch.equal(a.keys, b.keys)
    a.merge(b)
    assert torch.equal(a.keys, union)


def test_temperature_fitted_on_a_sample_of_batches():
    z = torch.randn(6, 4, 40, 40, generator=torch.Generator().manual_seed(60)) * 3
    target = _calibrated_labels(z, 2.0, "multiclass", seed=61)
    sample = LogitSample(4, "multiclass", max_pixels=4000, seed=0)
    for i in range(6):
        sample.update(z[i:i + 1], target[i:i + 1])
    logits, t = sample.gathered()
    assert logits.shape == (4000, 4)
    assert float(fit_temperature(logits, t, "multiclass")) == pytest.approx(2.0, rel=0.1)
