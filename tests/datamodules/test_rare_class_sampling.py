"""Rare-class sampling (datamodule.sampling=rcs): per-image class counts in the label statistics, image
frequencies against the DAFormer formula, seeds and epochs, the DDP split of an epoch plan, bad values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.utils import instantiate

from datamodules import FolderDataModule, LabelStatistics, SyntheticDataModule
from datamodules.samplers import RareClassSampler, UnpaddedDistributedSampler, rcs_class_probabilities
from tests.datamodules.helpers import compose_config, write_pair
from tests.ports import free_port

SIGMAS = 4.5  # tolerance of the empirical frequencies, in binomial standard deviations

# 6 masks of 6x8 pixels, 3 classes + ignore 255; class 2 has 1 pixel in mask 3 (below min_pixels=2)
_MASKS = {
    "a": {0: 48},
    "b": {0: 30, 1: 18},
    "c": {0: 46, 2: 2},
    "d": {0: 47, 2: 1},
    "e": {1: 43, 2: 5},
    "f": {0: 20, 1: 20, 255: 8},
}


def _write(root: Path) -> list[np.ndarray]:
    masks = []
    for split in ("train", "val", "test"):
        for name, parts in _MASKS.items():
            values = np.concatenate([np.full(n, v, np.uint8) for v, n in parts.items()])
            mask = values.reshape(6, 8)
            write_pair(root, split, name, mask)
            if split == "train":
                masks.append(mask)
    return masks


def _dm(root: Path, tmp_path: Path, **kw) -> FolderDataModule:
    kw.setdefault("sampling", "rcs")
    return FolderDataModule(root, num_classes=3, ignore_index=255, progress=False, batch_size=2,
                            stats_cache_dir=str(tmp_path / "cache"), **kw)


def _expected_image_probs(masks: list[np.ndarray], temperature: float, min_pixels: int) -> np.ndarray:
    """P(image i) = sum_c P(c) [i holds c] / #images holding c, P(c) ∝ exp((1 - f_c) / T) over the classes
    some image holds, f_c = pixels of c / labelled pixels: written out from the masks."""
    counts = np.array([[(m == c).sum() for c in range(3)] for m in masks], dtype=np.float64)
    f = counts.sum(0) / sum((m != 255).sum() for m in masks)
    holds = counts >= min_pixels
    eligible = holds.any(0)
    w = np.where(eligible, np.exp((1 - f) / temperature), 0.0)
    p_class = w / w.sum()
    return sum(p_class[c] * holds[:, c] / holds[:, c].sum() for c in range(3) if eligible[c])


# -- per-image class counts in the statistics pass ---------------------------------------------------------


def test_statistics_keep_per_image_counts_through_the_cache(tmp_path):
    masks = _write(tmp_path / "data")
    dm = _dm(tmp_path / "data", tmp_path, sampling="uniform")
    stats = dm.label_statistics()
    want = [[int((m == c).sum()) for c in range(3)] for m in masks]
    assert stats.image_class_counts.tolist() == want
    assert stats.presence(2).tolist() == [[c >= 2 for c in row] for row in want]
    again = _dm(tmp_path / "data", tmp_path, sampling="uniform").label_statistics()  # from the cache
    assert torch.equal(again.image_class_counts, stats.image_class_counts) and again == stats
    assert LabelStatistics.from_dict(stats.to_dict()) == stats
    assert stats.to_dict()["image_class_counts"][1] == [[0, 30], [1, 18]]  # sparse rows in the cache
    two_workers = _dm(tmp_path / "data", tmp_path, sampling="uniform", num_workers=2)
    assert torch.equal(two_workers.label_statistics(use_cache=False).image_class_counts,
                       stats.image_class_counts)  # the order of the samples, whatever the workers


def test_synthetic_per_image_counts_are_the_rendered_masks():
    dm = SyntheticDataModule(num_classes=5, image_size=(32, 32), num_train=5, num_val=1, num_test=1,
                             progress=False)
    stats = dm.label_statistics(use_cache=False)
    ds = dm.make_dataset("train")
    want = [np.bincount(ds.generate(i)[1].ravel(), minlength=5).tolist() for i in range(5)]
    assert stats.image_class_counts.tolist() == want


# -- the formula -------------------------------------------------------------------------------------------


def test_class_probabilities_are_the_daformer_formula():
    f = np.array([0.7, 0.2, 0.09, 0.01])
    for t in (0.01, 0.1, 1.0):
        w = np.exp((1 - f) / t)
        np.testing.assert_allclose(rcs_class_probabilities(f, t), w / w.sum(), rtol=1e-12)
    tiny = rcs_class_probabilities(f, 1e-4)  # exp(1e4) would overflow without the shift
    assert np.isfinite(tiny).all() and tiny.argmax() == 3 and tiny.sum() == pytest.approx(1)
    held = rcs_class_probabilities(f, 0.1, [True, True, True, False])
    assert held[3] == 0 and held.sum() == pytest.approx(1)


@pytest.mark.slow
@pytest.mark.parametrize(("temperature", "min_pixels"), [(0.3, 2), (0.05, 1)])
def test_image_frequencies_match_the_formula(tmp_path, temperature, min_pixels):
    masks = _write(tmp_path / "data")
    dm = _dm(tmp_path / "data", tmp_path, rcs_temperature=temperature, rcs_min_pixels=min_pixels)
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, RareClassSampler) and len(sampler) == 6
    expected = _expected_image_probs(masks, temperature, min_pixels)
    draws = []
    for epoch in range(3000):
        sampler.set_epoch(epoch)
        draws.extend(sampler)
    n = len(draws)
    empirical = np.bincount(draws, minlength=6) / n
    sd = np.sqrt(expected * (1 - expected) / n)
    assert (np.abs(empirical - expected) <= SIGMAS * sd + 1e-12).all(), (empirical, expected)
    if min_pixels == 2:
        assert expected[0] > 0 and expected[3] == pytest.approx(expected[0])  # d's one pixel does not count


# -- determinism and the DDP split -------------------------------------------------------------------------


def _presence_and_probs():
    presence = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 1]], bool)
    return presence, rcs_class_probabilities([0.8, 0.15, 0.05], 0.2)


def test_plans_are_seeded_per_epoch(tmp_path):
    presence, probs = _presence_and_probs()
    a, b = RareClassSampler(presence, probs, seed=3), RareClassSampler(presence, probs, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(RareClassSampler(presence, probs, seed=4)) != list(RareClassSampler(presence, probs, seed=3))
    _write(tmp_path / "data")
    runs = [list(_dm(tmp_path / "data", tmp_path, seed=11).train_dataloader().sampler) for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_disjoint_shares_of_one_epoch_plan(world):
    presence, probs = _presence_and_probs()  # 7 images: not a multiple of 2 or 3
    for epoch in (0, 5):
        ranks = [RareClassSampler(presence, probs, num_replicas=world, rank=r, seed=9) for r in range(world)]
        for s in ranks:
            s.set_epoch(epoch)
        plans = [s.epoch_plan() for s in ranks]
        assert all(np.array_equal(p, plans[0]) for p in plans)  # the same plan on every rank
        shares = [list(s) for s in ranks]
        per_rank = math.ceil(7 / world)
        assert [len(s) for s in ranks] == [len(s) for s in shares] == [per_rank] * world
        # rank r holds positions r, r + world, ...: disjoint, and together the whole plan
        woven = np.empty(per_rank * world, np.int64)
        for r, share in enumerate(shares):
            woven[r::world] = share
        np.testing.assert_array_equal(woven, plans[0])
    assert len(RareClassSampler(presence, probs)) == 7  # one process: the epoch length of uniform sampling


def test_loaders_under_a_process_group(tmp_path, monkeypatch):
    _write(tmp_path / "data")
    dm = _dm(tmp_path / "data", tmp_path)
    dm.label_statistics()  # cached before the "group" exists
    monkeypatch.setattr("datamodules.base.distributed_world", lambda: (0, 2))
    # rank 0 computes and keeps its own statistics (the broadcast is a no-op here)
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", lambda box, src: None)
    train = dm.train_dataloader()
    assert isinstance(train.sampler, RareClassSampler)
    assert (train.sampler.num_replicas, train.sampler.rank, len(train.sampler)) == (2, 0, 3)
    assert isinstance(dm.val_dataloader().sampler, UnpaddedDistributedSampler)


@pytest.mark.slow
def test_uniform_stays_the_default(tmp_path):
    _write(tmp_path / "data")
    dm = _dm(tmp_path / "data", tmp_path, sampling="uniform")
    assert not isinstance(dm.train_dataloader().sampler, RareClassSampler)
    cfg = compose_config(["+datamodule=synthetic"])
    assert (cfg.datamodule.sampling, cfg.datamodule.rcs_temperature, cfg.datamodule.rcs_min_pixels) == (
        "uniform", 0.01, 3)
    assert cfg.datamodule.crop_focus == {"p": 0.0, "class_probs": None}
    cfg = compose_config(["+datamodule=synthetic", "datamodule.sampling=rcs", "datamodule.num_train=6"])
    dm = instantiate(cfg.datamodule)
    assert (dm.sampling, dm.rcs_temperature, dm.rcs_min_pixels) == ("rcs", 0.01, 3)


def test_bad_values_name_the_key():
    kw = {"num_train": 2, "num_val": 1, "num_test": 1, "progress": False}
    with pytest.raises(ValueError, match=r"datamodule\.sampling must be one of \('uniform', 'rcs'\)"):
        SyntheticDataModule(sampling="rare", **kw)
    for bad in (0, -1.0, float("nan"), "hot"):
        with pytest.raises(ValueError, match=r"datamodule\.rcs_temperature must be"):
            SyntheticDataModule(sampling="rcs", rcs_temperature=bad, **kw)
    with pytest.raises(ValueError, match=r"datamodule\.rcs_min_pixels must be an int >= 1"):
        SyntheticDataModule(sampling="rcs", rcs_min_pixels=0, **kw)
    with pytest.raises(ValueError, match=r"datamodule\.sampling=rcs .* num_classes=1"):
        FolderDataModule(Path(__file__).parent, num_classes=1, mode="binary", sampling="rcs")
    with pytest.raises(ValueError, match="0 for the classes no image holds"):
        RareClassSampler(np.array([[1, 0]], bool), [0.5, 0.5])


def test_no_eligible_class_is_an_error(tmp_path):
    _write(tmp_path / "data")
    dm = _dm(tmp_path / "data", tmp_path, rcs_min_pixels=1000)
    with pytest.raises(ValueError, match=r"datamodule\.rcs_min_pixels=1000"):
        dm.train_dataloader()


# -- two processes -----------------------------------------------------------------------------------------


def _rank_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dm = SyntheticDataModule(num_classes=5, image_size=(32, 32), num_train=9, num_val=2, num_test=2,
                                 progress=False, sampling="rcs", rcs_temperature=0.1, seed=5,
                                 stats_cache_dir=f"{out}-cache{rank}")
        sampler = dm.train_dataloader().sampler
        shares = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
        Path(f"{out}.{rank}.json").write_text(json.dumps({"shares": shares, "len": len(sampler)}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_share_the_single_process_plan(tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_rank_worker, args=(2, free_port(), out), nprocs=2, join=True)
    ranks = [json.loads(Path(f"{out}.{r}.json").read_text()) for r in range(2)]
    dm = SyntheticDataModule(num_classes=5, image_size=(32, 32), num_train=9, num_val=2, num_test=2,
                             progress=False, sampling="rcs", rcs_temperature=0.1, seed=5,
                             stats_cache_dir=str(tmp_path / "single"))
    reference = dm.rare_class_sampler(num_replicas=2, rank=0)
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        plan = reference.epoch_plan()
        assert [r["shares"][epoch] for r in ranks] == [plan[0::2].tolist(), plan[1::2].tolist()]
    assert [r["len"] for r in ranks] == [5, 5]
