"""CPU time per image of the spatial metric families of ``evaluation``: objects found
(``evaluation.objects``), boundaries (``evaluation.boundaries``: BIoU, HD95, ASSD, NSD at once) and clDice
(``evaluation.topology``).

Usage::

    python benchmarks/bench_metrics.py [--size 512] [--classes 12] [--images 4] [--repeats 5] [--threads 1]

Data: ``--images`` synthetic ``--size`` x ``--size`` class-id maps with ``--classes`` classes, "realistic
random blobs": the target is the argmax over classes of Gaussian-smoothed noise (sigma 6 to 40 pixels, so
some classes form many small objects and some few large regions) with a random bias per class (some
classes rare); the prediction is the argmax of the same fields plus smoothed noise (boundaries move,
small objects appear, vanish, split and merge). Every family scores every class of every image
(``evaluation.masks.class_masks``); time: the median over ``--repeats`` rounds of the whole set, divided
by the number of images; ``cv2.setNumThreads(--threads)`` (1: one evaluation process per core).

Measured (``python benchmarks/bench_metrics.py``, defaults, under ``nice``; ``lscpu``: "Model name: AMD
EPYC", 2 cores shared with other jobs (load average 2.6 while it ran), 2026-12-03)::

    4 images 512x512, 12 classes, 418 target and 761 predicted objects per image; cv2 threads 1, median of 5
    objects         63.5 ms/image  (min 62.8)
    boundaries     200.4 ms/image  (min 186.7)
    clDice         279.5 ms/image  (min 240.6)

Boundaries: two exact distance transforms and four erosions per class; clDice: Zhang-Suen thinning of both
masks (``skimage``), on the bounding box of each mask only; objects: two labellings per class.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from evaluation.boundaries import boundary_scores  # noqa: E402
from evaluation.masks import class_masks  # noqa: E402
from evaluation.objects import object_counts  # noqa: E402
from evaluation.topology import cldice_scores  # noqa: E402


def synthetic_pair(rng: np.random.Generator, size: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(target, prediction) (size, size) int64 class-id maps of random blobs (module docstring)."""
    sigmas = np.geomspace(6, 40, classes)
    fields = np.stack([ndimage.gaussian_filter(rng.standard_normal((size, size)), s) * s for s in sigmas])
    fields /= fields.std(axis=(1, 2), keepdims=True)
    fields += rng.normal(0, 0.5, (classes, 1, 1))
    noise = np.stack([ndimage.gaussian_filter(rng.standard_normal((size, size)), 4) * 4 for _ in sigmas])
    noise /= noise.std(axis=(1, 2), keepdims=True)
    return fields.argmax(0), (fields + 0.3 * noise).argmax(0)


def time_family(score: Callable, pairs: list[tuple[np.ndarray, np.ndarray]], classes: int,
                repeats: int) -> list[float]:
    """Seconds per round of scoring every class of every pair."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for target, pred in pairs:
            for p, t, v in class_masks(pred, target, classes):
                score(p, t, v)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=12)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(0)
    pairs = [synthetic_pair(rng, args.size, args.classes) for _ in range(args.images)]
    objects = [object_counts(*m) for t, p in pairs for m in class_masks(p, t, args.classes)]
    gt, pred = sum(c.gt for c in objects) / len(pairs), sum(c.pred for c in objects) / len(pairs)
    print(f"{args.images} images {args.size}x{args.size}, {args.classes} classes, {gt:.0f} target and "
          f"{pred:.0f} predicted objects per image; cv2 threads {args.threads}, median of {args.repeats}")
    families = {"objects": object_counts, "boundaries": boundary_scores, "clDice": cldice_scores}
    for name, score in families.items():
        times = time_family(score, pairs, args.classes, args.repeats)
        per_image = statistics.median(times) / len(pairs) * 1e3
        print(f"{name:<11} {per_image:8.1f} ms/image  (min {min(times) / len(pairs) * 1e3:.1f})")


if __name__ == "__main__":
    main()
