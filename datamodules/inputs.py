"""The images to predict: one file, a folder (recursively) or a list file, each with the relative path
its outputs mirror."""

from __future__ import annotations

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


def list_inputs(
    source: str | Path, image_extensions: tuple[str, ...] = DEFAULT_IMAGE_EXTENSIONS
) -> InputListing:
    """The images of ``source``: an image file; a folder, searched recursively (hidden files and folders
    skipped, extensions compared case-insensitively, sorted); or a list file (``.txt``/``.lst``/``.list``:
    one image path per line, the first whitespace-separated column, relative to the list file's folder;
    blank lines and ``#`` comments skipped). Listed paths are kept even if missing or unreadable: the
    prediction reports and skips them.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: no image in it (the message says what was found instead).
    """
    source = Path(source).expanduser()
    exts = tuple(e.lower() for e in image_extensions)
    if not source.exists():
        raise FileNotFoundError(
            f"input {source} does not exist (input={source}): give an image, a folder or a list file"
        )
    ignored: list[Path] = []
    if source.is_dir():
        paths, base = [], source
        for p in sorted(source.rglob("*")):
            rel = p.relative_to(source)
            if any(part.startswith(".") for part in rel.parts) or not p.is_file():
                continue
            (paths if p.suffix.lower() in exts else ignored).append(p)
        if not paths:
            extra = (
                f"; it holds {len(ignored)} other files, e.g. {ignored[0].name}" if ignored else " (empty)"
            )
            raise ValueError(f"input folder {source} has no image files with extensions {list(exts)}{extra}")
    elif source.suffix.lower() in LIST_EXTENSIONS:
        base = source.parent
        paths = []
        for line in source.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                p = Path(line.split()[0]).expanduser()
                paths.append(p if p.is_absolute() else base / p)
        if not paths:
            raise ValueError(f"input list file {source} lists no images (one path per line)")
    else:
        paths, base = [source], None
    return InputListing(
        [InputImage(p, r) for p, r in zip(paths, _output_names(paths, base), strict=True)], ignored
    )
