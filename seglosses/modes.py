"""Label modes: the one definition of what ``mode`` and ``num_classes`` mean, for every layer.

Every loss of :mod:`seglosses`, the networks and metrics of ``models`` and the label encoding of
``datamodules`` import these names (as smp keeps its modes in ``losses/constants.py``). ``num_classes``
always counts the classes the network predicts, which is also its number of output channels:

- :data:`BINARY_MODE`: one foreground class, ``num_classes = 1``. Input (N, 1, *) or (N, *) logits, one
  sigmoid each; target of the input's shape, {0, 1} (or soft values in [0, 1]). Metrics score two classes,
  background and foreground.
- :data:`MULTICLASS_MODE`: exactly one of ``num_classes >= 2`` classes per pixel (softmax over dim 1).
  Input (N, C, *) logits; target (N, *) int64 class ids, or (N, C, *) probabilities.
- :data:`MULTILABEL_MODE`: ``num_classes >= 1`` independent labels, any subset per pixel (one sigmoid per
  channel). Input (N, C, *) logits; target (N, C, *) {0, 1} (or soft values in [0, 1]).
"""

from __future__ import annotations

from typing import Final

from seglosses.checks import check_int

__all__ = [
    "BINARY_MODE",
    "MODES",
    "MULTICLASS_MODE",
    "MULTILABEL_MODE",
    "check_mode",
    "check_num_classes",
    "output_channels",
    "scored_classes",
]

#: One foreground class: (N, 1, *) or (N, *) logits, target {0, 1} of the same shape; num_classes = 1.
BINARY_MODE: Final = "binary"
#: One class per pixel: (N, C, *) logits, target (N, *) class ids in [0, C) or (N, C, *) probabilities.
MULTICLASS_MODE: Final = "multiclass"
#: Independent labels: (N, C, *) logits, target (N, C, *) {0, 1} per label.
MULTILABEL_MODE: Final = "multilabel"
#: Every mode, in the order error messages list them.
MODES: Final = (BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE)


def check_mode(mode: str, name: str = "mode") -> str:
    """Return ``mode`` if it is one of :data:`MODES`, else raise a ValueError naming ``name``."""
    if mode not in MODES:
        raise ValueError(f"{name} must be one of {MODES}, got {mode!r}")
    return mode


def check_num_classes(mode: str, num_classes: int, name: str = "num_classes") -> int:
    """Return ``num_classes`` if it is valid for ``mode`` (binary: 1; multiclass: >= 2; multilabel: >= 1).

    ``name`` is the key named in the error (``"datamodule.num_classes"``).
    """
    check_mode(mode)
    check_int(num_classes, name, minimum=1)
    if mode == BINARY_MODE and num_classes != 1:
        raise ValueError(
            f"binary mode has one foreground class and one output channel: {name} must be 1, got "
            f"{num_classes}; use mode='multiclass' for {num_classes} classes"
        )
    if mode == MULTICLASS_MODE and num_classes < 2:
        raise ValueError(f"multiclass mode needs {name} >= 2, got {num_classes}; use mode='binary'")
    return num_classes


def output_channels(mode: str, num_classes: int) -> int:
    """Channels of the network output (= ``num_classes`` in every mode, validated)."""
    return check_num_classes(mode, num_classes)


def scored_classes(mode: str, num_classes: int) -> int:
    """Classes that metrics score: background and foreground in binary mode, else ``num_classes``."""
    check_num_classes(mode, num_classes)
    return 2 if mode == BINARY_MODE else num_classes
