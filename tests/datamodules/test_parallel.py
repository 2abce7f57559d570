"""datamodules.parallel.map_in_workers (the pre-flight check and the label statistics use it) and the
datamodule.max_ignored_share check both share."""

from __future__ import annotations

import pytest

from datamodules.parallel import map_in_workers
from datamodules.statistics import check_max_ignored_share


def square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [0, 2])
def test_results_in_the_order_of_the_items(workers):
    items = list(range(20))
    assert list(map_in_workers(square, items, workers)) == [x * x for x in items]


def test_results_are_not_collated():
    assert list(map_in_workers(lambda x: (x, [x]), [1, 2], 0)) == [(1, [1]), (2, [2])]


def test_max_ignored_share_is_a_share():
    assert check_max_ignored_share(1) == 1.0 and isinstance(check_max_ignored_share(0), float)
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(ValueError, match=r"datamodule\.max_ignored_share"):
            check_max_ignored_share(bad)
