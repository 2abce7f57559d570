"""The options of a loss, written once: a frozen dataclass per loss, and the base of the loss modules.

Each loss defines its options as a frozen dataclass (``FocalOptions``, ``DiceOptions``, ...) whose fields
hold the defaults and whose ``__post_init__`` holds the checks (each error names the option at fault). The
functional form builds one from its keyword arguments; the module builds one in ``__init__`` and keeps it
as ``self.options``. Signatures take their defaults from the dataclass (``gamma: float =
FocalOptions.gamma``), so a default is written once.

A :class:`LossModule` shows every option as an attribute of the same name (``loss.gamma``); setting one
(``loss.gamma = 0.5``, as a gamma schedule does between epochs) replaces ``options`` by a copy with the new
value, checked again. Per-class values (fields with the metadata :data:`PER_CLASS`: alpha, weight,
class_weights) are stored on the module instead, as a non-persistent float32 buffer that follows
``.to(device)`` (a number or None as is), and the forward pass uses that; ``options`` keeps them as given
at construction. ``repr`` lists the options in field order.

    >>> from seglosses import FocalLoss
    >>> loss = FocalLoss(gamma=1.0, alpha=[1.0, 2.0])
    >>> loss
    FocalLoss(mode='multiclass', gamma=1.0, alpha=[1.0, 2.0], ignore_index=None, reduction='mean', from_logits=True, label_smoothing=0.0)
    >>> loss.gamma = 0.5
    >>> loss.options.gamma, loss.alpha
    (0.5, tensor([1., 2.]))
    >>> loss.gamma = -1.0
    Traceback (most recent call last):
    ...
    ValueError: gamma must be >= 0, got -1.0
"""  # noqa: E501

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PER_CLASS", "LossModule"]

#: The metadata of a per-class field of an options dataclass (alpha, weight, class_weights), written
#: ``alpha: ClassValues = field(default=None, metadata=PER_CLASS)``: None, a number or one value per
#: class, which the dataclass's ``__post_init__`` stores as a tuple of floats.
PER_CLASS = {"per_class": True}


def _per_class(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("per_class"))


class _Option:
    """The attribute of a loss module for one option: reads ``module.options.<name>``; setting it replaces
    ``module.options`` by a copy with the new value, checked by the options' ``__post_init__``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.__doc__ = f"The option ``{name}`` of :attr:`options` (setting it checks the new value)."

    def __get__(self, module: Any, owner: type | None = None) -> Any:
        if module is None:
            return self
        return getattr(module.options, self.name)

    def __set__(self, module: Any, value: Any) -> None:
        module.options = dataclasses.replace(module.options, **{self.name: value})


class LossModule(nn.Module):
    """Base of the loss modules: ``options``, a frozen dataclass checked once, shown as attributes.

    A subclass names its options class, ``class FocalLoss(LossModule, options=FocalOptions)``, which gives
    it one attribute per option that is not per-class (see the module docstring), and passes an instance
    to ``__init__``.
    """

    options: Any

    def __init_subclass__(cls, *, options: type | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if options is None:
            return
        for f in dataclasses.fields(options):
            if not _per_class(f) and f.name not in vars(cls):  # a property of the class wins
                setattr(cls, f.name, _Option(f.name))

    def __init__(self, options: Any) -> None:
        super().__init__()
        self.options = options
        for name in [f.name for f in dataclasses.fields(options) if _per_class(f)]:
            value = getattr(options, name)
            if value is None or isinstance(value, (int, float)):
                setattr(self, name, value)
            else:
                self.register_buffer(name, torch.tensor(value, dtype=torch.float32), persistent=False)

    def extra_repr(self) -> str:
        return _options_repr(self, [f.name for f in dataclasses.fields(self.options)])


def _options_repr(module: nn.Module, names: list[str]) -> str:
    """``extra_repr`` text ``"name=value, ..."`` of the attributes ``names``: strings quoted, tensors as
    lists."""

    def show(value: Any) -> str:
        if isinstance(value, Tensor):
            return repr(value.tolist())
        return repr(value) if isinstance(value, str) else str(value)

    return ", ".join(f"{name}={show(getattr(module, name))}" for name in names)
