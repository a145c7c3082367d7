"""Helpers for layer states: a tuple of tensors, one per layer, batch first.

Flattening maps the tuple ``(s_1, ..., s_L)`` of shapes ``(B, *shape_l)`` to one matrix of shape
``(B, n)`` with ``n = Σ_l prod(shape_l)``; it is what the dense linear algebra of the references
and the Newton polish work on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

States = tuple[Tensor, ...]
Shapes = tuple[tuple[int, ...], ...]


def flatten_states(states: Sequence[Tensor]) -> Tensor:
    """Concatenate per-layer states of shapes ``(B, *shape_l)`` into one ``(B, n)`` tensor."""
    return torch.cat([s.reshape(s.shape[0], -1) for s in states], dim=1)


def unflatten_states(flat: Tensor, shapes: Shapes) -> States:
    """Inverse of :func:`flatten_states` for per-sample layer shapes ``shapes``."""
    sizes = [_numel(shape) for shape in shapes]
    parts = torch.split(flat, sizes, dim=1)
    return tuple(p.reshape(flat.shape[0], *shape) for p, shape in zip(parts, shapes, strict=True))


def per_sample_max_abs(states: Sequence[Tensor]) -> Tensor:
    """``max_i |s_i|`` per sample over every layer: shape ``(B,)``."""
    return torch.stack([s.reshape(s.shape[0], -1).abs().amax(dim=1) for s in states]).amax(dim=0)


def per_sample_all_finite(states: Sequence[Tensor]) -> Tensor:
    """Boolean ``(B,)``: every entry of the sample's states is finite."""
    return torch.stack([torch.isfinite(s.reshape(s.shape[0], -1)).all(dim=1) for s in states]).all(
        dim=0
    )


def select_samples(mask: Tensor, new: Sequence[Tensor], old: Sequence[Tensor]) -> States:
    """Per sample: ``new`` where ``mask`` (shape ``(B,)``) is true, else ``old``."""
    return tuple(
        torch.where(mask.reshape(-1, *([1] * (n.dim() - 1))), n, o)
        for n, o in zip(new, old, strict=True)
    )


def detach_states(states: Sequence[Tensor]) -> States:
    """Detached copies of the states (no graph, same storage semantics as ``Tensor.detach``)."""
    return tuple(s.detach() for s in states)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
