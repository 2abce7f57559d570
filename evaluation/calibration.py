"""Calibration of predicted probabilities: the expected calibration error (ECE) of each class from a
histogram accumulated batch by batch (:class:`CalibrationHistogram`), and its reliability diagram
(:func:`plot_reliability`); temperature scaling, which improves it.

ECE (Guo et al., 2017): with the scored probabilities split into equal-width confidence bins,
``ECE = sum_b (n_b / N) |acc_b - conf_b|`` (``acc_b``: share of the bin's elements that are correct,
``conf_b``: their mean probability, ``N``: scored elements). :data:`DEFAULT_BINS` = 15 bins, as Guo et al.
Bin ``b`` of ``B`` holds ``edges[b] <= p < edges[b + 1]`` with ``edges = torch.linspace(0, 1, B + 1)`` in
float32, the last bin also ``p = 1`` (torchmetrics' binning, whose ``p = 1`` has a bin of its own).

- Class-wise (one-vs-rest) ECE of class c: its probability on every scored pixel against ``1[y = c]``;
  multiclass: the softmax probability of c; binary: the foreground's sigmoid (one class); multilabel:
  each label's sigmoid, elements equal to ``ignore_index`` left out of that label only.
- Top-label ECE (multiclass only): the largest softmax probability against ``argmax == y``, what
  torchmetrics' ``multiclass_calibration_error`` computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from evaluation.pixels import all_gather_cat, all_reduce_sum, flat_pixels, one_vs_rest, per_channel
from safeio import atomic_path
from seglosses.distributed import distributed_world
from seglosses.modes import MULTICLASS_MODE, check_mode, check_num_classes

__all__ = ["DEFAULT_BINS", "DEFAULT_SAMPLE_PIXELS", "DIAGRAM_MAX_CLASSES", "STATE_FIELDS",
           "TEMPERATURE_RANGE", "CalibrationHistogram", "LogitSample", "apply_temperature", "bin_edges",
           "ece_from_state", "fit_temperature", "plot_reliability"]

#: Equal-width confidence bins over [0, 1] (Guo et al., 2017).
DEFAULT_BINS = 15
#: The first dimension of :attr:`CalibrationHistogram.state`: elements, sum of their probabilities, sum of
#: their correctness (1 when the pixel is of the class), per row and bin.
STATE_FIELDS = ("count", "confidence", "correct")
#: A reliability diagram shows at most this many classes (those of the largest ECE) besides the top label.
DIAGRAM_MAX_CLASSES = 30
TOP_LABEL = "top-label"


def bin_edges(bins: int, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
    """The ``bins + 1`` edges ``linspace(0, 1, bins + 1)`` of the confidence bins."""
    return torch.linspace(0.0, 1.0, bins + 1, dtype=dtype, device=device)


def ece_from_state(state: Tensor) -> Tensor:
    """ECE of each row of a (3, K, bins) :attr:`CalibrationHistogram.state`: (K,) float64,
    ``sum_b |correct_b - confidence_b| / sum_b count_b`` (= ``sum_b (n_b / N) |acc_b - conf_b|``); NaN for
    a row without scored elements."""
    count, confidence, correct = state.double().unbind(0)
    return (correct - confidence).abs().sum(-1) / count.sum(-1)


class CalibrationHistogram:
    """Per class, ``bins`` equal-width confidence bins (:data:`DEFAULT_BINS` = 15) accumulating the scored
    elements, their probabilities and their correctness, batch by batch, on the batches' device (no host
    sync per batch).

    Args:
        num_classes: C, the network's output channels (binary: 1, the foreground).
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"`` (:mod:`evaluation.pixels`).
        bins: confidence bins over [0, 1] (:func:`bin_edges`).
        ignore_index: target value left out (multilabel: per element); ``None``: none.
        device: where the state starts; it moves to the device of the first batch (one copy).

    ``state``: (3, K, bins) float64 sums :data:`STATE_FIELDS`, rows K = C classes, plus for multiclass a
    last row for the top label. Sums of batches (and of DDP processes: :meth:`synced`, one
    ``all_reduce``) are the state of their union. :meth:`ece` scores it, :meth:`reliability_diagram`
    draws it.
    """

    def __init__(self, num_classes: int, mode: str, bins: int = DEFAULT_BINS, ignore_index: int | None = None,
                 device: torch.device | str | None = None) -> None:
        check_num_classes(check_mode(mode), num_classes)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive int, got {bins!r}")
        self.num_classes, self.mode, self.bins, self.ignore_index = num_classes, mode, bins, ignore_index
        self.top_label = mode == MULTICLASS_MODE
        rows = num_classes + int(self.top_label)
        self.state = torch.zeros(len(STATE_FIELDS), rows, bins, dtype=torch.float64, device=device)

    def reset(self) -> None:
        self.state.zero_()

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch: ``logits`` (N, C, *) and its target (:func:`evaluation.pixels.flat_pixels`)."""
        self._update(logits, target, probabilities=False)

    def update_probabilities(self, probs: Tensor, target: Tensor) -> None:
        """Add a batch of probabilities (N, C, *) in [0, 1] instead of logits (multiclass: per class, e.g.
        a softmax; binary/multilabel: each label's sigmoid), e.g. those ``predict.py`` saved; the bins and
        the top label as :meth:`update` makes them of the logits' softmax/sigmoid."""
        self._update(probs, target, probabilities=True)

    def _update(self, values: Tensor, target: Tensor, probabilities: bool) -> None:
        z, t = flat_pixels(values, target, self.mode)
        what = "probabilities" if probabilities else "logits"
        if z.shape[1] != self.num_classes:
            raise ValueError(f"{what} have {z.shape[1]} channels, the histogram {self.num_classes} classes")
        probs, positive, valid = one_vs_rest(z, t, self.mode, self.ignore_index, probabilities)
        if self.top_label:
            confidence, predicted = probs.max(dim=1, keepdim=True)
            probs = torch.cat([probs, confidence], dim=1)
            positive = torch.cat([positive, predicted == t.unsqueeze(1)], dim=1)
            valid = torch.cat([valid, valid[:, :1]], dim=1)
        self._add(probs, positive, valid)

    def _add(self, probs: Tensor, positive: Tensor, valid: Tensor) -> None:
        if self.state.device != probs.device:
            self.state = self.state.to(probs.device)
        edges = bin_edges(self.bins, probs.dtype, probs.device)
        which = (torch.bucketize(probs.contiguous(), edges, right=True) - 1).clamp_(0, self.bins - 1)
        rows = torch.arange(probs.shape[1], device=probs.device) * self.bins
        index = (which + rows).reshape(-1)
        weight = valid.reshape(-1).double()
        sums = self.state.view(len(STATE_FIELDS), -1)
        sums[0].scatter_add_(0, index, weight)
        sums[1].scatter_add_(0, index, torch.where(valid, probs, 0.0).reshape(-1).double())
        sums[2].scatter_add_(0, index, (positive & valid).reshape(-1).double())

    def synced(self) -> CalibrationHistogram:
        """A histogram whose state is this one summed over every DDP process (``all_reduce``, a collective:
        call it on every rank); a copy of this one without a multi-process group."""
        other = CalibrationHistogram(self.num_classes, self.mode, self.bins, self.ignore_index)
        other.state = all_reduce_sum(self.state)
        return other

    def ece(self) -> dict[str, Any]:
        """``{"bins": the bin count, "ece": (C,) class-wise ECE, "mean_ece": their nanmean,
        "pixels": (C,) scored elements per class, "top_label_ece": top-label ECE (multiclass only)}``;
        tensors float64 on the state's device, NaN for a class without scored elements."""
        ece = ece_from_state(self.state)
        c = self.num_classes
        result: dict[str, Any] = {"bins": self.bins, "ece": ece[:c], "mean_ece": torch.nanmean(ece[:c]),
                                  "pixels": self.state[0, :c].sum(-1)}
        if self.top_label:
            result["top_label_ece"] = ece[c]
        return result

    def reliability_diagram(self, path: str | Path, class_names: Sequence[str],
                            title: str = "reliability") -> Path:
        """Write the PNG of :func:`plot_reliability` of this state (``class_names``: one per class; binary:
        the foreground's, or background and foreground) to ``path``, atomically; returns ``path``."""
        names = [str(n) for n in class_names]
        if self.num_classes == 1 and len(names) == 2:
            names = names[1:]  # binary: the foreground's row
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        if self.top_label:
            names.append(TOP_LABEL)
        plot_reliability(path, self.state.cpu(), names, f"{title} ({self.bins} bins)")
        return Path(path)


