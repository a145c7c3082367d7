"""Checkpoints and run files, written atomically and read back safely.

Every file is written with :func:`ctep._io.atomic_write` (a temporary file in the same folder,
fsync'ed, renamed over the target, the folder fsync'ed): a run killed while writing leaves the
previous checkpoint intact. Checkpoints hold only tensors, numbers, strings, lists and
dicts, so they load with ``torch.load(..., weights_only=True)`` (no pickled code runs).
"""

from __future__ import annotations

import io
import pathlib
from typing import Any

import torch

from .._io import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "model", "optimizer", "epoch", "batch", "history", "partial",
                 "generators", "config")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or not a ctep training checkpoint."""


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
