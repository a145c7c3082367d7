"""Shared test helpers: small random problems in float64."""

from __future__ import annotations

import torch

from ctep.verify import VerifyConfig, random_problem


def problem(**kwargs):
    """(field, x, y) of a small, well-conditioned random network (see ctep.verify)."""
    base = dict(sizes=(5, 7, 6, 3), batch=4)
    base.update(kwargs)
    return random_problem(VerifyConfig(**base))


def max_diff(a, b) -> float:
    return max(float((u - v).detach().abs().max()) for u, v in zip(a, b, strict=True))


torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