def _panel(ax: Any, row: np.ndarray, name: str, ece: float) -> None:
    """One row's reliability curve (accuracy per bin against its mean confidence, bars at the bin
    positions) over the diagonal, and its bin counts (grey steps, right log axis)."""
    count, confidence, correct = row
    bins = count.shape[0]
    edges = np.linspace(0.0, 1.0, bins + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy, mean_conf = correct / count, confidence / count
    ax.bar(edges[:-1], np.nan_to_num(accuracy), width=1.0 / bins, align="edge", color="tab:blue",
           alpha=0.35, edgecolor="tab:blue", linewidth=0.5)
    ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=0.8)
    ax.plot(mean_conf, accuracy, color="tab:red", marker="o", markersize=3, linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence", fontsize=8)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"{name}: ECE {ece:.4f}, {int(count.sum())} px", fontsize=9)
    counts = ax.twinx()
    counts.step(edges, np.append(count, count[-1]), where="post", color="grey", linewidth=0.8)
    if count.max() > 0:
        from matplotlib.ticker import LogLocator, NullLocator

        counts.set_yscale("log")
        counts.yaxis.set_major_locator(LogLocator(numticks=4))
        counts.yaxis.set_minor_locator(NullLocator())  # minor log ticks: most of the drawing time
    counts.tick_params(labelsize=6, colors="grey")


def plot_reliability(path: str | Path, state: Tensor, names: Sequence[str], title: str) -> None:
    """Reliability diagram PNG of a (3, K, bins) :attr:`CalibrationHistogram.state` with one name per row:
    one panel per row (the row named :data:`TOP_LABEL` first), at most :data:`DIAGRAM_MAX_CLASSES` classes
    (those of the largest ECE, in class order; the title says so). Matplotlib's Agg canvas, no pyplot;
    written atomically. Fixed margins, not a layout engine: a test of every run draws it, and
    constrained layout took half of the time."""
    from matplotlib.figure import Figure

    values = state.double().numpy()
    eces = ece_from_state(state).tolist()
    rows = [i for i, n in enumerate(names) if n == TOP_LABEL]
    classes = [i for i, n in enumerate(names) if n != TOP_LABEL]
    if len(classes) > DIAGRAM_MAX_CLASSES:
        worst = sorted(classes, key=lambda i: -eces[i] if math.isfinite(eces[i]) else math.inf)
        title += f", the {DIAGRAM_MAX_CLASSES} of {len(classes)} classes of the largest ECE"
        classes = sorted(worst[:DIAGRAM_MAX_CLASSES])
    rows += classes
    cols = min(len(rows), 5)
    lines = math.ceil(len(rows) / cols)
    width, height = 3.3 * cols, 2.9 * lines + 0.5
    fig = Figure(figsize=(width, height))
    # margins in inches: labels on the left and bottom, the counts' axis on the right, titles above
    fig.subplots_adjust(left=0.5 / width, right=1 - 0.45 / width, bottom=0.45 / height, top=1 - 0.65 / height,
                        wspace=0.4, hspace=0.55)
    for k, i in enumerate(rows):  # only the panels drawn: an axes costs as much as what it shows
        _panel(fig.add_subplot(lines, cols, k + 1), values[:, i], names[i], eces[i])
    fig.suptitle(f"{title}; bars/red: accuracy, grey: pixels per bin (right axis)", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")


# ---- temperature scaling ---------------------------------------------------------------------------------

#: Pixels a :class:`LogitSample` keeps by default (with 20 classes: 8 MB of float32 logits).
DEFAULT_SAMPLE_PIXELS = 100_000
#: A fitted temperature is clamped to this range (separable data would drive T to 0).
TEMPERATURE_RANGE = (1e-2, 1e2)


def apply_temperature(logits: Tensor, temperature: Tensor | float) -> Tensor:
    """``logits / T`` with ``T`` a scalar or (C,) per-class temperatures divided along dim 1 of (N, C, *)
    logits (``z_c / T_c``); in the logits' dtype and device."""
    return logits / per_channel(temperature, logits, "temperatures")


def _nll_terms(logits: Tensor, target: Tensor, mode: str,
               ignore_index: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Float64 ``(z, t, weight)`` of the scored rows: multiclass z (P, C), t (P,) class ids, weight (P,);
    binary/multilabel z, t {0., 1.} and weight (P, C). Ignored rows/elements have weight 0."""
    z, t = flat_pixels(logits, target, mode)
    z = z.double()
    valid = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    if mode == MULTICLASS_MODE:
        z, t = z[valid], t[valid]  # one host sync: the fit runs once, on a sample
        return z, t.long(), torch.ones_like(t, dtype=torch.float64)
    return z, (t == 1).double(), valid.double()


def fit_temperature(logits: Tensor, target: Tensor, mode: str, per_class: bool = False,
                    ignore_index: int | None = None, max_iter: int = 200) -> Tensor:
    """The temperature minimising the mean NLL of the scored pixels: multiclass cross-entropy of
    ``softmax(z / T)``, binary/multilabel binary cross-entropy of ``sigmoid(z / T)`` (the mean over the
    scored elements). ``logits`` (N, C, *) or (n, C) (e.g. :meth:`LogitSample.gathered`) with their target.

    Optimises ``log T`` (from T = 1) by ``torch.optim.LBFGS`` (strong Wolfe line search) in float64.
    Returns a scalar float64 tensor, or with ``per_class`` (C,) temperatures (``z_c / T_c``), on the
    logits' device, clamped to :data:`TEMPERATURE_RANGE`. ValueError without scored pixels."""
    check_mode(mode)
    z, t, weight = _nll_terms(logits, target, mode, ignore_index)
    total = weight.sum()
    if z.shape[0] == 0 or float(total) == 0:
        raise ValueError("no scored pixels to fit a temperature on (all ignored or empty)")
    log_t = torch.zeros(z.shape[1] if per_class else 1, dtype=torch.float64, device=z.device,
                        requires_grad=True)

    def loss() -> Tensor:
        scaled = z / log_t.exp()
        if mode == MULTICLASS_MODE:
            return F.cross_entropy(scaled, t)
        terms = F.binary_cross_entropy_with_logits(scaled, t, reduction="none")
        return (terms * weight).sum() / total

    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)
    temperature = log_t.detach().exp().clamp(*TEMPERATURE_RANGE)
    return temperature if per_class else temperature[0]


def _rank_seed(seed: int, rank: int) -> int:
    """The generator seed of ``rank`` (numpy's SeedSequence of ``[seed, rank]``: independent streams)."""
    words = np.random.SeedSequence([seed, rank]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class LogitSample:
    """A uniform random sample of at most ``max_pixels`` scored pixels of a split (their logits and
    targets), for :func:`fit_temperature`: the split's logits do not fit in memory.

    Sampling (bottom-k, a reservoir sample in vectorised form): every pixel of a batch draws a key
    ``u ~ U(0, 1)`` in float64 from this sampler's generator (unscored pixels: ``+inf``), and the sample is
    the ``max_pixels`` pixels of the smallest keys seen so far. Keeping the k smallest of i.i.d. keys is a
    uniform sample without replacement of all scored pixels, whatever the batch sizes and order, with a
    fixed-size state (no host sync per batch, unlike per-batch rates, which need the split's size in
    advance). Deterministic given ``seed``, the data and the device (each DDP rank draws from the stream
    of ``[seed, rank]``); merging processes keeps the smallest keys of the union, which is again such a
    sample of all their pixels.

    State (on the batches' device): ``keys`` (max_pixels,) float64 (``+inf``: an empty slot), ``logits``
    (max_pixels, C) float32, ``target`` multiclass (max_pixels,), binary/multilabel (max_pixels, C) int64.
    A pixel is scored when its target is not ``ignore_index`` (multilabel: any label's); the sample keeps
    the ignored elements of a scored multilabel pixel, so pass ``ignore_index`` to the fit too. ``rank``
    (default: the DDP rank, 0 without a group) selects the key stream, e.g. for shards of one process.
    """

    def __init__(self, num_classes: int, mode: str, max_pixels: int = DEFAULT_SAMPLE_PIXELS, seed: int = 0,
                 ignore_index: int | None = None, device: torch.device | str | None = None,
                 rank: int | None = None) -> None:
        check_num_classes(check_mode(mode), num_classes)
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
        self.num_classes, self.mode, self.max_pixels = num_classes, mode, max_pixels
        self.seed, self.ignore_index, self.rank = seed, ignore_index, rank
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        """Empty the sample and restart the generator (the same seed draws the same keys again)."""
        n, c = self.max_pixels, self.num_classes
        self.keys = torch.full((n,), torch.inf, dtype=torch.float64, device=self._device)
        self.logits = torch.zeros(n, c, dtype=torch.float32, device=self._device)
        shape = (n,) if self.mode == MULTICLASS_MODE else (n, c)
        self.target = torch.zeros(shape, dtype=torch.long, device=self._device)
        self._generator: torch.Generator | None = None

    def _to(self, device: torch.device) -> None:
        if self.keys.device != device:
            self._device = device
            state = (self.keys, self.logits, self.target)
            self.keys, self.logits, self.target = (x.to(device) for x in state)

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Offer a batch's pixels: ``logits`` (N, C, *) and its target (:mod:`evaluation.pixels`)."""
        z, t = flat_pixels(logits, target, self.mode)
        if z.shape[1] != self.num_classes:
            raise ValueError(f"logits have {z.shape[1]} channels, the sample {self.num_classes} classes")
        self._to(z.device)
        if self._generator is None:
            world = distributed_world()
            rank = self.rank if self.rank is not None else 0 if world is None else world[0]
            self._generator = torch.Generator(device=z.device)
            self._generator.manual_seed(_rank_seed(self.seed, rank))
        keys = torch.rand(z.shape[0], dtype=torch.float64, device=z.device, generator=self._generator)
        if self.ignore_index is not None:
            scored = t != self.ignore_index
            keys = keys.masked_fill(~(scored if scored.ndim == 1 else scored.any(dim=1)), torch.inf)
        self._keep(torch.cat([self.keys, keys]), torch.cat([self.logits, z.float()]),
                   torch.cat([self.target, t.long()]))

    def _keep(self, keys: Tensor, logits: Tensor, target: Tensor) -> None:
        """Keep the ``max_pixels`` rows of the smallest keys, in increasing key order."""
        order = torch.topk(keys, self.max_pixels, largest=False, sorted=True).indices
        self.keys, self.logits, self.target = keys[order], logits[order], target[order]

    def merge(self, other: LogitSample) -> None:
        """Add ``other``'s sample (another process's or shard's, drawn with another seed) to this one."""
        self._to(other.keys.device)
        self._keep(torch.cat([self.keys, other.keys]), torch.cat([self.logits, other.logits]),
                   torch.cat([self.target, other.target]))

    def gathered(self) -> tuple[Tensor, Tensor]:
        """``(logits (n, C) float32, target)`` of the sample of every DDP process (``all_gather`` of the
        fixed-size states, a collective: call it on every rank; then the smallest keys of the union),
        n <= max_pixels scored pixels in increasing key order; this process's sample without a
        multi-process group. Target: multiclass (n,), binary/multilabel (n, C) int64."""
        keys, logits, target = (all_gather_cat(x) for x in (self.keys, self.logits, self.target))
        order = torch.topk(keys, self.max_pixels, largest=False, sorted=True).indices
        kept = order[torch.isfinite(keys[order])]
        return logits[kept], target[kept]
