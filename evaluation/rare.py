"""Which classes are rare: the ``k`` classes with the fewest training pixels (no torch, so that the sweep
summary shares it)."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["NUM_RARE", "rarest"]

#: Rare classes shown by the epoch line and the sweep summary (``rare_mIoU``).
NUM_RARE = 3


def rarest(pixels: Mapping[str, float], k: int = NUM_RARE) -> list[str]:
    """The ``k`` names of ``pixels`` (class -> training pixels, or any size) with the fewest, rarest first;
    ties in the mapping's order."""
    names = list(pixels)
    return sorted(names, key=lambda n: (pixels[n], names.index(n)))[:k]
