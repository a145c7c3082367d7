"""Checkpoints and run files, written atomically and read back safely.

Every file is written to a temporary file in the same folder, flushed and fsync'ed, then renamed
over the target (``os.replace`` is atomic on POSIX and Windows): a run killed while writing
leaves the previous checkpoint intact. Checkpoints hold only tensors, numbers, strings, lists and
dicts, so they load with ``torch.load(..., weights_only=True)`` (no pickled code runs).
"""

from __future__ import annotations

import io
import os
import pathlib
import tempfile
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "model", "optimizer", "epoch", "batch", "history", "partial",
                 "generators", "config")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or not a ctep training checkpoint."""


def atomic_write_bytes(path: str | pathlib.Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file and an atomic rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | pathlib.Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: str | pathlib.Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` with :func:`torch.save` and write it atomically."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | pathlib.Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` naming the
    file and what is wrong with it."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: "
                              f"{exc}); it is corrupt or not a ctep checkpoint") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a ctep training checkpoint (format "
                              f"{FORMAT_VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    return state
