"""The one check of a real nudge strength β, shared by the functions that take a real β."""

from __future__ import annotations

import math
import numbers

import torch


def real_beta(beta: object) -> float:
    """β as a ``float``, for the real nudge of F = E + β·ℓ.

    Accepted: a real number (``int``, ``float``, a NumPy real scalar; not ``bool``) or a real
    tensor with one element (0-d or of shape ``(1,)``, not complex or bool), whose value is
    finite. Anything else (complex β, a vector of β, NaN, ±inf) is a ``ValueError`` naming it.
    """
    scalar = isinstance(beta, numbers.Real) and not isinstance(beta, bool)
    tensor = (torch.is_tensor(beta) and beta.numel() == 1 and not beta.is_complex()
              and beta.dtype != torch.bool)
    if not (scalar or tensor):
        raise ValueError(f"beta must be a finite real number or a one-element real tensor, got "
                         f"{beta!r}")
    value = float(beta.detach()) if tensor else float(beta)
    if not math.isfinite(value):
        raise ValueError(f"beta must be finite, got {beta!r}")
    return value
