"""What the console shows of an evaluation, and when (``module.print_tables``):

- ``best_and_test`` (default): during fitting one line per validation epoch
  (:func:`evaluation.tables.epoch_line`: mIoU, the rare classes' mean IoU, the weakest class, the best so
  far); the full per-class table of a validation outside fitting (``train.py`` validates the best checkpoint
  after fitting) and of the test, which is followed by the test images of lowest mIoU and by the tables of
  the metric families that are on for the split (``evaluation.*``: objects found, boundaries and clDice,
  the calibration line; :mod:`evaluation.family_tables`);
- ``every_epoch``: the full table after every validation epoch too, each followed by its line;
- ``none``: nothing.

Rare classes: the :data:`evaluation.rare.NUM_RARE` classes with the fewest training pixels, when the caller
knows them (``train.py`` does: the label statistics); else those with the smallest pixel share of the
validated split.
"""

from __future__ import annotations

from collections.abc import Sequence

import rich
from torch import Tensor

from evaluation.families import FamilyResults
from evaluation.family_tables import family_tables
from evaluation.per_image import PerImageCounts
from evaluation.rare import NUM_RARE, rarest
from evaluation.tables import epoch_line, print_class_table, worst_images_table
from seglosses.checks import check_choice, check_int

__all__ = ["PRINT_TABLES", "EvaluationReport"]

PRINT_TABLES = ("best_and_test", "every_epoch", "none")


class EvaluationReport:
    """Prints the evaluations of one model (global rank 0 calls :meth:`show`; not in the sanity check).

    Args:
        class_names: the scored classes.
        print_tables: ``"best_and_test"``, ``"every_epoch"`` or ``"none"`` (see the module docstring).
        worst_images: rows of the table of the test images with the lowest mIoU (0: no table).
        rare_classes: the rare classes' names, rarest first (``None``: the smallest pixel shares).
    """

    def __init__(self, class_names: Sequence[str], print_tables: str = "best_and_test", worst_images: int = 5,
                 rare_classes: Sequence[str] | None = None) -> None:
        self.class_names = list(class_names)
        self.print_tables = check_choice(print_tables, "module.print_tables", PRINT_TABLES)
        self.worst_images = check_int(worst_images, "worst_images", minimum=0)
        self.rare_classes = None if rare_classes is None else [str(n) for n in rare_classes][:NUM_RARE]
        #: (mIoU, epoch) of the best validation epoch of this fit (a resumed fit starts afresh)
        self.best: tuple[float, int] | None = None

    def rare(self, scores: dict[str, Tensor]) -> list[str]:
        if self.rare_classes is not None:
            return self.rare_classes
        shares = scores["pixel_share"].tolist()
        return rarest(dict(zip(self.class_names, shares, strict=True)))

    def show(self, stage: str, scores: dict[str, Tensor], epoch: int | None,
             per_image: PerImageCounts | None = None, checkpoint_epoch: int | None = None,
             families: FamilyResults | None = None) -> None:
        """Print what ``print_tables`` asks for after an evaluation of ``stage`` (``epoch``: the epoch
        validated during fitting, else None); ``per_image``: the test's rows; ``checkpoint_epoch``: the
        epoch of the checkpoint evaluated outside fitting, named in the table's title; ``families``: the
        metric families of the stage (:mod:`evaluation.family_tables`, after the pixel table and the worst
        images)."""
        scores = {k: v.cpu() for k, v in scores.items()}
        fitting = stage == "val" and epoch is not None
        if fitting:
            miou = float(scores["mIoU"])
            if miou == miou and (self.best is None or miou > self.best[0]):
                self.best = (miou, epoch)
        if self.print_tables == "none":
            return
        console = rich.get_console()
        if not fitting or self.print_tables == "every_epoch":
            title = stage if epoch is None else f"{stage} (epoch {epoch})"
            if epoch is None and checkpoint_epoch is not None:
                title = f"{stage} (checkpoint of epoch {checkpoint_epoch})"
            print_class_table(scores, self.class_names, title, console=console)
            if per_image is not None and self.worst_images > 0:
                n = min(self.worst_images, len(per_image))
                # the stage alone: a longer title would be wrapped to the narrow table's width
                console.print(worst_images_table(per_image.names, per_image.scores(), self.class_names, n,
                                                 title=f"{stage}: {n} worst images by mIoU"))
            for item in family_tables(families, stage) if families is not None else ():
                console.print(item, highlight=False, soft_wrap=isinstance(item, str))
        if fitting:
            line = epoch_line(epoch, scores, self.class_names, self.rare(scores), self.best)
            console.print(line, highlight=False, soft_wrap=True)
