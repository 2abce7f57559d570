"""The DDP merges of the evaluation accumulators (evaluation.calibration, evaluation.thresholds): two gloo
processes, each with half of the data, against one process with all of it. A module of its own, so that the
spawned processes import little (no torchmetrics)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from evaluation.calibration import CalibrationHistogram, LogitSample
from evaluation.thresholds import ThresholdHistogram
from tests.ports import free_port

IGNORE = 255


def _multiclass(seed: int, shape=(4, 3, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    logits = torch.randn(shape, generator=g) * 2
    target = torch.randint(0, c, (b, h, w), generator=g)
    target[0, :3, :4] = IGNORE
    return logits, target


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        logits, target = _multiclass(70, shape=(4, 3, 8, 8))
        mine = slice(2 * rank, 2 * rank + 2)
        hist = CalibrationHistogram(3, "multiclass", ignore_index=IGNORE)
        hist.update(logits[mine], target[mine])
        thresholds = ThresholdHistogram(3, "multilabel", steps=10)
        flags = (target[mine].unsqueeze(1) == torch.arange(3).view(1, 3, 1, 1)).long()
        thresholds.update(logits[mine], flags)
        sample = LogitSample(3, "multiclass", max_pixels=50, seed=5, ignore_index=IGNORE)
        sample.update(logits[mine], target[mine])
        sampled, sampled_target = sample.gathered()
        result = {"calibration": hist.synced().state.tolist(),
                  "thresholds": thresholds.synced().state.tolist(),
                  "sample": sampled.tolist(), "sample_target": sampled_target.tolist()}
        Path(f"{out}.{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_merges_equal_the_single_process_results(tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_ddp_worker, args=(2, free_port(), out), nprocs=2, join=True)
    ranks = [json.loads(Path(f"{out}.{r}.json").read_text()) for r in range(2)]
    logits, target = _multiclass(70, shape=(4, 3, 8, 8))
    hist = CalibrationHistogram(3, "multiclass", ignore_index=IGNORE)
    hist.update(logits, target)
    thresholds = ThresholdHistogram(3, "multilabel", steps=10)
    thresholds.update(logits, (target.unsqueeze(1) == torch.arange(3).view(1, 3, 1, 1)).long())
    # the sample of the two ranks: each rank's own key stream, then the smallest keys of both
    parts = [LogitSample(3, "multiclass", max_pixels=50, seed=5, ignore_index=IGNORE, rank=r) for r in (0, 1)]
    for r, part in enumerate(parts):
        part.update(logits[2 * r:2 * r + 2], target[2 * r:2 * r + 2])
    parts[0].merge(parts[1])
    sampled, sampled_target = parts[0].gathered()
    for r in ranks:
        torch.testing.assert_close(torch.tensor(r["calibration"], dtype=torch.float64), hist.state)
        assert torch.equal(torch.tensor(r["thresholds"]), thresholds.state)
        assert torch.equal(torch.tensor(r["sample"]), sampled)
        assert torch.equal(torch.tensor(r["sample_target"]), sampled_target)
    local = CalibrationHistogram(3, "multiclass", ignore_index=IGNORE)
    local.update(logits[:2], target[:2])
    assert not torch.equal(local.state, hist.state)  # without the sum each rank's state differs
