"""Fixtures of the seglosses tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors gain nothing from intra-op threads: on a busy machine waking a second thread costs more
    than the op itself (ms per log_softmax/pow call). A module opts in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
