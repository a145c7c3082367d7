"""The folder lock (ctep._lock): exclusive, removed on exit, stale locks of dead pids taken over,
live or foreign ones reported with the way to clear them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from ctep._lock import FolderLockedError, _break, folder_lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(path, pid: int, host: str | None = None) -> str:
    text = json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "then"})
    path.write_text(text)
    return text


def test_the_lock_is_exclusive_and_removed_on_exit(tmp_path):
    folder = tmp_path / "work"
    with folder_lock(folder, ".lock", "job") as path:
        held = json.loads(path.read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(FolderLockedError) as err, folder_lock(folder, ".lock", "job"):
            pass
        text = str(err.value)
        assert str(folder) in text and f"pid {os.getpid()}" in text and f"rm {path}" in text
        assert path.exists()  # the refused call left the holder's lock alone
        (folder / "result.txt").write_text("kept")
    assert sorted(p.name for p in folder.iterdir()) == ["result.txt"]


def test_the_lock_goes_with_an_exception_and_an_empty_new_folder_too(tmp_path):
    with pytest.raises(KeyError), folder_lock(tmp_path / "new", ".lock", "job"):
        raise KeyError("boom")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with folder_lock(tmp_path / "old", ".lock", "job"):
        pass
    assert (tmp_path / "old").is_dir()  # not created by the lock: kept, empty or not


@pytest.mark.skipif(os.name != "posix", reason="pids are probed on POSIX only")
def test_a_stale_lock_of_a_dead_pid_on_this_host_is_taken_over(tmp_path):
    path = tmp_path / ".lock"
    _write_lock(path, _dead_pid())
    with folder_lock(tmp_path, ".lock", "job"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists() and not list(tmp_path.iterdir())  # no .stale file left


@pytest.mark.parametrize("kind", ["other host", "damaged"])
def test_foreign_or_damaged_locks_are_reported_not_broken(tmp_path, kind):
    path = tmp_path / ".lock"
    if kind == "other host":
        text = _write_lock(path, _dead_pid(), host="not-" + socket.gethostname())
    else:
        text = "{"  # an owner killed between creating and writing it, or one still writing
        path.write_text(text)
    with pytest.raises(FolderLockedError, match="in use by another job") as err, \
            folder_lock(tmp_path, ".lock", "job"):
        pass
    assert f"rm {path}" in str(err.value)
    assert path.read_text() == text
    if kind == "other host":
        assert "on host not-" in str(err.value)


def test_breaking_a_stale_lock_gives_back_one_created_meanwhile(tmp_path):
    """Between reading a stale lock and renaming it away, a live process may have broken it
    and made its own: that lock is put back, not deleted."""
    path = tmp_path / ".lock"
    stale = _write_lock(path, 1)
    fresh = _write_lock(path, os.getpid())  # the live process's lock, made in between
    _break(path, stale)
    assert path.read_text() == fresh
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]
    _break(path, fresh)  # the content read: removed
    assert not list(tmp_path.iterdir())
    _break(path, fresh)  # already gone: nothing to do


def test_a_late_breaker_never_uncovers_a_live_lock(tmp_path, monkeypatch):
    """Processes B and C both read the same stale lock; B breaks it and takes the folder. When C
    then breaks the lock it read, B's lock must stay in place throughout: a process D that tries
    to take the lock between any two file-system steps of C never gets it (with a rename-away
    and put-back, D got in while B's lock was renamed aside, and then B and D both held it)."""
    import pathlib

    path = tmp_path / ".lock"
    stale = _write_lock(path, _dead_pid())
    path.unlink()  # B broke it ...
    fresh = _write_lock(path, os.getpid())  # ... and holds the folder
    real_open = os.open
    intruded = []

    def d_tries() -> None:
        try:
            fd = real_open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return
        os.close(fd)
        intruded.append(True)

    def after(fn):
        def step(*args, **kwargs):
            out = fn(*args, **kwargs)
            d_tries()
            return out
        return step

    for name in ("open", "rename", "replace", "link", "unlink", "remove", "close"):
        monkeypatch.setattr(os, name, after(getattr(os, name)))
    monkeypatch.setattr(pathlib.Path, "unlink", after(pathlib.Path.unlink))
    monkeypatch.setattr(pathlib.Path, "read_text", after(pathlib.Path.read_text))
    _break(path, stale)  # C, late
    monkeypatch.undo()
    assert not intruded
    assert path.read_text() == fresh
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]


@pytest.mark.skipif(os.name != "posix", reason="pids are probed on POSIX only")
def test_a_guard_left_by_a_killed_breaker_is_reported(tmp_path):
    """A breaker killed between taking the guard and releasing it leaves ``.lock.break``: the
    stale lock is then not removed, and the error names both files and how to clear them."""
    path = tmp_path / ".lock"
    stale = _write_lock(path, _dead_pid())
    (tmp_path / ".lock.break").write_text("")
    with pytest.raises(FolderLockedError) as err, folder_lock(tmp_path, ".lock", "job"):
        pass
    assert f"rm {path} {tmp_path / '.lock.break'}" in str(err.value)
    assert path.read_text() == stale
