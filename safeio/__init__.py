"""Files written so that nothing is lost: atomic replacement, valid JSON, one clear error on failure.

Every file the project writes (checkpoints, ``metrics.json``, CSVs, figures, masks, caches, summaries)
goes through :func:`atomic_path`: the writer fills a temporary file in the destination's directory, which
is flushed to disk and then moved over the destination with ``os.replace`` (atomic on POSIX and Windows
within one filesystem). A reader therefore sees the old file or the new one, never a truncated one; on a
failure (disk full, permission, quota) the previous version stays, the temporary file is removed and
:class:`WriteError` names the file, the reason and the free space.

This package imports nothing of the project's (like ``seglosses``); every other layer may use it.
"""

from safeio.atomic import WriteError, atomic_path, write_bytes, write_text
from safeio.jsonfile import json_ready, write_json

__all__ = ["WriteError", "atomic_path", "json_ready", "write_bytes", "write_json", "write_text"]
