"""An exclusive lock on a folder, so that one process at a time writes there.

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic: of two processes creating it at
once, exactly one succeeds) holding its owner's pid, host and start time as JSON; it is removed
when the owner leaves the ``with`` block, normally or by an exception. A process killed
outright (``kill -9``, out of memory, a power cut) leaves the file behind. Such a stale lock is
detected and taken over when its owner ran on this host and its pid no longer exists (POSIX
only: elsewhere the pid is not probed); processes that find the same stale lock take turns
removing it (:func:`_break`), so none can remove a lock that another has taken meanwhile.
A lock from another host, or whose pid has been reused by an unrelated process, is reported
with the command to delete it, which is safe once no process of that owner is running.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import socket
import time
from collections.abc import Iterator

#: tries, and seconds between them, to take the guard under which a stale lock is removed
_GUARD_TRIES, _GUARD_WAIT_S = 50, 0.01


class FolderLockedError(FileExistsError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, name: str, what: str) -> Iterator[pathlib.Path]:
    """Hold the lock file ``folder/name`` for the duration of the ``with`` block.

    ``folder`` is created if need be (and removed again on exit if this call created it and it
    is then empty). ``what`` names the work in the error (e.g. ``"sweep"``). Raises
    :class:`FolderLockedError`, naming the folder, the owner's pid and host, and how to clear
    the lock, if a live process holds it.
    """
    folder = pathlib.Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    try:
        _acquire(path, what)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if created:
            with contextlib.suppress(OSError):  # not empty: it holds the work's files
                folder.rmdir()


def _acquire(path: pathlib.Path, what: str) -> None:
    owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "started": datetime.datetime.now(datetime.UTC).isoformat(
                            timespec="seconds")})
    for _ in range(3):  # a stale lock is taken away, then the creation is tried again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            text = _read(path)
            if text is None:  # removed in between: try again
                continue
            holder = _parse(text)
            if holder is not None and _dead_here(holder):
                _break(path, text)
                continue
            raise FolderLockedError(_message(path, what, holder)) from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(owner)
            fh.flush()
            os.fsync(fh.fileno())
        return
    raise FolderLockedError(f"could not take the {what} lock {path}: other processes kept "
                            "creating and removing it")


def _read(path: pathlib.Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return ""


def _parse(text: str) -> dict | None:
    """The owner recorded in a lock file, or None if the file is empty or not a lock (its
    owner may still be writing it)."""
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return None
    ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int) \
        and isinstance(holder.get("host"), str)
    return holder if ok else None


def _dead_here(holder: dict) -> bool:
    """Whether the lock's owner ran on this host and its pid no longer exists (POSIX)."""
    if os.name != "posix" or holder["host"] != socket.gethostname():
        return False
    try:
        os.kill(holder["pid"], 0)  # signal 0: existence and permission check only
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, another user's
        return False
    return False


def _break(path: pathlib.Path, stale_text: str) -> None:
    """Remove the stale lock whose content is ``stale_text``, if it is still that lock.

    Breakers take turns: each holds the guard file ``<lock>.break`` (``O_CREAT | O_EXCL``)
    while it reads the lock again and deletes it only if the content is still
    ``stale_text``. Nothing else removes another process's lock, and a lock's content does
    not change while it exists (created exclusively, written once), so a breaker that read the
    stale lock before another broke it and took the folder finds the new lock and leaves it in
    place: the lock is never absent while a live process holds it. The guard is held for a
    read and an unlink; a guard still there after 0.5 s (its breaker was killed in between) is
    a :class:`FolderLockedError` naming it.
    """
    guard = path.with_name(f"{path.name}.break")
    for attempt in range(_GUARD_TRIES):
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            if attempt + 1 < _GUARD_TRIES:
                time.sleep(_GUARD_WAIT_S)
    else:
        raise FolderLockedError(
            f"cannot clear the stale lock {path}: {guard} exists (another process is clearing "
            f"it, or one was killed while doing so). If no process is using {path.parent}, "
            f"delete both (rm {path} {guard}) and run again")
    try:
        os.close(fd)
        if _read(path) == stale_text:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        guard.unlink(missing_ok=True)


def _message(path: pathlib.Path, what: str, holder: dict | None) -> str:
    folder = path.parent
    if holder is None:
        who = "a process that has not recorded its pid yet (or the file is damaged)"
    else:
        who = f"pid {holder['pid']} on host {holder['host']}"
        if holder.get("started"):
            who += f", since {holder['started']}"
    return (f"{folder} is in use by another {what} ({who}): lock file {path}. Two {what}s in "
            f"one folder would overwrite each other's files. If no such process is running "
            f"(it was killed on another host, or its pid was reused), delete the lock file "
            f"(rm {path}) and run again")
