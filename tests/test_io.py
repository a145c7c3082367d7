"""ctep._io: the one atomic writer behind checkpoints, metrics, sweeps and recorded paths."""

from __future__ import annotations

import os
import stat

import pytest

from ctep._io import atomic_write, atomic_write_bytes, atomic_write_text
from ctep.train.checkpoint import FORMAT_VERSION, REQUIRED_KEYS, load_checkpoint, save_checkpoint


def test_writes_and_replaces_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    assert atomic_write_text(target, "first") == target
    atomic_write_text(target, "second é")
    assert target.read_text(encoding="utf-8") == "second é"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "data.bin"
    atomic_write_bytes(target, b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half-wri")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_a_callback_that_writes_nothing_is_an_error_naming_the_target(tmp_path):
    target = tmp_path / "fig.png"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="fig.png.*left no file"):
        atomic_write(target, lambda tmp: None)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_permissions_follow_the_umask_not_mkstemp(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        save_checkpoint(tmp_path / "c.pt", {**dict.fromkeys(REQUIRED_KEYS, 0),
                                            "format": FORMAT_VERSION})
    finally:
        os.umask(old)
    for name in ("a.txt", "c.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 0
