"""Atomic file writes: every file ctep writes for a user goes through :func:`atomic_write`.

The content is written to a temporary file in the target's folder (opened as usual, so it has
the permissions the umask gives, not ``mkstemp``'s 0600), flushed to disk (fsync) and renamed
over the target with ``os.replace``; the folder is then fsync'ed so the rename itself survives a
crash. On POSIX the rename is atomic: a reader never sees a half-written file, and a write that
fails or is interrupted leaves the previous file in place. On Windows ``os.replace`` is a
``MoveFileEx`` with replace, which Windows does not promise to be atomic and which fails while
another process holds the target open; folders cannot be fsync'ed there (that step is skipped).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import uuid
from collections.abc import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[pathlib.Path], object]
                 ) -> pathlib.Path:
    """Call ``write(tmp)`` on a temporary path next to ``path``, then move it over ``path``.

    ``write`` may be anything that writes a file at the path it is given (``to_netcdf``,
    ``savefig``, ``write_bytes``). Returns ``path``.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        if not tmp.is_file():
            raise RuntimeError(f"writing {path}: the write callback left no file at the "
                               f"temporary path {tmp.name} it was given")
        with open(tmp, "rb+") as fh:  # a writable handle: Windows fsyncs only those
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # a failed cleanup must not hide the write's error
            tmp.unlink(missing_ok=True)
    _fsync_folder(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> pathlib.Path:
    """:func:`atomic_write` of ``payload``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(payload))


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """:func:`atomic_write` of ``text`` as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_folder(folder: pathlib.Path) -> None:
    """Flush a folder's entries (the rename) to disk; a no-op where folders cannot be opened
    (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
