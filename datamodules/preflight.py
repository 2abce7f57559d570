"""Pre-flight check: one parallel pass over every split before training, cached on disk.

Every image and mask of train, val and test is read with the readers training uses
(:func:`datamodules.io.read_image`, :func:`datamodules.io.read_mask`, :meth:`LabelSpec.prepare`), so the
rules live in one place: a file must decode fully (a truncated file fails), be of a supported PIL mode
(8-bit images; 16-bit or float TIFF images are refused), its mask values must be labels or ignore_index
after ``value_map``, and image and mask must have the same size. Splits that are empty, unpaired or not
configured are reported too. All problems are collected and raised together in one
:class:`PreflightError` (a ValueError), grouped by kind, with counts and a few examples each.

Caching: a split that passes is recorded under a name derived from its file list (paths, modification
times, sizes) and label encoding (:mod:`datamodules.cache`, shared with the label statistics),
so the next run only lists and ``stat()``s the files. Splits with problems are not cached.

Parallelism: ``num_workers`` DataLoader worker processes, like the label statistics pass (0: in this
process). Threads (``backend="thread"``; PIL releases the GIL while decoding) were measured too, on
CamVid (701 pairs, 2 busy cores, ``benchmarks/bench_data.py``): 2 processes took 3.7-8.6 s (median 7.7 s),
2 threads 3.4-9.7 s (median 8.7 s), so processes are the default: mask checks and array copies hold the
GIL, and processes scale with the cores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from seglosses.checks import check_bool, check_choice, check_int

from .cache import read_cached, write_cached
from .io import read_image, read_mask
from .labels import LabelSpec
from .pairing import SamplePair
from .parallel import map_in_workers
from .roi import read_roi

PREFLIGHT_VERSION = 1
SPLITS = ("train", "val", "test")
#: Examples shown per kind of problem in the error message.
EXAMPLES_PER_KIND = 3
BACKENDS = ("thread", "process")
#: Fewer samples than this are checked in-process (starting workers would cost more than it saves).
MIN_PARALLEL_SAMPLES = 16

# kinds of problems, in the order they are reported, with what to change
KIND_HINTS: dict[str, str] = {
    "split": "fix datamodule.root / datamodule.splits.<split> (folders or list file)",
    "missing file": "restore the files or drop them from datamodule.splits.<split>.list",
    "unreadable file": "truncated or corrupt: re-export the file, or leave it out of the split "
    "(datamodule.splits.<split>.list)",
    "unsupported image mode": "convert the images to 8-bit (L or RGB); datamodule.in_channels picks 1 or 3",
    "unsupported mask mode": "store masks as single-channel 8/16-bit index images",
    "invalid mask values": "check datamodule.num_classes, datamodule.ignore_index and datamodule.value_map",
    "size mismatch": "image and mask must have the same size: fix the files or the pairing "
    "(datamodule.splits.<split>, mask_suffix)",
    "other": "see the messages",
}


@dataclass(frozen=True)
class Problem:
    """One problem found: its kind (a key of :data:`KIND_HINTS`), split (filled in by the pass), file and
    the reader's message."""

    kind: str
    split: str
    path: str
    message: str


CheckFn = Callable[[Any], list[Problem]]


@dataclass
class SplitPlan:
    """What the pre-flight pass checks for one split.

    Attributes:
        split: "train", "val" or "test".
        items: one entry per sample, handed to ``check``.
        check: picklable ``check(item) -> list[Problem]`` (empty when the sample is fine; the pass sets
            each problem's split).
        key: JSON-serialisable identity of the split's data (file list, mtimes, label encoding), or None
            to never cache it.
        problems: problems found while listing the split (no samples, unpaired files, not configured).
    """

    split: str
    items: Sequence[Any]
    check: CheckFn | None
    key: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class SplitCheck:
    """Outcome for one split: samples checked, wall time in seconds, whether served from the cache."""

    split: str
    samples: int
    seconds: float
    cached: bool


@dataclass(frozen=True)
class PreflightReport:
    """What :meth:`SegDataModule.preflight` checked: one :class:`SplitCheck` per split, total seconds."""

    splits: tuple[SplitCheck, ...]
    seconds: float

    @property
    def cached(self) -> bool:
        """Whether every split was served from the cache."""
        return all(s.cached for s in self.splits)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.splits)

    def __getitem__(self, split: str) -> SplitCheck:
        for s in self.splits:
            if s.split == split:
                return s
        raise KeyError(f"no split {split!r} in the pre-flight report ({[s.split for s in self.splits]})")

    def summary(self) -> str:
        """One line, e.g. ``pre-flight: train 367, val 101, test 233 samples ok in 4.1 s``."""
        parts = ", ".join(f"{s.split} {s.samples}{' (cached)' if s.cached else ''}" for s in self.splits)
        return f"pre-flight: {parts} samples ok in {self.seconds:.2f} s"


