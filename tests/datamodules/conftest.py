"""Fixtures: tiny image/mask folder data sets written with PIL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.datamodules.helpers import write_pair


@pytest.fixture
def make_folder_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Build a tiny data set: ``counts`` samples per split of size ``shape``, masks from ``rng``."""

    def make(
        counts: dict[str, int] | None = None,
        shape: tuple[int, int] = (20, 24),
        num_classes: int = 3,
        ignore_index: int | None = 255,
        seed: int = 0,
    ) -> Path:
        rng = np.random.default_rng(seed)
        root = tmp_path / "data"
        for split, n in (counts or {"train": 4, "val": 2, "test": 2}).items():
            for i in range(n):
                mask = rng.integers(0, num_classes, size=shape).astype(np.uint8)
                if ignore_index is not None:
                    mask[rng.random(shape) < 0.1] = ignore_index
                write_pair(root, split, f"{split}{i:03d}", mask)
        return root

    return make
