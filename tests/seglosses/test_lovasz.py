"""Tests of seglosses.lovasz: a float64 reference written from the formula, 1 - IoU on hard predictions, a
brute-force evaluation of the Lovász extension, smp's LovaszLoss as a peer, gradients, extreme logits and
argument errors."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

import seglosses._lovasz_core as lovasz_module
from seglosses import LovaszLoss, lovasz_loss
from tests.seglosses.references import CASES, SPATIAL, dense_reference

pytestmark = pytest.mark.usefixtures("single_thread")

N, C = 3, 4


def make_case(mode, spatial, ignore, seed, n=N, soft=False, scale=2.0):
    """Logits and a target; ignore: "none", "class" (a valid class id, multiclass only) or "255"."""
    gen = torch.Generator().manual_seed(seed)
    if mode == "multiclass":
        x = torch.randn(n, C, *spatial, generator=gen, dtype=torch.float64) * scale
        if soft:
            return x, torch.softmax(torch.randn(x.shape, generator=gen, dtype=torch.float64) * 2, 1), None
        y = torch.randint(0, C - 1, (n, *spatial), generator=gen)  # class C - 1 absent: "present" matters
        if ignore == "class":
            return x, y, 1
        if ignore == "255":
            return x, torch.where(torch.rand(y.shape, generator=gen) < 0.3, 255, y), 255
        return x, y, None
    shape = (n, 1 if mode == "binary" else C, *spatial)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
    t = torch.rand(shape, generator=gen, dtype=torch.float64)
    t = t if soft else (t < 0.4).double()
    if mode == "multilabel" and not soft:
        t[:, -1] = 0  # an absent label
    if ignore == "255":
        return x, torch.where(torch.rand(shape, generator=gen, dtype=torch.float64) < 0.3, 255.0, t), 255
    return x, t, None


def lovasz_of(errors: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The formula of the docstring, with a plain first difference of J (float64)."""
    order = torch.argsort(errors, descending=True, stable=True)
    e, gs = errors[order], g[order]
    total = gs.sum()
    jaccard = 1 - (total - gs.cumsum(0)) / (total + (1 - gs).cumsum(0))
    return (e * torch.diff(jaccard, prepend=jaccard.new_zeros(1))).sum()


def dense(x, t, mode, ignore_index):
    """(x, g, v) as (N, C, S) float64: logits or probabilities, the (one-hot) target, the counted mask."""
    x, _, g, v = dense_reference(x, t, mode, ignore_index, from_logits=False)
    n, c = x.shape[:2]
    return x.reshape(n, c, -1), g.reshape(n, c, -1), v.bool().reshape(n, c, -1)


def reference_lovasz(x, t, *, mode="multiclass", per_image=False, classes="present", class_weights=None,
                     ignore_index=None, from_logits=True, reduction="mean"):  # fmt: skip
    z, g, v = dense(x, t, mode, ignore_index)
    n, c, _ = z.shape
    if mode == "multiclass":
        p = torch.softmax(z, 1) if from_logits else z
        errors = (g - p).abs()
    else:
        errors = (1 - z * (2 * g - 1)).clamp_min(0)
    w = torch.ones(c, dtype=torch.float64) if class_weights is None else torch.tensor(class_weights).double()
    if mode == "multiclass" and ignore_index is not None and 0 <= ignore_index < c:
        w = w.clone()
        w[ignore_index] = 0
    groups = [[i] for i in range(n)] if per_image else [list(range(n))]
    losses = torch.zeros(len(groups), c, dtype=torch.float64)
    weights = torch.zeros(len(groups), c, dtype=torch.float64)
    for r, images in enumerate(groups):
        for k in range(c):
            keep = v[images, k].reshape(-1)
            e, gk = errors[images, k].reshape(-1)[keep], g[images, k].reshape(-1)[keep]
            if e.numel() == 0:
                continue
            losses[r, k] = lovasz_of(e, gk)
            counted = mode == "binary" or classes == "all" or gk.sum() > 0
            weights[r, k] = w[k] if counted else 0.0
    weighted = losses * weights
    if reduction == "none":
        return weighted if per_image else weighted[0]
    if reduction == "sum":
        return weighted.sum()
    rows = weights.sum(1)
    means = [weighted[r].sum() / rows[r] for r in range(len(groups)) if rows[r] > 0]
    return torch.stack(means).mean() if means else torch.zeros((), dtype=torch.float64)