class PreflightError(ValueError):
    """All problems found by the pre-flight pass (``problems``); the message is :func:`format_problems`."""

    def __init__(self, message: str, problems: Sequence[Problem]) -> None:
        super().__init__(message)
        self.problems = list(problems)


# -- checking one sample --------------------------------------------------------------------------------
def _classify(error: BaseException, default: str, mode_kind: str) -> str:
    if isinstance(error, FileNotFoundError):
        return "missing file"
    if "has PIL mode" in str(error):
        return mode_kind
    return default


class PairChecker:
    """Picklable check of one :class:`SamplePair` with the training readers.

    Reads the image (:func:`read_image`: full decode, mode check), the mask (:func:`read_mask`) and
    validates its values (:meth:`LabelSpec.prepare`), then compares sizes. Returns every problem of the
    pair (image and mask problems are reported separately).

    Args:
        labels: the label encoding (with ``value_map``).
        in_channels: 1 or 3, as the data set reads images.
        mask_kwargs: extra keyword arguments of :func:`read_mask`.
    """

    def __init__(
        self, labels: LabelSpec, in_channels: int, mask_kwargs: Mapping[str, Any] | None = None
    ) -> None:
        self.labels = labels
        self.in_channels = in_channels
        self.mask_kwargs = dict(mask_kwargs or {})

    def __call__(self, pair: SamplePair) -> list[Problem]:
        problems: list[Problem] = []
        image_hw = mask_hw = None
        try:
            image_hw = read_image(pair.image, self.in_channels).shape[:2]
        except Exception as e:  # every failure is reported, not only the expected ones
            kind = _classify(e, "unreadable file", "unsupported image mode")
            problems.append(Problem(kind, "", str(pair.image), _message(e, "image", pair.image)))
        try:
            raw = read_mask(pair.mask, **self.mask_kwargs)
        except Exception as e:
            kind = _classify(e, "unreadable file", "unsupported mask mode")
            problems.append(Problem(kind, "", str(pair.mask), _message(e, "mask", pair.mask)))
        else:
            try:
                mask_hw = self.labels.prepare(raw, str(pair.mask))[0].shape
            except Exception as e:
                problems.append(Problem("invalid mask values", "", str(pair.mask), str(e)))
        problems += self._region_problems(pair, mask_hw)
        if image_hw is not None and mask_hw is not None and tuple(image_hw) != tuple(mask_hw):
            (ih, iw), (mh, mw) = image_hw, mask_hw
            problems.append(
                Problem(
                    "size mismatch",
                    "",
                    str(pair.image),
                    f"size mismatch: image {pair.image} is {iw}x{ih} (WxH) but mask {pair.mask} is {mw}x{mh}",
                )
            )
        return problems


    @staticmethod
    def _region_problems(pair: SamplePair, mask_hw: tuple[int, ...] | None) -> list[Problem]:
        """A region mask (``datamodule.roi``) that cannot be read or differs in size from the mask."""
        roi = getattr(pair, "roi", None)
        if roi is None:
            return []
        try:
            roi_hw = read_roi(roi).shape
        except Exception as e:
            return [Problem("unreadable region mask", "", str(roi), _message(e, "region mask", roi))]
        if mask_hw is not None and tuple(roi_hw) != tuple(mask_hw):
            (rh, rw), (mh, mw) = roi_hw, mask_hw
            text = f"size mismatch: region mask {roi} is {rw}x{rh} (WxH) but mask {pair.mask} is {mw}x{mh}"
            return [Problem("size mismatch", "", str(roi), text)]
        return []


def _message(error: BaseException, what: str, path: Path) -> str:
    text = str(error)
    if str(path) in text:
        return text
    return f"cannot read {what} file {path}: {type(error).__name__}: {text}"


def file_identity(paths: Iterable[Path]) -> list[list[Any]] | None:
    """``[absolute path, st_mtime_ns, st_size]`` per file (a cache key part); None if a stat() fails.

    Absolute, not resolved, paths: ``resolve()`` costs ten times the ``stat()`` (a data set reached
    through another symlink only misses the cache once).
    """
    out = []
    try:
        for p in paths:
            st = p.stat()
            out.append([os.path.abspath(p), st.st_mtime_ns, st.st_size])
    except OSError:
        return None
    return out


# -- the pass ---------------------------------------------------------------------------------------------
def _call(task: tuple[CheckFn, Any]) -> list[Problem]:
    return task[0](task[1])


def _map_ordered(
    tasks: Sequence[tuple[CheckFn, Any]], num_workers: int, backend: str
) -> Iterator[list[Problem]]:
    if num_workers == 0:
        yield from map(_call, tasks)
    elif backend == "thread":
        with ThreadPoolExecutor(num_workers, thread_name_prefix="preflight") as pool:
            yield from pool.map(_call, tasks)
    else:
        yield from map_in_workers(_call, tasks, num_workers)


