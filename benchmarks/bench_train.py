"""Training throughput (images/s) of our defaults against what users would write instead, and the overhead of
our LightningModule + Trainer over a plain loop.

Usage::

    python benchmarks/bench_train.py [--preset default|camvid_study] [--steps 12] [--rounds 2]
                                     [--override KEY=VALUE ...] [--out benchmarks/results/bench_train.md]

One process, interleaved: every case runs ``--steps`` training steps per round (the first step of each
round is a warm-up and not timed), round-robin for ``--rounds`` rounds, so load from other processes hits
every case alike; the table gives images/s from the median round. Same network (the preset's
``model``, random init), batch size and crop everywhere.

(1) With the preset's data pipeline (``datamodule`` train loader, augmentation, workers):

- ``ours (defaults)``: the preset's config as ``python train.py`` builds it (``runs.build``: module,
  Trainer with our callbacks, the trainer's precision, the model's ``channels_last``, ``datamodule.cache``),
  validation off; ``ours, cache=none``: the same, reading every sample from disk (or generating it);
- ``plain loop, fp32``: a PyTorch loop as a user would write it: ``zero_grad``, forward, loss,
  ``backward``, ``step`` over the same pipeline reading from disk (``cache=none``, as a plain Dataset
  does), float32, contiguous, the same loss module;
- ``tutorial Lightning``: a minimal LightningModule around smp's network with smp's ``DiceLoss`` +
  ``FocalLoss`` (the usual tutorial set-up), ``Trainer(precision="32-true")`` with Lightning's default
  callbacks, the same loader reading from disk.

(2) Trainer overhead, on in-memory batches (decoded once, so data loading is not measured):
``ours (module + Trainer)`` against ``plain loop, same settings`` (same network, loss, optimizer,
precision and memory format). Target: at most 3 % slower.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.speed import autocast_dtype, is_channels_last, resolve_precision  # noqa: E402
from runs.build import build, build_lightning_module, build_trainer  # noqa: E402

PRESETS = {"default": [], "camvid_study": ["experiment=camvid_study"]}
QUIET = ["logger=csv", "callbacks.prediction_grid=null", "callbacks.rich_model_summary=null",
         "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "datamodule.progress=false", "trainer.limit_val_batches=0",
         "trainer.num_sanity_val_steps=0", "test=false"]


class StepClock(pl.Callback):
    """Wall time of the training steps after the first of a fit (the first holds the loader start), and
    the share of it between one step's end and the next one's start: waiting for the batch."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.steps = 0
        self.seconds = 0.0
        self.waiting = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is not None:
            self.waiting += time.perf_counter() - self.start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.start is not None:
            self.seconds += now - self.start
            self.steps += 1
        self.start = now


def config(preset: str, overrides: list[str], out: Path, steps: int):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*PRESETS[preset], *QUIET, f"paths.output_dir={out}",
                                           f"trainer.max_steps={steps}", *overrides])


WAITING: list[float] = []  # share of the step time "ours (defaults)" waited for its batches, per round
WAITING_DISK: list[float] = []  # the same for "ours, cache=none"


def ours(cfg, steps: int, batches: list | None = None, waiting: list[float] = WAITING) -> Callable[[], float]:
    """Our module under our Trainer: with the preset's datamodule, or on the in-memory ``batches``."""
    datamodule = build(cfg.datamodule, "datamodule")
    module = build_lightning_module(cfg, datamodule)

    def run() -> float:
        clock = StepClock()
        trainer = build_trainer(cfg)
        trainer.callbacks.append(clock)
        if batches is None:
            trainer.fit(module, datamodule=datamodule)
            waiting.append(clock.waiting / clock.seconds)
        else:
            trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
        return clock.steps * datamodule.batch_size / clock.seconds

    return run


def _loop(network, loss, optimizer, batches: Iterable, steps: int, batch_size: int,
          dtype: torch.dtype | None, channels_last: bool) -> float:
    autocast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype is not None else contextlib.nullcontext
    start, done = None, 0
    for batch in itertools.islice(batches, steps):
        images = batch["image"]
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = network(images)
        loss(logits.float(), batch["mask"]).backward()
        optimizer.step()
        if start is None:
            start = time.perf_counter()
        else:
            done += 1
    return done * batch_size / (time.perf_counter() - start)


def plain(cfg, steps: int, *, same_settings: bool, batches: list | None = None) -> Callable[[], float]:
    """A plain loop over the preset's loader (or the in-memory ``batches``); fp32 contiguous, or the
    precision and memory format of our defaults with ``same_settings``."""
    datamodule = build(cfg.datamodule, "datamodule")
    module = build_lightning_module(cfg, datamodule)
    channels_last = same_settings and is_channels_last(module.network)
    network = module.network if channels_last else module.network.to(memory_format=torch.contiguous_format)
    precision, _ = resolve_precision(cfg.trainer.precision, str(cfg.trainer.accelerator))
    dtype = autocast_dtype(precision) if same_settings else None
    optimizer = torch.optim.AdamW(network.parameters(), lr=float(cfg.optimizer.lr))

    def run() -> float:
        network.train()
        data = batches if batches is not None else _loader(datamodule)
        size = datamodule.batch_size
        return _loop(network, module.loss, optimizer, data, steps, size, dtype, channels_last)

    return run