@pytest.mark.parametrize(("mode", "dims", "ignore"), CASES)
def test_matches_float64_reference(mode, dims, ignore):
    x, t, ignore_index = make_case(mode, SPATIAL[dims], ignore, seed=len(dims) + len(ignore))
    options = itertools.product((False, True), ("present", "all"), (None, [0.5, 2.0, 1.0, 3.0]))
    for per_image, classes, weights in options:
        if mode == "binary" and weights is not None:
            weights = [2.0]
        for reduction in ("none", "mean", "sum"):
            kwargs = dict(mode=mode, per_image=per_image, classes=classes, class_weights=weights,
                          ignore_index=ignore_index, reduction=reduction)  # fmt: skip
            got = lovasz_loss(x, t, **kwargs)
            assert got.dtype == torch.float64
            torch.testing.assert_close(got, reference_lovasz(x, t, **kwargs), msg=str(kwargs))


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_soft_targets_and_probabilities_match_reference(mode):
    x, t, _ = make_case(mode, SPATIAL["2d"], "none", seed=5, soft=True)
    for per_image, from_logits in itertools.product((False, True), (True, False)):
        if mode != "multiclass" and not from_logits:
            continue
        inp = x if from_logits else torch.softmax(x, 1)
        kwargs = dict(mode=mode, per_image=per_image, from_logits=from_logits, reduction="none")
        torch.testing.assert_close(lovasz_loss(inp, t, **kwargs), reference_lovasz(inp, t, **kwargs))


@pytest.mark.parametrize("per_image", [False, True])
def test_hard_predictions_give_one_minus_iou(per_image):
    """On indicator vectors the Lovász extension is the set function: 1 - IoU_c per class."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, C, (N, 5, 6), generator=gen)
    wrong = torch.randint(0, C, y.shape, generator=gen)
    pred = torch.where(torch.rand(y.shape, generator=gen) < 0.3, wrong, y)
    probs = F.one_hot(pred, C).movedim(-1, 1).double()
    loss = lovasz_loss(probs, y, from_logits=False, per_image=per_image, classes="all", reduction="none")
    dims = (1, 2) if per_image else (0, 1, 2)
    for k in range(C):
        inter = ((pred == k) & (y == k)).sum(dims).double()
        union = ((pred == k) | (y == k)).sum(dims).double()
        one_minus_iou = torch.where(union > 0, 1 - inter / union.clamp_min(1), 0.0)
        torch.testing.assert_close(loss[..., k], one_minus_iou)
    # binary Lovász hinge with logits +-1: errors 0 or 2, so the loss is 2 (1 - IoU) of the foreground
    t = (y > 1).double()
    x = (pred > 1).double() * 2 - 1
    inter, union = (x.gt(0) & t.bool()).sum().double(), (x.gt(0) | t.bool()).sum().double()
    torch.testing.assert_close(lovasz_loss(x, t, mode="binary"), 2 * (1 - inter / union))


def jaccard_set_loss(chosen: list[int], g: list[int]) -> float:
    """Delta(S) = |S| / |G u S| for the set S of mispredicted pixels (hard labels)."""
    positives = {i for i, v in enumerate(g) if v}
    return len(chosen) / len(positives | set(chosen)) if chosen else 0.0


@pytest.mark.parametrize("seed", range(8))
def test_equals_brute_force_lovasz_extension(seed):
    """Two independent evaluations on tiny inputs: the threshold integral of the set function,
    f(e) = sum_j (v_j - v_(j+1)) Delta({i: e_i >= v_j}), and (Delta is submodular) the maximum over all
    orderings of the greedy sums of Delta's increments."""
    gen = torch.Generator().manual_seed(seed)
    size = 5 + seed % 2
    p = torch.rand(1, 2, size, generator=gen, dtype=torch.float64)
    p = p / p.sum(1, keepdim=True)  # probabilities of two classes
    p[0, :, 0] = p[0, :, 1]  # a tie
    y = torch.randint(0, 2, (1, size), generator=gen)
    y[0, 0] = 1
    y[0, 1] = 0
    loss = lovasz_loss(p, y, from_logits=False, reduction="none")
    for k in range(2):
        g = (y[0] == k).long().tolist()
        e = (torch.tensor(g, dtype=torch.float64) - p[0, k]).abs().tolist()
        levels = [*sorted(set(e), reverse=True), 0.0]
        integral = sum(
            (levels[j] - levels[j + 1]) * jaccard_set_loss([i for i in range(size) if e[i] >= levels[j]], g)
            for j in range(len(levels) - 1)
        )

        def greedy_sum(order: tuple[int, ...], e: list[float] = e, g: list[int] = g) -> float:
            steps = [jaccard_set_loss(list(order[:i]), g) for i in range(size + 1)]
            return sum(e[order[i]] * (steps[i + 1] - steps[i]) for i in range(size))

        greedy = max(greedy_sum(order) for order in itertools.permutations(range(size)))
        assert loss[k].item() == pytest.approx(integral, abs=1e-12)
        assert loss[k].item() == pytest.approx(greedy, abs=1e-12)


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", ["none", "255"])
def test_equals_smp_lovasz_loss(mode, per_image, ignore):
    smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")
    x, t, ignore_index = make_case(mode, (4, 5), ignore, seed=31)
    x = x.float().requires_grad_(True)
    t = t if mode == "multiclass" else t.float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = smp_losses.LovaszLoss(mode=mode, per_image=per_image, ignore_index=ignore_index)(x, t)
    ours = lovasz_loss(x, t, mode=mode, per_image=per_image, ignore_index=ignore_index)
    torch.testing.assert_close(ours, peer)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(peer, x)[0])