def run_preflight(
    plans: Sequence[SplitPlan],
    *,
    source: str,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    progress: bool = True,
    backend: str = "process",
    started: float | None = None,
) -> PreflightReport:
    """Check every plan's items in one ordered, parallel pass; raise :class:`PreflightError` on problems.

    Args:
        plans: one per split.
        source: the data set's name in messages (e.g. its root folder).
        cache_dir: where passing splits are recorded (None: no cache).
        num_workers: DataLoader worker processes (``backend="process"``) or threads (``"thread"``);
            0 checks in this thread.
        progress: show a rich progress bar.
        backend: ``"process"`` (default) or ``"thread"``.
        started: ``time.perf_counter()`` when building the plans began (counted in the report's seconds).
    """
    from rich.progress import track

    num_workers = check_int(num_workers, "datamodule.num_workers", minimum=0)
    check_bool(progress, "datamodule.progress")
    check_choice(backend, "backend", BACKENDS)
    t_start = time.perf_counter() if started is None else started
    checks: dict[str, SplitCheck] = {}
    problems: dict[str, list[Problem]] = {p.split: list(p.problems) for p in plans}
    todo: list[SplitPlan] = []
    for plan in plans:
        if plan.problems or plan.check is None:
            checks[plan.split] = SplitCheck(plan.split, 0, 0.0, False)
            continue
        t0 = time.perf_counter()
        hit = None
        if cache_dir is not None and plan.key is not None:
            hit = read_cached(cache_dir, "preflight", plan.key)
        if hit is not None and hit.get("samples") == len(plan.items):
            checks[plan.split] = SplitCheck(plan.split, len(plan.items), time.perf_counter() - t0, True)
        else:
            todo.append(plan)

    tasks = [(plan.check, item) for plan in todo for item in plan.items]
    owner = [plan for plan in todo for _ in plan.items]  # the plan of each task
    if tasks:
        results = track(
            _map_ordered(tasks, num_workers if len(tasks) >= MIN_PARALLEL_SAMPLES else 0, backend),
            description=f"pre-flight check ({source}: {', '.join(p.split for p in todo)})",
            total=len(tasks),
            disable=not progress,
            transient=True,
        )
        t_split = time.perf_counter()
        for i, found in enumerate(results):
            plan = owner[i]
            problems[plan.split].extend(replace(p, split=plan.split) for p in found)
            if i + 1 == len(tasks) or owner[i + 1] is not plan:  # the split's last sample
                now = time.perf_counter()
                checks[plan.split] = SplitCheck(plan.split, len(plan.items), now - t_split, False)
                t_split = now
                if cache_dir is not None and plan.key is not None and not problems[plan.split]:
                    write_cached(cache_dir, "preflight", plan.key, {"samples": len(plan.items)})
    for plan in todo:  # splits without items
        checks.setdefault(plan.split, SplitCheck(plan.split, 0, 0.0, False))
    found_all = [p for plan in plans for p in problems.get(plan.split, [])]
    report = PreflightReport(tuple(checks[p.split] for p in plans), time.perf_counter() - t_start)
    if found_all:
        raise PreflightError(format_problems(found_all, source, report), found_all)
    return report


def format_problems(problems: Sequence[Problem], source: str, report: PreflightReport | None = None) -> str:
    """One message for all problems: per kind a count (per split), what to change, a few examples."""
    files = {p.path for p in problems if p.path}
    splits = sorted({p.split for p in problems}, key=lambda s: (*SPLITS, s).index(s))
    lines = [
        f"pre-flight check of {source} found {len(problems)} problem(s) in {len(files)} file(s), "
        f"split(s) {', '.join(splits)}:"
    ]
    order = list(KIND_HINTS)
    by_kind: dict[str, list[Problem]] = {}
    for p in problems:
        by_kind.setdefault(p.kind if p.kind in KIND_HINTS else "other", []).append(p)
    for kind in sorted(by_kind, key=order.index):
        group = by_kind[kind]
        per_split: dict[str, int] = {}
        for p in group:
            per_split[p.split] = per_split.get(p.split, 0) + 1
        counts = ", ".join(f"{s}: {n}" for s, n in per_split.items())
        hint = KIND_HINTS[kind]
        if len(per_split) == 1:
            hint = hint.replace("<split>", next(iter(per_split)))
        lines.append(f"- {kind}: {len(group)} ({counts}); {hint}")
        for p in group[:EXAMPLES_PER_KIND]:
            lines.append(f"    [{p.split}] {p.message}")
        if len(group) > EXAMPLES_PER_KIND:
            lines.append(f"    ... and {len(group) - EXAMPLES_PER_KIND} more")
    if report is not None:
        checked = ", ".join(f"{s.split} {s.samples}" for s in report.splits)
        lines.append(f"(samples checked: {checked}; fix the data or the config and rerun)")
    return "\n".join(lines)
