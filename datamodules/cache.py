"""The on-disk cache of the data passes (label statistics, pre-flight check): one JSON file per key.

A key is a JSON-serialisable description of what was computed (file list, modification times, label
encoding). Its digest names the file, so a changed key never reads a stale entry; files are written
atomically, so processes that share a cache (DDP ranks, sweep jobs) never read a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safeio import write_text

__all__ = ["cache_file", "cache_key_digest", "default_cache_dir", "read_cached", "write_cached"]

#: Part of every digest: bump it when the meaning of a payload changes.
CACHE_VERSION = 3  # 3: label statistics carry per-image class counts


def default_cache_dir() -> Path:
    """``$IMBALANCED_SEG_CACHE``, else ``$XDG_CACHE_HOME/imbalanced_seg``, else ``~/.cache/...``."""
    env = os.environ.get("IMBALANCED_SEG_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "imbalanced_seg"


def cache_key_digest(key: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of a JSON-serialisable cache key (stable across processes and runs)."""
    blob = json.dumps({"version": CACHE_VERSION, "key": key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_file(cache_dir: str | Path, prefix: str, key: Mapping[str, Any]) -> Path:
    """``<cache_dir>/<prefix>-<digest>.json`` for ``key``."""
    return Path(cache_dir).expanduser() / f"{prefix}-{cache_key_digest(key)[:24]}.json"


def read_cached(cache_dir: str | Path, prefix: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The payload stored for ``key``, or None (no entry, or an unreadable one: warned and ignored)."""
    path = cache_file(cache_dir, prefix, key)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("digest") == cache_key_digest(key):
            return dict(data["payload"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"ignoring unreadable cache file {path}: {e}", stacklevel=2)
    return None


def write_cached(
    cache_dir: str | Path, prefix: str, key: Mapping[str, Any], payload: Mapping[str, Any]
) -> None:
    """Store ``payload`` for ``key`` atomically (:func:`safeio.write_text`)."""
    record = {"digest": cache_key_digest(key), "payload": dict(payload)}
    write_text(cache_file(cache_dir, prefix, key), json.dumps(record, indent=1))