def _loader(datamodule) -> DataLoader:
    datamodule.setup("fit")
    return datamodule.train_dataloader()


class TutorialModule(pl.LightningModule):
    def __init__(self, network: torch.nn.Module, lr: float, ignore_index: int | None) -> None:
        super().__init__()
        self.network, self.lr = network, lr
        self.dice = smp.losses.DiceLoss("multiclass", ignore_index=ignore_index)
        self.focal = smp.losses.FocalLoss("multiclass", ignore_index=ignore_index)

    def training_step(self, batch, batch_idx):
        logits = self.network(batch["image"])
        loss = self.dice(logits, batch["mask"]) + self.focal(logits, batch["mask"])
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def tutorial(cfg, steps: int, out: Path) -> Callable[[], float]:
    datamodule = build(cfg.datamodule, "datamodule")
    network = build_lightning_module(cfg, datamodule).network.to(memory_format=torch.contiguous_format)
    module = TutorialModule(network, float(cfg.optimizer.lr), datamodule.ignore_index)

    def run() -> float:
        clock = StepClock()
        trainer = pl.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=steps,
                             limit_val_batches=0, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=out, callbacks=[clock])
        trainer.fit(module, train_dataloaders=_loader(datamodule))
        return clock.steps * datamodule.batch_size / clock.seconds

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--override", nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=None, help="append the table to this Markdown file")
    parser.add_argument("--overhead-only", action="store_true",
                        help="only the two in-memory cases (the Trainer overhead), e.g. with more --rounds")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    cfg = config(args.preset, args.override, tmp / "run", args.steps)
    disk = config(args.preset, [*args.override, "datamodule.cache=none"], tmp / "run", args.steps)
    memory_dm = build(cfg.datamodule, "datamodule")
    batches = list(itertools.islice(_loader(memory_dm), args.steps))
    with contextlib.redirect_stdout(sys.stderr):  # the label-statistics tables of each build
        cases = _cases(cfg, disk, args.steps, batches, tmp)
    if args.overhead_only:
        cases = {name: run for name, run in cases.items() if name.startswith("in memory")}
    _report(args, cfg, memory_dm.batch_size, cases)


def _cases(cfg, disk, steps: int, batches: list, tmp: Path) -> dict[str, Callable[[], float]]:
    return {
        "ours (defaults)": ours(cfg, steps),
        "ours, cache=none": ours(disk, steps, waiting=WAITING_DISK),
        "plain loop, fp32": plain(disk, steps, same_settings=False),
        "tutorial Lightning (smp losses, fp32)": tutorial(disk, steps, tmp / "tutorial"),
        "in memory: ours (module + Trainer)": ours(cfg, steps, batches),
        "in memory: plain loop, same settings": plain(cfg, steps, same_settings=True, batches=batches),
    }


def _report(args: argparse.Namespace, cfg, batch_size: int, cases: dict[str, Callable[[], float]]) -> None:
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, run in cases.items():
            with contextlib.redirect_stdout(sys.stderr):
                rates[name].append(run())
    precision, _ = resolve_precision(cfg.trainer.precision, str(cfg.trainer.accelerator))
    lines = [
        f"### {args.preset}: {datetime.date.today()}, {platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, batch {batch_size}, ours: precision {precision}, "
        f"channels_last {bool(cfg.model.channels_last)}; {args.rounds} rounds x {args.steps} steps",
        "",
        "| case | images/s (median) | rounds | vs plain fp32 |",
        "|---|---:|---|---:|",
    ]
    base = statistics.median(rates.get("plain loop, fp32") or rates["in memory: plain loop, same settings"])
    for name, values in rates.items():
        med = statistics.median(values)
        lines.append(f"| {name} | {med:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {med / base:.2f}x |")
    overhead = 1 - (statistics.median(rates["in memory: ours (module + Trainer)"])
                    / statistics.median(rates["in memory: plain loop, same settings"]))
    lines.append(f"\nTrainer overhead on in-memory batches: {100 * overhead:+.1f} % (target <= 3 %)")
    if WAITING and WAITING_DISK:
        lines[-1] += (f"; waiting for batches, share of the step time: ours (defaults) "
                      f"{100 * statistics.median(WAITING):.1f} %, ours with cache=none "
                      f"{100 * statistics.median(WAITING_DISK):.1f} %")
    lines[-1] += "\n"
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
