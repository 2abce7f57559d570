"""Objects, boundaries and clDice of every evaluated image, recorded batch by batch and gathered from every
DDP process once per epoch: :class:`SpatialRecorder` (what the LightningModule's evaluation steps feed),
:class:`SpatialRecords` (one row per image and class), :func:`image_records` (one image).

Each image is scored on the CPU with numpy, one class at a time, by the primitives of
:mod:`evaluation.objects`, :mod:`evaluation.boundaries` and :mod:`evaluation.topology`; ignored pixels are
cut from both masks first (``valid``). The classes scored (:func:`spatial_classes`), as the pixel metrics
count them (:mod:`evaluation.per_image`):

- multiclass: every class (``pred == c``, ``target == c``, valid where ``target != ignore_index``);
- binary: the foreground alone (class id 1 of the background/foreground ids); a background "object" is
  the complement of the foreground and tells nothing more;
- multilabel: every label, each its own binary problem (``pred[c] == 1``, ``target[c] == 1``, valid where
  ``target[c] != ignore_index``).

clDice scores a subset (``evaluation.topology.classes``; default every foreground class: multiclass every
class but class 0, binary the foreground, multilabel every label). A class absent from both masks of an
image (after the cut) gets the primitives' record of two empty masks without running them.

The records are summable (:meth:`evaluation.objects.ObjectCounts.to_array`,
:meth:`evaluation.boundaries.BoundaryScores.sums`, :meth:`evaluation.topology.ClDiceScores.sums`): the
data set's values are computed from their sums over the images, in image-name order, so they do not depend
on how the images were split into batches or DDP processes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evaluation.boundaries import BOUNDARY_SUM_FIELDS, boundary_scores
from evaluation.objects import OBJECT_FIELDS, object_counts
from evaluation.options import EvaluationOptions, TopologyOptions
from evaluation.topology import CLDICE_SUM_FIELDS, cldice_scores
from seglosses.distributed import distributed_world
from seglosses.modes import BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE, check_mode

__all__ = ["RECORD_FIELDS", "SpatialClasses", "SpatialRecorder", "SpatialRecords", "image_records",
           "spatial_classes"]

#: The last dimension of each family's records.
RECORD_FIELDS = {"objects": OBJECT_FIELDS, "boundary": BOUNDARY_SUM_FIELDS, "topology": CLDICE_SUM_FIELDS}
_ARRAYS = tuple(RECORD_FIELDS)


@dataclass(frozen=True)
class SpatialClasses:
    """The classes scored image by image: ``names`` (objects and boundaries), ``ids`` their class ids
    (multiclass, binary) or label channels (multilabel), ``topology`` the positions in ``names`` of the
    classes clDice scores."""

    names: tuple[str, ...]
    ids: tuple[int, ...]
    topology: tuple[int, ...] = ()

    @property
    def topology_names(self) -> tuple[str, ...]:
        return tuple(self.names[k] for k in self.topology)


def spatial_classes(mode: str, class_names: Sequence[str],
                    topology: TopologyOptions | None) -> SpatialClasses:
    """The :class:`SpatialClasses` of a model whose metric classes are ``class_names`` (binary: background
    and foreground). ValueError naming ``topology.classes`` for a name that is not scored."""
    check_mode(mode)
    names = [str(n) for n in class_names]
    if mode == BINARY_MODE:
        if len(names) != 2:
            raise ValueError(f"binary class names are background and foreground, got {names}")
        names, ids = names[1:], (1,)
    else:
        ids = tuple(range(len(names)))
    if topology is None:
        chosen: tuple[int, ...] = ()
    elif topology.classes is None:
        chosen = tuple(k for k, c in enumerate(ids) if mode != MULTICLASS_MODE or c != 0)
    else:
        missing = [n for n in topology.classes if n not in names]
        if missing:
            raise ValueError(f"topology.classes names {missing}, not a scored class; the classes: {names}"
                             + (" (binary: the foreground)" if mode == BINARY_MODE else ""))
        chosen = tuple(sorted(names.index(n) for n in topology.classes))
    return SpatialClasses(tuple(names), ids, chosen)


@functools.cache
def _empty_records() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The records of a class absent from both masks, as the primitives give them."""
    empty = np.zeros((1, 1), dtype=bool)
    return object_counts(empty, empty).to_array(), boundary_scores(empty, empty).sums(), \
        cldice_scores(empty, empty).sums()


