"""Training-step time of each model option in float32 and bf16 autocast, contiguous and channels_last:
the measurement behind the ``channels_last`` default of each ``conf/model/<arch>.yaml``.

Usage::

    python benchmarks/bench_formats.py [--models unet fpn deeplabv3plus segformer] [--batch-size 8]
                                       [--size 192 256] [--classes 12] [--steps 4] [--rounds 2]

One process; for every model option (the network exactly as ``model=<arch>`` builds it, random weights),
one AdamW step of the project's default loss (``loss=focal_dice``) on an in-memory (B, 3, H, W) batch,
forward + backward + optimizer step. Variants: fp32 / fp32 + channels_last / bf16 autocast / bf16 +
channels_last (bf16 only where the CPU supports it natively, :func:`models.speed.native_bf16`). Each
variant is warmed up with one step, then timed ``--steps`` steps per round, round-robin over the variants
for ``--rounds`` rounds (load from other processes hits every variant alike); the table gives the median
ms/step and the ratio to fp32 of the same network. About 4 minutes on 2 cores for the 4 default models.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from models.speed import native_bf16  # noqa: E402
from runs.build import build, build_loss  # noqa: E402

VARIANTS = (("fp32", False, False), ("fp32 + channels_last", False, True),
            ("bf16", True, False), ("bf16 + channels_last", True, True))


def step_fn(arch: str, classes: int, bf16: bool, channels_last: bool, batch: torch.Tensor,
            target: torch.Tensor):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={arch}", f"datamodule.num_classes={classes}",
                                          "datamodule.class_names=null"])
    torch.manual_seed(0)
    network = build(cfg.model, "model", channels_last=channels_last)
    loss = build_loss(cfg, None)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    images = batch.contiguous(memory_format=torch.channels_last) if channels_last else batch
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = network(images)
        loss(logits.float(), target).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet", "fpn", "deeplabv3plus", "segformer"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256])
    parser.add_argument("--classes", type=int, default=12)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--emulated-bf16", action="store_true",
                        help="time the bf16 variants on a CPU without native bf16 too")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(args.batch_size, 3, *args.size, generator=g)
    target = torch.randint(0, args.classes, (args.batch_size, *args.size), generator=g)
    variants = [v for v in VARIANTS if native_bf16() or args.emulated_bf16 or not v[1]]
    steps = {(m, name): step_fn(m, args.classes, bf16, cl, batch, target)
             for m in args.models for name, bf16, cl in variants}
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for step in steps.values():  # warm-up (oneDNN picks its kernels on the first call)
        step()
    for _ in range(args.rounds):
        for key, step in steps.items():
            for _ in range(args.steps):
                start = time.perf_counter()
                step()
                times[key].append(1000 * (time.perf_counter() - start))
    print(f"# {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, batch {args.batch_size}, "
          f"{args.size[0]}x{args.size[1]}, {args.classes} classes, native bf16: {native_bf16()}")
    print("| model | variant | ms/step | vs fp32 |\n|---|---|---:|---:|")
    for m in args.models:
        base = statistics.median(times[(m, "fp32")])
        for name, _, _ in variants:
            ms = statistics.median(times[(m, name)])
            print(f"| {m} | {name} | {ms:.0f} | {base / ms:.2f}x |")


if __name__ == "__main__":
    main()
