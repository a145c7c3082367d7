"""Shared test helpers: small random problems in float64."""

from __future__ import annotations

import torch

from ctep.verify import VerifyConfig, random_problem


def problem(**kwargs):
    """(field, x, y) of a small, well-conditioned random network (see ctep.verify)."""
    base = dict(sizes=(5, 7, 6, 3), batch=4)
    base.update(kwargs)
    return random_problem(VerifyConfig(**base))


def diverging_problem():
    """(field, x): identity activation with couplings 2, so E is unbounded below; sample 0
    (x = 1) runs away, sample 1 (x = 0) sits at the equilibrium s = 0."""
    from ctep import DenseHopfield, VectorField

    e = DenseHopfield([2, 3, 2], "identity", dtype=torch.float64)
    with torch.no_grad():
        for w in e.weights:
            w.fill_(2.0)
    return VectorField(e), torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)


def max_diff(a, b) -> float:
    return max(float((u - v).detach().abs().max()) for u, v in zip(a, b, strict=True))


torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
