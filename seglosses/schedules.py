"""Focal ``gamma`` schedules ("soft gamma": start near cross-entropy, raise the focusing during training).

A :class:`GammaSchedule` is plain, immutable, picklable data: a training callback calls it once per
epoch and sets ``.gamma`` on every focal loss module; Hydra builds it from YAML.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from seglosses._shared import hinted
from seglosses.checks import check_choice, check_int, check_number

KINDS = ("constant", "linear", "step", "cosine")


@dataclass(frozen=True)
class GammaSchedule:
    r"""Focal ``gamma`` as a function of the 0-based epoch: ``schedule(epoch) -> float``.

    Kinds (``t = min(epoch, epochs - 1) / (epochs - 1)``, the progress from the first to the last epoch):

    - ``"constant"``: ``gamma_start`` at every epoch; every other argument is ignored.
    - ``"linear"``: ``gamma_start + (gamma_end - gamma_start) * t``.
    - ``"cosine"``: ``gamma_end + (gamma_start - gamma_end) * (1 + cos(pi * t)) / 2``.
    - ``"step"``: with ``K`` strictly increasing ``milestones`` ``m_1 < ... < m_K`` (epochs >= 1),
      ``gamma_start + (gamma_end - gamma_start) * k / K`` where ``k`` is the number of milestones
      ``<= epoch``: equal steps, ``gamma_end`` from epoch ``m_K`` on. ``epochs`` is optional; when given,
      every milestone must be ``< epochs`` (otherwise ``gamma_end`` would never be reached).

    ``linear`` and ``cosine`` start at ``gamma_start`` at epoch 0, reach ``gamma_end`` at the last epoch
    ``epochs - 1`` and stay there afterwards; with ``epochs = 1`` the only epoch is the last one and
    gets ``gamma_end``. ``gamma_end < gamma_start`` (a decreasing schedule) is allowed.

    Args:
        kind: ``"constant"``, ``"linear"``, ``"step"`` or ``"cosine"``.
        gamma_start: gamma at epoch 0, finite and >= 0 (default 2.0).
        gamma_end: final gamma, finite and >= 0; required by every kind but ``"constant"``.
        epochs: number of training epochs (>= 1); required by ``"linear"`` and ``"cosine"``.
        milestones: epochs at which ``"step"`` moves (required by ``"step"``).

    Raises:
        ValueError: unknown ``kind``, negative or non-finite gammas, ``epochs < 1``, a required argument
            missing, milestones not strictly increasing positive ints (or ``>= epochs``), negative ``epoch``.
    """

    kind: str = "constant"
    gamma_start: float = 2.0
    gamma_end: float | None = None
    epochs: int | None = None
    milestones: Sequence[int] | None = None

    def __post_init__(self) -> None:
        check_choice(self.kind, "GammaSchedule kind", KINDS)
        gamma_start = check_number(self.gamma_start, "GammaSchedule gamma_start", minimum=0)
        object.__setattr__(self, "gamma_start", float(gamma_start))
        if self.kind == "constant":
            return
        if self.gamma_end is None:
            raise ValueError(f"GammaSchedule kind={self.kind!r} needs gamma_end")
        gamma_end = check_number(self.gamma_end, "GammaSchedule gamma_end", minimum=0)
        object.__setattr__(self, "gamma_end", float(gamma_end))
        if self.epochs is not None or self.kind != "step":
            if self.epochs is None:
                raise ValueError(f"GammaSchedule kind={self.kind!r} needs epochs (the number of epochs)")
            check_int(self.epochs, "GammaSchedule epochs", minimum=1)
        if self.kind == "step":
            self._check_milestones()

    def _check_milestones(self) -> None:
        m = self.milestones
        if m is None or isinstance(m, (str, bytes)) or not _is_sequence(m) or len(m) == 0:
            raise ValueError(f"GammaSchedule kind='step' needs a non-empty list of milestones, got {m!r}")
        m = tuple(m)
        if not all(_is_int(e) and e >= 1 for e in m):
            raise ValueError(f"GammaSchedule milestones must be ints >= 1 (0-based epochs), got {list(m)}")
        if any(a >= b for a, b in itertools.pairwise(m)):
            raise ValueError(f"GammaSchedule milestones must be strictly increasing, got {list(m)}")
        if self.epochs is not None and m[-1] >= self.epochs:
            raise ValueError(
                f"GammaSchedule milestones must be < epochs={self.epochs} (0-based epochs), got {list(m)}"
            )
        object.__setattr__(self, "milestones", tuple(int(e) for e in m))

    def __call__(self, epoch: int) -> float:
        """Gamma for the 0-based ``epoch`` (>= 0); epochs past the end keep the final value."""
        with hinted(" (0-based)"):
            check_int(epoch, "epoch", minimum=0)
        start = self.gamma_start
        if self.kind == "constant":
            return start
        end = self.gamma_end
        assert end is not None  # validated in __post_init__
        if self.kind == "step":
            assert self.milestones is not None
            k = sum(1 for m in self.milestones if m <= epoch)
            if k == len(self.milestones):
                return end
            return start + (end - start) * k / len(self.milestones)
        assert self.epochs is not None
        if epoch >= self.epochs - 1:
            return end
        t = epoch / (self.epochs - 1)
        if self.kind == "linear":
            return start + (end - start) * t
        return end + (start - end) * (1.0 + math.cos(math.pi * t)) / 2.0


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_sequence(value: object) -> bool:
    try:
        iter(value)  # type: ignore[call-overload]
        len(value)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True
