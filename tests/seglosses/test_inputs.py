"""Tests of seglosses._inputs: shape normalisation, dtype rules and the errors of ``prepare``."""

from __future__ import annotations

import pytest
import torch

from seglosses._inputs import as_class_vector, check_reduction, compute_dtype, prepare


@pytest.mark.parametrize(
    "input_shape,target_shape,flat,out_shape",
    [
        ((2, 4, 3, 5), (2, 3, 5), (2, 4, 15), (2, 3, 5)),
        ((2, 4, 3, 5), (2, 1, 3, 5), (2, 4, 15), (2, 3, 5)),  # (N, 1, *) targets are squeezed
        ((2, 4), (2,), (2, 4, 1), (2,)),  # no spatial dims
        ((2, 4, 2, 3, 2), (2, 2, 3, 2), (2, 4, 12), (2, 2, 3, 2)),
        ((0, 4, 3, 5), (0, 3, 5), (0, 4, 15), (0, 3, 5)),  # empty batch
    ],
)
def test_multiclass_index_targets_are_flattened(input_shape, target_shape, flat, out_shape):
    x = torch.randn(input_shape)
    y = torch.randint(0, 4, target_shape, dtype=torch.int32)
    p = prepare(x, y, "multiclass")
    assert p.input.shape == flat and p.target.shape == (flat[0], flat[2])
    assert p.target.dtype == torch.int64 and p.index_target and p.valid is None
    assert p.out_shape == out_shape and p.spatial_shape == input_shape[2:]
    assert torch.equal(p.target, y.reshape(flat[0], flat[2]).long())


def test_multiclass_ignore_index_masks_and_zeroes_ignored_pixels():
    y = torch.tensor([[0, 255, 2, 255]])
    p = prepare(torch.randn(1, 3, 4), y, "multiclass", ignore_index=255)
    assert p.valid.tolist() == [[True, False, True, False]]
    assert p.target.tolist() == [[0, 0, 2, 0]]
    # nothing ignored: no mask at all
    assert (
        prepare(torch.randn(1, 3, 4), torch.tensor([[0, 1, 2, 0]]), "multiclass", ignore_index=255).valid
        is None
    )


def test_multiclass_probability_targets_stay_dense():
    x = torch.randn(2, 3, 4, 4)
    t = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    p = prepare(x, t, "multiclass")
    assert not p.index_target and p.target.shape == (2, 3, 16) and p.out_shape == (2, 3, 4, 4)


@pytest.mark.parametrize(
    "shape,out_shape",
    [((2, 3, 5), (2, 3, 5)), ((2, 1, 3, 5), (2, 1, 3, 5)), ((6,), (6,)), ((0, 3, 5), (0, 3, 5))],
)
def test_binary_shapes(shape, out_shape):
    p = prepare(torch.randn(shape), torch.rand(shape).round(), "binary")
    assert p.input.shape[1] == 1 and p.target.shape == p.input.shape and p.out_shape == out_shape


def test_binary_and_multilabel_ignore_index_is_per_element():
    t = torch.tensor([[[1.0, -1.0, 0.0], [-1.0, 0.0, 1.0]]])
    p = prepare(torch.randn(1, 2, 3), t, "multilabel", ignore_index=-1)
    assert p.valid.tolist() == [[[True, False, True], [False, True, True]]]
    assert p.target.tolist() == [[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    assert compute_dtype(dtype) == torch.float32 and compute_dtype(torch.float64) == torch.float64
    p = prepare(torch.randn(2, 3, 4).to(dtype), torch.rand(2, 3, 4).to(dtype).round(), "multilabel")
    assert p.input.dtype == torch.float32 and p.target.dtype == torch.float32


_X = torch.linspace(-2.0, 2.0, 24).reshape(2, 3, 4)


@pytest.mark.parametrize(
    "input,target,mode,kwargs,match",
    [
        (_X, torch.randint(0, 3, (2, 4)), "softmax", {}, "mode must be one of"),
        (_X, [0, 1], "multiclass", {}, "must be tensors"),
        (torch.randint(0, 3, (2, 3, 4)), torch.randint(0, 3, (2, 4)), "multiclass", {}, "floating point"),
        (torch.randn(3), torch.randint(0, 3, (3,)), "multiclass", {}, r"shape \(N, C, \*\)"),
        (_X, torch.randint(0, 3, (2, 5)), "multiclass", {}, r"index target must have shape \(N, \*\)"),
        (_X, torch.rand(2, 4), "multiclass", {}, "int64 class indices"),
        (_X, torch.ones(2, 4, dtype=torch.bool), "multiclass", {}, "integer tensor"),
        (_X, torch.tensor([[0, 1, 3, 0], [0, 0, 0, -2]]), "multiclass", {}, r"outside \[0, 3\).*\[-2, 3\]"),
        (_X, torch.tensor([[0, 1, 255, 7]] * 2), "multiclass", {"ignore_index": 255}, r"outside.*\[7\]"),
        (_X, torch.randint(0, 3, (2, 4)), "multiclass", {"ignore_index": 1.0}, "ignore_index must be an int"),
        (_X, torch.rand(2, 3, 4), "multiclass", {"ignore_index": -1}, "ignore_index applies"),
        (_X, torch.full((2, 3, 4), 1.5), "multiclass", {}, r"probabilities must lie in \[0, 1\]"),
        (_X, torch.rand(2, 3, 5), "multilabel", {}, "multilabel target must have the input's shape"),
        (torch.randn(2), torch.rand(2), "multilabel", {}, r"multilabel input must have shape \(N, C, \*\)"),
        (_X, torch.rand(2, 4, 4), "binary", {}, "binary target must have the input's shape"),
        (torch.tensor(1.0), torch.tensor(1.0), "binary", {}, "binary input must have shape"),
        (_X, torch.full((2, 3, 4), 2.0), "multilabel", {"ignore_index": -1}, r"or ignore_index=-1"),
        (_X, torch.full((2, 3, 4), float("nan")), "multilabel", {}, r"must lie in \[0, 1\].*nan"),
        (_X, torch.rand(2, 3, 4).round(), "multilabel", {"from_logits": False}, "expects probabilities"),
        (
            torch.full((2, 3, 4), 0.5).index_fill(2, torch.tensor([1]), float("nan")),
            torch.rand(2, 3, 4).round(),
            "multilabel",
            {"from_logits": False},
            "expects probabilities",
        ),
    ],
)
def test_prepare_errors(input, target, mode, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prepare(input, target, mode, **kwargs)


def test_small_checks():
    check_reduction("none")
    with pytest.raises(ValueError, match="reduction must be one of"):
        check_reduction("avg")
    like = torch.zeros(1, dtype=torch.float64)
    assert as_class_vector("alpha", None, 3, like) is None
    assert as_class_vector("alpha", 0.5, 3, like).tolist() == [0.5, 0.5, 0.5]
    assert as_class_vector("alpha", [1, 2, 3], 3, like).dtype == torch.float64
    with pytest.raises(ValueError, match=r"one value per class \(3\)"):
        as_class_vector("alpha", [1.0, 2.0], 3, like)
    with pytest.raises(ValueError, match="finite and >= 0"):
        as_class_vector("alpha", [1.0, float("inf"), 2.0], 3, like)
