"""Data pipeline benchmark on CamVid: training-pipeline throughput and the label-statistics pass.

    python benchmarks/bench_data.py [--root ../shared/data/camvid] [--batches 20] [--workers 0 2]

Reports images/s of the training DataLoader (read PNGs, scale/crop/flip/jitter/normalise, collate) for each
worker count (the first batch, which includes worker start-up, is timed separately), the time of the
statistics pass over the 367 training masks: cold (no cache) and cached (second call), and the time of the
pre-flight check of all 701 image/mask pairs (train, val, test): cold and cached, with DataLoader worker
processes (the default) and with worker threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO_ROOT.parent / "shared" / "data" / "camvid"


def build_datamodule(root: Path, num_workers: int, batch_size: int):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            overrides=[
                "+datamodule=camvid",
                f"datamodule.root={root}",
                f"datamodule.num_workers={num_workers}",
                f"datamodule.batch_size={batch_size}",
                "datamodule.progress=false",
            ]
        )
    return instantiate(cfg.datamodule)


def bench_loader(root: Path, num_workers: int, batches: int, batch_size: int) -> dict:
    dm = build_datamodule(root, num_workers, batch_size)
    dm.setup("fit")
    t0 = time.perf_counter()
    it = iter(dm.train_dataloader())
    next(it)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = 0
    for _ in range(batches):
        batch = next(it)
        n += batch["image"].shape[0]
    dt = time.perf_counter() - t1
    del it
    return {
        "num_workers": num_workers,
        "images": n,
        "seconds": dt,
        "images_per_s": n / dt,
        "first_batch_s": first,
        "batch_shape": list(batch["image"].shape),
    }


def bench_statistics(root: Path, num_workers: int) -> dict:
    dm, dm2 = build_datamodule(root, num_workers, 8), build_datamodule(root, num_workers, 8)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        cold = dm.label_statistics(cache_dir=cache)
        t1 = time.perf_counter()
        cached = dm2.label_statistics(cache_dir=cache)  # a fresh datamodule: pairs + stat() + cache read
        t2 = time.perf_counter()
    assert cold == cached
    return {
        "num_workers": num_workers,
        "cold_s": t1 - t0,
        "cached_s": t2 - t1,
        "masks": cold.num_images,
        "total_pixels": cold.total_pixels,
    }


def bench_preflight(root: Path, num_workers: int, backend: str) -> dict:
    from datamodules.preflight import run_preflight

    dm, dm2 = build_datamodule(root, num_workers, 8), build_datamodule(root, num_workers, 8)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        plans = dm.preflight_plans()
        cold = run_preflight(
            plans, source="camvid", cache_dir=cache, num_workers=num_workers, progress=False, backend=backend
        )
        t1 = time.perf_counter()
        cached = dm2.preflight(cache_dir=cache)  # a fresh datamodule: pairs + stat() + cache reads
        t2 = time.perf_counter()
    assert not cold.cached and cached.cached
    return {
        "num_workers": num_workers,
        "backend": backend,
        "cold_s": t1 - t0,
        "cached_s": t2 - t1,
        "samples": cold.samples,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="CamVid folder (SegNet layout)")
    p.add_argument("--batches", type=int, default=20, help="timed batches per worker setting")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if not args.root.is_dir():
        print(f"CamVid not found at {args.root}; pass --root PATH", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", category=UserWarning)
    import torch

    results: dict = {
        "root": str(args.root),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loader": [],
        "statistics": [],
        "preflight": [],
    }
    for w in args.workers:
        r = bench_loader(args.root, w, args.batches, args.batch_size)
        results["loader"].append(r)
        print(
            f"train pipeline, num_workers={w}: {r['images_per_s']:.1f} images/s "
            f"({r['images']} images in {r['seconds']:.2f} s, batch {r['batch_shape']}; "
            f"first batch {r['first_batch_s']:.2f} s)"
        )
    for w in args.workers:
        s = bench_statistics(args.root, w)
        results["statistics"].append(s)
        print(
            f"label statistics, num_workers={w}: cold {s['cold_s']:.2f} s, "
            f"cached {s['cached_s'] * 1000:.1f} ms "
            f"({s['masks']} masks, {s['total_pixels']:,} pixels)"
        )
    for w in args.workers:
        for backend in ("process", "thread") if w > 0 else ("process",):
            f = bench_preflight(args.root, w, backend)
            results["preflight"].append(f)
            kind = "in-process" if w == 0 else f"{w} {backend}{'s' if backend == 'thread' else 'es'}"
            print(
                f"pre-flight check, num_workers={w} ({kind}): cold {f['cold_s']:.2f} s, "
                f"cached {f['cached_s'] * 1000:.1f} ms ({f['samples']} image/mask pairs)"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