def _class_masks(pred: np.ndarray, target: np.ndarray, classes: SpatialClasses, mode: str,
                 ignore_index: int | None) -> Iterator[tuple[np.ndarray, np.ndarray, Any, bool]]:
    """``(pred mask, target mask, valid or None, present)`` of each scored class of one image;
    ``present``: the class is in either mask after the ``valid`` cut."""
    if mode == MULTILABEL_MODE:
        for c in classes.ids:
            p, t = pred[c] == 1, target[c] == 1
            valid = None if ignore_index is None else target[c] != ignore_index
            present = bool(t.any() or (p.any() if valid is None else (p & valid).any()))
            yield p, t, valid, present
        return
    valid = None if ignore_index is None else target != ignore_index
    p_valid, t_valid = (pred, target) if valid is None else (pred[valid], target[valid])
    size = max(classes.ids) + 1
    present = np.bincount(p_valid.reshape(-1), minlength=size)[:size] > 0
    present |= np.bincount(t_valid.reshape(-1), minlength=size)[:size] > 0
    for c in classes.ids:
        yield pred == c, target == c, valid, bool(present[c])


def image_records(pred: np.ndarray, target: np.ndarray, classes: SpatialClasses, options: EvaluationOptions,
                  mode: str, ignore_index: int | None = None) -> dict[str, np.ndarray]:
    """The records of one image: ``{"objects": (K, 11), "boundary": (K, 10), "topology": (K_t, 9)}``
    float64 (the families that are on), K = ``len(classes.names)``, K_t = ``len(classes.topology)``.
    ``pred``, ``target``: multiclass/binary (H, W) class ids, multilabel (C, H, W) {0, 1} (target
    ``ignore_index`` where ignored), on the CPU."""
    pred, target = np.asarray(pred), np.asarray(target)
    empty = dict(zip(_ARRAYS, _empty_records(), strict=True))
    rows: dict[str, list[np.ndarray]] = {"objects": [], "boundary": [], "topology": []}
    topology = set(classes.topology)
    for k, (p, t, valid, present) in enumerate(_class_masks(pred, target, classes, mode, ignore_index)):
        if options.objects is not None:
            rows["objects"].append(object_counts(p, t, valid, options.objects).to_array() if present
                                   else empty["objects"])
        if options.boundary is not None:
            rows["boundary"].append(boundary_scores(p, t, valid, options.boundary).sums() if present
                                    else empty["boundary"])
        if options.topology is not None and k in topology:
            rows["topology"].append(cldice_scores(p, t, valid).sums() if present else empty["topology"])
    return {name: _stack(rows[name], name) for name in _ARRAYS if getattr(options, name) is not None}


def _stack(rows: list[np.ndarray], name: str) -> np.ndarray:
    width = len(RECORD_FIELDS[name])
    return np.stack(rows).astype(np.float64) if rows else np.zeros((0, width))


