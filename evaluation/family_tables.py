"""The console tables of the metric families (:mod:`evaluation.families`), printed after the per-class pixel
table (:mod:`evaluation.reporting`): "objects found", "boundaries" (with clDice when it is on) and one line
of calibration. Percentages with two decimals as the pixel table; distances in pixels. The tables have no
vertical lines (rich's ``SIMPLE_HEAD`` box): the ten columns of the objects table then fit a console of 80
columns (a log file's) with class names of up to 14 characters, where boxed cells would be cut."""

from __future__ import annotations

import math

import numpy as np
from rich import box
from rich.table import Table

from evaluation.families import FamilyResults, class_mean

__all__ = ["boundary_table", "calibration_line", "family_tables", "objects_table"]


def _pct(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.2f}"


def _px(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.2f}"


def _table(title: str, caption: str) -> Table:
    return Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)


def objects_table(results: FamilyResults, title: str = "") -> Table:
    """One row per class: ground-truth objects, those found, recall, precision, F1, recall of the small,
    medium and large ones, mean Dice of the found ones; a mean row (counts summed, rates ``nanmean``)."""
    o = results.options.objects
    small, medium = o.size_bins
    caption = (f"found: matched at IoU >= {o.iou:g}, {o.connectivity}-connected; Small, Med., Large: recall "
               f"of the objects < {small} px, < {medium} px, larger")
    table = _table(title, caption)
    headers = ("Class", "GT", "Found", "Recall", "Prec.", "F1", "Small", "Med.", "Large", "Dice")
    for header in headers:
        table.add_column(header, justify="left" if header == "Class" else "right")
    values = results.objects()
    rates = ("recall", "precision", "f1", "recall_small", "recall_medium", "recall_large", "dice_found")
    for k, name in enumerate(results.classes.names):
        table.add_row(name, str(values["gt"][k]), str(values["found"][k]),
                      *(_pct(float(values[key][k])) for key in rates))
    table.add_row("mean", str(int(values["gt"].sum())), str(int(values["found"].sum())),
                  *(_pct(class_mean(values[key])) for key in rates), style="bold")
    return table


def boundary_table(results: FamilyResults, title: str = "") -> Table:
    """One row per class: Boundary IoU, HD95, ASSD, NSD (boundary family) and clDice (topology family, its
    classes), each the mean over the images scored, then the images where the prediction (missed) or the
    mask (spurious) lacks the class; a mean row (values ``nanmean``, counts summed). A class clDice does not
    score has an empty clDice cell."""
    o = results.options
    names = results.classes.names
    columns: list[tuple[str, np.ndarray, bool]] = []  # header, (K,) values, in %
    counts = None
    if o.boundary is not None:
        b = results.boundary()
        tolerance = f"{o.boundary.tolerance:g}"
        columns += [("BIoU", b["biou"], True), ("HD95", b["hd95"], False), ("ASSD", b["assd"], False),
                    (f"NSD@{tolerance}", b["nsd"], True)]
        counts = (b["missed"], b["spurious"])
    if o.topology is not None:
        t = results.topology()
        cldice = np.full(len(names), np.nan)
        cldice[list(results.classes.topology)] = t["cldice"]
        columns.append(("clDice", cldice, True))
        if counts is None:  # the counts of the clDice classes
            missed, spurious = np.zeros(len(names), np.int64), np.zeros(len(names), np.int64)
            missed[list(results.classes.topology)] = t["missed"]
            spurious[list(results.classes.topology)] = t["spurious"]
            counts = (missed, spurious)
    caption = "means over the images with the class in mask or prediction"
    if o.boundary is not None:
        caption += "; HD95, ASSD in px"
    caption += "; missed, spurious: images without prediction, without mask"
    table = _table(title, caption)
    for header in ("Class", *(c[0] for c in columns), "Missed", "Spurious"):
        table.add_column(header, justify="left" if header == "Class" else "right")
    topology = set(results.classes.topology)
    for k, name in enumerate(names):
        cells = [(_pct if pct else _px)(float(v[k])) if header != "clDice" or k in topology else ""
                 for header, v, pct in columns]
        if o.boundary is None and k not in topology:
            table.add_row(name, *cells, "", "")
        else:
            table.add_row(name, *cells, str(int(counts[0][k])), str(int(counts[1][k])))
    means = [(_pct if pct else _px)(class_mean(v)) for _, v, pct in columns]
    table.add_row("mean", *means, str(int(np.sum(counts[0]))), str(int(np.sum(counts[1]))), style="bold")
    return table


def calibration_line(results: FamilyResults, stage: str) -> str:
    """``test calibration (15 bins): mean class-wise ECE 2.31 | top-label ECE 1.05 | largest cross 8.12``
    (ECE in %; top-label: multiclass)."""
    ece = results.ece()
    values = ece["ece"].double().cpu().numpy()
    parts = [f"{stage} calibration ({ece['bins']} bins): mean class-wise ECE {_pct(float(ece['mean_ece']))}"]
    if "top_label_ece" in ece:
        parts.append(f"top-label ECE {_pct(float(ece['top_label_ece']))}")
    if np.isfinite(values).any() and len(values) > 1:
        k = int(np.nanargmax(values))
        parts.append(f"largest {results.classes.names[k]} {_pct(float(values[k]))}")
    return " | ".join(parts)


def family_tables(results: FamilyResults, stage: str) -> list[Table | str]:
    """What the console shows of ``results``, in order: the objects table, the boundaries (and clDice)
    table, the calibration line; those of the families that are on."""
    out: list[Table | str] = []
    o = results.options
    if o.objects is not None:
        out.append(objects_table(results, f"{stage}: objects found"))
    if o.boundary is not None or o.topology is not None:
        parts = (("boundaries", o.boundary), ("clDice", o.topology))
        what = " and ".join(word for word, on in parts if on is not None)
        out.append(boundary_table(results, f"{stage}: {what}"))
    if o.calibration is not None:
        out.append(calibration_line(results, stage))
    return out
