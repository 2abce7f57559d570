"""The images to predict: one file, a folder (recursively) or a list file, each with the relative path
its outputs mirror."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .pairing import DEFAULT_IMAGE_EXTENSIONS

__all__ = ["LIST_EXTENSIONS", "InputImage", "InputListing", "list_inputs"]

#: A file ``input`` with one of these extensions is a list of images, one path per line.
LIST_EXTENSIONS = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class InputImage:
    path: Path
    relative: Path  # the output path without extension: subfolders mirrored, the stem kept


@dataclass(frozen=True)
class InputListing:
    images: list[InputImage]
    ignored: list[Path]  # files in an input folder without an image extension (not read)


def _output_names(paths: list[Path], base: Path | None) -> list[Path]:
    """Output paths (no extension) mirroring ``paths`` under ``base`` (a path outside it, e.g.
    ``../x.png`` in a list file, keeps only its name: outputs never leave the output folder). Names that
    would still coincide get the extension (``a.png``, ``a.jpg`` -> ``a_png``, ``a_jpg``), then a number."""
    relative = []
    root = base.resolve() if base is not None else None
    for p in paths:
        try:
            relative.append(p.resolve().relative_to(root) if root is not None else Path(p.name))
        except ValueError:
            relative.append(Path(p.name))
    names = [r.with_suffix("") for r in relative]
    counts = Counter(names)
    names = [
        n.with_name(f"{n.name}_{r.suffix.lstrip('.').lower()}") if counts[n] > 1 else n
        for n, r in zip(names, relative, strict=True)
    ]
    counts, seen = Counter(names), Counter()
    unique = []
    for n in names:
        seen[n] += 1
        unique.append(n.with_name(f"{n.name}_{seen[n]}") if counts[n] > 1 else n)
    return unique


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder)


def _walk_folder(source: Path, exts: tuple[str, ...], exclude: Path | None) -> tuple[list[Path], list[Path]]:
    """Image files and other files under ``source``, sorted; hidden files and folders and everything
    inside ``exclude`` are skipped (the folders are not even entered)."""
    paths: list[Path] = []
    ignored: list[Path] = []
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside(Path(folder) / d, exclude))
        for name in sorted(files):
            p = Path(folder) / name
            if not name.startswith(".") and p.is_file():
                (paths if p.suffix.lower() in exts else ignored).append(p)
    return sorted(paths), sorted(ignored)


def _read_list_file(source: Path, exclude: Path | None) -> list[Path]:
    paths = []
    for number, line in enumerate(source.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        p = Path(line.split()[0]).expanduser()
        p = p if p.is_absolute() else source.parent / p
        if _inside(p, exclude):
            raise ValueError(
                f"input list file {source}, line {number}: {p} lies inside the output folder {exclude}; "
                "predictions are never read back as input: list the original images, or choose another "
                "output=DIR"
            )
        paths.append(p)
    if not paths:
        raise ValueError(f"input list file {source} lists no images (one path per line)")
    return paths


def list_inputs(
    source: str | Path,
    image_extensions: tuple[str, ...] = DEFAULT_IMAGE_EXTENSIONS,
    exclude: str | Path | None = None,
) -> InputListing:
    """The images of ``source``: an image file; a folder, searched recursively (hidden files and folders
    skipped, extensions compared case-insensitively, sorted); or a list file (``.txt``/``.lst``/``.list``:
    one image path per line, the first whitespace-separated column, relative to the list file's folder;
    blank lines and ``#`` comments skipped). Listed paths are kept even if missing or unreadable: the
    prediction reports and skips them.

    ``exclude`` (the prediction's output folder) and everything under it is never an input: a folder
    listing skips it, also when it lies inside ``source``; a list file or a ``source`` inside it is refused.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: no image in it (the message says what was found instead), or an input inside
            ``exclude``.
    """
    source = Path(source).expanduser()
    exts = tuple(e.lower() for e in image_extensions)
    excluded = None if exclude is None else Path(exclude).expanduser().resolve()
    if not source.exists():
        raise FileNotFoundError(
            f"input {source} does not exist (input={source}): give an image, a folder or a list file"
        )
    if _inside(source, excluded):
        raise ValueError(
            f"input {source} lies inside the output folder {excluded}: predictions are never read back as "
            "input; choose another output=DIR"
        )
    ignored: list[Path] = []
    if source.is_dir():
        base = source
        paths, ignored = _walk_folder(source, exts, excluded)
        if not paths:
            extra = (
                f"; it holds {len(ignored)} other files, e.g. {ignored[0].name}" if ignored else " (empty)"
            )
            raise ValueError(f"input folder {source} has no image files with extensions {list(exts)}{extra}")
    elif source.suffix.lower() in LIST_EXTENSIONS:
        base = source.parent
        paths = _read_list_file(source, excluded)
    else:
        paths, base = [source], None
    return InputListing(
        [InputImage(p, r) for p, r in zip(paths, _output_names(paths, base), strict=True)], ignored
    )
