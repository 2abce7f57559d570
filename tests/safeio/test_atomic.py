"""safeio: atomic replacement keeps the previous file on any failure, leaves no temporary file, and says
in one line which file failed, why, and how much space is free; JSON is always valid (NaN -> null)."""

from __future__ import annotations

import errno
import json
import math

import numpy as np
import pytest
from PIL import Image

from safeio import WriteError, atomic_path, json_ready, write_json, write_text


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"invalid JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    write_text(path, "one")
    write_text(path, "two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_a_failing_writer_keeps_the_previous_version(tmp_path):
    path = tmp_path / "metrics.json"
    write_text(path, "previous")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_full_disk_is_one_line_naming_file_reason_and_free_space(tmp_path):
    path = tmp_path / "last.ckpt"
    write_text(path, "resumable")
    with pytest.raises(WriteError) as info, atomic_path(path) as tmp:
        tmp.write_bytes(b"trunc")
        raise OSError(errno.ENOSPC, "No space left on device")
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "No space left on device (ENOSPC)" in message and "free" in message
    assert info.value.errno == errno.ENOSPC
    assert path.read_text() == "resumable" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_an_interrupt_removes_the_temporary_file(tmp_path):
    path = tmp_path / "a.csv"
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text("x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(WriteError, match="created no file"), atomic_path(tmp_path / "a.png"):
        pass


def test_the_temporary_name_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    """PIL and numpy choose the format (or add an extension) by the file name."""
    with atomic_path(tmp_path / "mask.png") as tmp:
        assert tmp.suffix == ".png" and tmp.name.startswith(".") and tmp.parent == tmp_path
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp)
    with atomic_path(tmp_path / "p.npy") as tmp:
        np.save(tmp, np.arange(3))
    assert np.load(tmp_path / "p.npy").tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "p.npy"]


def test_a_directory_that_cannot_be_made_is_a_write_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(WriteError, match="could not create the directory"):
        write_text(tmp_path / "file" / "a.txt", "x")


def test_json_is_valid_with_nan_and_infinities(tmp_path):
    record = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": (0.5,), "e": "nan"}
    assert json_ready(record) == {"a": None, "b": [1.0, None, {"c": None}], "d": [0.5], "e": "nan"}
    path = write_json(tmp_path / "m.json", record)
    assert _strict_json(path.read_text()) == json_ready(record)
