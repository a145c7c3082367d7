"""Comparison metrics between a gradient estimate and a reference (tuples of tensors)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _flat(grads: Sequence[Tensor]) -> Tensor:
    return torch.cat([g.detach().reshape(-1).to(torch.float64) for g in grads])


def compare(estimate: Sequence[Tensor], reference: Sequence[Tensor]) -> dict[str, float]:
    """rel_error = ‖a − b‖₂/‖b‖₂, cosine(a, b), max_abs_error, and sign_agreement: the fraction
    of entries with |b| > 1e-12·max|b| whose signs agree."""
    a, b = _flat(estimate), _flat(reference)
    if a.shape != b.shape:
        raise ValueError(f"gradient sizes differ: {a.numel()} vs {b.numel()}")
    nb = torch.linalg.vector_norm(b)
    diff = torch.linalg.vector_norm(a - b)
    cos = torch.dot(a, b) / (torch.linalg.vector_norm(a) * nb).clamp_min(1e-300)
    big = b.abs() > 1e-12 * b.abs().max().clamp_min(1e-300)
    sign = (torch.sign(a[big]) == torch.sign(b[big])).double().mean() if big.any() else \
        torch.tensor(1.0)
    return {
        "rel_error": float(diff / nb.clamp_min(1e-300)),
        "cosine": float(cos),
        "max_abs_error": float((a - b).abs().max()),
        "sign_agreement": float(sign),
    }
