"""Tests of seglosses.distributed in a single process (multi-process runs: tests/runs/test_ddp.py)."""

from __future__ import annotations

from seglosses.distributed import distributed_world, process_group_initialized


def test_single_process_has_no_distributed_world():
    assert process_group_initialized() is False
    assert distributed_world() is None
