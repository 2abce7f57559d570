"""DDP under Hydra (runs/ddp.py), exact distributed evaluation, synchronised batch Dice (2 CPU processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from datamodules import SyntheticDataModule
from datamodules.samplers import UnpaddedDistributedSampler
from inference import load_checkpoint_weights
from runs import ddp
from runs.build import build_loss, build_module, class_weights
from runs.jobs import run_job
from seglosses import DiceLoss
from seglosses.combined import _DICE_PLAIN, CombinedLoss
from seglosses.focal import FocalLoss
from tests.overrides import SMALL_UNET, SYNTHETIC_ODD
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300

TINY = [
    *SYNTHETIC_ODD,
    *SMALL_UNET,
    "datamodule.progress=false",
    "callbacks.rich_progress_bar=null",
    "callbacks.rich_model_summary=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def _run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


# ---- exact evaluation shards ------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "world"), [(5, 2), (4, 2), (7, 3), (1, 2), (0, 2)])
def test_unpadded_sampler_covers_every_index_exactly_once(size, world):
    shards = [list(UnpaddedDistributedSampler(range(size), num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(size))
    for r, shard in enumerate(shards):
        assert len(UnpaddedDistributedSampler(range(size), num_replicas=world, rank=r)) == len(shard)
    # torch's DistributedSampler pads instead: the reason this sampler exists
    padded = [i for r in range(world) for i in torch.utils.data.DistributedSampler(
        range(size), num_replicas=world, rank=r, shuffle=False)]
    assert len(padded) >= size and (size % world == 0 or len(padded) > size)


# ---- the re-launched command ------------------------------------------------------------------------------


def test_child_command_runs_the_job_not_the_sweep(tmp_path):
    command = ddp.child_command(
        "train.py", "train", "/repo/conf",
        task_overrides=["trainer=ddp_cpu", "loss.gamma=2"],
        hydra_overrides=["hydra.mode=MULTIRUN", "hydra.sweep.dir=/s", "hydra/launcher=submitit_local",
                         "hydra.launcher.timeout_min=5", "hydra.job.chdir=false"],
        output_dir=tmp_path / "sweep dir" / "1",
    )
    assert command[:2] == [sys.executable, str(Path("train.py").resolve())]
    assert "--config-name=train" in command and "--config-path=/repo/conf" in command
    assert "-m" not in command and "--multirun" not in command
    assert command.count("loss.gamma=2") == 1
    assert "hydra.job.chdir=false" in command  # job settings stay
    for dropped in ("hydra.mode", "hydra.sweep.dir", "hydra/launcher", "hydra.launcher.timeout_min"):
        assert not any(c.startswith(dropped + "=") for c in command)
    assert f'hydra.run.dir="{tmp_path / "sweep dir" / "1"}"' in command
    for quiet in ("hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"):
        assert quiet in command


def test_torchrun_without_run_dir_is_refused_and_other_ranks_are_quiet(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", ddp.CHILD_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit, match=r"hydra\.run\.dir="):
        ddp.prepare_argv(["train.py", "trainer=ddp"])
    with pytest.raises(SystemExit, match=r"hydra\.sweep\.dir="):
        ddp.prepare_argv(["train.py", "-m", "loss.gamma=0,1", "hydra.run.dir=x"])
    argv = ddp.prepare_argv(["train.py", "hydra.run.dir=out/a"])
    assert argv[2:] == list(ddp.CHILD_OVERRIDES)
    assert ddp.is_ddp_child() and not ddp.is_global_zero()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert ddp.prepare_argv(["train.py", "hydra.run.dir=out/a"]) == ["train.py", "hydra.run.dir=out/a"]
    assert not ddp.is_ddp_child() and ddp.is_global_zero()
    monkeypatch.setenv(ddp.CHILD_ENV, "1")  # our own re-launch: not an external launcher
    assert ddp.external_world_size() is None and ddp.is_ddp_child()


def test_ddp_job_relaunches_the_script_that_ran_the_job(tmp_path):
    # runs.training.run is defined in runs/, but its children must run train.py: the caller's file, past
    # runs.jobs.run_job (here: this test file), is what HydraDDPStrategy re-launches.
    scripts = []

    @ddp.ddp_job
    def job(cfg):
        scripts.append(Path(ddp._SCRIPT["script"]))
        return 0.5

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "job")}})
    assert run_job(job, cfg) == 0.5 and job(cfg) == 0.5
    assert scripts == [Path(__file__), Path(__file__)]


# ---- synchronised batch Dice and label statistics in a 2-process gloo group --------------------------------


def _dice_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same data and weights on every rank
        x = torch.randn(4, 3, 5, 6)
        y = torch.randint(0, 4, (4, 5, 6))
        y[0, 0, :3] = 255  # ignored pixels
        conv = torch.nn.Conv2d(3, 4, 1)
        local = slice(2 * rank, 2 * rank + 2)  # this rank's half of the global batch
        result: dict = {}

        for name, kwargs in (("plain", {}), ("options", {"power": 2, "smooth": 0.5, "log_loss": True})):
            loss_fn = DiceLoss(ignore_index=255, sync_ddp=True, **kwargs)
            model = DistributedDataParallel(torch.nn.Conv2d(3, 4, 1))
            model.module.load_state_dict(conv.state_dict())
            value = loss_fn(model(x[local]), y[local])
            value.backward()
            result[name] = {"value": value.item(), "grad": [p.grad.tolist() for p in model.parameters()]}

        # probabilities input: the input gradient is world_size times that of the global-batch loss
        probs = torch.softmax(torch.randn(4, 4, 5, 6), 1)[local].requires_grad_()
        DiceLoss(from_logits=False, sync_ddp=True)(probs, y[local].clamp_max(3)).backward()
        result["probs_grad"] = probs.grad.tolist()

        # per_image and CombinedLoss: per-image Dice needs no communication; the combined loss syncs its Dice
        per_image = DiceLoss(per_image=True, sync_ddp=True)(x[local, :3], y[local].clamp_max(2))
        result["per_image"] = per_image.item()
        combined = CombinedLoss({"focal": FocalLoss(gamma=2.0), "dice": DiceLoss(sync_ddp=True)})
        result["combined"] = combined(x[local, :3], y[local].clamp_max(2)).item()

        # label statistics: rank 0 computes (each rank its own cache dir here) and broadcasts
        dm = SyntheticDataModule(num_classes=5, image_size=(32, 32), num_train=6, num_val=2, num_test=2,
                                 progress=False, stats_cache_dir=f"{out}-cache{rank}")
        stats = dm.label_statistics()
        result["stats"] = [stats.pixel_counts.tolist(), stats.image_pixel_counts.tolist(), stats.num_images]
        Path(f"{out}.{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sync_ddp_dice_and_label_statistics_equal_single_process(tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_dice_worker, args=(2, free_port(), out), nprocs=2, join=True)
    ranks = [json.loads(Path(f"{out}.{r}.json").read_text()) for r in range(2)]

    torch.manual_seed(0)  # the worker's draws, in one process
    x = torch.randn(4, 3, 5, 6)
    y = torch.randint(0, 4, (4, 5, 6))
    y[0, 0, :3] = 255
    conv = torch.nn.Conv2d(3, 4, 1)
    for name, kwargs in (("plain", {}), ("options", {"power": 2, "smooth": 0.5, "log_loss": True})):
        model = torch.nn.Conv2d(3, 4, 1)
        model.load_state_dict(conv.state_dict())
        value = DiceLoss(ignore_index=255, **kwargs)(model(x), y)
        value.backward()
        for r in ranks:  # every rank: the Dice of the global batch, and DDP's averaged gradients
            assert r[name]["value"] == pytest.approx(value.item(), rel=1e-6)
            for got, p in zip(r[name]["grad"], model.parameters(), strict=True):
                torch.testing.assert_close(torch.tensor(got), p.grad, rtol=1e-5, atol=1e-6)
        # without the sync each rank's Dice differs from the global one (the test can fail)
        local = DiceLoss(ignore_index=255, **kwargs)(model(x[:2]), y[:2]).item()
        assert local != pytest.approx(value.item(), rel=1e-4)

    probs = torch.softmax(torch.randn(4, 4, 5, 6), 1).requires_grad_()
    DiceLoss(from_logits=False)(probs, y.clamp_max(3)).backward()
    for rank, r in enumerate(ranks):
        torch.testing.assert_close(torch.tensor(r["probs_grad"]), 2 * probs.grad[2 * rank:2 * rank + 2])

    for rank, r in enumerate(ranks):
        local = slice(2 * rank, 2 * rank + 2)
        expected = DiceLoss(per_image=True)(x[local, :3], y[local].clamp_max(2))
        assert r["per_image"] == pytest.approx(expected.item())
    if "sync_ddp" in _DICE_PLAIN:  # the fused focal+Dice path must step aside for a synchronised Dice term
        for rank, r in enumerate(ranks):
            local = slice(2 * rank, 2 * rank + 2)
            focal = FocalLoss(gamma=2.0)(x[local, :3], y[local].clamp_max(2))
            dice = DiceLoss()(x[:, :3], y.clamp_max(2))
            assert r["combined"] == pytest.approx((focal + dice).item(), rel=1e-5)

    dm = SyntheticDataModule(num_classes=5, image_size=(32, 32), num_train=6, num_val=2, num_test=2,
                             progress=False, stats_cache_dir=str(tmp_path / "single-cache"))
    stats = dm.label_statistics()
    single = [stats.pixel_counts.tolist(), stats.image_pixel_counts.tolist(), stats.num_images]
    assert ranks[0]["stats"] == ranks[1]["stats"] == single


def test_sync_ddp_is_a_no_op_without_a_process_group():
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    assert DiceLoss(sync_ddp=True)(x, y) == DiceLoss()(x, y)
    with pytest.raises(ValueError, match="sync_ddp"):
        DiceLoss(sync_ddp="yes")


# ---- train.py with trainer=ddp_cpu ------------------------------------------------------------------------


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def _single_process_scores(cfg, checkpoint: Path) -> dict:
    """Validation and test scores of ``checkpoint`` evaluated by one process."""
    datamodule = instantiate(cfg.datamodule)
    stats = datamodule.label_statistics()
    loss = build_loss(cfg, class_weights(cfg, datamodule, stats))
    module = build_module(cfg, datamodule, loss, stats)
    load_checkpoint_weights(module, checkpoint)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    return json.loads(json.dumps(module.results))


@pytest.mark.slow
def test_ddp_cpu_run_leaves_one_directory_and_evaluates_exactly(tmp_path):
    overrides = [*TINY, "trainer=ddp_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                 "class_weights=median_frequency", "logger=csv",
                 f"datamodule.stats_cache_dir={tmp_path / 'c'}"]
    proc = _run_script(overrides, cwd=tmp_path)  # default run dir: outputs/<date>/<time> under cwd

    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    run = runs[0]
    assert [p.parent.name for p in run.rglob("config.yaml")] == [".hydra"]
    assert not list(run.glob("*ddp_process*")) and [p.name for p in run.glob("*.log")] == ["train.log"]
    assert proc.stdout.count("final results") == 1  # rank 0 alone reports,
    assert proc.stdout.count("class weights (median_frequency)") == 1  # prints the weights,
    metrics = json.loads((run / "metrics.json").read_text())
    best = Path(metrics["checkpoint"])
    assert best.parent == run / "checkpoints" and best.is_file()
    assert sorted(p.name for p in best.parent.iterdir()) == sorted([best.name, "last.ckpt"])

    # One process evaluating the kept checkpoint counts the same pixels: equal scores, bit for bit.
    cfg = _compose(*overrides, f"paths.output_dir={tmp_path / 'single'}",
                   f"datamodule.stats_cache_dir={tmp_path / 'single-cache'}", "trainer=cpu")
    single = _single_process_scores(cfg, best)
    for split in ("val", "test"):
        ddp_scores = {k: v for k, v in metrics[split].items() if k != "epoch"}
        assert ddp_scores == {k: v for k, v in single[split].items() if k != "epoch"}, split
    # label statistics and class weights: the same as one process computing them from scratch
    ddp_weights = json.loads((run / "class_weights.json").read_text())
    single_weights = json.loads((tmp_path / "single" / "class_weights.json").read_text())
    assert ddp_weights == single_weights and ddp_weights["method"] == "median_frequency"


@pytest.mark.slow
def test_ddp_cpu_multirun_gives_one_directory_per_job_and_one_summary(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "trainer=ddp_cpu", "loss.gamma=0,2", "debug=fdr", "~logger", *TINY,
            f"hydra.sweep.dir={sweep}", f"datamodule.stats_cache_dir={tmp_path / 'c'}"]
    proc = _run_script(args, cwd=tmp_path)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job, gamma in zip(jobs, ("0", "2"), strict=True):
        job_dir = sweep / job
        assert json.loads((job_dir / "metrics.json").read_text())["test"]["mIoU"] is not None
        assert (job_dir / "class_weights.json").is_file()
        assert (job_dir / ".hydra" / "overrides.yaml").read_text().count(f"loss.gamma={gamma}") == 1
        assert [p.name for p in job_dir.glob("*.log")] == ["train.log"]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
    assert proc.stdout.count("final results") == 2
    summary = (sweep / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and all(",ok," in row for row in summary[1:])
