"""One function over many items in DataLoader worker processes, in order (the pre-flight check and the label
statistics pass read every file of a split this way)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset

__all__ = ["map_in_workers"]


class _Mapped(Dataset):
    def __init__(self, items: Sequence[Any], fn: Callable[[Any], Any]) -> None:
        self.items = items
        self.fn = fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.fn(self.items[index])


def _as_is(x: Any) -> Any:
    return x


def map_in_workers(fn: Callable[[Any], Any], items: Sequence[Any], num_workers: int) -> Iterable[Any]:
    """``fn(item)`` of every item, in the order of ``items``, computed by ``num_workers`` DataLoader worker
    processes (0: in this process). ``fn`` and the items must be picklable; results are not collated."""
    return DataLoader(_Mapped(items, fn), batch_size=None, shuffle=False, num_workers=num_workers,
                      collate_fn=_as_is)