def test_pruning_and_class_blocks_change_nothing(monkeypatch):
    """Dropping the zero terms before the sort and sorting several classes at once are exact."""
    for mode, ignore in (("multiclass", "255"), ("binary", "255"), ("multilabel", "none")):
        x, t, ignore_index = make_case(mode, (5, 6), ignore, seed=37, scale=4.0)
        x.requires_grad_(True)
        for per_image in (False, True):
            kwargs = dict(mode=mode, per_image=per_image, ignore_index=ignore_index, classes="all")
            loss = lovasz_loss(x, t, **kwargs)
            (grad,) = torch.autograd.grad(loss, x)
            with monkeypatch.context() as m:
                m.setattr(lovasz_module, "_prune", lambda e, g, v: e if v is None else e.masked_fill(~v, -9))
                m.setattr(lovasz_module, "_class_block", lambda rows, device: 3)
                unpruned = lovasz_loss(x, t, **kwargs)
                (unpruned_grad,) = torch.autograd.grad(unpruned, x)
            torch.testing.assert_close(loss, unpruned, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(grad, unpruned_grad, rtol=1e-12, atol=1e-14)


def test_binary_empty_target_penalises_false_positives():
    x = torch.full((2, 1, 3, 3), -2.0, requires_grad=True)
    x.data[0, 0, 1, 1] = 0.5  # one false positive
    loss = lovasz_loss(x, torch.zeros(2, 1, 3, 3), mode="binary", per_image=True)
    loss.backward()
    assert loss > 0 and x.grad[0, 0, 1, 1] > 0  # descent lowers the false positive's logit
    # multiclass "present": a class absent from the batch leaves the average, "all" keeps it
    p = torch.tensor([[[0.6, 0.9], [0.3, 0.1], [0.1, 0.0]]], dtype=torch.float64)  # (N=1, C=3, S=2)
    y = torch.tensor([[0, 0]])
    assert lovasz_loss(p, y, from_logits=False, reduction="none")[1:].eq(0).all()
    torch.testing.assert_close(lovasz_loss(p, y, from_logits=False, classes="all", reduction="none")[1:],
                               torch.tensor([0.3, 0.1], dtype=torch.float64))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "kwargs"),
    [
        ("multiclass", {}),
        ("multiclass", {"per_image": True, "ignore_index": 255, "class_weights": [1.0, 2.0, 0.5, 1.0]}),
        ("multiclass", {"classes": "all", "reduction": "none"}),
        ("multiclass", {"from_logits": False}),
        ("binary", {"ignore_index": 255}),
        ("binary", {"per_image": True}),
        ("multilabel", {"classes": "all", "per_image": True}),
    ],
)
def test_gradcheck(mode, kwargs):
    x, t, _ = make_case(mode, (2, 3), "255" if "ignore_index" in kwargs else "none", seed=13, n=2)
    if not kwargs.get("from_logits", True):
        x = torch.softmax(x, 1) * 0.9 + 0.05 / C
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: lovasz_loss(inp, t, mode=mode, **kwargs), (x,))


