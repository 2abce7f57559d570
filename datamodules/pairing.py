"""Finding (image, mask) file pairs of a split: by file stem in folders, or from a list file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_SHOW = 5


@dataclass(frozen=True)
class SamplePair:
    """One sample: its id (the image file stem) and its two files."""

    name: str
    image: Path
    mask: Path


def _few(items: Sequence[object]) -> str:
    shown = ", ".join(str(x) for x in items[:_SHOW])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _SHOW else "")


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
) -> list[SamplePair]:
    """Pair every image in ``image_dir`` with ``mask_dir/<stem><mask_suffix><mask_extension>``.

    Raises:
        ValueError: images without a mask or masks without an image (a few of each are listed),
            two images with the same stem, or no samples at all.
    """
    exts = {e.lower() for e in image_extensions}
    mask_tail = mask_suffix + mask_extension
    same_dir = image_dir.resolve() == mask_dir.resolve()
    if same_dir and not mask_suffix:
        raise ValueError(
            f"split '{split}': images and masks share the folder {image_dir}; set datamodule.mask_suffix "
            "(e.g. '_mask') so that masks can be told apart"
        )

    images: dict[str, Path] = {}
    for p in sorted(image_dir.iterdir()):
        if not p.is_file() or p.suffix.lower() not in exts:
            continue
        if same_dir and mask_suffix and p.name.endswith(mask_tail):
            continue  # a mask stored beside its image
        if p.stem in images:
            raise ValueError(f"split '{split}': two images share the stem '{p.stem}': {images[p.stem]}, {p}")
        images[p.stem] = p

    masks: dict[str, Path] = {}
    for p in sorted(mask_dir.iterdir()):
        if p.is_file() and p.name.endswith(mask_tail) and len(p.name) > len(mask_tail):
            masks[p.name[: -len(mask_tail)]] = p

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
    image_dir: Path | None,
    mask_dir: Path | None,
    image_extensions: Sequence[str] = DEFAULT_IMAGE_EXTENSIONS,
    mask_suffix: str = "",
    mask_extension: str = ".png",
) -> list[SamplePair]:
    """Read pairs from a text file, one sample per line (blank lines and ``#`` comments skipped).

    A line is either ``<image path> <mask path>`` (relative to ``root`` or absolute) or a single sample
    id (a stem, or an image file name), looked up in ``image_dir`` and ``mask_dir`` like
    :func:`pairs_from_folders` does.

    Raises:
        FileNotFoundError: the list file does not exist.
        ValueError: malformed lines, listed files that do not exist (a few are listed), an empty list.
    """
    if not list_file.is_file():
        raise FileNotFoundError(f"list file of split '{split}' does not exist: {list_file}")
    exts = [e.lower() for e in image_extensions]
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
            token = tokens[0]
            stem = Path(token).stem if Path(token).suffix.lower() in exts else token
            candidates = [image_dir / token] if Path(token).suffix.lower() in exts else []
            candidates += [image_dir / f"{stem}{e}" for e in exts]
            image = next((c for c in candidates if c.is_file()), candidates[0])
            mask = mask_dir / f"{stem}{mask_suffix}{mask_extension}"
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
) -> list[SamplePair]:
    """Pairs of one split from its spec: ``{images: DIR, masks: DIR}`` and/or ``{list: FILE}``,
    paths relative to ``root``."""
    unknown = set(spec) - {"images", "masks", "list"}
    if unknown:
        raise ValueError(
            f"datamodule.splits.{split} has unknown keys {sorted(unknown)}; expected images, masks, list"
        )
    kw = dict(image_extensions=image_extensions, mask_suffix=mask_suffix, mask_extension=mask_extension)
    if spec.get("list"):
        image_dir = _dir(root, spec["images"], split, "images") if spec.get("images") else None
        mask_dir = _dir(root, spec["masks"], split, "masks") if spec.get("masks") else None
        return pairs_from_list(
            (root / spec["list"]).expanduser(),
            root,
            split=split,
            image_dir=image_dir,
            mask_dir=mask_dir,
            **kw,
        )
    image_dir = _dir(root, spec.get("images"), split, "images")
    mask_dir = _dir(root, spec.get("masks"), split, "masks")
    return pairs_from_folders(image_dir, mask_dir, split=split, **kw)
