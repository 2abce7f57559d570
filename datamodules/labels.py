"""How stored mask values become training targets: value mapping, validation, counting, unpacking.

A mask is a single-channel integer image. After the optional ``value_map`` its values must be:

- ``"multiclass"``: class ids ``0 .. num_classes - 1``;
- ``"binary"``: ``0`` (background) or ``1`` (foreground);
- ``"multilabel"``: bit flags, bit ``c`` set = class ``c`` present (``0 .. 2**num_classes - 1``),
  ``num_classes <= 16`` (one bit per class in a 16-bit mask image);

or ``ignore_index``. Targets handed to the model are int64: (H, W) class indices / {0, 1} for
multiclass and binary, (C, H, W) {0, 1} for multilabel, with ignored pixels equal to ``ignore_index``
(in every channel for multilabel).

The modes and their ``num_classes`` rules (binary: 1, multiclass: >= 2, multilabel: >= 1) are those of
:mod:`seglosses.modes`, shared with the losses and models; only what is about mask storage (the
multilabel limit, the ignore_index range) is checked here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from seglosses.checks import check_ignore_index, check_int
from seglosses.modes import check_mode, check_num_classes

#: Multilabel masks store one bit per class in a (at most) 16-bit image.
MAX_MULTILABEL_CLASSES = 16
#: Largest value of an unsigned 16-bit mask image.
MAX_MASK_VALUE = 65535


@dataclass(frozen=True)
class LabelSpec:
    """Label encoding of a data set.

    Args:
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"`` (:data:`seglosses.modes.MODES`).
        num_classes: output channels of the model, checked by :func:`seglosses.modes.check_num_classes`
            (binary: 1; multiclass: >= 2; multilabel: >= 1, and here <= 16).
        ignore_index: mask value excluded from training and statistics, in [0, 65535], or None.
        value_map: stored mask value -> label value, applied before validation (e.g. ``{255: 1}``);
            unmapped values are kept.
    """

    mode: str
    num_classes: int
    ignore_index: int | None = None
    value_map: Mapping[int, int] | None = None
    _map_items: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_mode(self.mode, "datamodule.mode")
        num_classes = int(check_num_classes(self.mode, self.num_classes, "datamodule.num_classes"))
        object.__setattr__(self, "num_classes", num_classes)
        if self.mode == "multilabel" and num_classes > MAX_MULTILABEL_CLASSES:
            raise ValueError(
                f"multilabel masks store one bit per class in a 16-bit image: datamodule.num_classes must "
                f"be <= {MAX_MULTILABEL_CLASSES}, got {num_classes}"
            )
        ii = check_ignore_index(self.ignore_index, "datamodule.ignore_index")
        if ii is not None:
            if not 0 <= ii <= MAX_MASK_VALUE:
                raise ValueError(
                    f"datamodule.ignore_index must be null or an int in [0, {MAX_MASK_VALUE}] (masks are "
                    f"unsigned integer images), got {ii!r}"
                )
            ii = int(ii)
            object.__setattr__(self, "ignore_index", ii)
            if ii < self.num_values:
                raise ValueError(
                    f"datamodule.ignore_index={ii} is also a valid {self.mode} label value "
                    f"(0..{self.num_values - 1}); pick a value outside that range"
                )
        items: list[tuple[int, int]] = []
        for k, v in dict(self.value_map or {}).items():
            key = check_int(k, "datamodule.value_map key", 0, MAX_MASK_VALUE)
            items.append((key, check_int(v, f"datamodule.value_map[{k!r}]", 0, MAX_MASK_VALUE)))
        object.__setattr__(self, "_map_items", tuple(sorted(items)))

    @property
    def num_values(self) -> int:
        """Number of label values 0 .. num_values - 1 (ignore_index excluded)."""
        if self.mode == "multiclass":
            return self.num_classes
        if self.mode == "binary":
            return 2
        return 2**self.num_classes

    @property
    def storage_dtype(self) -> np.dtype:
        """dtype of masks between reading and the end of the augmentation pipeline."""
        top = max(self.num_values - 1, self.ignore_index or 0)
        return np.dtype(np.uint8) if top <= 255 else np.dtype(np.uint16)

    def allowed_values(self) -> np.ndarray:
        """Bool lookup table over 0 .. max value: True where the value is a label or ignore_index."""
        size = max(self.num_values, (self.ignore_index or 0) + 1)
        table = np.zeros(size, dtype=bool)
        table[: self.num_values] = True
        if self.ignore_index is not None:
            table[self.ignore_index] = True
        return table

    def prepare(self, raw: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
        """Map and validate one stored mask.

        Args:
            raw: (H, W) non-negative integer array as stored.
            source: file or sample name for error messages.

        Returns:
            ``(mask, hist)``: (H, W) mask of :attr:`storage_dtype`; ``hist[v]`` = pixels with value ``v``.

        Raises:
            ValueError: values that are neither labels nor ignore_index, naming ``source`` and the values.
        """
        if raw.ndim != 2:
            raise ValueError(f"mask {source}: expected a single-channel (H, W) image, got shape {raw.shape}")
        if raw.dtype.kind not in "ui":
            raise ValueError(f"mask {source}: expected integer values, got dtype {raw.dtype}")
        if raw.dtype.kind == "i":
            lo = int(raw.min()) if raw.size else 0
            if lo < 0:
                raise ValueError(f"mask {source}: holds negative values (min {lo}); labels are >= 0")
            raw = raw.astype(np.uint32 if raw.dtype.itemsize >= 4 else np.uint16, copy=False)
        if self._map_items:
            top = max(int(raw.max()) if raw.size else 0, max(k for k, _ in self._map_items))
            lut = np.arange(top + 1, dtype=np.int64)
            for k, v in self._map_items:
                lut[k] = v
            raw = lut[raw]
        hist = np.bincount(raw.ravel(), minlength=self.num_values)
        allowed = self.allowed_values()
        nonzero = np.flatnonzero(hist)
        bad = nonzero[(nonzero >= allowed.size) | ~allowed[np.minimum(nonzero, allowed.size - 1)]]
        if bad.size:
            shown = ", ".join(f"{int(v)} ({int(hist[v])} px)" for v in bad[:10])
            more = f" and {bad.size - 10} more" if bad.size > 10 else ""
            mapped = " after value_map" if self._map_items else ""
            ignore = f" or ignore_index {self.ignore_index}" if self.ignore_index is not None else ""
            raise ValueError(
                f"mask {source} holds values{mapped} that are neither {self.mode} labels "
                f"(0..{self.num_values - 1}){ignore}: {shown}{more}. "
                "Check datamodule.num_classes, ignore_index and value_map."
            )
        return raw.astype(self.storage_dtype, copy=False), hist

    def class_counts(self, hist: np.ndarray) -> tuple[np.ndarray, int]:
        """Per-class pixel counts from a value histogram.

        Returns:
            ``(counts, ignored)``: (num_classes,) int64 pixels of each class (multiclass: value == c;
            binary: value == 1; multilabel: bit c set), and the number of ignore_index pixels.
        """
        hist = np.asarray(hist, dtype=np.int64)
        ignored = 0
        if self.ignore_index is not None and self.ignore_index < hist.size:
            ignored = int(hist[self.ignore_index])
        h = np.zeros(self.num_values, dtype=np.int64)
        n = min(hist.size, self.num_values)
        h[:n] = hist[:n]
        if self.mode == "multiclass":
            return h, ignored
        if self.mode == "binary":
            return h[1:2].copy(), ignored
        bits = (np.arange(self.num_values)[:, None] >> np.arange(self.num_classes)[None, :]) & 1
        return h @ bits, ignored

    def class_mask(self, mask: np.ndarray, c: int) -> np.ndarray:
        """Bool (H, W): the pixels of class ``c`` in a prepared mask (multiclass: value == c; binary: the
        class is the foreground, value == 1; multilabel: bit c set), ignore_index pixels excluded."""
        mask = np.asarray(mask)
        if self.mode == "multiclass":
            return mask == c
        if self.mode == "binary":
            return mask == 1
        hit = ((mask.astype(np.int64) >> c) & 1).astype(bool)
        if self.ignore_index is not None:
            hit &= mask != self.ignore_index
        return hit

    def to_target(self, mask: np.ndarray) -> Tensor:
        """(H, W) stored mask -> int64 target: (H, W), or (C, H, W) {0, 1} in multilabel mode."""
        t = torch.from_numpy(np.array(mask, dtype=np.int64))  # a copy: masks read by PIL are read-only
        if self.mode != "multilabel":
            return t
        shifts = torch.arange(self.num_classes, dtype=torch.int64).view(-1, 1, 1)
        out = (t.unsqueeze(0) >> shifts) & 1
        if self.ignore_index is not None:
            out = out.masked_fill((t == self.ignore_index).unsqueeze(0), self.ignore_index)
        return out