def test_backward_twice_and_without_grad():
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "255", seed=41)
    x.requires_grad_(True)
    loss = lovasz_loss(x, y, ignore_index=255, per_image=True)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    (second,) = torch.autograd.grad(loss, x)  # the buffers were consumed: recomputed
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(lovasz_loss(x, y, ignore_index=255, per_image=True), loss.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_finite_at_extreme_logits(mode, dtype):
    x, t, _ = make_case(mode, SPATIAL["2d"], "none", seed=17)
    perfect = t * 2 - 1 if mode != "multiclass" else F.one_hot(t, C).movedim(-1, 1).double() * 2 - 1
    for scale, logits in itertools.product((100.0, 1e4), (torch.sign(x), perfect)):
        z = (logits * scale).to(dtype).requires_grad_(True)
        for per_image in (False, True):
            loss = lovasz_loss(z, t, mode=mode, per_image=per_image)
            (grad,) = torch.autograd.grad(loss, z)
            assert loss.dtype == torch.float32 and grad.dtype == dtype
            assert torch.isfinite(loss) and torch.isfinite(grad).all(), (scale, per_image)


def test_all_ignored_and_empty_batch_give_zero():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    for per_image in (False, True):
        loss = lovasz_loss(x, torch.full((2, 4, 4), 255), ignore_index=255, per_image=per_image)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss == 0 and (grad == 0).all()
    empty = torch.randn(0, 3, 4, 4, requires_grad=True)
    assert lovasz_loss(empty, torch.zeros(0, 4, 4, dtype=torch.long)) == 0


def test_module_options_and_buffer():
    loss = LovaszLoss(per_image=True, classes="all", class_weights=[1.0, 2.0, 1.0, 1.0])
    assert loss.class_weights.dtype == torch.float32 and not loss.state_dict()
    assert "per_image=True, classes='all'" in repr(loss)
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=21)
    kwargs = dict(per_image=True, classes="all", class_weights=[1.0, 2.0, 1.0, 1.0])
    torch.testing.assert_close(loss(x.float(), y), lovasz_loss(x.float(), y, **kwargs))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": "some"}, r"classes must be one of \('present', 'all'\)"),
        ({"per_image": 1}, "per_image must be true or false"),
        ({"mode": "binary", "from_logits": False}, "from_logits=False is not defined for the binary Lovász"),
        ({"mode": "softmax"}, "mode must be one of"),
        ({"reduction": "avg"}, "reduction must be one of"),
        ({"ignore_index": "255"}, "ignore_index must be an int"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=23)
    with pytest.raises(ValueError, match=match):
        lovasz_loss(x, y, **kwargs)
    with pytest.raises(ValueError, match=match):
        LovaszLoss(**kwargs)


def test_bad_inputs_raise_value_errors():
    x, y, _ = make_case("multiclass", SPATIAL["2d"], "none", seed=23)
    with pytest.raises(ValueError, match=r"one value per class \(4\)"):
        lovasz_loss(x, y, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="outside"):
        lovasz_loss(x, y + 4)
    with pytest.raises(ValueError, match="requires grad"):
        lovasz_loss(x[:, 0], y.double().clamp_max(1).requires_grad_(), mode="binary")
