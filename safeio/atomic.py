"""Atomic file replacement: :func:`atomic_path` and the small writers built on it."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["WriteError", "atomic_path", "free_space", "write_bytes", "write_text"]


class WriteError(OSError):
    """A file could not be written. The message is one line: the file, the reason and the free space
    of its filesystem; the destination kept its previous content (or still does not exist)."""


def free_space(directory: str | Path) -> str:
    """Free space of the filesystem holding ``directory`` (or its nearest existing parent), as text."""
    path = Path(directory).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "free space unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"
        free /= 1024
    return "free space unknown"  # unreachable


def _reason(error: OSError) -> str:
    if error.errno is not None and error.errno in errno.errorcode:
        return f"{os.strerror(error.errno)} ({errno.errorcode[error.errno]})"
    return str(error) or type(error).__name__


def _temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that keeps its suffix (writers such as PIL, matplotlib and numpy
    choose the format from it): ``dir/.name.tmp-1a2b3c.png``."""
    return path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); not possible (nor needed) on Windows."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends normally, the file written there
    is synced and moved over ``path`` atomically. Parent directories are created.

    On any exception (including an interrupt) the temporary file is removed and ``path`` keeps its
    previous content; an ``OSError`` is re-raised as :class:`WriteError` with one clear line.

    Example::

        with atomic_path(run / "model.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(e.errno, f"could not create the directory of {path}: {_reason(e)}") from None
    tmp = _temporary_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise WriteError(errno.ENOENT, f"could not write {path}: the writer created no file")
        _sync(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(
                e.errno, f"could not write {path}: {_reason(e)}; {free_space(path.parent)} in {path.parent}"
            ) from None
        raise
    _sync_directory(path.parent)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode(encoding))
