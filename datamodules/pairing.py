"""Finding (image, mask) file pairs of a split: by file stem in folders, or from a list file.

Hidden files (names starting with ``.``, e.g. macOS ``._*`` AppleDouble files) in the folders are skipped;
extensions are compared case-insensitively (``a.PNG`` is a ``.png`` file). Masks in lossy formats (JPEG,
lossy WebP) are refused unless ``allow_lossy_masks``: compression changes label values at edges.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .io import LOSSY_REASON, lossy_mask_reason

DEFAULT_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_SHOW = 5


@dataclass(frozen=True)
class SamplePair:
    """One sample: its id (the image file stem), its two files and, with ``datamodule.roi``, its region
    mask (:mod:`datamodules.roi`)."""

    name: str
    image: Path
    mask: Path
    roi: Path | None = None


def _few(items: Sequence[object]) -> str:
    shown = ", ".join(str(x) for x in items[:_SHOW])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _SHOW else "")


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _has_tail(name: str, suffix: str, extension: str) -> bool:
    """Whether ``name`` is ``<something><suffix><extension>``, the extension compared case-insensitively."""
    n = len(suffix) + len(extension)
    return (
        len(name) > n
        and name.lower().endswith(extension.lower())
        and name[: len(name) - len(extension)].endswith(suffix)
    )


def _existing(candidates: Sequence[Path]) -> Path | None:
    """The first candidate file that exists, trying each name also with an upper-case extension."""
    for c in candidates:
        for v in (c, c.with_suffix(c.suffix.upper())):
            if v.is_file():
                return v
    return None


def check_lossless_masks(pairs: Sequence[SamplePair], *, split: str, key: str) -> None:
    """Refuse masks stored in a lossy format (``.jpg``/``.jpeg``/``.jfif``, lossy WebP).

    Args:
        key: the config key that selected the masks, named in the message.

    Raises:
        ValueError: naming the first few lossy files, why, and ``datamodule.allow_lossy_masks``.
    """
    lossy = []
    for p in pairs:
        why = lossy_mask_reason(p.mask)
        if why is not None:
            lossy.append(f"{p.mask} ({why})")
    if lossy:
        raise ValueError(
            f"split '{split}': {len(lossy)} mask file(s) in a lossy format ({key}): {_few(lossy)}. "
            f"{LOSSY_REASON[0].upper()}{LOSSY_REASON[1:]}, so artefacts become labels; store masks as PNG "
            "(lossless), or set datamodule.allow_lossy_masks=true if you accept that"
        )


def _dir(root: Path, rel: str | None, split: str, key: str) -> Path:
    if rel is None:
        raise ValueError(f"datamodule.splits.{split}.{key} is not set: the folder of the split's {key}")
    path = (root / rel).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{key} folder of split '{split}' does not exist: {path} "
            f"(datamodule.splits.{split}.{key}={rel!r}, relative to datamodule.root={str(root)!r})"
        )
    return path


def pairs_from_folders(
    image_dir: Path,
    mask_dir: Path,
    *,
    split: str,
    image_extensions: Sequence[str] = DEFAULT_IMAGE_EXTENSIONS,
    mask_suffix: str = "",
    mask_extension: str = ".png",
    skip_tails: Sequence[str] = (),
) -> list[SamplePair]:
    """Pair every image in ``image_dir`` with ``mask_dir/<stem><mask_suffix><mask_extension>``; files whose
    names end with one of ``skip_tails`` (region masks stored beside the masks) are neither.

    Raises:
        ValueError: images without a mask or masks without an image (a few of each are listed),
            two images with the same stem, or no samples at all.
    """
    exts = {e.lower() for e in image_extensions}
    mask_tail = mask_suffix + mask_extension
    mask_tail_len = len(mask_tail)
    same_dir = image_dir.resolve() == mask_dir.resolve()
    if same_dir and not mask_suffix:
        raise ValueError(
            f"split '{split}': images and masks share the folder {image_dir}; set datamodule.mask_suffix "
            "(e.g. '_mask') so that masks can be told apart"
        )

    images: dict[str, Path] = {}
    def skipped(p: Path) -> bool:
        return _is_hidden(p) or not p.is_file() or any(p.name.endswith(t) for t in skip_tails)

    for p in sorted(image_dir.iterdir()):
        if skipped(p) or p.suffix.lower() not in exts:
            continue
        if same_dir and mask_suffix and _has_tail(p.name, mask_suffix, mask_extension):
            continue  # a mask stored beside its image
        if p.stem in images:
            raise ValueError(f"split '{split}': two images share the stem '{p.stem}': {images[p.stem]}, {p}")
        images[p.stem] = p

    masks: dict[str, Path] = {}
    for p in sorted(mask_dir.iterdir()):
        if not skipped(p) and _has_tail(p.name, mask_suffix, mask_extension):
            masks[p.name[:-mask_tail_len]] = p

    missing_masks = sorted(s for s in images if s not in masks)
    orphan_masks = sorted(s for s in masks if s not in images)
    if missing_masks or orphan_masks:
        parts = []
        if missing_masks:
            parts.append(
                f"{len(missing_masks)} image(s) without a mask '<stem>{mask_tail}' in {mask_dir}: "
                + _few([images[s].name for s in missing_masks])
            )
        if orphan_masks:
            parts.append(
                f"{len(orphan_masks)} mask(s) without an image ({sorted(exts)}) in {image_dir}: "
                + _few([masks[s].name for s in orphan_masks])
            )
        raise ValueError(
            f"split '{split}': images and masks do not pair up by file stem; "
            + "; ".join(parts)
            + ". Check datamodule.mask_suffix / mask_extension / image_extensions."
        )
    if not images:
        raise ValueError(
            f"split '{split}' has no samples: no image files with extensions {sorted(exts)} in {image_dir}"
        )
    return [SamplePair(s, images[s], masks[s]) for s in sorted(images)]


def pairs_from_list(
    list_file: Path,
    root: Path,
    *,
    split: str,
    image_dir: Path | Callable[[], Path] | None,
    mask_dir: Path | Callable[[], Path] | None,
    image_extensions: Sequence[str] = DEFAULT_IMAGE_EXTENSIONS,
    mask_suffix: str = "",
    mask_extension: str = ".png",
) -> list[SamplePair]:
    """Read pairs from a text file, one sample per line (blank lines and ``#`` comments skipped).

    A line is either ``<image path> <mask path>`` (relative to ``root`` or absolute) or a single sample
    id (a stem, or an image file name), looked up in ``image_dir`` and ``mask_dir`` like
    :func:`pairs_from_folders` does. The folders may be given as callables, resolved on the first
    one-column line (so that folders a list does not need are never required to exist).

    Raises:
        FileNotFoundError: the list file does not exist.
        ValueError: malformed lines, listed files that do not exist (a few are listed), an empty list.
    """
    if not list_file.is_file():
        raise FileNotFoundError(f"list file of split '{split}' does not exist: {list_file}")
    exts = [e.lower() for e in image_extensions]
    dirs: dict[str, Path] = {}

    def folder(key: str, value: Path | Callable[[], Path]) -> Path:
        if key not in dirs:
            dirs[key] = value() if callable(value) else value
        return dirs[key]

    pairs: list[SamplePair] = []
    missing: list[str] = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        tokens = entry.split()
        if len(tokens) == 2:
            image, mask = ((root / t).expanduser() for t in tokens)
        elif len(tokens) == 1:
            if image_dir is None or mask_dir is None:
                raise ValueError(
                    f"{list_file}:{lineno}: a one-column line ({tokens[0]!r}) needs the folders "
                    f"datamodule.splits.{split}.images and .masks to look the sample up"
                )
            idir, mdir = folder("images", image_dir), folder("masks", mask_dir)
            token = tokens[0]
            stem = Path(token).stem if Path(token).suffix.lower() in exts else token
            candidates = [idir / token] if Path(token).suffix.lower() in exts else []
            candidates += [idir / f"{stem}{e}" for e in exts]
            image = _existing(candidates) or candidates[0]
            mask = mdir / f"{stem}{mask_suffix}{mask_extension}"
            mask = _existing([mask]) or mask
        else:
            raise ValueError(
                f"{list_file}:{lineno}: expected '<image> <mask>' or a single sample id, got {entry!r}"
            )
        for p in (image, mask):
            if not p.is_file():
                missing.append(f"{p} (line {lineno})")
        pairs.append(SamplePair(image.stem, image, mask))
    if missing:
        raise ValueError(f"list file {list_file} names {len(missing)} missing file(s): {_few(missing)}")
    if not pairs:
        raise ValueError(f"split '{split}' has no samples: list file {list_file} lists none")
    return pairs


def find_pairs(
    root: Path,
    split: str,
    spec: Mapping[str, str | None],
    *,
    image_extensions: Sequence[str] = DEFAULT_IMAGE_EXTENSIONS,
    mask_suffix: str = "",
    mask_extension: str = ".png",
    allow_lossy_masks: bool = False,
    skip_tails: Sequence[str] = (),
) -> list[SamplePair]:
    """Pairs of one split from its spec: ``{images: DIR, masks: DIR}`` and/or ``{list: FILE}``,
    paths relative to ``root``; a key set to None counts as absent.

    Precedence: when ``list`` is set, it alone selects the samples; ``images``/``masks`` are then only
    used to look up one-column (sample id) lines, and need not exist otherwise.

    Raises:
        ValueError: see :func:`pairs_from_folders`, :func:`pairs_from_list`; masks in a lossy format
            (unless ``allow_lossy_masks``, see :func:`check_lossless_masks`).
    """
    unknown = set(spec) - {"images", "masks", "list"}
    if unknown:
        raise ValueError(
            f"datamodule.splits.{split} has unknown keys {sorted(unknown)}; expected images, masks, list"
        )
    kw = dict(image_extensions=image_extensions, mask_suffix=mask_suffix, mask_extension=mask_extension)
    if spec.get("list"):
        images, masks = spec.get("images"), spec.get("masks")
        list_file = (root / spec["list"]).expanduser()
        pairs = pairs_from_list(
            list_file,
            root,
            split=split,
            image_dir=(lambda: _dir(root, images, split, "images")) if images else None,
            mask_dir=(lambda: _dir(root, masks, split, "masks")) if masks else None,
            **kw,
        )
        key = f"datamodule.splits.{split}.list={spec['list']!r} ({list_file})"
    else:
        image_dir = _dir(root, spec.get("images"), split, "images")
        mask_dir = _dir(root, spec.get("masks"), split, "masks")
        pairs = pairs_from_folders(image_dir, mask_dir, split=split, skip_tails=skip_tails, **kw)
        key = f"datamodule.mask_extension={mask_extension!r}"
    if not allow_lossy_masks:
        check_lossless_masks(pairs, split=split, key=key)
    return pairs


def _by_name(folder: Path, tail: str, what: str) -> dict[str, Path]:
    """``{relative path without tail: file}`` of the files of ``folder`` (recursive; hidden ones skipped)
    named ``<name><tail>``, the extension compared case-insensitively."""
    dot = tail.rfind(".")
    suffix, extension = (tail[:dot], tail[dot:]) if dot >= 0 else (tail, "")
    found: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        relative = p.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not p.is_file():
            continue
        if _has_tail(p.name, suffix, extension):
            name = relative.as_posix()[: -len(tail)]
            if name in found:
                raise ValueError(f"two {what} files have the name '{name}': {found[name]}, {p}")
            found[name] = p
    return found


def pair_by_name(pred_dir: Path, gt_dir: Path, *, pred_tail: str = ".png",
                 gt_tail: str = ".png") -> list[tuple[str, Path, Path]]:
    """``(name, predicted mask, ground-truth mask)`` of every pair of files with the same name: the path
    relative to its folder (subfolders included) without its tail, ``pred_dir/<name><pred_tail>`` with
    ``gt_dir/<name><gt_tail>`` (e.g. ``gt_tail="_mask.png"``); sorted by name.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: predictions without a ground truth or ground truths without a prediction (a few of each
            are listed, with the counts), two files of one name, or no pair at all.
    """
    for folder, what in ((pred_dir, "predicted masks"), (gt_dir, "ground-truth masks")):
        if not folder.is_dir():
            raise FileNotFoundError(f"the folder of the {what} does not exist: {folder}")
    preds = _by_name(pred_dir, pred_tail, "predicted mask")
    truths = _by_name(gt_dir, gt_tail, "ground-truth mask")
    no_truth = sorted(n for n in preds if n not in truths)
    no_pred = sorted(n for n in truths if n not in preds)
    if no_truth or no_pred:
        parts = []
        if no_truth:
            parts.append(f"{len(no_truth)} predicted mask(s) without a ground truth '<name>{gt_tail}' in "
                         f"{gt_dir}: " + _few([preds[n].relative_to(pred_dir).as_posix() for n in no_truth]))
        if no_pred:
            parts.append(f"{len(no_pred)} ground-truth mask(s) without a prediction '<name>{pred_tail}' in "
                         f"{pred_dir}: " + _few([truths[n].relative_to(gt_dir).as_posix() for n in no_pred]))
        raise ValueError(f"predicted and ground-truth masks do not pair up by name ({len(preds)} and "
                         f"{len(truths)} files); " + "; ".join(parts))
    if not preds:
        raise ValueError(f"no predicted masks '<name>{pred_tail}' in {pred_dir} (nor ground truths "
                         f"'<name>{gt_tail}' in {gt_dir})")
    return [(n, preds[n], truths[n]) for n in sorted(preds)]
