"""Speed and peak memory of our whole-image and sliding-window inference against MONAI's.

Usage::

    python benchmarks/bench_predict.py [--quick] [--size 2048] [--big 8192] [--tile 256] [--overlap 0.25]
                                       [--batch-size 4] [--classes 12] [--encoder resnet18] [--repeats 2]
                                       [--threads 2] [--device cpu|cuda] [--no-big]

Default run: about 3 minutes on 2 cores with ``--threads 1``. With two threads on two cores that other
processes also load, OpenMP threads wait on each other and passes take 3-5x longer (measured
2026-12-01, load 3-5): there, prefer ``--threads 1``.

(a) One (1, 3, size, size) normalised image (default 2048 x 2048) and one network, a segmentation-models-
pytorch Unet (``--encoder``, random weights, ``--classes`` outputs, eval mode), under
``torch.inference_mode`` in one process:

- ``ours whole``: ``predict_probabilities(mode="whole")`` (pad to 32, one forward pass, softmax, crop);
- ``ours slide``: ``predict_probabilities(mode="slide", tile, overlap, blend="gaussian", batch_size)``;
- ``monai slide``: ``monai.inferers.sliding_window_inference`` with the same tile (``roi_size``), overlap,
  ``mode="gaussian"`` (sigma_scale 0.125, as ours), ``sw_batch_size`` and a predictor applying the same
  softmax;
- ``monai slide, its defaults``: the same tile at MONAI's defaults (``sw_batch_size=1``, overlap 0.25,
  ``mode="constant"``), what a user calling it plainly gets;
- ``--formats`` adds our slide with the options ``predict.py`` offers (``precision``, the network's memory
  format): ``channels_last`` weights and tiles, and ``bf16-mixed`` autocast (probabilities still
  accumulated in float32). bf16 is fast only where the hardware computes it natively
  (``models.speed.native_bf16``); elsewhere it is emulated and slower, which the table then shows.

Every case runs once to measure its peak memory (which doubles as the warm-up), then is timed
``--repeats`` rounds, round-robin (one pass of every case per round), so load from other processes hits
every case alike; the table gives images/s from the median (and the best) pass. The difference between
the two sliding windows' probabilities is printed: MONAI floors its 2-D Gaussian at 1e-3, which weighs
overlapping tiles equally along the image borders; given our map (``roi_weight_map``), or with constant
blending, it agrees with ours to 1e-6 (tests/inference/test_predict.py).

(b) Peak memory for a (1, 3, big, big) image (default 8192 x 8192) in slide mode, with the same tile
settings and a 1x1-conv stand-in network of the same number of classes (the Unet would take tens of
minutes on a CPU: the figure measures the engine, and the bound below adds the network's own peak A,
measured for the Unet in (a)). Cases: ours with a float32 accumulator, ours with ``accumulate_dtype=
torch.float16``, MONAI. The bound stated by ``inference.predict_probabilities``::

    peak <= b*N*K*H*W + 4*B*(C_in + 3*K)*T_h*T_w + A(B, T)

(b = 4 bytes for float32, 2 for float16; B the tile batch; A the network's own peak for one batch).

Peak memory: the extra memory allocated during a pass above what was allocated before it (the input
image and the network are allocated before; the output is counted), as ``benchmarks/bench_losses.py``:
- CPU: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free of the CPU
  allocator with the running total of bytes allocated; the peak is the largest running total (the
  allocator-level equivalent of tracemalloc; the resident set size would add glibc's caching of freed
  blocks). This reads the profiler's event tree (``experimental_event_tree()``, an experimental API);
  "n/a" if it yields no allocation events.
- CUDA: ``torch.cuda.max_memory_allocated()`` minus ``torch.cuda.memory_allocated()`` before the pass.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from memory import peak_bytes, sync
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference import InferenceConfig, predict_probabilities, tile_starts

TARGET_SPEED_VS_MONAI = 1.0  # ours slide at least as fast as MONAI's
TARGET_MEMORY_VS_MONAI = 1.0  # and peak memory no higher


@dataclass
class Case:
    name: str
    fn: Callable[[Tensor], Tensor]
    times: list[float] = field(default_factory=list)
    peak: int | None = None
    profiled_s: float | None = None  # the memory pass's time, under the profiler
    error: str | None = None


def peak_memory(fn: Callable[[Tensor], Tensor], x: Tensor, device: torch.device) -> tuple[int | None, Tensor]:
    """(bytes allocated during one pass above the level before it, the pass's output)."""
    return peak_bytes(lambda: fn(x), device)


def run_cases(cases: list[Case], x: Tensor, repeats: int, device: torch.device,
              keep: tuple[str, ...] = ()) -> dict[str, Tensor]:  # fmt: skip
    """One memory-measuring pass per case (also the warm-up), then ``repeats`` timed round-robin rounds;
    returns the outputs of the memory passes of the cases named in ``keep``."""
    kept: dict[str, Tensor] = {}
    for case in cases:
        print(f"  memory: {case.name} ...", file=sys.stderr, flush=True)
        try:
            t0 = time.perf_counter()
            case.peak, out = peak_memory(case.fn, x, device)
            case.profiled_s = time.perf_counter() - t0
        except Exception as e:  # a peer that is missing or fails is reported, not fatal
            case.error = f"{type(e).__name__}: {e}".splitlines()[0][:120]
            print(f"  {case.name}: {case.error}", file=sys.stderr, flush=True)
            continue
        if case.name in keep:
            kept[case.name] = out.cpu()
        del out
    for round_ in range(repeats):
        for case in cases:
            if case.error:
                continue
            print(f"  round {round_ + 1}/{repeats}: {case.name} ...", file=sys.stderr, flush=True)
            sync(device)
            t0 = time.perf_counter()
            out = case.fn(x)
            sync(device)
            case.times.append(time.perf_counter() - t0)
            del out
    return kept


def _mib(b: int | float | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.0f}"


def monai_slide(net: nn.Module, tile: int, overlap: float, batch: int) -> Callable[[Tensor], Tensor]:
    """MONAI's sliding window with our settings: Gaussian sigma = 0.125 * tile, the same softmax."""

    def run(image: Tensor) -> Tensor:
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            return sliding_window_inference(image, (tile, tile), batch, lambda p: net(p).softmax(1),
                                            overlap=overlap, mode="gaussian", sigma_scale=0.125)  # fmt: skip

    return run


def monai_defaults(net: nn.Module, tile: int) -> Callable[[Tensor], Tensor]:
    """MONAI's sliding window at its defaults (sw_batch_size 1, overlap 0.25, constant blending)."""

    def run(image: Tensor) -> Tensor:
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            return sliding_window_inference(image, (tile, tile), 1, lambda p: net(p).softmax(1))

    return run


def format_cases(net: nn.Module, slide: InferenceConfig, device: torch.device) -> list[Case]:
    """Our slide in channels_last, and under bf16 autocast, as ``predict.py`` runs them."""
    import copy

    from models.speed import to_channels_last

    nhwc = to_channels_last(copy.deepcopy(net))

    def bf16(image: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return predict_probabilities(net, image, slide, activation="softmax")

    return [
        Case("ours slide, channels_last", lambda image: predict_probabilities(nhwc, image, slide,
                                                                              activation="softmax")),
        Case("ours slide, bf16-mixed", bf16),
    ]


def network_peak(network: nn.Module, batch: int, tile: int, device: torch.device) -> int | None:
    """A(B, T): the network's own peak for one forward pass of ``batch`` tiles, logits included."""
    x = torch.randn(batch, 3, tile, tile, device=device)
    with torch.inference_mode():
        peak, _ = peak_memory(lambda t: network(t), x, device)
    return peak


def part_a(args: argparse.Namespace, device: torch.device) -> int | None:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    net = smp.Unet(args.encoder, encoder_weights=None, classes=args.classes).to(device).eval()
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    t, ov, b = args.tile, args.overlap, args.batch_size
    whole = InferenceConfig(mode="whole", multiple=32)
    slide = InferenceConfig(mode="slide", tile=t, overlap=ov, blend="gaussian", batch_size=b, multiple=32)

    cases = [
        Case("ours whole", lambda image: predict_probabilities(net, image, whole, activation="softmax")),
        Case("ours slide", lambda image: predict_probabilities(net, image, slide, activation="softmax")),
        Case("monai slide", monai_slide(net, t, ov, b)),
        Case("monai slide, its defaults", monai_defaults(net, t)),
    ]
    if args.formats:
        cases += format_cases(net, slide, device)
    tiles = len(tile_starts(args.size, t, ov))
    print(f"## (a) {args.size}x{args.size} image, smp Unet {args.encoder} (random weights), {args.classes} "
          f"classes, softmax; slide: tile {t}, overlap {ov}, gaussian, batch {b} ({tiles}x{tiles} tiles)\n",
          flush=True)  # fmt: skip
    kept = run_cases(cases, x, args.repeats, device, keep=("ours slide", "monai slide"))
    lines = [
        "| case | images/s (median) | images/s (best) | median s | runs | peak MiB | peak x output |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    out_bytes = 4 * args.classes * args.size**2
    for c in cases:
        if c.error:
            lines.append(f"| {c.name} | failed: {c.error} | | | | | |")
            continue
        med, best, peak = statistics.median(c.times), min(c.times), c.peak
        x_out = "n/a" if peak is None else f"{peak / out_bytes:.2f}"
        lines.append(f"| {c.name} | {1 / med:.4f} | {1 / best:.4f} | {med:.1f} | {len(c.times)} "
                     f"| {_mib(peak)} | {x_out} |")  # fmt: skip
    print("\n".join(lines) + "\n")
    by = {c.name: c for c in cases if not c.error}
    ours, monai = by.get("ours slide"), by.get("monai slide")
    if ours is not None and monai is not None:
        speed = statistics.median(monai.times) / statistics.median(ours.times)
        speed_best = min(monai.times) / min(ours.times)
        po, pm = ours.peak, monai.peak
        memory = None if po is None or pm is None or po == 0 else pm / po
        fast = speed_best >= TARGET_SPEED_VS_MONAI  # best-of: the least sensitive to load from others
        lean = memory is None or memory >= TARGET_MEMORY_VS_MONAI
        mem_text = "n/a" if memory is None else f"{memory:.2f}x"
        print(f"- ours slide vs MONAI: speed {speed:.2f}x (median; best {speed_best:.2f}x), MONAI peak / "
              f"ours {mem_text} (ours {_mib(po)} MiB, MONAI {_mib(pm)} MiB)")  # fmt: skip
        verdict = "met" if fast and lean else "MISSED"
        print(f"- target (>= MONAI speed on the best pass, <= MONAI peak): {verdict}")
        if "ours slide" in kept and "monai slide" in kept:
            diff = (kept["ours slide"] - kept["monai slide"]).abs()
            print(f"- |ours - MONAI| probability: max {diff.max().item():.2e}, mean {diff.mean().item():.1e} "
                  "(MONAI floors its 2-D Gaussian at 1e-3, weighing tiles equally along the image borders; "
                  "given our map as roi_weight_map it agrees to 1e-6, tests/inference/test_predict.py)")
    if ours is not None:
        for name in ("monai slide, its defaults", "ours slide, channels_last", "ours slide, bf16-mixed"):
            if name in by:
                ratio = statistics.median(by[name].times) / statistics.median(ours.times)
                print(f"- ours slide (float32, contiguous) vs {name}: {ratio:.2f}x its speed (median)")
    if "ours whole" in by and ours is not None:
        ratio = statistics.median(ours.times) / statistics.median(by["ours whole"].times)
        print(f"- slide / whole time: {ratio:.2f}x ({tiles * tiles} tiles of {t}^2 = "
              f"{tiles * tiles * t * t / args.size**2:.2f}x the pixels)")
    a = network_peak(net, b, t, device)
    print(f"- A(B={b}, T={t}), the Unet's own peak for one batch of tiles: {_mib(a)} MiB\n", flush=True)
    return a


def part_b(args: argparse.Namespace, device: torch.device, unet_peak: int | None) -> None:
    n, c_in, k, size, t, b = 1, 3, args.classes, args.big, args.tile, args.batch_size
    torch.manual_seed(0)
    net = nn.Conv2d(c_in, k, 1).to(device).eval()
    x = torch.randn(n, c_in, size, size, device=device)
    config = InferenceConfig(mode="slide", tile=t, overlap=args.overlap, blend="gaussian", batch_size=b)

    cases = [
        Case("ours slide float32", lambda image: predict_probabilities(
            net, image, config, activation="softmax")),
        Case("ours slide float16", lambda image: predict_probabilities(
            net, image, config, activation="softmax", accumulate_dtype=torch.float16)),
        Case("monai slide", monai_slide(net, t, args.overlap, b)),
    ]  # fmt: skip
    transients = 4 * b * (c_in + 3 * k) * t * t
    print(f"## (b) {size}x{size} image in slide mode (tile {t}, overlap {args.overlap}, gaussian, batch "
          f"{b}), 1x1-conv stand-in network, {k} classes; input {_mib(x.numel() * 4)} MiB (not counted)\n",
          flush=True)  # fmt: skip
    run_cases(cases, x, 0, device)
    lines = ["| case | peak MiB | bound MiB (b·N·K·H·W + 4·B·(C_in+3K)·T²) | peak / bound | s |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for case in cases:
        if case.error:
            lines.append(f"| {case.name} | failed: {case.error} | | | |")
            continue
        peak = case.peak
        if case.name.startswith("ours"):
            bytes_per = 2 if "float16" in case.name else 4
            bound = bytes_per * n * k * size * size + transients
            ratio = "n/a" if peak is None else f"{peak / bound:.3f}"
            lines.append(f"| {case.name} | {_mib(peak)} | {_mib(bound)} | {ratio} | {case.profiled_s:.1f} |")
        else:
            lines.append(f"| {case.name} | {_mib(peak)} | (K+1)·N·H·W·4 = {_mib(4 * (k + 1) * size * size)} "
                         f"+ tiles | | {case.profiled_s:.1f} |")  # fmt: skip
    print("\n".join(lines) + "\n")
    by = {case.name: case for case in cases if not case.error}
    if "ours slide float32" in by and "monai slide" in by:
        ours_s, monai_s = by["ours slide float32"].profiled_s, by["monai slide"].profiled_s
        print(f"- engine time, the network being a 1x1 conv (one profiled pass each): ours {ours_s:.1f} s, "
              f"MONAI {monai_s:.1f} s ({monai_s / ours_s:.2f}x)")
    acc = 4 * n * k * size * size
    if unet_peak is not None:
        print(f"- bound with the Unet of (a): {_mib(acc)} (accumulator) + {_mib(transients)} (tiles) + "
              f"{_mib(unet_peak)} (A) = {_mib(acc + transients + unet_peak)} MiB in float32, "
              f"{_mib(acc // 2 + transients + unet_peak)} MiB with float16 accumulation")  # fmt: skip
    print(f"- with a CUDA network and the accumulator on the CPU (the rule when 4·N·K·H·W exceeds half the "
          f"free device memory), the device holds only the tiles: {_mib(transients)} MiB + A\n", flush=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} CPUs{load}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="1024^2 image, 4096^2 big image, 1 round (about 1-2 minutes on 2 cores)")
    p.add_argument("--size", type=int, default=None, help="(a) image side (default 2048; --quick 1024)")
    p.add_argument("--big", type=int, default=None, help="(b) image side (default 8192; --quick 4096)")
    p.add_argument("--no-big", action="store_true", help="skip (b)")
    p.add_argument("--tile", type=int, default=256, help="tile side, a multiple of 32 (default 256)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap (default 0.25)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass (default 4)")
    p.add_argument("--classes", type=int, default=12, help="network outputs (default 12)")
    p.add_argument("--encoder", default="resnet18", help="smp encoder of the Unet (default resnet18)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds of (a) (default 2; --quick 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--formats", action="store_true", help="(a) also channels_last and bf16-mixed")
    args = p.parse_args(argv)
    args.size = args.size or (1024 if args.quick else 2048)
    args.big = args.big or (4096 if args.quick else 8192)
    args.repeats = args.repeats or (1 if args.quick else 2)
    if args.repeats < 1 or args.tile % 32 or args.tile < 32:
        p.error("--repeats must be >= 1 and --tile a positive multiple of 32")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # peers' deprecation chatter would interleave with the tables
    try:
        import monai

        monai_version = monai.__version__
    except ImportError:
        monai_version = "not installed"
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {machine()}; torch {torch.__version__}, MONAI "
          f"{monai_version}, device {device}, threads {torch.get_num_threads()}, {args.repeats} round(s)"
          "\n")
    start = time.perf_counter()
    unet_peak = part_a(args, device)
    if not args.no_big:
        part_b(args, device, unet_peak)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