@dataclass(frozen=True)
class SpatialRecords:
    """The records of each evaluated image, rows sorted by image name: ``names`` (N), ``classes``, and per
    family that is on (else ``None``) ``objects`` (N, K, 11), ``boundary`` (N, K, 10), ``topology``
    (N, K_t, 9) float64 (:data:`RECORD_FIELDS` last)."""

    names: tuple[str, ...]
    classes: SpatialClasses
    objects: np.ndarray | None = None
    boundary: np.ndarray | None = None
    topology: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in _ARRAYS:
            array = getattr(self, name)
            k = len(self.classes.topology if name == "topology" else self.classes.names)
            expected = (len(self.names), k, len(RECORD_FIELDS[name]))
            if array is not None and array.shape != expected:
                raise ValueError(f"{name} records must be {expected}, got {array.shape}")

    @classmethod
    def merge(cls, parts: Sequence[tuple[Sequence[str], dict[str, np.ndarray]]], classes: SpatialClasses,
              families: Sequence[str]) -> SpatialRecords:
        """One table of ``parts`` (names, :func:`image_records` stacked over the part's images), e.g. the
        batches of every DDP process, rows sorted by image name (stable); ``families``: those on."""
        names = [str(n) for part, _ in parts for n in part]
        order = sorted(range(len(names)), key=names.__getitem__)
        arrays: dict[str, np.ndarray] = {}
        for name in _ARRAYS:
            if name in families:
                k = len(classes.topology if name == "topology" else classes.names)
                blocks = [records[name] for _, records in parts]
                stacked = np.concatenate(blocks) if blocks else np.zeros((0, k, len(RECORD_FIELDS[name])))
                arrays[name] = stacked[order]
        return cls(tuple(names[i] for i in order), classes, **arrays)

    def __len__(self) -> int:
        return len(self.names)

    def totals(self, family: str) -> np.ndarray:
        """(K, F) the records of ``family`` summed over the images (in row order: name order)."""
        array = getattr(self, family)
        if array is None:
            raise ValueError(f"{family} was not recorded")
        return array.sum(axis=0)

    def field(self, family: str, name: str) -> np.ndarray:
        """(N, K) one field of ``family``'s records (:data:`RECORD_FIELDS`)."""
        return getattr(self, family)[..., RECORD_FIELDS[family].index(name)]

    def value(self, family: str, name: str) -> np.ndarray:
        """(N, K) a per-image value (``biou``, ``hd95``, ``assd``, ``nsd``; ``cldice``) of ``boundary`` or
        ``topology``: NaN where the image is not scored (both masks empty)."""
        scored = self.field(family, "scored") > 0
        return np.where(scored, self.field(family, name), np.nan)


class SpatialRecorder:
    """The spatial records of one evaluation epoch of this process: :meth:`add` each batch (computed at
    once, on the CPU), :meth:`gather` at the epoch end.

    Args:
        options: which families (objects, boundary, topology) and their options.
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        class_names: the metric classes' names (binary: background and foreground).
        ignore_index: target value cut from both masks (``None``: none).
    """

    def __init__(self, options: EvaluationOptions, mode: str, class_names: Sequence[str],
                 ignore_index: int | None = None) -> None:
        self.options, self.mode, self.ignore_index = options, check_mode(mode), ignore_index
        self.classes = spatial_classes(mode, class_names, options.topology)
        self.families = tuple(name for name in _ARRAYS if getattr(options, name) is not None)
        self._parts: list[tuple[list[str], dict[str, np.ndarray]]] = []

    def reset(self) -> None:
        self._parts = []

    def add(self, names: Sequence[str], preds: Tensor, target: Tensor) -> None:
        """One batch: its image names, predicted class ids and target as the metrics take them
        (multiclass/binary (B, H, W), multilabel (B, C, H, W)); copied to the CPU and scored now."""
        if len(names) != preds.shape[0] or preds.shape != target.shape:
            raise ValueError(f"{len(names)} names, predictions {tuple(preds.shape)} and target "
                             f"{tuple(target.shape)} must describe the same images")
        p, t = preds.detach().cpu().numpy(), target.detach().cpu().numpy()
        rows = [image_records(p[i], t[i], self.classes, self.options, self.mode, self.ignore_index)
                for i in range(p.shape[0])]
        stacked = {name: np.stack([r[name] for r in rows]) for name in self.families} if rows else {}
        if rows:
            self._parts.append((list(names), stacked))

    def gather(self) -> SpatialRecords:
        """This epoch's records of every DDP process (``all_gather_object``: every rank calls it), sorted by
        image name; the recorder is emptied."""
        parts, self._parts = self._parts, []
        if distributed_world() is not None:
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, parts)
            parts = [part for rank_parts in gathered for part in rank_parts]
        return SpatialRecords.merge(parts, self.classes, self.families)
