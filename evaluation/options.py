"""Which metric families an evaluation computes besides the pixel table, on which splits, with which options:
:class:`EvaluationOptions`, the ``evaluation`` config group (``conf/evaluation/default.yaml``), built once by
:meth:`EvaluationOptions.from_config` with every key checked and errors that name it.

Families (``docs/evaluation.md``): ``objects`` (objects found, :mod:`evaluation.objects`), ``boundary``
(Boundary IoU, HD95, ASSD, NSD, :mod:`evaluation.boundaries`), ``topology`` (clDice,
:mod:`evaluation.topology`) and ``calibration`` (class-wise ECE, reliability diagram,
:mod:`evaluation.calibration`). ``None`` is a family that is off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from evaluation.boundaries import BoundaryOptions
from evaluation.calibration import DEFAULT_BINS
from evaluation.objects import ObjectOptions
from evaluation.posthoc import check_calibrate
from seglosses.checks import check_bool, check_int

__all__ = ["FAMILIES", "SPLITS", "CalibrationOptions", "EvaluationOptions", "TopologyOptions"]

#: The splits the families can run on (in this order).
SPLITS = ("val", "test")
#: The families, the fields of :class:`EvaluationOptions` after ``splits``.
FAMILIES = ("objects", "boundary", "topology", "calibration")


@dataclass(frozen=True)
class TopologyOptions:
    """clDice options: ``classes``, the names of the classes scored (a tuple of unique names), or ``None``:
    every foreground class (multiclass: every class but class 0; binary: the foreground; multilabel: every
    label). The names are checked against the model's classes where those are known
    (:func:`evaluation.spatial.spatial_classes`)."""

    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        classes = self.classes
        if classes is None:
            return
        if isinstance(classes, str) or not isinstance(classes, Sequence) or not classes:
            raise ValueError(f"topology.classes must be null (every foreground class) or a non-empty list of "
                             f"class names, got {classes!r}")
        names = tuple(str(c) for c in classes)
        if len(set(names)) != len(names):
            raise ValueError(f"topology.classes must not repeat a class, got {list(names)}")
        object.__setattr__(self, "classes", names)


@dataclass(frozen=True)
class CalibrationOptions:
    """Calibration options: ``bins``, the equal-width confidence bins of the ECE (an int >= 1; 15 as Guo et
    al. 2017)."""

    bins: int = DEFAULT_BINS

    def __post_init__(self) -> None:
        check_int(self.bins, "calibration.bins", minimum=1)


#: Each family's options type.
_KINDS: dict[str, type] = {"objects": ObjectOptions, "boundary": BoundaryOptions, "topology": TopologyOptions,
                           "calibration": CalibrationOptions}
#: The name the options type uses in its messages, where it is not the family's key.
_MESSAGE_NAMES = {"boundary": "boundaries."}


@dataclass(frozen=True)
class EvaluationOptions:
    """The metric families of an evaluation (module docstring); a family that is ``None`` is off.

    Args:
        splits: where the families run, a non-empty subset of :data:`SPLITS` (stored in that order):
            ``("test",)`` (default) or ``("val", "test")`` (every validation too, fitting included).
        objects: :class:`evaluation.objects.ObjectOptions` (default: IoU >= 0.5, 8-connectivity, COCO
            size buckets) or None.
        boundary: :class:`evaluation.boundaries.BoundaryOptions` (band 2 % of the diagonal, NSD tolerance
            2 px) or None.
        topology: :class:`TopologyOptions` or None (default: off).
        calibration: :class:`CalibrationOptions` (15 bins) or None.
        calibrate: temperature scaling fitted on the validation split after training
            (:mod:`evaluation.posthoc`): ``None`` (off, default), ``"scalar"`` (one temperature) or
            ``"per_class"`` (one per class/label); the config's ``false | true | per_class``.

    ``splits`` other than the default with every family off would do nothing and is refused.
    """

    splits: tuple[str, ...] = ("test",)
    objects: ObjectOptions | None = field(default_factory=ObjectOptions)
    boundary: BoundaryOptions | None = field(default_factory=BoundaryOptions)
    topology: TopologyOptions | None = None
    calibration: CalibrationOptions | None = field(default_factory=CalibrationOptions)
    calibrate: str | None = None

    def __post_init__(self) -> None:
        if self.calibrate not in (None, "scalar", "per_class"):
            object.__setattr__(self, "calibrate", check_calibrate(self.calibrate))
        splits = self.splits
        if isinstance(splits, str) or not isinstance(splits, Sequence) or not splits \
                or any(s not in SPLITS for s in splits) or len(set(splits)) != len(splits):
            raise ValueError(f"splits must be a non-empty list of distinct splits of {list(SPLITS)}, "
                             f"got {splits!r}")
        object.__setattr__(self, "splits", tuple(s for s in SPLITS if s in splits))
        for name in FAMILIES:
            value = getattr(self, name)
            if value is not None and not isinstance(value, _KINDS[name]):
                raise ValueError(f"{name} must be {_KINDS[name].__name__} or None (off), "
                                 f"got {type(value).__name__}")
        if not self.enabled and self.splits != ("test",):
            raise ValueError(f"splits={list(self.splits)} does nothing: every family is off (enable one, or "
                             "leave splits at [test])")

    @property
    def enabled(self) -> tuple[str, ...]:
        """The families that are on, in :data:`FAMILIES` order."""
        return tuple(name for name in FAMILIES if getattr(self, name) is not None)

    @property
    def spatial(self) -> bool:
        """Whether a family scored image by image (objects, boundary, topology) is on."""
        return any(getattr(self, name) is not None for name in ("objects", "boundary", "topology"))

    def runs_on(self, split: str) -> bool:
        """Whether ``split`` is evaluated with at least one family."""
        return split in self.splits and bool(self.enabled)

    @classmethod
    def off(cls) -> EvaluationOptions:
        """Every family off: the pixel table alone."""
        return cls(objects=None, boundary=None, topology=None, calibration=None)

    @classmethod
    def from_config(cls, splits: Any, objects: Any, boundary: Any, topology: Any,
                    calibration: Any, calibrate: Any = False) -> EvaluationOptions:
        """The options of the ``evaluation`` config group (its ``_target_``): ``splits`` a list, each family
        a mapping of ``enabled`` (true/false) and its options' keys (``objects: {enabled: true, iou: 0.5,
        connectivity: 8, size_bins: [1024, 9216]}``). A family that is off must leave its options at their
        defaults (they would do nothing). ``calibrate``: ``false | true | per_class``
        (:func:`evaluation.posthoc.check_calibrate`). ValueError naming the key (``boundary.tolerance``)
        otherwise."""
        if isinstance(splits, str) or not isinstance(splits, Sequence):
            raise ValueError(f"splits must be a list of splits of {list(SPLITS)}, got {splits!r}")
        given = {"objects": objects, "boundary": boundary, "topology": topology, "calibration": calibration}
        families = {name: _family(name, node) for name, node in given.items()}
        return cls(tuple(str(s) for s in splits), **families, calibrate=check_calibrate(calibrate))


def _plain(value: Any) -> Any:
    """A config list (OmegaConf's ListConfig included) as a tuple; anything else as it is."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(_plain(v) for v in value)
    return value


def _family(name: str, node: Any) -> Any:
    """The options of family ``name`` from its config mapping, or None when ``enabled`` is false."""
    kind = _KINDS[name]
    keys = [f.name for f in fields(kind)]
    if not isinstance(node, Mapping):
        raise ValueError(f"{name} must be a mapping of enabled and {', '.join(keys)}, got {node!r}")
    values = {str(k): _plain(v) for k, v in node.items()}
    unknown = sorted(set(values) - {"enabled", *keys})
    if unknown:
        raise ValueError(f"{name}.{unknown[0]} is not a key of {name} (its keys: enabled, {', '.join(keys)})")
    if "enabled" not in values:
        raise ValueError(f"{name}.enabled must be set (true or false)")
    enabled = check_bool(values.pop("enabled"), f"{name}.enabled")
    try:
        options = kind(**values)
    except ValueError as e:
        message = str(e)
        old = _MESSAGE_NAMES.get(name)
        raise ValueError(message.replace(old, f"{name}.", 1) if old else message) from None
    if enabled:
        return options
    default = kind()
    for key in values:
        if getattr(options, key) != getattr(default, key):
            shown = list(values[key]) if isinstance(values[key], tuple) else values[key]
            raise ValueError(f"{name}.{key}={shown!r} does nothing with {name}.enabled=false: enable "
                             f"{name}, or leave {key} at its default ({getattr(default, key)!r})")
    return None
