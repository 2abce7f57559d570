"""Speed and peak memory of our losses against smp, MONAI and ``F.cross_entropy``.

Usage::

    python benchmarks/bench_losses.py [--sizes 4,12,256,256 8,12,512,512] [--repeats 7] [--budget 1.5]
                                      [--threads 2] [--device cpu|cuda] [--groups lovasz tversky ...]

Every case is multiclass with index targets (N, H, W), logits (N, C, H, W) in float32, gamma = 2, mean
reduction, and is timed as ``loss = fn(logits, target); loss.backward()`` in one process. ``--groups``
runs a subset of the groups (focal, dice, focal+dice, tversky, focal tversky, lovasz, generalized dice,
ohem ce, topk ce); ``F.cross_entropy`` always runs.

Time: median (and minimum) wall time of forward+backward over ``--repeats`` rounds, after the
memory-measuring pass of every case (which doubles as the warm-up). Each round runs every case once
(round-robin), so load from other processes on a shared machine hits all cases alike; timing stops early
(after at least 3 rounds) once ``--budget`` seconds per case have passed in total. CUDA is synchronised
around every pass.

Peak memory: the extra memory allocated during one forward+backward pass, above what was allocated
before it (the logits, the targets and the loss modules are allocated before; ``logits.grad`` is
reset to ``None`` so the gradient, one input size, is counted for every case alike).
- CPU: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free of the CPU
  allocator together with the running total of bytes allocated since profiling started; the peak is
  the largest running total. This reads the profiler's event tree
  (``prof.profiler.kineto_results.experimental_event_tree()``, allocation events), an experimental
  API; the script says "n/a" if it yields no allocation events.
- CUDA: ``torch.cuda.max_memory_allocated()`` minus ``torch.cuda.memory_allocated()`` before the pass.
The column "x input" is the peak divided by the size of the logits in bytes.

"ours focal+dice" is ``CombinedLoss`` with its shared-softmax fast path (the default);
"ours focal+dice unfused" calls the two terms one after the other (``fused=False``).

Peers: ``segmentation_models_pytorch.losses`` FocalLoss and DiceLoss (mode="multiclass"), their sum;
``monai.losses`` FocalLoss(use_softmax=True, to_onehot_y=True), DiceLoss(softmax=True,
to_onehot_y=True) and DiceFocalLoss(softmax=True, to_onehot_y=True) (targets (N, 1, H, W)).
Tversky (alpha = beta = 0.5; focal Tversky alpha 0.3, beta 0.7, gamma 0.75): smp TverskyLoss, MONAI
TverskyLoss(softmax=True, to_onehot_y=True, batch=True) (no focal exponent in MONAI). Lovász: smp LovaszLoss;
floor "F.cross_entropy + one sort" is the cross-entropy plus ``torch.sort`` of a (C, N*H*W) tensor, the sort
that one pass of the Lovász-softmax needs. Generalized Dice: MONAI GeneralizedDiceLoss(softmax=True,
to_onehot_y=True, batch=True). OHEM and top-k (no peer installed: mmsegmentation, nnU-Net) against plain
torch formulations of what those projects do: per-pixel ``F.cross_entropy`` with a full sort of the pixels
(mmsegmentation's OHEM pixel sampler sorts) and with ``torch.topk`` (nnU-Net's TopKLoss).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from memory import peak_bytes, sync
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]

TARGET_VS_MONAI = 1.5
TARGET_VS_SMP = 3.0
STRETCH_VS_CE = 2.0
# The losses of issue 12: at least this much faster than the faster peer, with no more peak memory.
TARGET_VS_FASTER_PEER = 2.0
# Lovász: within this factor of "F.cross_entropy + one sort".
TARGET_LOVASZ_VS_FLOOR = 3.0
NEW_GROUPS = ("tversky", "focal tversky", "lovasz", "generalized dice", "ohem ce", "topk ce")
GROUPS = ("focal", "dice", "focal+dice", *NEW_GROUPS)
FOCAL_TVERSKY = {"alpha": 0.3, "beta": 0.7, "gamma": 0.75}  # Abraham & Khan


@dataclass
class Result:
    name: str
    group: str  # one of GROUPS, or "floor" (F.cross_entropy)
    owner: str  # "ours", "ours-unfused", "smp", "monai" or "torch" (a floor or a plain torch baseline)
    ms: float | None = None
    min_ms: float | None = None
    repeats: int = 0
    peak_bytes: int | None = None
    error: str | None = None


def build_cases(num_classes: int) -> list[tuple[str, str, str, Callable[[], LossFn]]]:
    """(name, group, owner, factory) for every case; factories import lazily so a missing peer is skipped."""

    def ce() -> LossFn:
        return F.cross_entropy

    def ours_focal() -> LossFn:
        from seglosses.focal import FocalLoss

        return FocalLoss(mode="multiclass", gamma=2.0)

    def ours_dice() -> LossFn:
        from seglosses.dice import DiceLoss

        return DiceLoss(mode="multiclass")

    def ours_focal_dice(fused: bool = True) -> LossFn:
        from seglosses.combined import CombinedLoss
        from seglosses.dice import DiceLoss
        from seglosses.focal import FocalLoss

        terms = {"focal": FocalLoss(mode="multiclass", gamma=2.0), "dice": DiceLoss(mode="multiclass")}
        return CombinedLoss(terms, fused=fused)

    def smp_focal() -> LossFn:
        from segmentation_models_pytorch.losses import FocalLoss

        return FocalLoss(mode="multiclass", gamma=2.0)

    def smp_dice() -> LossFn:
        from segmentation_models_pytorch.losses import DiceLoss

        return DiceLoss(mode="multiclass")

    def smp_focal_dice() -> LossFn:
        focal, dice = smp_focal(), smp_dice()
        return lambda x, y: focal(x, y) + dice(x, y)

    def monai(loss: torch.nn.Module) -> LossFn:
        return lambda x, y: loss(x, y.unsqueeze(1))

    def monai_focal() -> LossFn:
        from monai.losses import FocalLoss

        return monai(FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0))

    def monai_dice() -> LossFn:
        from monai.losses import DiceLoss

        return monai(DiceLoss(softmax=True, to_onehot_y=True))

    def monai_dice_focal() -> LossFn:
        from monai.losses import DiceFocalLoss

        return monai(DiceFocalLoss(softmax=True, to_onehot_y=True, gamma=2.0))

    def ours_tversky(**kwargs: float) -> LossFn:
        from seglosses.tversky import TverskyLoss

        return TverskyLoss(mode="multiclass", **kwargs)

    def smp_tversky(**kwargs: float) -> LossFn:
        from segmentation_models_pytorch.losses import TverskyLoss

        return TverskyLoss(mode="multiclass", **kwargs)

    def monai_tversky() -> LossFn:
        from monai.losses import TverskyLoss

        return monai(TverskyLoss(softmax=True, to_onehot_y=True, batch=True))

    def ours_lovasz() -> LossFn:
        from seglosses.lovasz import LovaszLoss

        return LovaszLoss(mode="multiclass")

    def smp_lovasz() -> LossFn:
        from segmentation_models_pytorch.losses import LovaszLoss

        return LovaszLoss(mode="multiclass")

    def ce_and_sort() -> LossFn:
        def fn(x: Tensor, y: Tensor) -> Tensor:
            torch.sort(x.detach().transpose(0, 1).reshape(x.shape[1], -1), dim=1, descending=True)
            return F.cross_entropy(x, y)

        return fn

    def ours_gdl() -> LossFn:
        from seglosses.generalized_dice import GeneralizedDiceLoss

        return GeneralizedDiceLoss(mode="multiclass")

    def monai_gdl() -> LossFn:
        from monai.losses import GeneralizedDiceLoss

        return monai(GeneralizedDiceLoss(softmax=True, to_onehot_y=True, batch=True))

    def ours_ohem() -> LossFn:
        from seglosses.mining import OhemCrossEntropyLoss

        return OhemCrossEntropyLoss(mode="multiclass", thresh=0.7, min_kept=100000)

    def sorted_ohem(x: Tensor, y: Tensor, thresh: float = 0.7, min_kept: int = 100000) -> Tensor:
        """OHEM as a full sort of the ground-truth probabilities (mmsegmentation's sampler)."""
        ce = F.cross_entropy(x, y, reduction="none").flatten()
        with torch.no_grad():
            prob = torch.exp(-ce)
            ordered = prob.sort().values
            cut = max(float(ordered[min(min_kept * x.shape[0], ordered.numel() - 1)]), thresh)
            kept = (prob < cut).to(ce.dtype)
        return (ce * kept).sum() / kept.sum().clamp_min(1)

    def ours_topk() -> LossFn:
        from seglosses.mining import TopKCrossEntropyLoss

        return TopKCrossEntropyLoss(mode="multiclass", k=0.1)

    def torch_topk(x: Tensor, y: Tensor, k: float = 0.1) -> Tensor:
        """Top-k with torch.topk (nnU-Net's TopKLoss)."""
        ce = F.cross_entropy(x, y, reduction="none").flatten()
        return ce.topk(max(1, int(ce.numel() * k)), sorted=False).values.mean()

    return [
        ("F.cross_entropy", "floor", "torch", ce),
        ("ours focal", "focal", "ours", ours_focal),
        ("smp focal", "focal", "smp", smp_focal),
        ("monai focal", "focal", "monai", monai_focal),
        ("ours dice", "dice", "ours", ours_dice),
        ("smp dice", "dice", "smp", smp_dice),
        ("monai dice", "dice", "monai", monai_dice),
        ("ours focal+dice", "focal+dice", "ours", ours_focal_dice),
        ("ours focal+dice unfused", "focal+dice", "ours-unfused", lambda: ours_focal_dice(fused=False)),
        ("smp focal+dice", "focal+dice", "smp", smp_focal_dice),
        ("monai DiceFocal", "focal+dice", "monai", monai_dice_focal),
        ("ours tversky", "tversky", "ours", ours_tversky),
        ("smp tversky", "tversky", "smp", smp_tversky),
        ("monai tversky", "tversky", "monai", monai_tversky),
        ("ours focal tversky", "focal tversky", "ours", lambda: ours_tversky(**FOCAL_TVERSKY)),
        ("smp focal tversky", "focal tversky", "smp", lambda: smp_tversky(**FOCAL_TVERSKY)),
        ("F.cross_entropy + one sort", "lovasz", "torch", ce_and_sort),
        ("ours lovasz", "lovasz", "ours", ours_lovasz),
        ("smp lovasz", "lovasz", "smp", smp_lovasz),
        ("ours generalized dice", "generalized dice", "ours", ours_gdl),
        ("monai generalized dice", "generalized dice", "monai", monai_gdl),
        ("ours ohem ce", "ohem ce", "ours", ours_ohem),
        ("torch CE + full sort (as mmseg)", "ohem ce", "torch", lambda: sorted_ohem),
        ("ours topk ce", "topk ce", "ours", ours_topk),
        ("torch CE + topk (as nnU-Net)", "topk ce", "torch", lambda: torch_topk),
    ]


def step(fn: LossFn, x: Tensor, y: Tensor) -> None:
    x.grad = None
    fn(x, y).backward()


def time_cases(
    fns: dict[str, LossFn], x: Tensor, y: Tensor, repeats: int, budget_s: float
) -> dict[str, list[float]]:
    """Milliseconds of forward+backward per case, timed round-robin (one pass of every case per round) so
    that load from other processes hits every case alike; stops after ``repeats`` rounds, or after 3
    rounds once ``budget_s`` seconds have passed. The cases must have run once before (warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for round_ in range(repeats):
        if round_ >= 3 and time.perf_counter() - start > budget_s:
            break
        for name, fn in fns.items():
            sync(x.device)
            t0 = time.perf_counter()
            step(fn, x, y)
            sync(x.device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def peak_memory(fn: LossFn, x: Tensor, y: Tensor) -> int | None:
    """Bytes allocated during one forward+backward above the allocation level before it."""
    x.grad = None
    return peak_bytes(lambda: step(fn, x, y), x.device)[0]


def run_size(size: tuple[int, ...], args: argparse.Namespace, device: torch.device) -> list[Result]:
    n, c, *spatial = size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(size, generator=g).to(device).requires_grad_(True)
    y = torch.randint(0, c, (n, *spatial), generator=g).to(device)
    results: dict[str, Result] = {}
    fns: dict[str, LossFn] = {}
    for name, group, owner, factory in build_cases(c):
        if group != "floor" and group not in args.groups:
            continue
        r = results[name] = Result(name, group, owner)
        try:
            fn = factory()
            if isinstance(fn, torch.nn.Module):
                fn = fn.to(device)
            r.peak_bytes = peak_memory(fn, x, y)  # also checks that the case runs
            fns[name] = fn
        except Exception as e:  # a peer that is missing or fails is reported, not fatal
            r.error = f"{type(e).__name__}: {e}".splitlines()[0][:100]
            print(f"  {name}: {r.error}", file=sys.stderr, flush=True)
    for name, times in time_cases(fns, x, y, args.repeats, args.budget * len(fns)).items():
        r = results[name]
        r.ms, r.min_ms, r.repeats = statistics.median(times), min(times), len(times)
    return list(results.values())


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def table(size: tuple[int, ...], results: list[Result]) -> str:
    input_bytes = 4 * torch.Size(size).numel()
    lines = [
        f"### {tuple(size)} float32, input {input_bytes / 2**20:.1f} MiB",
        "",
        "| loss | median ms (fwd+bwd) | min ms | runs | peak MiB | x input | time / F.cross_entropy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ce = next(r for r in results if r.group == "floor")
    for r in results:
        if r.error:
            lines.append(f"| {r.name} | failed: {r.error} | | | | | |")
            continue
        x_input = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / input_bytes:.1f}"
        lines.append(
            f"| {r.name} | {r.ms:.1f} | {r.min_ms:.1f} | {r.repeats} | {_mib(r.peak_bytes)} | {x_input} "
            f"| {_ratio(r.ms, ce.ms)} |"
        )
    lines += [
        "",
        "| ours vs peer | speed-up (peer time / ours) | memory (peer peak / ours) |",
        "|---|---:|---:|",
    ]
    by = {(r.group, r.owner): r for r in results if not r.error}
    for group in GROUPS:
        ours = by.get((group, "ours"))
        for owner in ("ours-unfused", "torch", "smp", "monai"):
            peer = by.get((group, owner))
            if ours is None or peer is None:
                continue
            lines.append(
                f"| {ours.name} vs {peer.name} | {_ratio(peer.ms, ours.ms)} | "
                f"{_ratio(peer.peak_bytes, ours.peak_bytes)} |"
            )
    ours = by.get(("focal+dice", "ours"))
    if ours is not None:
        lines.append("")
        checks = [
            ("monai", TARGET_VS_MONAI, "target"),
            ("smp", TARGET_VS_SMP, "target"),
        ]
        for owner, factor, kind in checks:
            peer = by.get(("focal+dice", owner))
            if peer is None:
                continue
            fast = peer.ms / ours.ms >= factor
            lean = None if None in (peer.peak_bytes, ours.peak_bytes) else ours.peak_bytes < peer.peak_bytes
            verdict = "met" if fast and lean is not False else "MISSED"
            lines.append(
                f"- {kind}: ours focal+dice >= {factor}x faster than {peer.name} with less peak memory: "
                f"{verdict} ({peer.ms / ours.ms:.2f}x, memory {_ratio(peer.peak_bytes, ours.peak_bytes)})"
            )
        if ce.ms is not None:
            within = ours.ms <= STRETCH_VS_CE * ce.ms
            lines.append(
                f"- stretch: within {STRETCH_VS_CE}x of F.cross_entropy: {'met' if within else 'missed'} "
                f"({ours.ms / ce.ms:.2f}x)"
            )
    lines += _new_loss_targets(by)
    return "\n".join(lines)


def _new_loss_targets(by: dict[tuple[str, str], Result]) -> list[str]:
    """The verdicts of the losses of issue 12: >= TARGET_VS_FASTER_PEER x faster than the faster peer with no
    more peak memory; the Lovász loss within TARGET_LOVASZ_VS_FLOOR x of "F.cross_entropy + one sort"."""
    lines: list[str] = []
    for group in NEW_GROUPS:
        ours = by.get((group, "ours"))
        peers = [by[(group, owner)] for owner in ("smp", "monai") if (group, owner) in by]
        if ours is None or not peers:
            continue
        peer = min(peers, key=lambda r: r.ms)
        fast = peer.ms / ours.ms >= TARGET_VS_FASTER_PEER
        lean = None if None in (peer.peak_bytes, ours.peak_bytes) else ours.peak_bytes <= peer.peak_bytes
        verdict = "met" if fast and lean is not False else "MISSED"
        lines.append(
            f"- target: {ours.name} >= {TARGET_VS_FASTER_PEER}x faster than the faster peer ({peer.name}) "
            f"with no more peak memory: {verdict} ({peer.ms / ours.ms:.2f}x, memory "
            f"{_ratio(peer.peak_bytes, ours.peak_bytes)})"
        )
    ours, floor = by.get(("lovasz", "ours")), by.get(("lovasz", "torch"))
    if ours is not None and floor is not None:
        within = ours.ms <= TARGET_LOVASZ_VS_FLOOR * floor.ms
        lines.append(
            f"- target: ours lovasz within {TARGET_LOVASZ_VS_FLOOR}x of {floor.name}: "
            f"{'met' if within else 'MISSED'} ({ours.ms / floor.ms:.2f}x)"
        )
    return ["", *lines] if lines else []


def parse_size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N,C,H,W (comma-separated), got {text!r}") from None
    if len(size) < 3 or min(size) < 1 or size[1] < 2:
        raise argparse.ArgumentTypeError(f"size must be N,C,*spatial with C >= 2 and all >= 1, got {text!r}")
    return size


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(4, 12, 256, 256), (8, 12, 512, 512)],
                   help="N,C,H,W (default: 4,12,256,256 8,12,512,512)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    p.add_argument("--budget", type=float, default=1.5,
                   help="seconds per case after which timing stops at >= 3 rounds (default 1.5)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS, metavar="GROUP",
                   help=f"groups to run (default all: {', '.join(GROUPS)})")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # peers' deprecation chatter would interleave with the table

    load = ""
    if hasattr(os, "getloadavg"):  # timings on a loaded machine are not comparable with quiet ones
        load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"median of up to {args.repeats} rounds{load}\n")
    for size in args.sizes:
        print(f"running {size} ...", file=sys.stderr, flush=True)
        results = run_size(size, args, device)
        print(table(size, results) + "\n", flush=True)


if __name__ == "__main__":
    main()
