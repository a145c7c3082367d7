"""Shared test helpers: small random problems in float64."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from ctep.verify import VerifyConfig, random_problem

# CI runs each property test on the same examples every time (a failure there is reproducible,
# and a submission does not pass or fail by the draw); locally hypothesis explores new ones.
# No deadline (relaxations vary in time on shared CI machines) and no example database (nothing
# to replay between fresh checkouts). Recent hypothesis versions have an equivalent built-in "ci"
# profile that they load themselves when CI is set; this one gives the same on older versions.
settings.register_profile("ci", derandomize=True, deadline=None, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


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


def nudge_keeps_output_clip(field, x, y, est) -> bool:
    """Whether each nudged equilibrium of ``est`` leaves the output's σ argument in the clip
    region it has at the free one. The active-set codes (``ctep.models.active_set``) read the
    un-nudged pre-activation u_L = ∂Φ/∂s_L, but the output's σ sees u_L − β∂ℓ/∂s_L: a clip
    within β|∂ℓ/∂s| of u_L is crossed with equal codes, and EP then differs from the gradient
    at O(1) (conv seed 2717, kernel 1, hard sigmoid: margin 7e-4, β = 1e-3, rel_error 0.11)."""
    energy = field.energy
    act = energy.activations[-1]
    if not act.bounded:
        return True

    def code(states, beta):
        with torch.no_grad():
            u = energy.phi_grad(x, energy._activities(tuple(states)))[-1]
            if beta:
                u = u - beta * field.cost.grad_output(states[-1], y)
            u = u.reshape(u.shape[0], -1).real
            return (u > act.low).to(torch.int8) + (u >= act.high).to(torch.int8)

    free = code(est.free.states, 0)
    return all(torch.equal(free, code(n.states, b))
               for n, b in zip(est.nudged, est.betas, strict=True))


@pytest.fixture
def host_reads(monkeypatch) -> dict:
    """Counts every host read of a tensor value (bool, item, int, float, tolist, nonzero,
    index) in ``host_reads["n"]``: a relaxation's reads between its residual checks show up as
    a count that grows with the number of steps."""
    counts = {"n": 0}
    for name in ("__bool__", "item", "__int__", "__float__", "tolist", "nonzero", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            counts["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts
