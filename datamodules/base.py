"""Common part of the project's LightningDataModules: label metadata, loaders, seeding, statistics."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, default_collate, get_worker_info

from seglosses.checks import check_bool, check_choice, check_int, check_number
from seglosses.distributed import distributed_world

from .cache import default_cache_dir
from .crops import ClassFocusedCrop, check_crop_focus, install_focused_crop, inverse_frequency_probs
from .dataset import SegmentationDataset, Transform
from .labels import LabelSpec
from .preflight import PreflightReport, SplitPlan, run_preflight
from .ram_cache import CacheOptions, cache_split
from .samplers import SAMPLINGS, RareClassSampler, UnpaddedDistributedSampler
from .statistics import (
    DEFAULT_MAX_IGNORED_SHARE,
    LabelStatistics,
    cached_statistics,
    check_label_statistics,
    check_max_ignored_share,
)

log = logging.getLogger(__name__)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python, NumPy and the data set's albumentations pipeline.

    ``torch.initial_seed()`` in a worker is the loader's base seed (drawn from the loader's generator,
    itself seeded from ``datamodule.seed``) plus the worker id, so every worker augments differently
    and a run is reproducible. Without this, forked workers share one copy of the pipeline's random
    state and apply identical augmentations.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (legacy global state that third-party code may use)
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    transform = getattr(dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` with a clear error when the images of a batch differ in size."""
    sizes = {tuple(s["image"].shape) for s in samples}
    if len(sizes) > 1:
        shown = ", ".join(f"{s['name']}: {tuple(s['image'].shape[1:])}" for s in samples[:4])
        raise ValueError(
            f"images of one batch differ in size ({shown}); use a pipeline that crops/resizes to a fixed "
            "size, or datamodule.eval_batch_size=1"
        )
    return default_collate(samples)


class SegDataModule(pl.LightningDataModule):
    """Base class of :class:`~datamodules.SyntheticDataModule` and :class:`~datamodules.FolderDataModule`.

    The label metadata is stored under the config key names (``num_classes``, ``class_names``,
    ``ignore_index``, ``mode``, ``in_channels``) so that other configs interpolate
    ``${datamodule.num_classes}`` etc. Batches are dicts: ``image`` float32 (B, in_channels, H, W),
    ``mask`` int64 (B, H, W) (multilabel: (B, C, H, W) {0, 1}) with ignore_index kept, ``name`` list[str].

    Args:
        num_classes: model output channels, by the rules of :mod:`seglosses.modes` (binary: 1;
            multiclass: >= 2; multilabel: >= 1).
        class_names: one name per class (default ``class_0 ...``).
        class_colors: one (R, G, B) colour (0..255) per class, used by predicted mask palettes and
            overlays and stored in checkpoints (None: the PASCAL VOC palette; binary: the foreground's).
        ignore_index: mask value to ignore, or None.
        mode: one of :data:`seglosses.modes.MODES` (``"binary"``, ``"multiclass"``, ``"multilabel"``).
        in_channels: 1 or 3.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (None: ``batch_size``).
        num_workers: DataLoader workers (also used by the statistics pass).
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: keep the workers between epochs (``None``: whenever ``num_workers > 0``; false
            starts them anew for every epoch and every validation, seconds each on small data).
        drop_last: drop the last incomplete training batch.
        train_transform: albumentations pipeline for training (image and mask together).
        eval_transform: pipeline for validation/test (normalise, pad to a multiple of 32).
        mean, std: normalisation used by the pipelines (kept to undo it for visualisation).
        seed: seeds shuffling, worker seeds and the augmentation pipelines.
        stats_cache_dir: where label statistics are cached (None: :func:`default_cache_dir`).
        progress: show a progress bar in the statistics pass.
        allow_absent_classes: accept declared classes with no pixel in the training masks (see
            :meth:`check_label_statistics`; default False: stop the run).
        max_ignored_share: largest accepted share of ``ignore_index`` pixels among all training pixels
            (default 0.5; 1.0 accepts any).
        sampling: how training images are drawn: ``"uniform"`` (a shuffled pass) or ``"rcs"``
            (rare-class sampling, :class:`~datamodules.samplers.RareClassSampler`).
        rcs_temperature: T of rare-class sampling, P(c) proportional to exp((1 - f_c) / T).
        rcs_min_pixels: an image holds a class for rare-class sampling with at least this many pixels.
        crop_focus: ``{p, class_probs}``: with probability ``p`` a training crop is centred on a pixel of
            a class drawn with ``class_probs`` (None: inverse training-label frequency); replaces the
            RandomCrop step of ``train_transform`` (:mod:`datamodules.crops`). None or ``p: 0``: off.
        cache: ``"auto"`` | ``"ram"`` | ``"none"``: keep the decoded (and pre-resized) samples of each split
            in shared memory instead of reading them every epoch (:mod:`datamodules.ram_cache`).
        cache_max_gb: the most one split's cache may take (GiB; also at most half the available memory).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        class_colors: Sequence[Sequence[int]] | None = None,
        ignore_index: int | None = 255,
        mode: str = "multiclass",
        in_channels: int = 3,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool | None = None,
        drop_last: bool = False,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        stats_cache_dir: str | None = None,
        progress: bool = True,
        allow_absent_classes: bool = False,
        max_ignored_share: float = DEFAULT_MAX_IGNORED_SHARE,
        sampling: str = "uniform",
        rcs_temperature: float = 0.01,
        rcs_min_pixels: int = 3,
        crop_focus: Mapping[str, Any] | None = None,
        cache: str = "auto",
        cache_max_gb: float = 4.0,
    ) -> None:
        super().__init__()
        self.labels = LabelSpec(mode, num_classes, ignore_index)
        if in_channels not in (1, 3):
            raise ValueError(f"datamodule.in_channels must be 1 or 3, got {in_channels!r}")
        if class_names is None:
            class_names = [f"class_{i}" for i in range(num_classes)]
        class_names = [str(n) for n in class_names]
        if len(class_names) != num_classes:
            raise ValueError(
                f"datamodule.class_names has {len(class_names)} names but num_classes={num_classes}: "
                f"{class_names}"
            )
        self.batch_size = check_int(batch_size, "datamodule.batch_size", minimum=1)
        self.eval_batch_size = self.batch_size
        if eval_batch_size is not None:
            self.eval_batch_size = check_int(eval_batch_size, "datamodule.eval_batch_size", minimum=1)
        self.num_workers = check_int(num_workers, "datamodule.num_workers", minimum=0)
        self.num_classes = self.labels.num_classes
        self.class_names = class_names
        self.class_colors = _check_colors(class_colors, num_classes)
        self.ignore_index = self.labels.ignore_index
        self.mode = mode
        self.in_channels = in_channels
        self.pin_memory = pin_memory
        self.persistent_workers = self.num_workers > 0 if persistent_workers is None else persistent_workers
        self.drop_last = drop_last
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        self.seed = seed
        self.stats_cache_dir = stats_cache_dir
        self.progress = progress
        self.allow_absent_classes = check_bool(allow_absent_classes, "datamodule.allow_absent_classes")
        self.max_ignored_share = check_max_ignored_share(max_ignored_share)
        self.sampling = check_choice(sampling, "datamodule.sampling", SAMPLINGS)
        self.rcs_temperature = float(check_number(rcs_temperature, "datamodule.rcs_temperature",
                                                  greater_than=0))
        self.rcs_min_pixels = check_int(rcs_min_pixels, "datamodule.rcs_min_pixels", minimum=1)
        if self.sampling == "rcs" and num_classes < 2:
            raise ValueError(
                f"datamodule.sampling=rcs draws among classes and this data has num_classes={num_classes}: "
                "every image would hold the one class; use datamodule.crop_focus.p for foreground crops"
            )
        self.crop_focus = check_crop_focus(crop_focus, num_classes)
        self.focused_crop: ClassFocusedCrop | None = None
        if self.crop_focus.p > 0:
            if train_transform is None:
                raise ValueError(
                    f"datamodule.crop_focus.p={self.crop_focus.p} needs a training pipeline with a "
                    "RandomCrop step (datamodule.train_transform is null)"
                )
            self.focused_crop = install_focused_crop(
                train_transform, self.crop_focus.p, self.labels, self.crop_focus.class_probs
            )
        self.cache = CacheOptions(cache, cache_max_gb)
        self.datasets: dict[str, SegmentationDataset] = {}
        for t in (train_transform, eval_transform):
            if hasattr(t, "set_random_seed"):
                t.set_random_seed(seed)

    @property
    def training_size(self) -> list[int] | None:
        """(H, W) of the training samples the network sees (the crop of the train pipeline), the default
        inference tile; None when the data module does not know it."""
        return None

    # -- data sets --------------------------------------------------------------------------------------
    def make_dataset(self, split: str) -> SegmentationDataset:
        """The data set of ``split`` ("train", "val" or "test") with its pipeline."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build (and validate) the data sets a Lightning stage needs; None builds all three."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage or "", ("train", "val", "test")):
            self.dataset(split)

    def dataset(self, split: str) -> SegmentationDataset:
        """The data set of ``split``, built on first use."""
        if split not in self.datasets:
            dataset = self.make_dataset(split)
            cache_split(dataset, split, self.cache, num_workers=self.num_workers, progress=self.progress,
                        seed=self.seed)
            self.datasets[split] = dataset
            if split == "train" and self.focused_crop is not None and self.focused_crop.class_probs is None:
                self.focused_crop.set_class_probs(self.crop_class_probabilities())
        return self.datasets[split]

    # -- sampling ---------------------------------------------------------------------------------------
    def crop_class_probabilities(self) -> np.ndarray:
        """(C,) q_c of the focused crops: ``crop_focus.class_probs``, else the inverse pixel frequency of
        the training labels (:func:`~datamodules.crops.inverse_frequency_probs`)."""
        if self.crop_focus.class_probs is not None:
            return np.asarray(self.crop_focus.class_probs, dtype=np.float64)
        q = inverse_frequency_probs(self.label_statistics().frequencies.numpy())
        world = distributed_world()
        if world is None or world[0] == 0:
            log.info("crop_focus: p=%s, class probabilities %s", self.crop_focus.p, self._by_class(q))
        return q

    def rare_class_sampler(self, num_replicas: int = 1, rank: int = 0) -> RareClassSampler:
        """The :class:`~datamodules.samplers.RareClassSampler` of the training split (label statistics:
        frequencies and per-image presence, cached), seeded with ``seed``."""
        stats = self.label_statistics()
        size = len(self.dataset("train"))
        if stats.num_images != size:
            raise ValueError(
                f"datamodule.sampling=rcs: the label statistics count {stats.num_images} training masks but "
                f"the training split has {size} samples"
            )
        sampler = RareClassSampler.from_statistics(
            stats,
            self.rcs_temperature,
            self.rcs_min_pixels,
            num_replicas=num_replicas,
            rank=rank,
            seed=self.seed,
        )
        if rank == 0:
            log.info("sampling=rcs (T=%s): class probabilities %s", self.rcs_temperature,
                     self._by_class(sampler.class_probs))
        return sampler

    def _by_class(self, probs: np.ndarray) -> str:
        return ", ".join(f"{n} {q:.3f}" for n, q in zip(self.class_names, probs.tolist(), strict=True))

    # -- loaders ----------------------------------------------------------------------------------------
    def _loader(self, split: str, *, train: bool) -> DataLoader:
        """Shuffled training / ordered evaluation loader. Under DDP (process group initialised, as when
        Lightning asks for loaders) training uses a seeded :class:`DistributedSampler` (Lightning sets
        its epoch) and evaluation an :class:`UnpaddedDistributedSampler`, so metrics synced over the
        processes count every sample exactly once. ``sampling="rcs"`` trains with a
        :class:`~datamodules.samplers.RareClassSampler` (each DDP process its share of one epoch plan)."""
        workers = self.num_workers
        dataset = self.dataset(split)
        sampler: Sampler | None = None
        world = distributed_world()
        if train and self.sampling == "rcs":
            sampler = self.rare_class_sampler(*((world[1], world[0]) if world is not None else (1, 0)))
        elif world is not None:
            rank, size = world
            if train:
                sampler = DistributedSampler(dataset, size, rank, shuffle=True, seed=self.seed)
            else:
                sampler = UnpaddedDistributedSampler(dataset, size, rank)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train if sampler is None else None,
            sampler=sampler,
            drop_last=train and self.drop_last,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(self.seed + (0 if train else 1)),
            collate_fn=collate_samples,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    # -- label statistics -------------------------------------------------------------------------------
    def statistics_key(self) -> dict[str, Any]:
        """JSON-serialisable identity of the training masks (file list and mtimes, or generator)."""
        raise NotImplementedError

    def compute_label_statistics(self) -> LabelStatistics:
        """One uncached pass over the training masks."""
        raise NotImplementedError

    def label_statistics(
        self, cache_dir: str | Path | None = None, *, use_cache: bool = True
    ) -> LabelStatistics:
        """Per-class statistics of the TRAIN split's masks, before augmentation, ignore_index excluded.

        Cached in ``cache_dir`` (default: ``stats_cache_dir``, else :func:`default_cache_dir`) under a name
        derived from the file list, modification times and label encoding; ``use_cache=False`` recomputes.

        DDP: when ``torch.distributed`` is initialised, rank 0 computes (or loads) and broadcasts. Before
        that (the usual case: called before ``trainer.fit``), every rank computes the same integer counts
        from the same files, so the result is identical on every rank; the cache is written atomically.
        """
        cache = None
        if use_cache:
            cache = Path(cache_dir or self.stats_cache_dir or default_cache_dir()).expanduser()

        def compute() -> LabelStatistics:
            return cached_statistics(self.statistics_key(), self.compute_label_statistics, cache)

        world = distributed_world()
        if world is not None:
            box: list[Any] = [compute() if world[0] == 0 else None]
            torch.distributed.broadcast_object_list(box, src=0)
            return box[0]
        return compute()

    def check_label_statistics(self, stats: LabelStatistics) -> None:
        """Stop the run (ValueError with the statistics table and the likely fix) when a declared class
        is absent from every training mask or ignored pixels dominate (0/255 masks read with
        ignore_index 255), unless ``allow_absent_classes`` / ``max_ignored_share`` say it is intended.
        See :func:`datamodules.statistics.check_label_statistics`."""
        check_label_statistics(
            stats,
            self.labels,
            allow_absent_classes=self.allow_absent_classes,
            max_ignored_share=self.max_ignored_share,
        )

    # -- pre-flight check -------------------------------------------------------------------------------
    def preflight_plans(self) -> list[SplitPlan]:
        """What :meth:`preflight` checks: one :class:`~datamodules.preflight.SplitPlan` per split."""
        raise NotImplementedError

    def preflight_source(self) -> str:
        """The data set's name in pre-flight messages."""
        return type(self).__name__

    def preflight(self, use_cache: bool = True, cache_dir: str | Path | None = None) -> PreflightReport:
        """Check every split (train, val, test) before training: see :mod:`datamodules.preflight`.

        One parallel pass (``num_workers`` processes, progress bar if ``progress``) reads every image and
        mask as training does; splits that pass are cached in ``cache_dir`` (default: ``stats_cache_dir``,
        else :func:`default_cache_dir`) keyed by file list, modification times and label encoding, so a
        second call only lists the files. ``use_cache=False`` rechecks and stores nothing.

        Returns:
            per split: samples checked, seconds, whether served from the cache.

        Raises:
            ValueError (:class:`~datamodules.preflight.PreflightError`): every problem found, grouped by
            kind with counts, naming split, files and the config key to change.
        """
        started = time.perf_counter()
        cache = None
        if check_bool(use_cache, "use_cache"):
            cache = Path(cache_dir or self.stats_cache_dir or default_cache_dir()).expanduser()
        return run_preflight(
            self.preflight_plans(),
            source=self.preflight_source(),
            cache_dir=cache,
            num_workers=self.num_workers,
            progress=self.progress,
            started=started,
        )

    def label_spec_key(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "class_names": list(self.class_names),
        }


def _check_colors(colors: Sequence[Sequence[int]] | None, num_classes: int) -> list[list[int]] | None:
    """``datamodule.class_colors`` as lists of three ints in 0..255, one per class."""
    if colors is None:
        return None
    colors = [list(c) if isinstance(c, Sequence) and not isinstance(c, str) else c for c in colors]
    if len(colors) != num_classes:
        raise ValueError(
            f"datamodule.class_colors has {len(colors)} colours, expected one (R, G, B) per class "
            f"(num_classes={num_classes})"
        )
    for i, c in enumerate(colors):
        ok = isinstance(c, list) and len(c) == 3
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
        if not ok:
            raise ValueError(f"datamodule.class_colors[{i}] must be [R, G, B] with ints 0..255, got {c!r}")
    return colors
