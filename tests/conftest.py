"""Fixtures shared by the test packages: the tiny networks and data of ``tests/tiny.py``.

This file is loaded by every pytest process, pytest-xdist's controller included, which runs no test: the
fixtures import torch and Lightning (about 10 s on 2 cores) only when a test asks for them.
"""

from __future__ import annotations

import os
import sys

import pytest

# The suite starts train.py/predict.py in subprocesses, each importing the project and its dependencies:
# from bytecode that is about 2 s faster per start. Written even where PYTHONDONTWRITEBYTECODE is set (as
# on this project's machines); the subprocesses keep the variable and read what this process wrote.
sys.dont_write_bytecode = False

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    # `pytest -n 2` on 2 cores: one thread per worker (and per run it starts), not 2 x 2 contending ones
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def loader():
    """``loader(n=8, num_classes=3, size=32, ignore_index=255, seed=0)`` -> DataLoader of dict batches (4)."""
    from tests import tiny

    return tiny.loader


@pytest.fixture
def multilabel_loader():
    """``multilabel_loader(n=8, num_labels=3, size=32, ignore_index=255, seed=0)`` -> DataLoader (batch 4) of
    3-channel images and (4, 3, 32, 32) multilabel masks."""
    from tests import tiny

    return tiny.multilabel_loader


@pytest.fixture
def tiny_network():
    from tests import tiny

    return tiny.tiny_network


@pytest.fixture
def make_module():
    """``make_module(loss, num_classes=3, mode="multiclass", **module_kwargs)`` -> SegmentationModule."""
    from tests import tiny

    return tiny.make_module


@pytest.fixture
def trainer():
    """``trainer(**kwargs)`` -> CPU Trainer without logger, checkpoints, progress bar, sanity check."""
    from tests import tiny

    return tiny.trainer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests first, the order otherwise unchanged: the notebooks (20-80 s each), then the other
    ``slow`` tests. With ``-n`` pytest-xdist (``--dist worksteal``, pyproject.toml) then starts the long runs
    early, and the workers finish together instead of one running the last notebook alone."""
    items.sort(key=lambda item: (item.get_closest_marker("notebooks") is None,
                                 item.get_closest_marker("slow") is None))
