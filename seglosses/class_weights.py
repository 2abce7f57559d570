"""Per-class loss weights from label frequencies.

All methods see ``n_c``, the number of pixels of class ``c``, ``N = sum_c n_c`` (all labelled pixels) and
``C``, the number of *present* classes (``n_c > 0``). Absent classes take no part in any statistic:
they get weight 0 with a warning, never ``inf`` or ``NaN``.

Methods (before normalisation):

- ``"inverse"``: ``N / (C * n_c)`` (1 for every class of a perfectly balanced set).
- ``"inverse_sqrt"``: ``sqrt(N / (C * n_c))``.
- ``"median_frequency"`` (Eigen & Fergus 2015, SegNet): ``f_c = n_c / image_pixel_counts_c`` with
  ``image_pixel_counts_c`` the total pixels of the images that contain ``c``; ``w_c = median(f) / f_c``.
  For an even number of present classes the median is the mean of the two middle values (as
  ``numpy.median`` / ``torch.quantile(f, 0.5)``; *not* ``torch.median``, which returns the lower one).
  The median is a common factor, so it only matters with ``normalize=False``.
- ``"enet"`` (Paszke et al. 2016): ``1 / ln(c + n_c / N)`` with ``c = 1.02`` by default (``c > 1``).
- ``"effective_number"`` (Cui et al. 2019): ``(1 - beta) / (1 - beta^n_c)``, computed as
  ``(1 - beta) / -expm1(n_c * log(beta))``. For pixel counts of 1e6 and more ``beta^n_c`` is about 0 unless
  ``1 - beta`` is about 1e-6 or smaller, so the usual ``beta = 0.999`` gives almost uniform weights.

With ``normalize=True`` (default) the weights are rescaled to mean 1 over the present classes (for
``"effective_number"`` this is Cui et al.'s "sum to the number of classes").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from seglosses.checks import check_choice

METHODS = ("inverse", "inverse_sqrt", "median_frequency", "enet", "effective_number")


def class_weights_from_counts(
    pixel_counts: Tensor | Sequence[float] | Any,
    method: str,
    *,
    image_pixel_counts: Tensor | Sequence[float] | Any | None = None,
    c: float = 1.02,
    beta: float = 0.999,
    normalize: bool = True,
) -> Tensor:
    r"""Class weights from per-class pixel counts.

    Args:
        pixel_counts: (C,) pixels of each class, ``n_c`` (tensor, list or numpy array; counts >= 0).
        method: one of ``"inverse"``, ``"inverse_sqrt"``, ``"median_frequency"``, ``"enet"``,
            ``"effective_number"`` (formulas in the module docstring).
        image_pixel_counts: (C,) total pixels of the images that contain class ``c``; required by
            ``"median_frequency"`` and ignored otherwise. Must be >= ``pixel_counts`` for present classes.
        c: ENet's constant, ``> 1``.
        beta: effective-number hyper-parameter in (0, 1).
        normalize: rescale to mean 1 over the present classes; ``False`` returns the raw formula values.

    Returns:
        float32 tensor of shape (C,); 0 for classes with no pixels (a ``UserWarning`` names them).

    Raises:
        ValueError: unknown ``method``; counts that are not a 1-D sequence of finite numbers >= 0, all zero,
            or of mismatched lengths; missing ``image_pixel_counts`` for ``"median_frequency"``;
            ``beta`` outside (0, 1); ``c <= 1``.
    """
    check_choice(method, "method", METHODS)
    n = _as_counts("pixel_counts", pixel_counts)
    present = n > 0
    if not bool(present.any()):
        raise ValueError(f"pixel_counts are all zero ({n.numel()} classes): no class to weight")
    absent = (~present).nonzero().flatten().tolist()
    if absent:
        warnings.warn(
            f"classes {absent} have no pixels in pixel_counts; their weight is set to 0", stacklevel=2
        )

    np_ = n[present]
    total = np_.sum()
    num_present = np_.numel()
    if method == "inverse":
        w = total / (num_present * np_)
    elif method == "inverse_sqrt":
        w = torch.sqrt(total / (num_present * np_))
    elif method == "median_frequency":
        w = _median_frequency(n, present, image_pixel_counts)
    elif method == "enet":
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not (math.isfinite(c) and c > 1):
            raise ValueError(f"c (ENet constant) must be a finite number > 1, got {c!r}")
        w = 1.0 / torch.log(c + np_ / total)
    else:  # effective_number
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta < 1:
            raise ValueError(f"beta must lie in the open interval (0, 1), got {beta!r}")
        w = (1.0 - beta) / -torch.expm1(np_ * math.log(beta))

    if normalize:
        w = w / w.mean()
    out = torch.zeros_like(n)
    out[present] = w
    return out.to(torch.float32)


def _median_frequency(n: Tensor, present: Tensor, image_pixel_counts: Any) -> Tensor:
    """``median(f) / f_c`` over the ``present`` classes, ``f_c = n_c / image_pixel_counts_c``."""
    if image_pixel_counts is None:
        raise ValueError(
            "method='median_frequency' needs image_pixel_counts: (C,) total pixels of the images "
            "that contain each class"
        )
    img = _as_counts("image_pixel_counts", image_pixel_counts)
    if img.shape != n.shape:
        raise ValueError(f"image_pixel_counts must have one value per class ({n.numel()}), got {img.numel()}")
    too_small = (present & (img < n)).nonzero().flatten().tolist()
    if too_small:
        raise ValueError(
            f"image_pixel_counts must be >= pixel_counts (the images containing a class hold at least "
            f"its pixels); violated for classes {too_small}: image_pixel_counts="
            f"{img[too_small].tolist()}, pixel_counts={n[too_small].tolist()}"
        )
    freq = n[present] / img[present]
    return torch.quantile(freq, 0.5) / freq


def _as_counts(name: str, value: Any) -> Tensor:
    """(C,) float64 tensor of finite counts >= 0 (float64: counts above 2**24 stay exact)."""
    if isinstance(value, Tensor):
        t = value.detach().cpu()
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name} must be a 1-D sequence of numbers, got {value!r}") from e
    if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or _is_integer(t)):
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must have shape (C,) with C >= 1, got shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    bad = (~torch.isfinite(t)) | (t < 0)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        raise ValueError(f"{name} must be finite and >= 0; classes {idx} have {t[idx].tolist()}")
    return t


def _is_integer(t: Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool
