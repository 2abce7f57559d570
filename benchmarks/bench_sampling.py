"""What the network sees, on CamVid: uniform sampling vs class-aware crops vs rare-class sampling (RCS).

    python benchmarks/bench_sampling.py [--out multirun/camvid_sampling] [--seeds 0 1 2]
                                        [--arms uniform crops rcs] [--loss focal_dice]
                                        [--class-weights none] [--reuse] [-- EXTRA_OVERRIDES ...]

Every arm is one sweep of ``python train.py -m experiment=camvid_study`` (120x160, 10 epochs, U-Net
ResNet-18/3 stages, 2 CPU cores: about 6 minutes a run) over ``--seeds``, with the same loss, class weights,
budget and seeds; only the sampling differs:

- ``uniform``: a shuffled pass over the training images, random crops (the default);
- ``crops``: ``datamodule.crop_focus.p=0.33``, a third of the crops centred on a pixel of a class drawn by
  inverse pixel frequency (nnU-Net's foreground share);
- ``rcs``: ``datamodule.sampling=rcs``, DAFormer's rare-class sampling (T = 0.01), random crops.

The pipeline is ``resize_scale_crop_flip_jitter`` (resize to 120x160, random scale 0.75-1.5, crop 120x160):
a crop is a proper part of the image whenever the scale exceeds 1, so a focused crop can change what is
seen. Sweep directories: ``<out>/<arm>``; ``--reuse`` skips an arm whose sweep has a finished job for every
seed. At the end: a table of test mIoU and the test IoU of the four rarest CamVid classes (Pole,
SignSymbol, Pedestrian, Bicyclist), mean ± sample std over the seeds (n each), printed as markdown and
written to ``<out>/sampling_summary.csv``.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from evaluation.sweeps import collect_by_config  # noqa: E402

ARMS: dict[str, list[str]] = {
    "uniform": [],
    "crops": ["datamodule.crop_focus.p=0.33"],
    "rcs": ["datamodule.sampling=rcs"],
}
RARE = ("Pole", "SignSymbol", "Pedestrian", "Bicyclist")
COLUMNS = ("test_mIoU", *(f"test_IoU/{name}" for name in RARE), "val_mIoU")


def finished_seeds(sweep_dir: Path) -> set[str]:
    if not sweep_dir.is_dir():
        return set()
    rows = collect_by_config(sweep_dir)
    return {seed for row in rows for seed in str(row.get("seeds") or "").split()}


def run_arm(arm: str, args: argparse.Namespace, extra: list[str]) -> float:
    sweep_dir = Path(args.out) / arm
    if args.reuse and {str(s) for s in args.seeds} <= finished_seeds(sweep_dir):
        print(f"[{arm}] reusing {sweep_dir}", flush=True)
        return 0.0
    command = [
        sys.executable, "train.py", "-m", "experiment=camvid_study", f"loss={args.loss}",
        f"class_weights={args.class_weights}", "seed=" + ",".join(str(s) for s in args.seeds),
        *ARMS[arm], *extra, f"hydra.sweep.dir={sweep_dir.resolve()}",
    ]  # fmt: skip
    print(f"[{arm}] {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    return time.perf_counter() - start


def arm_row(arm: str, sweep_dir: Path) -> dict[str, Any]:
    rows = collect_by_config(sweep_dir)
    if len(rows) != 1:
        raise RuntimeError(f"{sweep_dir}: expected one configuration (only seeds swept), got {len(rows)}")
    row = rows[0]
    out: dict[str, Any] = {"arm": arm, "overrides": " ".join(ARMS[arm]) or "-", "n": row["n"],
                           "seeds": row["seeds"]}
    for column in (*COLUMNS, "wall_time_s"):
        for stat in ("mean", "std", "n"):
            out[f"{column}_{stat}"] = row.get(f"{column}_{stat}")
    return out


def cell(row: dict[str, Any], column: str) -> str:
    mean, std = row.get(f"{column}_mean"), row.get(f"{column}_std")
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def main() -> None:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="multirun/camvid_sampling", help="root of the arms' sweep directories")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--loss", default="focal_dice")
    p.add_argument("--class-weights", default="none")
    p.add_argument("--reuse", action="store_true", help="skip arms whose seeds all finished already")
    args = p.parse_args(argv)

    for arm in args.arms:
        seconds = run_arm(arm, args, extra)
        if seconds:
            print(f"[{arm}] {seconds / 60:.1f} min", flush=True)
    rows = [arm_row(arm, Path(args.out) / arm) for arm in args.arms]

    path = Path(args.out) / "sampling_summary.csv"
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nloss={args.loss} class_weights={args.class_weights}, experiment=camvid_study; "
          "test IoU in %, mean ± sample std over the seeds\n")
    print("| sampling | overrides | n | test mIoU | " + " | ".join(RARE) + " | val mIoU | min / run |")
    print("|---|---|---:|" + "---:|" * (len(COLUMNS) + 1))
    for row in rows:
        minutes = row["wall_time_s_mean"]
        per_run = "n/a" if minutes is None else f"{minutes / 60:.1f}"
        cells = " | ".join(cell(row, c) for c in COLUMNS)
        print(f"| {row['arm']} | {row['overrides']} | {row['n']} | {cells} | {per_run} |")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
